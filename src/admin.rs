//! The admin server every long-running subcommand serves on `--admin-addr`:
//! `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (every readiness check passes and no shutdown is under way).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// The admin server's flag, shared by every long-running subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Admin server")]
pub struct AdminArgs {
    /// Where to serve /metrics, /healthz and /readyz (plain HTTP).
    #[arg(long, env = "CLUSTER_RELAY_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
}

/// Named readiness checks; `/readyz` is 200 only when all of them pass.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, CheckState>>>,
}

#[derive(Debug, Clone)]
struct CheckState {
    ready: bool,
    detail: String,
}

/// One readiness check's handle, held by the part that knows the answer.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    readiness: Readiness,
}

impl Readiness {
    /// Registers a check, not ready until told otherwise.
    pub fn check(&self, name: &'static str) -> ReadinessCheck {
        let check = ReadinessCheck {
            name,
            readiness: self.clone(),
        };
        check.set(false, "starting".to_owned());
        check
    }

    /// Whether every check passes, and one line per check (`+` ready,
    /// `-` not) with its detail, in the style of the kube-apiserver's
    /// verbose `/readyz`.
    pub fn report(&self) -> (bool, String) {
        let checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let mut all = true;
        let mut text = String::new();
        for (name, state) in checks.iter() {
            all &= state.ready;
            let mark = if state.ready { '+' } else { '-' };
            text.push_str(&format!("[{mark}]{name}: {}\n", state.detail));
        }
        (all, text)
    }
}

impl ReadinessCheck {
    /// Marks the check as passing, with a short detail for `/readyz`.
    pub fn ready(&self, detail: impl Into<String>) {
        self.set(true, detail.into());
    }

    /// Marks the check as failing, saying why.
    pub fn not_ready(&self, detail: impl Into<String>) {
        self.set(false, detail.into());
    }

    fn set(&self, ready: bool, detail: String) {
        self.readiness
            .checks
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(self.name, CheckState { ready, detail });
    }
}

/// What the admin server shows.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub registry: Registry,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
}

/// The running admin server; stops when dropped.
pub struct AdminServer(tokio::task::JoinHandle<()>);

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `--admin-addr` (naming the flag on failure) and serves the admin
/// endpoints until the returned handle is dropped.
pub fn start(args: &AdminArgs, state: AdminState) -> anyhow::Result<AdminServer> {
    let listener = crate::net::listen(args.admin_addr, "--admin-addr", "admin")?;
    Ok(AdminServer(tokio::spawn(serve(listener, state))))
}

/// Serves the admin endpoints until the task is dropped. Accept errors are
/// logged and do not stop the server.
pub async fn serve(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let (ready, mut detail) = state.readiness.report();
            if state.shutdown.is_draining() {
                detail.push_str("[-]shutdown: draining\n");
            }
            let status = if ready && !state.shutdown.is_draining() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, detail)
        }
        "/metrics" => {
            let mut body = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&state.registry.gather(), &mut body) {
                Ok(()) => Response::builder()
                    .header(header::CONTENT_TYPE, encoder.format_type())
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid"),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Registers a metric on `registry`. Names are fixed in code, so a clash is
/// a programming error.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check() {
        let readiness = Readiness::default();
        let a = readiness.check("target");
        let b = readiness.check("watch");
        assert!(!readiness.report().0);
        a.ready("127.0.0.1:6443");
        assert!(!readiness.report().0);
        b.ready("synced");
        let (ready, detail) = readiness.report();
        assert!(ready);
        assert_eq!(detail, "[+]target: 127.0.0.1:6443\n[+]watch: synced\n");
        a.not_ready("kubeconfig gone");
        assert!(!readiness.report().0);
    }
}
