//! The forge-facing side: `POST /` and `POST /proxy` take a delivery (body
//! capped while it is read, signature checked before anything else,
//! journaled, then answered 202 at once); `GET /healthz`; and, only with
//! `--enable-dynamic-backends` and an authenticated caller, `GET/POST
//! /backends` and `DELETE /backends/NAME`.

use std::{net::SocketAddr, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    backends::{BackendSpec, Registry, RegistryError},
    dispatch::{Dispatcher, forwarded_headers},
    journal::{Accepted, Delivery, Journal, now_ms},
    metrics::FanoutMetrics,
    signature::Verifier,
};
use crate::{
    http_server::{Body, Handler, full, text},
    token_review::{Callers, Verdict},
};

/// The header naming a delivery (GitHub's; Gitea sends it too).
pub const DELIVERY_ID: &str = "x-github-delivery";

/// Who may change the backends at runtime.
pub struct AdminAuth {
    /// A static bearer token (from --admin-token-file).
    pub token: Option<SecretString>,
    /// Users a TokenReview must name (--admin-user).
    pub callers: Option<Callers>,
}

/// Serves the forge and the backend API.
pub struct Inbound {
    pub verifier: Verifier,
    pub journal: Journal,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub max_body_bytes: usize,
    pub max_held_bytes: usize,
    /// `None` unless --enable-dynamic-backends.
    pub admin: Option<AdminAuth>,
    pub metrics: FanoutMetrics,
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(serde_json::to_vec(value).expect("serializes")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

enum Read {
    Whole(Bytes),
    TooLarge,
    Broken,
}

/// Bytes per page of a body being read.
const PAGE: usize = 1 << 20;

/// Reads a body, stopping as soon as it passes `limit`. Frames are copied
/// into 1 MiB pages (a frame would otherwise pin the connection's larger
/// read buffer) and joined once at the end, so what is held while reading
/// stays within a page of what arrived.
async fn read_capped(mut body: Incoming, limit: usize) -> Read {
    let mut pages: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Read::Broken;
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Read::TooLarge;
        }
        while !data.is_empty() {
            if pages.last().is_none_or(|p| p.len() == p.capacity()) {
                pages.push(Vec::with_capacity(PAGE.min(limit)));
            }
            let page = pages.last_mut().expect("a page was just ensured");
            let take = (page.capacity() - page.len()).min(data.len());
            page.extend_from_slice(&data.split_to(take));
        }
    }
    if pages.len() == 1 {
        return Read::Whole(Bytes::from(pages.pop().expect("one page")));
    }
    let mut whole = BytesMut::with_capacity(total);
    for page in pages {
        whole.extend_from_slice(&page);
    }
    Read::Whole(whole.freeze())
}

