//! The bench's backends: HTTP servers on loopback that note when each
//! delivery arrived (by its `X-GitHub-Delivery`), answering 200 at once, or,
//! for the hanging one, never.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One backend.
pub struct Sink {
    addr: std::net::SocketAddr,
    /// First arrival per delivery id, and how many arrived again.
    seen: Mutex<(HashMap<String, Instant>, usize)>,
}

impl Sink {
    /// Starts a backend; `hang`: take each request and never answer.
    pub async fn start(hang: bool) -> anyhow::Result<Arc<Sink>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sink = Arc::new(Sink {
            addr: listener.local_addr()?,
            seen: Mutex::default(),
        });
        let me = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let me = me.clone();
                        async move {
                            let id = request
                                .headers()
                                .get("x-github-delivery")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let _ = request.into_body().collect().await;
                            if hang {
                                std::future::pending::<()>().await;
                            }
                            me.arrived(id);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(sink)
    }

    fn arrived(&self, id: String) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.0.insert(id, now).is_some() {
            seen.1 += 1;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How many of `{tag}-0 … {tag}-{count-1}` arrived.
    fn count(&self, tag: &str, count: usize) -> usize {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (0..count)
            .filter(|i| seen.0.contains_key(&format!("{tag}-{i}")))
            .count()
    }

    /// When each of `{tag}-0 …` arrived, by index; fails if one is missing.
    pub fn arrivals(&self, tag: &str, count: usize) -> anyhow::Result<Vec<(usize, Instant)>> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (0..count)
            .map(|i| match seen.0.get(&format!("{tag}-{i}")) {
                Some(at) => Ok((i, *at)),
                None => bail!("{} never got {tag}-{i}", self.url()),
            })
            .collect()
    }

    /// Deliveries that arrived more than once.
    pub fn duplicates(&self) -> usize {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// Waits until every sink has all of `{tag}-0 …`; returns when.
pub async fn wait_all(
    sinks: &[Arc<Sink>],
    tag: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing: usize = sinks.iter().map(|s| count - s.count(tag, count)).sum();
        if missing == 0 {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{missing} copies of {tag}-* never arrived within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
