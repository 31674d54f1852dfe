//! Where a target Service is: the port to dial and the addresses behind its
//! name `<name>.<namespace>.svc`. By cluster DNS (the default), by the
//! Service's Endpoints read through the API (for networks without cluster
//! DNS, or to skip kube-proxy), or by static `--resolve` entries. API lookups
//! are cached briefly and the cache is bounded.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::Api;

use super::target::{Port, Target};

/// How target names are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolution {
    /// `<name>.<namespace>.svc` through the resolver of the host or pod.
    Dns,
    /// The ready addresses of the Service's Endpoints, read through the API.
    Endpoints,
}

/// Parses `HOST=IP` for `--resolve`.
pub fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=IP, got {text:?}"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    Ok((host.to_ascii_lowercase(), ip))
}

/// Why a target could not be located.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("service {0} not found")]
    NoService(String),
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: String },
    #[error("service {0} has several ports; name one")]
    AmbiguousPort(String),
    #[error("service {0} has no ready endpoint")]
    NoEndpoints(String),
    #[error("a named or default port needs the Service; give a port number")]
    NeedsApi,
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("resolving {0}: {1}")]
    Dns(String, std::io::Error),
}

/// How Services (and Endpoints) read through the API are cached.
#[derive(Debug, Clone, Copy)]
pub struct LookupCache {
    /// How long a lookup is reused.
    pub ttl: Duration,
    /// Most Services held; past it, expired ones are dropped, then all.
    pub max_entries: usize,
}

struct Cached {
    at: Instant,
    service: Arc<Service>,
    endpoints: Option<Arc<Endpoints>>,
}

/// Looks targets up; cheap to clone.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<kube::Client>,
    mode: Resolution,
    statics: HashMap<String, IpAddr>,
    limits: LookupCache,
    cache: Mutex<HashMap<(String, String), Cached>>,
}

/// The host name of a target.
pub fn host(target: &Target) -> String {
    // Room for the `:port` the exit relay appends.
    let mut host = String::with_capacity(target.name.len() + target.namespace.len() + 11);
    for part in [&target.name, ".", &target.namespace, ".svc"] {
        host.push_str(part);
    }
    host
}

impl Directory {
    pub fn new(
        client: Option<kube::Client>,
        mode: Resolution,
        statics: HashMap<String, IpAddr>,
        limits: LookupCache,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                mode,
                statics,
                limits,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Names by DNS (or `statics`) only, with no API to read Services
    /// through: for upstreams that are not the cluster's Services.
    pub fn dns(statics: HashMap<String, IpAddr>) -> Self {
        // Without an API nothing is ever looked up, so nothing is cached.
        let nothing = LookupCache {
            ttl: Duration::ZERO,
            max_entries: 0,
        };
        Self::new(None, Resolution::Dns, statics, nothing)
    }

    /// The port to dial for `target`.
    pub async fn port(&self, target: &Target) -> Result<u16, LookupError> {
        let inner = &self.inner;
        if let Some(Port::Number(number)) = &target.port
            && (inner.mode == Resolution::Dns || inner.statics.contains_key(&host(target)))
        {
            return Ok(*number);
        }
        let cached = self.lookup(&target.namespace, &target.name).await?;
        let service_name = format!("{}/{}", target.namespace, target.name);
        let ports = cached
            .service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let port = match &target.port {
            Some(Port::Number(n)) => ports.iter().find(|p| p.port == i32::from(*n)),
            Some(Port::Name(name)) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str())),
            None if ports.len() == 1 => ports.first(),
            None => return Err(LookupError::AmbiguousPort(service_name)),
        }
        .ok_or_else(|| LookupError::NoPort {
            service: service_name.clone(),
            port: target
                .port
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        })?;
        if inner.mode == Resolution::Dns {
            return u16::try_from(port.port).map_err(|_| LookupError::NoPort {
                service: service_name,
                port: port.port.to_string(),
            });
        }
        // Endpoints list target ports under the Service port's name.
        let endpoint_port = cached
            .endpoints
            .as_ref()
            .and_then(|e| e.subsets.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|subset| subset.ports.iter().flatten())
            .find(|p| p.name == port.name || (port.name.is_none() && ports.len() == 1))
            .map(|p| p.port);
        endpoint_port
            .and_then(|p| u16::try_from(p).ok())
            .ok_or(LookupError::NoEndpoints(service_name))
    }

    /// The addresses behind a target host name.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let host = host.to_ascii_lowercase();
        if let Some(ip) = self.inner.statics.get(&host) {
            return Ok(vec![*ip]);
        }
        if self.inner.mode == Resolution::Endpoints
            && let Some((name, namespace)) =
                host.strip_suffix(".svc").and_then(|h| h.split_once('.'))
        {
            let cached = self.lookup(namespace, name).await?;
            let addresses: Vec<IpAddr> = cached
                .endpoints
                .as_ref()
                .and_then(|e| e.subsets.as_ref())
                .into_iter()
                .flatten()
                .flat_map(|subset| subset.addresses.iter().flatten())
                .filter_map(|address| address.ip.parse().ok())
                .collect();
            if addresses.is_empty() {
                return Err(LookupError::NoEndpoints(format!("{namespace}/{name}")));
            }
            return Ok(addresses);
        }
        let found = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|err| LookupError::Dns(host.clone(), err))?;
        Ok(found.map(|addr| addr.ip()).collect())
    }

    async fn lookup(&self, namespace: &str, name: &str) -> Result<Cached, LookupError> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(hit) = self.inner.cache.lock().expect("cache lock").get(&key)
            && hit.at.elapsed() < self.inner.limits.ttl
        {
            return Ok(Cached {
                at: hit.at,
                service: hit.service.clone(),
                endpoints: hit.endpoints.clone(),
            });
        }
        let client = self.inner.client.clone().ok_or(LookupError::NeedsApi)?;
        let what = format!("{namespace}/{name}");
        let service = Api::<Service>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| LookupError::Api {
                what: format!("service {what}"),
                source,
            })?
            .ok_or_else(|| LookupError::NoService(what.clone()))?;
        let endpoints = if self.inner.mode == Resolution::Endpoints {
            Api::<Endpoints>::namespaced(client, namespace)
                .get_opt(name)
                .await
                .map_err(|source| LookupError::Api {
                    what: format!("endpoints {what}"),
                    source,
                })?
                .map(Arc::new)
        } else {
            None
        };
        let fresh = Cached {
            at: Instant::now(),
            service: Arc::new(service),
            endpoints,
        };
        let mut cache = self.inner.cache.lock().expect("cache lock");
        let LookupCache { ttl, max_entries } = self.inner.limits;
        if cache.len() >= max_entries {
            cache.retain(|_, entry| entry.at.elapsed() < ttl);
            if cache.len() >= max_entries {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                at: fresh.at,
                service: fresh.service.clone(),
                endpoints: fresh.endpoints.clone(),
            },
        );
        Ok(fresh)
    }
}