impl Handler for Inbound {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::POST, "/" | "/proxy" | "/proxy/") => self.receive(request, peer).await,
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (_, "/" | "/proxy" | "/proxy/" | "/healthz") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            (_, p) if p == "/backends" || p.starts_with("/backends/") => match &self.admin {
                None => text(StatusCode::NOT_FOUND, "not found\n"),
                Some(admin) => self.backends(admin, request, peer).await,
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Inbound {
    async fn receive(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            self.metrics.inbound("too_large");
            return text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
        }
        let (parts, body) = request.into_parts();
        let body = match read_capped(body, self.max_body_bytes).await {
            Read::Whole(body) => body,
            Read::TooLarge => {
                self.metrics.inbound("too_large");
                return text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
            }
            Read::Broken => {
                self.metrics.inbound("bad_request");
                return text(StatusCode::BAD_REQUEST, "the body broke off\n");
            }
        };
        if let Err(err) = self.verifier.verify(&parts.headers, &body) {
            self.metrics.inbound("bad_signature");
            tracing::warn!(%peer, error = %err, "delivery refused");
            return text(StatusCode::UNAUTHORIZED, format!("{err}\n"));
        }
        let id = match parts.headers.get(DELIVERY_ID).map(|v| v.to_str()) {
            Some(Ok(id)) if !id.is_empty() && id.len() <= 128 => id.to_owned(),
            None => format!("generated-{:032x}", fastrand::u128(..)),
            Some(_) => {
                self.metrics.inbound("bad_request");
                return text(StatusCode::BAD_REQUEST, "unusable X-GitHub-Delivery\n");
            }
        };
        if self.dispatcher.held_bytes() + body.len() > self.max_held_bytes {
            self.metrics.inbound("queue_full");
            tracing::warn!(delivery = %id, "refused: --max-queued-bytes reached");
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue full; send again later\n",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return response;
        }
        let delivery = Arc::new(Delivery {
            id: id.clone(),
            headers: forwarded_headers(&parts.headers),
            body,
            received_ms: now_ms(),
        });
        let backends = self.registry.names();
        match self
            .journal
            .accept(delivery.clone(), backends.clone())
            .await
        {
            Ok(Accepted::New) => {
                self.metrics.inbound("accepted");
                tracing::debug!(delivery = %id, backends = backends.len(), "accepted");
                let count = backends.len();
                self.dispatcher.start(delivery, backends);
                json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"delivery": id, "backends": count}),
                )
            }
            Ok(Accepted::Duplicate) => {
                self.metrics.inbound("duplicate");
                json(
                    StatusCode::OK,
                    &serde_json::json!({"delivery": id, "duplicate": true}),
                )
            }
            Err(err) => {
                self.metrics.inbound("storage_error");
                tracing::error!(delivery = %id, error = %err, "cannot queue the delivery");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot queue; send again later\n",
                )
            }
        }
    }

    async fn authenticate(
        &self,
        admin: &AdminAuth,
        request: &Request<Incoming>,
    ) -> Result<(), Response<Body>> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(text(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required\n",
            ));
        };
        if let Some(expected) = &admin.token {
            // Digests compared, so the time taken says nothing of the token.
            let given = Sha256::digest(token.as_bytes());
            let wanted = Sha256::digest(expected.expose_secret().as_bytes());
            if given == wanted {
                return Ok(());
            }
        }
        match &admin.callers {
            Some(callers) => match callers.verify(token).await {
                Ok(Verdict::Allowed(_)) => Ok(()),
                Ok(Verdict::NotAllowed(user)) => {
                    tracing::warn!(%user, "backend API refused: not an --admin-user");
                    Err(text(StatusCode::FORBIDDEN, "forbidden\n"))
                }
                Ok(Verdict::Unauthenticated) => {
                    Err(text(StatusCode::UNAUTHORIZED, "invalid token\n"))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "TokenReview failed");
                    Err(text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot review the token\n",
                    ))
                }
            },
            None => Err(text(StatusCode::UNAUTHORIZED, "invalid token\n")),
        }
    }

    async fn backends(
        &self,
        admin: &AdminAuth,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        if let Err(refused) = self.authenticate(admin, &request).await {
            return refused;
        }
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match (method, path.strip_prefix("/backends")) {
            (Method::GET, Some("" | "/")) => json(
                StatusCode::OK,
                &serde_json::json!({"backends": self.registry.list()}),
            ),
            (Method::POST, Some("" | "/")) => {
                let body = match read_capped(request.into_body(), 64 * 1024).await {
                    Read::Whole(body) => body,
                    _ => return text(StatusCode::BAD_REQUEST, "a JSON body of at most 64 KiB\n"),
                };
                let spec: BackendSpec = match serde_json::from_slice(&body) {
                    Ok(spec) => spec,
                    Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
                };
                let backend = match self.registry.add_dynamic(spec) {
                    Ok(backend) => backend,
                    Err(err) => return registry_error(&err),
                };
                if let Err(err) = self
                    .journal
                    .put_backend(&backend.name, &backend.url.to_string())
                    .await
                {
                    let _ = self.registry.remove_dynamic(&backend.name);
                    tracing::error!(error = %err, "cannot persist a backend");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot persist the backend\n",
                    );
                }
                tracing::info!(%peer, backend = %backend.name, "backend registered");
                json(StatusCode::CREATED, &serde_json::json!(backend))
            }
            (Method::DELETE, Some(rest)) if rest.len() > 1 => {
                let Some(name) = percent_decode(&rest[1..]) else {
                    return text(StatusCode::BAD_REQUEST, "bad backend name\n");
                };
                if let Err(err) = self.registry.remove_dynamic(&name) {
                    return registry_error(&err);
                }
                if let Err(err) = self.journal.delete_backend(&name).await {
                    tracing::error!(error = %err, "cannot persist a backend removal");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot persist the removal\n",
                    );
                }
                tracing::info!(%peer, backend = %name, "backend removed");
                let mut response = Response::new(crate::http_server::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        }
    }
}

fn registry_error(err: &RegistryError) -> Response<Body> {
    let status = match err {
        RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::Exists(_) | RegistryError::Fixed(_) => StatusCode::CONFLICT,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
    };
    text(status, format!("{err}\n"))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(text.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
