//! `agent read-cache`: a caching reverse proxy for GET traffic in front of
//! the managed kube-apiserver or an ETag API (such as GitHub's REST API).
//!
//! So far only the engine's pure, in-memory parts exist, split the way
//! pingora-cache splits a cache:
//! - [`key`]: which requests may share a response ([`key::CacheKey`]).
//! - [`store`]: byte-bounded storage with LRU eviction.
//! - [`crate::coalesce`] (shared): the lock that merges concurrent identical
//!   misses.

pub mod etag;
pub mod key;
pub mod store;
