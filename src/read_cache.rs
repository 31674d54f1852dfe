//! `agent read-cache`: a caching reverse proxy for GET traffic in front of
//! the managed kube-apiserver (`--profile kubernetes`) or an ETag API such as
//! GitHub's REST API (`--profile etag`).
//!
//! The engine is split the way pingora-cache splits a cache:
//! - [`key`]: which requests may share a response ([`key::CacheKey`]).
//! - [`store`]: byte-bounded storage with LRU eviction.
//! - [`crate::coalesce`] (shared): the lock that merges concurrent identical
//!   misses.
//! - [`served`]: how a response was served, in a header and in metrics.
//!
//! Each profile owns its freshness policy and its idea of who may see what:
//! [`kubernetes`] authorizes every request with the apiserver before serving
//! anything cached; [`etag`] partitions by credential and revalidates.

pub mod etag;
pub mod key;
pub mod kubernetes;
mod metrics;
pub mod served;
pub mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::Registry;

use self::{
    etag::{EtagArgs, EtagCache},
    kubernetes::{KubeCache, KubernetesArgs},
    metrics::CacheMetrics,
    served::{CACHE_STATUS, Served},
    store::Store,
};
use crate::{
    admin::{AdminArgs, AdminState, Readiness},
    flags::{as_usize, parse_bytes},
    http_server::{self, Body, Handler, ServeArgs},
    kube_client::KubeArgs,
    net,
    shutdown::{Shutdown, ShutdownArgs},
    upstream::{PoolArgs, pool::PoolLimits},
};

/// Which upstream the cache stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The managed kube-apiserver: every request authorized for its caller.
    Kubernetes,
    /// An ETag API such as GitHub's: partitioned by credential, revalidated.
    Etag,
}

impl Profile {
    fn as_str(self) -> &'static str {
        match self {
            Profile::Kubernetes => "kubernetes",
            Profile::Etag => "etag",
        }
    }
}

/// Flags of `agent read-cache`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// kubernetes (in front of the managed kube-apiserver) or etag (GitHub's
    /// REST API and alike).
    #[arg(long, env = "CLUSTER_RELAY_PROFILE", value_enum)]
    pub profile: Profile,

    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LISTEN_ADDR",
        default_value = "0.0.0.0:7445"
    )]
    pub listen_addr: SocketAddr,

    /// Most bytes the cache holds (bodies, headers and a small overhead per
    /// entry); least recently used entries are evicted beyond it. Plain bytes
    /// or with a suffix: 64Mi, 1Gi, 500M.
    #[arg(long, env = "CLUSTER_RELAY_MAX_BYTES", default_value = "256Mi", value_parser = parse_bytes)]
    pub max_bytes: u64,

    /// Largest single response stored; larger ones stream through uncached.
    #[arg(long, env = "CLUSTER_RELAY_MAX_OBJECT_BYTES", default_value = "32Mi", value_parser = parse_bytes)]
    pub max_object_bytes: u64,

    /// How long a response is served without asking the upstream: for the
    /// etag profile, then revalidated; for the kubernetes profile, for
    /// resource types that no --watch-resource keeps current.
    #[arg(long, env = "CLUSTER_RELAY_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// Give up connecting upstream after this long.
    #[arg(long, env = "CLUSTER_RELAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Give up waiting for an upstream's response head after this long; a
    /// body being stored must also arrive within it.
    #[arg(long, env = "CLUSTER_RELAY_RESPONSE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub kubernetes: KubernetesArgs,

    #[command(flatten)]
    pub etag: EtagArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// What both profiles get from the shared flags.
pub struct Common {
    pub store: Arc<Store>,
    /// Largest response body stored.
    pub max_object_bytes: usize,
    pub cache_ttl: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The upstream pool's bounds.
    pub pool: PoolLimits,
}

// One per process, built once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Cache {
    Kubernetes(KubeCache),
    Etag(EtagCache),
}

struct CacheServer {
    cache: Cache,
    metrics: CacheMetrics,
}

impl Handler for CacheServer {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        let (mut response, served): (Response<Body>, Served) = match &self.cache {
            Cache::Kubernetes(cache) => cache.handle(request, peer).await,
            Cache::Etag(cache) => cache.handle(request, peer).await,
        };
        response
            .headers_mut()
            .insert(CACHE_STATUS, served.header_value());
        self.metrics.answered(
            &method,
            response.status(),
            served,
            started.elapsed().as_secs_f64(),
        );
        response
    }
}

/// Runs the cache until shutdown.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    // Checked before anything is bound or started.
    let server = args.serve.config()?;
    if args.max_bytes == 0 {
        anyhow::bail!("--max-bytes must be above 0");
    }
    if args.max_object_bytes > args.max_bytes {
        anyhow::bail!("--max-object-bytes cannot exceed --max-bytes");
    }
    let store = Arc::new(Store::new(as_usize(args.max_bytes, "--max-bytes")?));
    let common = Common {
        store: store.clone(),
        max_object_bytes: as_usize(args.max_object_bytes, "--max-object-bytes")?,
        cache_ttl: args.cache_ttl,
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        pool: args.pool.limits()?,
    };
    let registry = Registry::new();
    let readiness = Readiness::default();
    let metrics = CacheMetrics::new(&registry, args.profile.as_str(), store);
    let cache = match args.profile {
        Profile::Kubernetes => Cache::Kubernetes(
            KubeCache::start(
                &args.kubernetes,
                &args.kube,
                common,
                &readiness,
                &registry,
                metrics.clone(),
            )
            .await?,
        ),
        Profile::Etag => {
            readiness.check("upstreams").ready("allow-list configured");
            Cache::Etag(EtagCache::new(&args.etag, common)?)
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
    let listener = net::listen(args.listen_addr, "--listen-addr", "cache")?;
    http_server::serve(
        listener,
        Arc::new(CacheServer { cache, metrics }),
        server,
        shutdown,
    )
    .await;
    Ok(())
}
