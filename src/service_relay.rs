//! `agent service-relay`: HTTP relay to Services of the managed cluster.
//! `--role entry` (hosting cluster) takes kube-style service-proxy paths and
//! sends them through the managed apiserver's `services/proxy` to the exit
//! relay; `--role exit` (managed cluster) verifies the relay caller, restores
//! the caller's `Authorization` and forwards to the Service. Header names
//! match cluster-proxy's hosted-mode relay.

mod entry;
mod exit;
mod h1;
mod metrics;

/// The exit relay's own HTTP/1.1 path for the fuzz targets in `fuzz/`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use self::h1::fuzzing;

// The shared layers, under the names this module's parts use.
use crate::{
    token_review as caller,
    upstream::{directory, forward, headers, pool, target},
};

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::Registry;

pub use self::directory::Resolution;
use self::{
    caller::Callers,
    directory::{Directory, LookupCache, parse_resolve},
    entry::{Entry, ExitService, Mode},
    exit::Exit,
    forward::{KubeconfigUpstream, Limits, Upstream, UpstreamConfig},
    metrics::RelayMetrics,
};
use crate::{
    admin::{AdminArgs, AdminState, Readiness},
    http_server::{self, Body, Handler, ServeArgs},
    kube_client::KubeArgs,
    managed_kubeconfig::ManagedKubeconfigArgs,
    net,
    shutdown::{Shutdown, ShutdownArgs},
    tls::trust_roots,
    token_review::TokenReviewArgs,
    upstream::PoolArgs,
};

/// Which side of the relay this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// On the hosting cluster: clients come here.
    Entry,
    /// On the managed cluster: the apiserver's services/proxy comes here.
    Exit,
}

/// Flags of `agent service-relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// entry (hosting cluster) or exit (managed cluster).
    #[arg(long, env = "CLUSTER_RELAY_ROLE", value_enum)]
    pub role: Role,

    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LISTEN_ADDR",
        default_value = "0.0.0.0:7444"
    )]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub managed: ManagedKubeconfigArgs,

    /// Entry: namespace of the exit relay's Service on the managed cluster.
    #[arg(
        long,
        env = "CLUSTER_RELAY_EXIT_NAMESPACE",
        default_value = "cluster-relay"
    )]
    pub exit_namespace: String,

    /// Entry: name of the exit relay's Service.
    #[arg(
        long,
        env = "CLUSTER_RELAY_EXIT_SERVICE",
        default_value = "cluster-relay-service-relay"
    )]
    pub exit_service: String,

    /// Entry: port (number or name) of the exit relay's Service.
    #[arg(long, env = "CLUSTER_RELAY_EXIT_PORT", default_value = "7444")]
    pub exit_port: String,

    /// Entry: forward to the Services directly instead of through the
    /// managed apiserver, for a hosting cluster that can reach them; the
    /// client's Authorization is passed on as it is.
    #[arg(long, env = "CLUSTER_RELAY_DIRECT")]
    pub direct: bool,

    /// Exit: a user allowed to call the exit relay, as the managed
    /// apiserver's TokenReview names it (e.g.
    /// system:serviceaccount:cluster-relay:cluster-relay). Repeat or separate
    /// with commas. With none, every request is refused.
    #[arg(
        long = "allowed-caller",
        env = "CLUSTER_RELAY_ALLOWED_CALLERS",
        value_delimiter = ','
    )]
    pub allowed_callers: Vec<String>,

    #[command(flatten)]
    pub token_review: TokenReviewArgs,

    /// How target Services are found: dns (`<name>.<ns>.svc`) or endpoints
    /// (ready Endpoints addresses read through the API; exit role).
    #[arg(long, env = "CLUSTER_RELAY_RESOLUTION", value_enum, default_value_t = Resolution::Dns)]
    pub resolution: Resolution,

    /// A fixed address for a Service host, as HOST=IP (e.g.
    /// echo.default.svc=10.0.0.5). Repeat for several.
    #[arg(long = "resolve", env = "CLUSTER_RELAY_RESOLVE", value_delimiter = ',', value_parser = parse_resolve)]
    pub resolve: Vec<(String, std::net::IpAddr)>,

    /// Exit: how long a Service (and its Endpoints) read through the API,
    /// for --resolution endpoints or a named or default port, is reused.
    #[arg(long, env = "CLUSTER_RELAY_RESOLUTION_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub resolution_cache_ttl: Duration,

    /// Exit: most Services held in that cache; past it, expired lookups
    /// are dropped, and all of them if none has expired.
    #[arg(
        long,
        env = "CLUSTER_RELAY_RESOLUTION_CACHE_MAX_ENTRIES",
        default_value_t = 1024
    )]
    pub resolution_cache_max_entries: usize,

    /// CA bundle (PEM) that https target Services are verified with,
    /// besides the system's trust anchors (SSL_CERT_FILE and SSL_CERT_DIR
    /// are honoured). The agent's image has none: there only these files
    /// are trusted, and without them https targets are refused. Repeat for
    /// several files.
    #[arg(
        long = "upstream-ca-file",
        env = "CLUSTER_RELAY_UPSTREAM_CA_FILES",
        value_delimiter = ','
    )]
    pub upstream_ca_files: Vec<PathBuf>,

    /// Give up connecting upstream after this long.
    #[arg(long, env = "CLUSTER_RELAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Give up on an upstream that has not begun its response this long
    /// after the request body went out (a long upload is not cut off);
    /// response bodies then stream for as long as they last.
    #[arg(long, env = "CLUSTER_RELAY_RESPONSE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,

    /// Largest request body relayed, in bytes; 0 for no limit. Bodies are
    /// streamed either way, never held whole.
    #[arg(
        long,
        env = "CLUSTER_RELAY_MAX_REQUEST_BODY_BYTES",
        default_value_t = 0
    )]
    pub max_request_body_bytes: u64,

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

