//! Webhook receivers for the fan-out tests: an HTTP server on loopback that
//! records every delivery (headers and body) and answers 200, or holds each
//! answer until the test releases it, or refuses what a rule says (the
//! refused ones are recorded apart).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::watch};

/// One delivery as a backend saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Decides a status for each delivery; 2xx takes it.
type Rule = Box<dyn Fn(&Received) -> u16 + Send>;

/// A recording receiver; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    refused: Arc<Mutex<Vec<Received>>>,
    rule: Arc<Mutex<Option<Rule>>>,
    /// Requests wait while this is false.
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// A receiver on a fresh port that answers at once.
    pub async fn start() -> Sink {
        Self::start_on(0, true).await
    }

    /// A receiver that records each delivery on arrival but answers only
    /// after [`Sink::release`].
    pub async fn start_held() -> Sink {
        Self::start_on(0, false).await
    }

    /// A receiver on `port` (0: any).
    pub async fn start_on(port: u16, open: bool) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the sink binds");
        let addr = listener.local_addr().expect("bound");
        let received = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Mutex<Option<Rule>>> = Arc::new(Mutex::new(None));
        let (open, gate) = watch::channel(open);
        let sink = received.clone();
        let (refusals, rules) = (refused.clone(), rule.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                let gate = gate.clone();
                let (refusals, rules) = (refusals.clone(), rules.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sink = sink.clone();
                        let mut gate = gate.clone();
                        let (refusals, rules) = (refusals.clone(), rules.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let got = Received {
                                headers: parts.headers,
                                body,
                            };
                            let status = rules
                                .lock()
                                .expect("sink lock")
                                .as_ref()
                                .map_or(200, |rule| rule(&got));
                            if !(200..300).contains(&status) {
                                refusals.lock().expect("sink lock").push(got);
                            } else {
                                sink.lock().expect("sink lock").push(got);
                                let _ = gate.wait_for(|open| *open).await;
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .expect("valid response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sink {
            addr,
            received,
            refused,
            rule,
            open,
            task,
        }
    }

    /// From now on answers each delivery with `rule`'s status; a non-2xx
    /// one is recorded in [`Sink::refused`], not [`Sink::received`].
    pub fn answer_with(&self, rule: impl Fn(&Received) -> u16 + Send + 'static) {
        *self.rule.lock().expect("sink lock") = Some(Box::new(rule));
    }

    /// Takes everything again.
    pub fn take_all(&self) {
        *self.rule.lock().expect("sink lock") = None;
    }

    /// Deliveries refused so far, as delivery ids in arrival order.
    pub fn refused(&self) -> Vec<String> {
        self.refused
            .lock()
            .expect("sink lock")
            .iter()
            .map(|r| r.header("x-github-delivery").to_owned())
            .collect()
    }

    /// The URL to give the fan-out.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Lets held answers (and all later ones) go.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("sink lock").clone()
    }

    /// Delivery ids received so far, in arrival order.
    pub fn ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.header("x-github-delivery").to_owned())
            .collect()
    }

    /// Waits until `id` has arrived.
    pub async fn wait_for_id(&self, id: &str, timeout: Duration) -> anyhow::Result<Received> {
        super::wait_for(
            &format!("delivery {id} at {}", self.addr),
            timeout,
            || async {
                self.received()
                    .into_iter()
                    .find(|r| r.header("x-github-delivery") == id)
                    .ok_or_else(|| anyhow::anyhow!("not yet"))
            },
        )
        .await
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
