//! `agent delivery-forwarder`: webhook-driven automation without a public
//! receiver. The forge records every delivery it attempts; this polls
//! those records through its API ([`github`]), with a GitHub App or a token
//! ([`auth`]), and replays each unseen delivery, oldest first, into the
//! private network with its event headers and a fresh signature
//! ([`forward`]). Each hook's cursor ([`cursor`]) is persisted and moves
//! only past deliveries that were forwarded or dead-lettered ([`poll`]);
//! every request waits out the forge's rate limits ([`rate`]);
//! which hooks and targets comes from a rules file ([`config`]).

pub mod auth;
pub mod config;
pub mod cursor;
pub mod forward;
pub mod github;
mod metrics;
pub mod poll;
mod rate;

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus::Registry as MetricsRegistry;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use self::{
    auth::{App, Credentials},
    config::{HookRef, Rule},
    cursor::Store,
    forward::Sender,
    github::Api,
    metrics::ForwarderMetrics,
    poll::{HookJob, HookLoop, Settings, Shared},
};
use crate::{
    admin::{AdminArgs, AdminState, Readiness},
    kube_client::KubeArgs,
    read_cache::parse_bytes,
    shutdown::{Shutdown, ShutdownArgs},
    webhook_fanout::{SECRET_ENV, read_secret, roots},
};

/// The environment variable that may hold the API token itself.
pub const TOKEN_ENV: &str = "CLUSTER_RELAY_GITHUB_TOKEN";

/// Flags of `agent delivery-forwarder`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Rules file (YAML or JSON): `rules: [{repositories: [OWNER/REPO],
    /// organizations: [ORG], hook: {id: N} | {url: URL, create: BOOL,
    /// events: [..]}, target: URL}]`.
    #[arg(long, env = "CLUSTER_RELAY_FORWARDER_CONFIG", value_name = "PATH")]
    pub config: PathBuf,

    /// Base URL of the forge's REST API (GitHub Enterprise:
    /// https://HOST/api/v3).
    #[arg(
        long,
        env = "CLUSTER_RELAY_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub api_url: String,

    /// File holding a personal access token (one trailing newline is
    /// ignored). Or put the token itself in CLUSTER_RELAY_GITHUB_TOKEN; it
    /// is never taken from a flag, which `ps` would show. Not with --app-id.
    #[arg(long, env = "CLUSTER_RELAY_GITHUB_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Authenticate as this GitHub App (its app id or client id, the JWT's
    /// issuer); needs --app-private-key-file.
    #[arg(long, env = "CLUSTER_RELAY_GITHUB_APP_ID")]
    pub app_id: Option<String>,

    /// The app's private key (PEM), which signs its JWTs (RS256).
    #[arg(
        long,
        env = "CLUSTER_RELAY_GITHUB_APP_PRIVATE_KEY_FILE",
        value_name = "PATH"
    )]
    pub app_private_key_file: Option<PathBuf>,

    /// The app installation to use for every source. Default: looked up
    /// per owner (GET /repos/O/R/installation, /orgs/O/installation).
    #[arg(long, env = "CLUSTER_RELAY_GITHUB_INSTALLATION_ID")]
    pub installation_id: Option<u64>,

    /// Renew an installation token this long before it expires.
    #[arg(long, env = "CLUSTER_RELAY_TOKEN_REFRESH_BEFORE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub token_refresh_before: Duration,

    /// File holding the secret that signs forwarded deliveries
    /// (X-Hub-Signature-256); the target verifies with it. Or put the secret
    /// itself in CLUSTER_RELAY_WEBHOOK_SECRET.
    #[arg(long, env = "CLUSTER_RELAY_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// Keep the cursors in this ConfigMap (NAMESPACE/NAME) on the hosting
    /// cluster (--kubeconfig). Either this or --cursor-file.
    #[arg(
        long,
        env = "CLUSTER_RELAY_CURSOR_CONFIGMAP",
        value_name = "NAMESPACE/NAME"
    )]
    pub cursor_configmap: Option<String>,

    /// Keep the cursors in this local file.
    #[arg(long, env = "CLUSTER_RELAY_CURSOR_FILE", value_name = "PATH")]
    pub cursor_file: Option<PathBuf>,

    /// Pause between polls of one hook. Idle polls are answered 304 and
    /// cost no rate limit.
    #[arg(long, env = "CLUSTER_RELAY_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Hooks polled at once, and delivery details fetched ahead of the one
    /// being forwarded.
    #[arg(long, env = "CLUSTER_RELAY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// Deliveries asked for per page (the forge allows at most 100).
    #[arg(long, env = "CLUSTER_RELAY_PER_PAGE", default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub per_page: u8,

    /// Attempts at forwarding one delivery before it is dead-lettered
    /// (recorded with the cursor, logged and counted) and skipped.
    #[arg(long, env = "CLUSTER_RELAY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// On first start, also forward deliveries this far back. Default:
    /// start at the newest delivery.
    #[arg(long, env = "CLUSTER_RELAY_BACKFILL", value_parser = humantime::parse_duration)]
    pub backfill: Option<Duration>,

    /// GUIDs remembered per hook, so a redelivery of a forwarded delivery
    /// is not forwarded again.
    #[arg(long, env = "CLUSTER_RELAY_DEDUP_SIZE", default_value_t = 1_000)]
    pub dedup_size: usize,

    /// Dead letters kept per hook (the count is kept in full).
    #[arg(long, env = "CLUSTER_RELAY_MAX_DEAD_LETTERS", default_value_t = 100)]
    pub max_dead_letters: usize,

    /// Most deliveries queued above one hook's cursor; a poll that finds
    /// more fails loudly rather than hold them all.
    #[arg(long, env = "CLUSTER_RELAY_MAX_BACKLOG", default_value_t = 50_000)]
    pub max_backlog: usize,

    /// Time one API request has (connect, send, whole answer).
    #[arg(long, env = "CLUSTER_RELAY_API_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,

    /// Time the target has to take a delivery.
    #[arg(long, env = "CLUSTER_RELAY_TARGET_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub target_timeout: Duration,

    /// Largest API answer read (a delivery's detail carries its payload;
    /// GitHub caps payloads at 25 MB).
    #[arg(long, env = "CLUSTER_RELAY_MAX_ANSWER_BYTES", default_value = "32Mi", value_parser = parse_bytes)]
    pub max_answer_bytes: u64,

    /// Extra CA bundle (PEM) for the API and https targets, besides the
    /// system's. Repeat for several.
    #[arg(
        long = "ca-file",
        env = "CLUSTER_RELAY_CA_FILES",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    match (&args.app_id, &args.app_private_key_file, &args.token_file) {
        (Some(_), _, Some(_)) => anyhow::bail!("--app-id and --token-file exclude each other"),
        (Some(app_id), Some(key), None) => {
            let pem = std::fs::read(key).map_err(|err| {
                anyhow::anyhow!("--app-private-key-file {}: {err}", key.display())
            })?;
            let app = App::new(
                app_id.clone(),
                &pem,
                args.installation_id,
                args.token_refresh_before,
            )
            .map_err(|err| anyhow::anyhow!("--app-private-key-file {}: {err}", key.display()))?;
            Ok(Credentials::App(Box::new(app)))
        }
        (Some(_), None, _) => anyhow::bail!("--app-id needs --app-private-key-file"),
        (None, Some(_), _) => anyhow::bail!("--app-private-key-file needs --app-id"),
        (None, None, Some(path)) => {
            let token = String::from_utf8(read_secret(path, "--token-file")?)
                .map_err(|_| anyhow::anyhow!("--token-file: not UTF-8"))?;
            Ok(Credentials::Token(SecretString::from(token)))
        }
        (None, None, None) => match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.is_empty() => Ok(Credentials::Token(SecretString::from(token))),
            _ => anyhow::bail!(
                "credentials are required: --app-id with --app-private-key-file, --token-file, or {TOKEN_ENV}"
            ),
        },
    }
}