// One per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Relay {
    Entry(Entry),
    Exit(Exit),
}

struct Served {
    relay: Relay,
    metrics: RelayMetrics,
}

impl Handler for Served {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = std::time::Instant::now();
        let (role, response) = match &self.relay {
            Relay::Entry(entry) => ("entry", entry.handle(request, peer).await),
            Relay::Exit(exit) => ("exit", exit.handle(request, peer).await),
        };
        self.metrics
            .answered(role, response.status(), started.elapsed().as_secs_f64());
        response
    }

    async fn serve_connection(
        self: std::sync::Arc<Self>,
        connection: http_server::Connection<Self>,
    ) {
        match &self.relay {
            Relay::Exit(exit) => h1::serve(exit, connection).await,
            Relay::Entry(_) => connection.hand_over(Vec::new()).await,
        }
    }
}

/// Runs the relay until shutdown.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    // Checked before anything is bound or started.
    let server = args.serve.config()?;
    let roots = trust_roots(&args.upstream_ca_files, "--upstream-ca-file")?;
    let statics: HashMap<_, _> = args.resolve.iter().cloned().collect();
    let limits = Limits {
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        max_body_bytes: (args.max_request_body_bytes > 0).then_some(args.max_request_body_bytes),
        pool: args.pool.limits()?,
    };
    let registry = Registry::new();
    let readiness = Readiness::default();
    let metrics = RelayMetrics::new(&registry);
    let relay = match args.role {
        Role::Entry if args.direct => {
            if args.resolution == Resolution::Endpoints {
                anyhow::bail!(
                    "--direct resolves Services by DNS or --resolve; --resolution endpoints is for the exit role"
                );
            }
            let directory = Directory::dns(statics);
            let upstream = Upstream::new(UpstreamConfig {
                roots,
                server_name: None,
                directory: directory.clone(),
                limits,
            })?;
            readiness.check("relay").ready("direct mode");
            Relay::Entry(Entry {
                mode: Mode::Direct {
                    directory,
                    upstream,
                },
                metrics: metrics.clone(),
            })
        }
        Role::Entry => {
            let current = args
                .managed
                .follow(&args.kube, &readiness, &registry)
                .await?;
            Relay::Entry(Entry {
                mode: Mode::Relayed {
                    current,
                    exit: ExitService {
                        namespace: args.exit_namespace.clone(),
                        name: args.exit_service.clone(),
                        port: args.exit_port.clone(),
                        scheme: "http".into(),
                    },
                    upstream: KubeconfigUpstream::new(limits),
                },
                metrics: metrics.clone(),
            })
        }
        Role::Exit => {
            let client = args.kube.client().await?;
            let callers = Callers::new(
                client.clone(),
                args.allowed_callers.clone(),
                args.token_review,
                args.connect_timeout + args.response_timeout,
            );
            let check = readiness.check("allowed-callers");
            if callers.any_allowed() {
                check.ready(format!("{} allowed caller(s)", args.allowed_callers.len()));
            } else {
                tracing::warn!("no --allowed-caller configured: every request will be refused");
                check.not_ready("no --allowed-caller configured: refusing every request");
            }
            let directory = Directory::new(
                Some(client),
                args.resolution,
                statics,
                LookupCache {
                    ttl: args.resolution_cache_ttl,
                    max_entries: args.resolution_cache_max_entries,
                },
            );
            let upstream = Upstream::new(UpstreamConfig {
                roots,
                server_name: None,
                directory: directory.clone(),
                limits,
            })?;
            Relay::Exit(Exit {
                callers,
                directory,
                h1: h1::Upstream::new(upstream.connector().clone(), limits),
                upstream,
                metrics: metrics.clone(),
            })
        }
    };

    let _admin = crate::admin::start(
        &args.admin,
        AdminState {
            registry,
            readiness,
            shutdown: shutdown.clone(),
        },
    )?;
    let listener = net::listen(args.listen_addr, "--listen-addr", "relay")?;
    http_server::serve(
        listener,
        std::sync::Arc::new(Served { relay, metrics }),
        server,
        shutdown,
    )
    .await;
    Ok(())
}
