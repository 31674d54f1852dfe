//! The etag profile (GitHub's REST API and alike). Placeholder until the
//! profile lands: every request is refused with 501.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Common, served::Served};
use crate::http_server::{Body, text};

/// Flags of the etag profile.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Etag profile")]
pub struct EtagArgs {}

/// The etag profile's cache.
pub struct EtagCache {}

impl EtagCache {
    /// Validates the flags.
    pub fn new(_args: &EtagArgs, _common: Common) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        _request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> (Response<Body>, Served) {
        (
            text(
                StatusCode::NOT_IMPLEMENTED,
                "the etag profile is not built yet\n",
            ),
            Served::Bypass,
        )
    }
}