async fn store(args: &Args) -> anyhow::Result<Store> {
    match (&args.cursor_configmap, &args.cursor_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("--cursor-configmap and --cursor-file exclude each other")
        }
        (None, None) => {
            anyhow::bail!("a cursor store is required: --cursor-configmap or --cursor-file")
        }
        (None, Some(path)) => Store::file(path.clone())
            .await
            .map_err(|err| anyhow::anyhow!("--cursor-file: {err}")),
        (Some(name), None) => {
            let (namespace, name) = name
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| {
                    anyhow::anyhow!("--cursor-configmap {name:?}: not NAMESPACE/NAME")
                })?;
            Store::config_map(args.kube.client().await?, namespace, name, args.api_timeout)
                .await
                .map_err(|err| anyhow::anyhow!("--cursor-configmap: {err}"))
        }
    }
}

/// Finds (or creates) each rule's hook on each of its sources.
async fn resolve(api: &Api, rules: &[Rule]) -> anyhow::Result<Vec<HookJob>> {
    let mut jobs: Vec<HookJob> = Vec::new();
    for rule in rules {
        for source in &rule.sources {
            let hook_id = match &rule.hook {
                HookRef::Id(id) => {
                    api.hook(source, *id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("{source}: no hook {id}"))?
                        .id
                }
                HookRef::Url {
                    url,
                    create,
                    events,
                } => {
                    let hooks = api.hooks(source).await?;
                    match hooks.iter().find(|h| h.config.url.as_deref() == Some(url)) {
                        Some(hook) => hook.id,
                        None if *create => {
                            let hook = api.create_hook(source, url, events).await?;
                            tracing::info!(%source, hook = hook.id, %url, "hook created");
                            hook.id
                        }
                        None => anyhow::bail!(
                            "{source}: no hook posts to {url} (set create: true to make one)"
                        ),
                    }
                }
            };
            if jobs
                .iter()
                .any(|j| j.source == *source && j.hook_id == hook_id)
            {
                anyhow::bail!(
                    "{source}: hook {hook_id} is named by two rules; one cursor cannot serve two targets"
                );
            }
            jobs.push(HookJob {
                source: source.clone(),
                hook_id,
                target: rule.target.clone(),
            });
        }
    }
    Ok(jobs)
}

