//! The kubernetes profile: a read cache in front of the managed
//! kube-apiserver that never shows a caller what the apiserver would not.
//!
//! For each GET of a resource (get, list) or a discovery path:
//! 1. the caller is authorized for exactly that request by the apiserver
//!    ([`authz`], a SelfSubjectAccessReview with the caller's own
//!    credentials, decisions reused briefly);
//! 2. only if allowed is anything cached served; the key ([`crate::read_cache::key`])
//!    covers the path, the whole normalized query and `Accept`, and is
//!    shared by every allowed caller, since the apiserver answers them all
//!    with the same bytes;
//! 3. a miss is fetched with the caller's own credentials and merged with
//!    concurrent identical misses.
//!
//! Everything else (denied or unauthenticated callers, watches, writes,
//! subresources, impersonation, anything [`attrs`] is unsure of) goes to the
//! apiserver untouched and streamed, so the caller gets the apiserver's own
//! answer. Writes then drop what they touched ([`freshness`]); watches
//! ([`watch`]) drop what others change.

mod attrs;
mod authz;
mod freshness;
mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prometheus::Registry;
use tokio::time::Instant;

use self::{
    attrs::{Attributes, attributes},
    authz::{Authorizer, Decision},
    freshness::Freshness,
    watch::{WatchedType, Watches, parse_watched},
};
use super::{
    Common,
    key::{CacheKey, KeySpec},
    metrics::CacheMetrics,
    served::Served,
    store::{CachedResponse, Freshness as EntryFreshness, Store},
};
use crate::{
    admin::Readiness,
    coalesce::Coalescer,
    http_server::{Body, BoxError, full, text},
    kube_client::KubeArgs,
    managed_kubeconfig::{Current, ManagedKubeconfigArgs},
    upstream::forward::{Destination, ForwardError, KubeconfigUpstream, Limits, Upstream},
};

/// Flags of the kubernetes profile.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kubernetes profile")]
pub struct KubernetesArgs {
    #[command(flatten)]
    pub managed: ManagedKubeconfigArgs,

    /// A resource type whose entries watches keep current, as kubectl
    /// names it: configmaps, deployments.apps. Watched with the managed
    /// kubeconfig's identity (it needs list and watch on the type); its
    /// entries live --watched-ttl while the watch is in sync. Repeat or
    /// separate with commas.
    #[arg(long = "watch-resource", env = "CLUSTER_RELAY_WATCH_RESOURCES", value_delimiter = ',', value_parser = parse_watched)]
    pub watch_resources: Vec<WatchedType>,

    /// How long an entry of a watched type is served while its watch is in
    /// sync (changes drop it sooner).
    #[arg(long, env = "CLUSTER_RELAY_WATCHED_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub watched_ttl: Duration,

    /// How long an authorization decision for one credential and request
    /// is reused. A revoked permission can be used from the cache for this
    /// long.
    #[arg(long, env = "CLUSTER_RELAY_AUTHZ_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub authz_cache_ttl: Duration,

    /// Most authorization decisions held at once.
    #[arg(
        long,
        env = "CLUSTER_RELAY_AUTHZ_CACHE_MAX_ENTRIES",
        default_value_t = 65_536
    )]
    pub authz_cache_max_entries: usize,
}

/// What a leader's fill hands to concurrent identical requests.
#[derive(Clone)]
enum Shared {
    /// A 200 response, whole.
    Whole(Arc<CachedResponse>),
    /// Something each caller must ask for itself (an error status, a body
    /// too large to hold).
    Own,
}

/// The kubernetes profile's cache.
pub struct KubeCache {
    current: Current,
    upstream: KubeconfigUpstream,
    authorizer: Authorizer,
    keys: KeySpec,
    store: Arc<Store>,
    freshness: Arc<Freshness>,
    fills: Coalescer<CacheKey, Shared>,
    max_object_bytes: usize,
    response_timeout: Duration,
    metrics: CacheMetrics,
}

/// Headers that make a request someone else's or not a plain read.
fn must_pass_through(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers
            .keys()
            .any(|name| name.as_str().starts_with("impersonate-"))
}

/// Response headers that belong to one exchange, not to the content.
const NOT_STORED: &[&str] = &["audit-id", "set-cookie", "date"];

