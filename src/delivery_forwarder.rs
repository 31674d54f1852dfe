//! `agent delivery-forwarder`: webhook-driven automation without a public
//! receiver. The forge records every delivery it attempts; this polls
//! those records through its API ([`github`]), with a GitHub App or a token
//! ([`auth`]), and replays each unseen delivery, oldest first, into the
//! private network with its event headers and a fresh signature
//! ([`forward`]). Each hook's cursor ([`cursor`]) is persisted and moves
//! only past deliveries that were forwarded or dead-lettered ([`poll`]); a
//! refused forward is retried by time, not by count ([`retry`]), and dead
//! letters wait for `--replay-dead-letters` ([`replay`]); every request
//! waits out the forge's rate limits ([`rate`]); which hooks and targets
//! comes from a rules file ([`config`]). With `--leader-elect`, of several
//! replicas only the holder of a Lease polls and forwards ([`leading`]).

pub mod auth;
pub mod config;
pub mod cursor;
pub mod forward;
pub mod github;
mod leading;
mod metrics;
pub mod poll;
mod rate;
pub mod replay;
pub mod retry;
mod setup;

use std::{path::PathBuf, time::Duration};

pub use self::leading::run;
use crate::{
    admin::AdminArgs, flags::parse_bytes, kube_client::KubeArgs, leader::LeaderArgs,
    shutdown::ShutdownArgs, upstream::PoolArgs,
};

/// The environment variable that may hold the API token itself.
pub const TOKEN_ENV: &str = "CLUSTER_RELAY_GITHUB_TOKEN";

/// The Lease the forwarder's replicas compete for, unless
/// --leader-election-lease-name names another.
pub const LEASE_NAME: &str = "cluster-relay-delivery-forwarder";

/// Flags of `agent delivery-forwarder`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("leader_election_lease_name", |arg| arg.default_value(LEASE_NAME)),
    mut_arg("leader_election_namespace", |arg| arg.long_help(
        "Namespace of that Lease (default: the --cursor-configmap's, else $POD_NAMESPACE)."
    ))
)]
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

    /// First pause before a delivery the target refused for now (no
    /// connection, no answer in time, 5xx, 408, 429) is sent again; it
    /// doubles per attempt, with jitter, up to --retry-max-backoff. Nothing
    /// behind it is sent meanwhile, so order is kept.
    #[arg(long, env = "CLUSTER_RELAY_RETRY_INITIAL_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_initial_backoff: Duration,

    /// Longest pause between attempts at one delivery.
    #[arg(long, env = "CLUSTER_RELAY_RETRY_MAX_BACKOFF", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retry_max_backoff: Duration,

    /// Dead-letter a delivery the target keeps refusing for now once it is
    /// this old, counted from when the forge recorded it (another 4xx is
    /// dead-lettered at once). The default leaves two of the three days
    /// github.com keeps deliveries (GitHub Enterprise Server: seven) for
    /// --replay-dead-letters, which fetches them from the forge again.
    #[arg(long, env = "CLUSTER_RELAY_RETRY_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retry_max_age: Duration,

    /// On first start, also forward deliveries this far back. Default:
    /// start at the newest delivery.
    #[arg(long, env = "CLUSTER_RELAY_BACKFILL", value_parser = humantime::parse_duration)]
    pub backfill: Option<Duration>,

    /// How long a forwarded GUID is remembered per hook, so a redelivery of
    /// it (the forge's redeliver, within its retention) is not forwarded
    /// again, nor replayed from a dead letter.
    #[arg(long, env = "CLUSTER_RELAY_DEDUP_WINDOW", default_value = "72h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Most GUIDs remembered per hook (about 55 bytes each in the cursor);
    /// past it the oldest are forgotten before --dedup-window ends (counted
    /// in cluster_relay_delivery_forwarder_dedup_evicted_total).
    #[arg(long, env = "CLUSTER_RELAY_DEDUP_MAX_ENTRIES", default_value_t = 2_000)]
    pub dedup_max_entries: usize,

    /// Dead letters kept per hook for --replay-dead-letters (about 250
    /// bytes each in the cursor). Past it the oldest is dropped for good,
    /// logged and counted (..._dead_letters_dropped_total).
    #[arg(long, env = "CLUSTER_RELAY_MAX_DEAD_LETTERS", default_value_t = 500)]
    pub max_dead_letters: usize,

    /// Instead of forwarding: send every hook's dead letters again, oldest
    /// first, once per GUID, removing each that lands, then exit (non-zero
    /// if some are left). Give it the forwarder's flags. With --leader-elect
    /// it takes the forwarders' Lease while it runs; without, stop the
    /// forwarder first: both would write the cursors.
    #[arg(long, env = "CLUSTER_RELAY_REPLAY_DEAD_LETTERS", value_parser = clap::builder::BoolishValueParser::new())]
    pub replay_dead_letters: bool,

    /// Removed: failed forwards are retried until --retry-max-age.
    #[arg(long, env = "CLUSTER_RELAY_MAX_ATTEMPTS", hide = true)]
    pub max_attempts: Option<String>,

    /// Removed: the dedup window is --dedup-window (a time span).
    #[arg(long, env = "CLUSTER_RELAY_DEDUP_SIZE", hide = true)]
    pub dedup_size: Option<String>,

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
    /// system's trust anchors (SSL_CERT_FILE and SSL_CERT_DIR are
    /// honoured). The agent's image has none: there only these files are
    /// trusted, and without them an https API or target is refused. Repeat
    /// for several.
    #[arg(
        long = "ca-file",
        env = "CLUSTER_RELAY_CA_FILES",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