fn source_names(jobs: &[HookJob]) -> String {
    jobs.iter()
        .map(HookJob::label)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the forwarder until shutdown.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let rules = config::read(&args.config).map_err(|err| anyhow::anyhow!("--config {err}"))?;
    let secret = match (&args.secret_file, std::env::var_os(SECRET_ENV)) {
        (Some(path), _) => read_secret(path, "--secret-file")?,
        (None, Some(value)) if !value.is_empty() => value.into_encoded_bytes(),
        _ => anyhow::bail!("the signing secret is required: --secret-file or {SECRET_ENV}"),
    };
    let api_url: http::Uri = args
        .api_url
        .parse()
        .map_err(|err| anyhow::anyhow!("--api-url {:?}: {err}", args.api_url))?;
    if !matches!(api_url.scheme_str(), Some("http" | "https")) || api_url.host().is_none() {
        anyhow::bail!("--api-url {:?}: not an http(s) URL", args.api_url);
    }
    if args.dedup_size == 0 || args.max_dead_letters == 0 || args.max_backlog == 0 {
        anyhow::bail!("--dedup-size, --max-dead-letters and --max-backlog must be at least 1");
    }
    if args.poll_interval.is_zero() {
        anyhow::bail!("--poll-interval must be above 0");
    }
    let credentials = credentials(&args)?;
    let store = store(&args).await?;
    let max_answer = usize::try_from(args.max_answer_bytes)
        .map_err(|_| anyhow::anyhow!("--max-answer-bytes is too large for this machine"))?;

    let registry = MetricsRegistry::new();
    let readiness = Readiness::default();
    let hooks_ready = readiness.check("hooks");
    let metrics = ForwarderMetrics::new(&registry);
    let http = forward::http_client(roots(&args.ca_files, "--ca-file")?, args.api_timeout)?;
    let api = Api::new(
        &args.api_url,
        http.clone(),
        args.api_timeout,
        max_answer,
        credentials,
        metrics.clone(),
    )?;
    let _admin = crate::admin::start(
        &args.admin,
        AdminState {
            registry,
            readiness,
            shutdown: shutdown.clone(),
        },
    )?;

    // Resolving needs working credentials; retried with backoff, since the
    // forge may be unreachable for a while when the pod starts.
    let shared = Arc::new(Shared {
        api,
        sender: Sender::new(http, args.target_timeout, secret),
        store,
        metrics,
        settings: Settings {
            poll_interval: args.poll_interval,
            per_page: args.per_page,
            concurrency: usize::from(args.concurrency),
            max_attempts: args.max_attempts,
            dedup_size: args.dedup_size,
            max_dead_letters: args.max_dead_letters,
            max_backlog: args.max_backlog,
            backfill: args.backfill,
        },
        permits: Semaphore::new(usize::from(args.concurrency)),
    });
    // Resolving and the first look at each hook need working credentials;
    // retried with backoff, since the forge may be unreachable for a while
    // when the pod starts.
    let mut backoff = Duration::from_secs(1);
    let (jobs, loops) = loop {
        let attempt = async {
            let jobs = resolve(&shared.api, &rules).await?;
            let mut loops = Vec::new();
            for job in &jobs {
                loops.push(
                    HookLoop::start(job.clone(), shared.clone())
                        .await
                        .map_err(|err| anyhow::anyhow!("{}: {err:#}", job.label()))?,
                );
            }
            anyhow::Ok((jobs, loops))
        };
        let attempt = tokio::select! {
            result = attempt => result,
            _ = shutdown.draining() => return Ok(()),
        };
        match attempt {
            Ok(ready) => break ready,
            Err(err) => {
                hooks_ready.not_ready(format!("{err:#}"));
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?backoff, "cannot resolve the hooks");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.draining() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    };
    hooks_ready.ready(source_names(&jobs));
    tracing::info!(hooks = %source_names(&jobs), "forwarding");

    let mut tasks = tokio::task::JoinSet::new();
    for hook in loops {
        tasks.spawn(hook.run(shutdown.clone()));
    }
    // Each loop returns once draining starts and its in-flight forward
    // (and cursor write) is done; an abort cuts that short.
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {
            tracing::info!("drained; cursors stored");
        }
        _ = shutdown.aborted() => {
            tracing::warn!("aborted with forwards in flight; at most those are sent again");
        }
    }
    Ok(())
}
