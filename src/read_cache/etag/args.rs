//! The ETag profile's flags, and the configuration errors they can cause.

use std::path::PathBuf;

use super::{client, upstream};

/// Flags of the ETag profile (`agent read-cache --profile etag`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Etag profile")]
pub struct EtagArgs {
    /// ETag profile: an upstream base URL requests may go to, such as
    /// https://api.github.com or https://ghe.example.com/api/v3. Repeat or
    /// separate with commas for an allow-list; nothing else is ever dialled.
    #[arg(
        long = "upstream",
        env = "CLUSTER_RELAY_UPSTREAMS",
        value_delimiter = ',',
        default_value = "https://api.github.com"
    )]
    pub upstreams: Vec<String>,

    /// ETag profile: a request header whose value (an --upstream URL)
    /// chooses the upstream per request; without it, the first --upstream.
    /// A value not on the allow-list is refused with 403. Required with
    /// more than one --upstream; removed before forwarding.
    #[arg(long, env = "CLUSTER_RELAY_UPSTREAM_HEADER")]
    pub upstream_header: Option<String>,

    /// ETag profile: CA bundle (PEM) trusted for https upstreams besides the
    /// system's trust anchors (SSL_CERT_FILE and SSL_CERT_DIR are
    /// honoured). The agent's image has none: there only these files are
    /// trusted, and without any anchor an https --upstream refuses to
    /// start. Repeat for several files.
    #[arg(
        long = "upstream-ca-file",
        env = "CLUSTER_RELAY_UPSTREAM_CA_FILES",
        value_delimiter = ','
    )]
    pub upstream_ca_files: Vec<PathBuf>,

    /// ETag profile: request headers that change an answer and so are part
    /// of the cache key, besides Accept and Accept-Encoding (the credential
    /// partitions the cache anyway). An answer whose Vary names a header
    /// outside the key is not stored.
    #[arg(
        long = "vary-header",
        env = "CLUSTER_RELAY_VARY_HEADERS",
        value_delimiter = ',',
        default_value = "X-GitHub-Api-Version,X-GitHub-OTP,X-Requested-With,Cookie"
    )]
    pub vary_headers: Vec<String>,
}

/// Why the profile cannot start: a flag names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("--upstream-header {0:?}: not a header name")]
    UpstreamHeader(String),
    #[error("--vary-header {0:?}: not a header name")]
    VaryHeader(String),
}
