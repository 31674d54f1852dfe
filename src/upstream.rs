//! The upstream layer shared by the HTTP features (service relay, read
//! cache, webhook fan-out): kube-style service targets and the
//! `Cluster-Proxy-*` header names, finding a Service's addresses, the pooled
//! HTTP/1.1 client with its typed errors, and TokenReview'd callers. Features
//! use it; it uses no feature.

pub mod caller;
pub mod directory;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod target;