impl KubeCache {
    /// Follows the managed kubeconfig and starts the watches.
    pub async fn start(
        args: &KubernetesArgs,
        kube: &KubeArgs,
        common: Common,
        readiness: &Readiness,
        registry: &Registry,
        metrics: CacheMetrics,
    ) -> anyhow::Result<Self> {
        if args.authz_cache_max_entries == 0 {
            anyhow::bail!("--authz-cache-max-entries must be at least 1");
        }
        let current = args.managed.follow(kube, readiness, registry).await?;
        let watched: Vec<String> = args.watch_resources.iter().map(WatchedType::key).collect();
        let freshness = Arc::new(Freshness::new(common.cache_ttl, args.watched_ttl, &watched));
        let timeout = common.connect_timeout + common.response_timeout;
        Watches {
            current: current.clone(),
            store: common.store.clone(),
            freshness: freshness.clone(),
            metrics: metrics.clone(),
            timeout,
            readiness: readiness.check("watches"),
        }
        .spawn(args.watch_resources.clone());
        Ok(Self {
            current,
            upstream: KubeconfigUpstream::new(Limits {
                connect_timeout: common.connect_timeout,
                response_timeout: common.response_timeout,
                max_body_bytes: None,
                pool: common.pool,
            }),
            authorizer: Authorizer::new(
                args.authz_cache_ttl,
                args.authz_cache_max_entries,
                timeout,
            ),
            keys: KeySpec::default(),
            store: common.store,
            freshness,
            fills: Coalescer::new(),
            max_object_bytes: common.max_object_bytes,
            response_timeout: common.response_timeout,
            metrics,
        })
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Response<Body>, Served) {
        let Some(kubeconfig) = self.current.borrow().clone() else {
            return (
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no managed kubeconfig yet\n",
                ),
                Served::Bypass,
            );
        };
        let upstream = match self.upstream.get(&kubeconfig) {
            Ok(upstream) => upstream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot use the managed kubeconfig");
                return (
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the managed kubeconfig is unusable\n",
                    ),
                    Served::Bypass,
                );
            }
        };
        let server = kubeconfig.server.to_string();
        let server = server.trim_end_matches('/');
        let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let Ok(uri) = format!("{server}{path_and_query}").parse::<Uri>() else {
            return (
                text(StatusCode::BAD_REQUEST, "bad request path\n"),
                Served::Bypass,
            );
        };
        let attrs = attributes(request.method(), request.uri());
        let cacheable = request.method() == Method::GET
            && !must_pass_through(request.headers())
            && match &attrs {
                Some(Attributes::Resource(r)) => {
                    matches!(r.verb, "get" | "list") && r.subresource.is_none()
                }
                Some(Attributes::NonResource { .. }) => true,
                None => false,
            };
        let Some(attrs) = attrs.filter(|_| cacheable) else {
            return (
                self.pass_write(&upstream, request, uri, peer).await,
                Served::Bypass,
            );
        };
        let credential = request.headers().get(header::AUTHORIZATION).cloned();
        match self
            .authorizer
            .decide(&upstream, server, credential.as_ref(), &attrs)
            .await
        {
            Ok(Decision::Allowed) => {}
            Ok(Decision::NotAllowed) => {
                return (pass(&upstream, request, uri, peer).await, Served::Bypass);
            }
            Err(err) => {
                tracing::warn!(%peer, error = %err, "no authorization decision; passing the request through");
                return (pass(&upstream, request, uri, peer).await, Served::Bypass);
            }
        }
        let type_key = match &attrs {
            Attributes::Resource(r) => Some(r.type_key()),
            Attributes::NonResource { .. } => None,
        };
        let key = self
            .keys
            .key(&Method::GET, server, request.uri(), request.headers(), b"");
        if let Some(entry) = self.store.get(&key)
            && entry.freshness.fresh_until > Instant::now()
        {
            return (from_entry(&entry), Served::FreshHit);
        }
        self.fill(&upstream, request, uri, peer, key, type_key)
            .await
    }

    /// A miss: fetch (once for all concurrent identical misses), store a
    /// whole 200 response, and answer.
    async fn fill(
        &self,
        upstream: &Upstream,
        request: Request<Incoming>,
        uri: Uri,
        peer: SocketAddr,
        key: CacheKey,
        type_key: Option<String>,
    ) -> (Response<Body>, Served) {
        let path = request.uri().path().to_owned();
        let mut request = Some(request);
        let mut own: Option<Response<Body>> = None;
        let fetched = self
            .fills
            .get_or_fetch(key.clone(), || {
                let request = request.take().expect("the leader's fetch runs once");
                let own = &mut own;
                let uri = uri.clone();
                async move {
                    let generation = type_key.as_deref().map(|t| self.freshness.generation(t));
                    let lifetime = self.freshness.lifetime(type_key.as_deref());
                    let to = Destination::from_uri(uri).ok_or(ForwardError::BadTarget)?;
                    let response = upstream.forward(request, to, peer, "http").await?;
                    if response.status() != StatusCode::OK {
                        *own = Some(response);
                        return Ok(Shared::Own);
                    }
                    let (parts, body) = response.into_parts();
                    match collect_up_to(body, self.max_object_bytes, self.response_timeout).await {
                        Collected::Whole(bytes) => {
                            let mut headers = parts.headers;
                            for name in NOT_STORED {
                                headers.remove(*name);
                            }
                            let entry = CachedResponse {
                                status: parts.status,
                                headers,
                                body: bytes,
                                stored_at: Instant::now(),
                                freshness: EntryFreshness {
                                    fresh_until: Instant::now() + lifetime,
                                    etag: None,
                                    last_modified: None,
                                },
                                path,
                            };
                            // Stored only if nothing changed the type while
                            // it was fetched: else it may hold old bytes.
                            let unchanged = match (&type_key, generation) {
                                (Some(t), Some(g)) => self.freshness.generation(t) == g,
                                _ => true,
                            };
                            if unchanged {
                                self.store.insert(key, entry.clone());
                            }
                            Ok(Shared::Whole(Arc::new(entry)))
                        }
                        Collected::TooLarge(prefix, rest) => {
                            *own = Some(Response::from_parts(parts, prefixed(prefix, rest)));
                            Ok(Shared::Own)
                        }
                        Collected::Failed(err) => Err(FillError::Body(err)),
                    }
                }
            })
            .await;
        match fetched {
            Ok((Shared::Whole(entry), role)) => (from_entry(&entry), Served::from(role)),
            Ok((Shared::Own, role)) => match (own.take(), request.take()) {
                (Some(response), _) => (response, Served::from(role)),
                // Another caller's answer that is not ours to share: ask
                // for ourselves.
                (None, Some(request)) => (pass(upstream, request, uri, peer).await, Served::Bypass),
                (None, None) => (text(StatusCode::BAD_GATEWAY, "bad gateway\n"), Served::Miss),
            },
            Err(FillError::Forward(err)) => {
                tracing::warn!(%peer, error = %err, "upstream request failed");
                (err.response(), Served::Miss)
            }
            Err(FillError::Body(err)) => {
                tracing::warn!(%peer, error = %err, "upstream body failed");
                (
                    text(
                        StatusCode::BAD_GATEWAY,
                        "bad gateway: the upstream response broke off\n",
                    ),
                    Served::Miss,
                )
            }
        }
    }

    /// Sends a request that is not cached, and drops what a write touched.
    async fn pass_write(
        &self,
        upstream: &Upstream,
        request: Request<Incoming>,
        uri: Uri,
        peer: SocketAddr,
    ) -> Response<Body> {
        let touched = match attributes(request.method(), request.uri()) {
            Some(Attributes::Resource(r))
                if matches!(
                    r.verb,
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                ) =>
            {
                Some(r)
            }
            _ => None,
        };
        let response = pass(upstream, request, uri, peer).await;
        if let Some(r) = touched {
            // A create's name is in the body, not the path: drop the
            // namespace's entries of the type.
            let name = if r.verb == "create" {
                None
            } else {
                r.name.as_deref()
            };
            let namespace = if r.resource == "namespaces" {
                name
            } else {
                r.namespace.as_deref()
            };
            let dropped = self
                .freshness
                .changed(&self.store, &r.type_key(), namespace, name);
            self.metrics.invalidated("write", dropped);
        }
        response
    }
}

