//! What the benchmarks (`benches/<name>/main.rs`) share:
//!
//! - [`procs`]: a bench's `main` (full or smoke run) and work directory,
//!   the processes it starts, killed however it ends, and what it reads
//!   about them from /proc;
//! - [`report`]: aligned tables and the few statistics the reports need;
//! - [`wrk`]: one wrk run, its figures read back as JSON;
//! - [`servers`]: nginx as an upstream, a reverse proxy or a cache, and a
//!   bounded GET to check what they serve;
//! - [`measure`]: the same wrk load round-robin over configurations;
//! - [`controlplane`]: a real etcd and kube-apiserver (`hack/controlplane.sh`);
//! - [`hook_forge`]: the forge's webhook-delivery API stand-in, which the
//!   delivery-forwarder tests (`tests/support`) use too.
//!
//! A crate of its own because a bench root cannot reach a sibling directory
//! without `#[path]`. The agent's binary is known only to the benches
//! themselves (`CARGO_BIN_EXE_agent`), so whatever runs it stays there.

pub mod controlplane;
pub mod hook_forge;
pub mod measure;
pub mod procs;
pub mod report;
pub mod servers;
pub mod wrk;
