//! `agent webhook-fanout`: one forge webhook in, every backend out, nothing
//! lost. A delivery's signature is checked before anything else
//! ([`signature`]); it is journaled to disk ([`journal`]) and the forge is
//! answered at once; then every backend gets it concurrently, failures
//! retried with backoff from the journal, also across restarts
//! ([`dispatch`]). Backends come from flags and a file, and at runtime
//! through an authenticated API when enabled ([`backends`], [`inbound`]).

pub mod backends;
mod dispatch;
mod inbound;
pub mod journal;
mod metrics;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use prometheus::Registry as MetricsRegistry;

use self::{
    backends::{BackendSpec, Registry},
    dispatch::{Dispatcher, RetryPolicy},
    inbound::{AdminAuth, Inbound},
    journal::{Journal, now_ms},
    metrics::FanoutMetrics,
    signature::Verifier,
};
use crate::{
    admin::{AdminArgs, AdminState, Readiness},
    flags::{as_usize, parse_bytes, read_token, secret_from_file_or_env},
    http_server::{self, ServeArgs},
    kube_client::KubeArgs,
    net,
    shutdown::{Shutdown, ShutdownArgs},
    signature::{self, SECRET_ENV},
    tls::trust_roots,
    token_review::{Callers, TokenReviewArgs},
    upstream::{
        PoolArgs,
        directory::Directory,
        forward::{Limits, Upstream, UpstreamConfig},
    },
};