/// Forwards a request as it is and streams the answer back.
async fn pass(
    upstream: &Upstream,
    request: Request<Incoming>,
    uri: Uri,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(to) = Destination::from_uri(uri) else {
        return ForwardError::BadTarget.response();
    };
    match upstream.forward(request, to, peer, "http").await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(%peer, error = %err, "upstream request failed");
            err.response()
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FillError {
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("{0}")]
    Body(String),
}

fn from_entry(entry: &CachedResponse) -> Response<Body> {
    let mut response = Response::new(full(entry.body.clone()));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response
}

enum Collected {
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to stream.
    TooLarge(Bytes, Body),
    Failed(String),
}

/// Reads a body whole if it fits in `limit` bytes within `timeout`.
async fn collect_up_to(mut body: Body, limit: usize, timeout: Duration) -> Collected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Collected::Failed("the body did not arrive in time".into()),
            Ok(None) => return Collected::Whole(buffer.freeze()),
            Ok(Some(Err(err))) => return Collected::Failed(err.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not cached; apiserver responses carry none.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        if buffer.len() > limit {
            return Collected::TooLarge(buffer.freeze(), body);
        }
    }
}

/// A body that yields `prefix` and then the rest of `rest`.
fn prefixed(prefix: Bytes, rest: Body) -> Body {
    let head = futures::stream::once(async move { Ok::<_, BoxError>(Frame::data(prefix)) });
    let tail = http_body_util::BodyStream::new(rest);
    BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(head, tail)))
}
