//! Stand-ins for what `src/read_cache.rs` and `src/read_cache/served.rs`
//! provide on main (`Common`, `Served`), so this profile builds on its own
//! branch. On merge, delete this file and its `mod` line, and import the
//! real ones in `etag.rs` instead.

use std::{sync::Arc, time::Duration};

use crate::read_cache::store::Store;

/// What every profile gets from the common read-cache flags.
pub struct Common {
    pub store: Arc<Store>,
    pub max_object_bytes: usize,
    pub cache_ttl: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// How a response was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    FreshHit,
    RevalidatedHit,
    Miss,
    Coalesced,
    Bypass,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::FreshHit => "fresh_hit",
            Served::RevalidatedHit => "revalidated_hit",
            Served::Miss => "miss",
            Served::Coalesced => "coalesced",
            Served::Bypass => "bypass",
        }
    }
}