/// Flags of `agent webhook-fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to receive deliveries on.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LISTEN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_addr: SocketAddr,

    /// File holding the webhook's shared secret (one trailing newline is
    /// ignored). Or put the secret itself in CLUSTER_RELAY_WEBHOOK_SECRET;
    /// it is never taken from a flag, which `ps` would show.
    #[arg(long, env = "CLUSTER_RELAY_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// Also accept the legacy X-Hub-Signature (HMAC-SHA1) when a delivery
    /// has no X-Hub-Signature-256.
    #[arg(long, env = "CLUSTER_RELAY_ALLOW_SHA1_SIGNATURES")]
    pub allow_sha1_signatures: bool,

    /// Largest delivery accepted (enforced while reading; larger ones get
    /// 413). GitHub caps payloads at 25 MB.
    #[arg(long, env = "CLUSTER_RELAY_MAX_BODY_BYTES", default_value = "25Mi", value_parser = parse_bytes)]
    pub max_body_bytes: u64,

    /// A backend URL every delivery is sent to. Repeat or separate with
    /// commas.
    #[arg(
        long = "backend",
        env = "CLUSTER_RELAY_BACKENDS",
        value_delimiter = ','
    )]
    pub backends: Vec<String>,

    /// YAML or JSON file of more backends: `backends: [{name: c1, url:
    /// http://…}]` (name defaults to the URL).
    #[arg(long, env = "CLUSTER_RELAY_BACKENDS_FILE", value_name = "PATH")]
    pub backends_file: Option<PathBuf>,

    /// Time a backend has to take a delivery (connect, send, answer).
    #[arg(long, env = "CLUSTER_RELAY_BACKEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub backend_timeout: Duration,

    /// Extra CA bundle (PEM) for https backends, besides the system's trust
    /// anchors (SSL_CERT_FILE and SSL_CERT_DIR are honoured). The agent's
    /// image has none: there only these files are trusted, and without them
    /// https backends are refused. Repeat for several.
    #[arg(
        long = "backend-ca-file",
        env = "CLUSTER_RELAY_BACKEND_CA_FILES",
        value_delimiter = ','
    )]
    pub backend_ca_files: Vec<PathBuf>,

    /// Directory of the on-disk queue (an embedded database); deliveries
    /// not yet taken by every backend survive restarts here.
    #[arg(
        long,
        env = "CLUSTER_RELAY_QUEUE_DIR",
        default_value = "/var/lib/cluster-relay/webhook-fanout"
    )]
    pub queue_dir: PathBuf,

    /// First pause before sending a failed delivery again; it doubles per
    /// attempt, with jitter, up to --retry-max-backoff.
    #[arg(long, env = "CLUSTER_RELAY_RETRY_INITIAL_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_initial_backoff: Duration,

    /// Longest pause between attempts.
    #[arg(long, env = "CLUSTER_RELAY_RETRY_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max_backoff: Duration,

    /// Stop retrying a backend this long after the delivery arrived (logged
    /// and counted as expired).
    #[arg(long, env = "CLUSTER_RELAY_RETRY_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retry_max_age: Duration,

    /// Most sends to backends at once.
    #[arg(long, env = "CLUSTER_RELAY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Most body bytes held for deliveries some backend still has to get;
    /// beyond it the forge gets 503 with Retry-After.
    #[arg(long, env = "CLUSTER_RELAY_MAX_QUEUED_BYTES", default_value = "1Gi", value_parser = parse_bytes)]
    pub max_queued_bytes: u64,

    /// How long a delivery id is remembered, so the same delivery sent
    /// again is not fanned out twice.
    #[arg(long, env = "CLUSTER_RELAY_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Serve GET/POST /backends and DELETE /backends/NAME to change the
    /// backends at runtime (persisted in the queue). Needs --admin-token-file
    /// or --admin-user.
    #[arg(long, env = "CLUSTER_RELAY_ENABLE_DYNAMIC_BACKENDS")]
    pub enable_dynamic_backends: bool,

    /// File holding a bearer token that may use the backend API.
    #[arg(long, env = "CLUSTER_RELAY_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// A user (as a TokenReview on --kubeconfig's cluster names it) that may
    /// use the backend API. Repeat or separate with commas.
    #[arg(
        long = "admin-user",
        env = "CLUSTER_RELAY_ADMIN_USERS",
        value_delimiter = ','
    )]
    pub admin_users: Vec<String>,

    /// Time the TokenReview of an --admin-user caller has to answer.
    #[arg(long, env = "CLUSTER_RELAY_TOKEN_REVIEW_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub token_review_timeout: Duration,

    #[command(flatten)]
    pub token_review: TokenReviewArgs,

    /// Most backends, fixed and runtime ones together.
    #[arg(long, env = "CLUSTER_RELAY_MAX_BACKENDS", default_value_t = 64)]
    pub max_backends: usize,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Runs the fan-out until shutdown.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    // Checked before anything is bound or started.
    let server = args.serve.config()?;
    let secret = secret_from_file_or_env(
        args.secret_file.as_ref(),
        "--secret-file",
        SECRET_ENV,
        "the webhook secret",
    )?;
    if args.max_in_flight == 0 || args.max_backends == 0 {
        anyhow::bail!("--max-in-flight and --max-backends must be at least 1");
    }
    if args.retry_initial_backoff.is_zero() || args.retry_max_backoff < args.retry_initial_backoff {
        anyhow::bail!("--retry-initial-backoff must be above 0 and at most --retry-max-backoff");
    }
    let mut fixed: Vec<BackendSpec> = args
        .backends
        .iter()
        .map(|url| BackendSpec {
            name: None,
            url: url.clone(),
        })
        .collect();
    if let Some(file) = &args.backends_file {
        fixed.extend(
            backends::read_file(file).map_err(|err| anyhow::anyhow!("--backends-file {err}"))?,
        );
    }
    let registry = Arc::new(
        Registry::new(fixed, args.max_backends)
            .map_err(|err| anyhow::anyhow!("--backend: {err}"))?,
    );
    let admin = if args.enable_dynamic_backends {
        let token = match &args.admin_token_file {
            Some(path) => Some(read_token(path, "--admin-token-file")?),
            None => None,
        };
        let callers = if args.admin_users.is_empty() {
            None
        } else {
            Some(Callers::new(
                args.kube.client().await?,
                args.admin_users.clone(),
                args.token_review,
                args.token_review_timeout,
            ))
        };
        if token.is_none() && callers.is_none() {
            anyhow::bail!("--enable-dynamic-backends needs --admin-token-file or --admin-user");
        }
        Some(AdminAuth { token, callers })
    } else {
        None
    };

    let (journal, recovered) = Journal::open(&args.queue_dir)
        .map_err(|err| anyhow::anyhow!("--queue-dir {}: {err}", args.queue_dir.display()))?;
    for (name, url) in recovered.backends {
        if let Err(err) = registry.add_dynamic(BackendSpec {
            name: Some(name.clone()),
            url,
        }) {
            tracing::warn!(backend = %name, error = %err, "a persisted backend is not restored");
        }
    }
    let registry_metrics = MetricsRegistry::new();
    let readiness = Readiness::default();
    let metrics = FanoutMetrics::new(&registry_metrics);
    let upstream = Upstream::new(UpstreamConfig {
        roots: trust_roots(&args.backend_ca_files, "--backend-ca-file")?,
        server_name: None,
        directory: Directory::dns(Default::default()),
        limits: Limits {
            connect_timeout: args.backend_timeout,
            response_timeout: args.backend_timeout,
            max_body_bytes: None,
            pool: args.pool.limits()?,
        },
    })?;
    let dispatcher = Dispatcher::new(
        journal.clone(),
        registry.clone(),
        upstream,
        args.backend_timeout,
        RetryPolicy {
            initial: args.retry_initial_backoff,
            max: args.retry_max_backoff,
            max_age: args.retry_max_age,
        },
        args.max_in_flight,
        metrics.clone(),
    );
    let mut resumed = 0;
    for (delivery, owed) in recovered.pending {
        let (known, gone): (Vec<String>, Vec<String>) = owed
            .into_iter()
            .partition(|name| registry.url(name).is_some());
        for name in &gone {
            tracing::warn!(backend = %name, delivery = %delivery.id, "dropping a pending delivery: the backend is no longer configured");
            journal.done(name, &delivery.id).await;
        }
        if known.is_empty() {
            journal.forget(&delivery.id).await;
        } else {
            resumed += 1;
            dispatcher.start(delivery, known);
        }
    }
    tracing::info!(resumed, backends = registry.names().len(), "queue open");
    readiness
        .check("queue")
        .ready(format!("{resumed} deliveries resumed"));

    let window = args.dedup_window;
    let (pruner, gauges) = (journal.clone(), (dispatcher.clone(), metrics.clone()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        loop {
            tick.tick().await;
            gauges.1.set_depth(gauges.0.depth());
            seconds += 1;
            if seconds.is_multiple_of(600) {
                let before = now_ms().saturating_sub(window.as_millis() as u64);
                pruner.prune_seen(before).await;
            }
        }
    });

    let _admin = crate::admin::start(
        &args.admin,
        AdminState {
            registry: registry_metrics,
            readiness,
            shutdown: shutdown.clone(),
        },
    )?;
    let listener = net::listen(args.listen_addr, "--listen-addr", "webhook")?;
    let inbound = Inbound {
        verifier: Verifier::new(secret, args.allow_sha1_signatures),
        journal,
        dispatcher,
        registry,
        max_body_bytes: as_usize(args.max_body_bytes, "--max-body-bytes")?,
        max_held_bytes: as_usize(args.max_queued_bytes, "--max-queued-bytes")?,
        admin,
        metrics,
    };
    http_server::serve(listener, Arc::new(inbound), server, shutdown).await;
    Ok(())
}
