//! Support for the integration tests (each test file does `mod support;`):
//! real control planes (etcd + kube-apiserver of the current release, or
//! 1.20.2 with `make test-oldest`, see
//! /work/shared/SUBSTRATE.md and `hack/controlplane.sh`), "pods" that a real
//! apiserver proxies to (`hack/netns-pod.sh`), and bounded waits.
//!
//! - [`ControlPlane`] / [`shared`]: `controlplane.rs`
//! - [`Cluster`] / [`shared_cluster`]: a whole cluster with a real node
//!   (`hack/cluster.sh`: controller-manager, scheduler, containerd, kubelet,
//!   kube-proxy), `cluster.rs`
//! - [`NetnsPod`]: `netns_pod.rs`, its Kubernetes objects in `pod_objects.rs`,
//!   the pod-to-host relay in `forward.rs`
//! - [`EchoPod`], [`EchoServer`], [`WsClient`]: the echo upstream (`echo.py`)
//!   in a pod or on loopback, `echo.rs`
//! - [`forge::Forge`]: a stand-in for GitHub's REST API, `forge.rs` and `forge/`
//! - [`TlsFiles`]: a CA and a server certificate from openssl, `tls.rs`
//! - [`wait_until`] and friends: `wait.rs`
//! - [`agent`]: the `agent` binary run as a process
//! - [`hook_sink`]: recording webhook receivers
//! - [`hook_forge`]: a stand-in for the forge's webhook-delivery API (in
//!   `benches/support`, as the delivery-forwarder bench runs against it too);
//!   [`forwarder`]: `agent delivery-forwarder` run against it
//! - [`http_client`]: whole HTTP answers from components and apiservers
//! - [`scripted_upstream`]: an HTTP/1.1 upstream that records every request
//!   and answers as a test scripts; [`exit_wire`]: the exit relay driven
//!   through it with raw bytes
//! - [`hosted`]: the hosted topology on clusters with a real node, as both
//!   e2es drive it: the echo Service, clients in the hosting cluster's
//!   network, the checks through the relays
//! - [`chart`]: the Helm chart rendered and linted (`hack/chart.py`), its
//!   objects applied, its containers' flags checked against the binary
//! - child processes, network namespaces and the per-run directory, cleaned
//!   up however the test binary ends: `procs.rs`
//!
//! Run these tests with `cargo test`, not nextest: a test binary shares its
//! control planes between its tests, within one process. They need root
//! (network namespaces) and the tools `hack/install-deps.sh` installs.

// Each test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod chart;
mod cluster;
mod controlplane;
pub mod echo;
pub mod exit_wire;
pub mod forge;
mod forward;
pub mod forwarder;
pub use bench_support::hook_forge;
pub mod hook_sink;
pub mod hosted;
pub mod http_client;
mod netns_pod;
mod pod_objects;
mod procs;
pub mod scripted_upstream;
pub mod tls;
mod wait;

pub use cluster::{Cluster, shared_cluster};
pub use controlplane::{ControlPlane, shared};
pub use echo::{EchoPod, EchoServer, WsClient};
pub use netns_pod::{NetnsPod, host_network_state, pod_network_ports};
pub use procs::{kill, repo_path, run_dir, spawn};
pub use tls::TlsFiles;
pub use wait::{wait_for, wait_for_sync, wait_until, wait_until_sync};
