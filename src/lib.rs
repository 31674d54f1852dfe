//! cluster-relay: one `agent` binary whose subcommands let a hosting
//! Kubernetes cluster do the relay work for a managed cluster (hosted mode).
//!
//! Module map:
//! - [`cli`]: the `Command` enum, one variant per subcommand, and dispatch.
//! - [`telemetry`]: `--log-level` / `--log-format` and the tracing setup.
//! - [`admin`]: the `/metrics`, `/healthz`, `/readyz` server and readiness checks.
//! - [`shutdown`]: first signal drains, second signal (or the grace deadline) aborts.
//! - [`kube_client`]: `--kubeconfig` / `--context` for the hosting cluster.
//! - [`leader`]: Lease-based leader election among replicas of a writer.
//! - [`net`]: listeners and the open-file limit.
//! - [`secret_watch`]: follows one named Secret through the API.
//! - [`managed_kubeconfig`]: follows the managed cluster's kubeconfig, held in a
//!   file or a Secret, and publishes its current state to the components.
//! - [`apiserver_relay`]: `agent apiserver-relay`, raw TCP to the managed
//!   kube-apiserver.
//! - [`coalesce`]: merges concurrent identical lookups into one.
//! - [`http_server`]: the HTTP server loop shared by the HTTP components.
//! - [`tls`]: the one place rustls is configured: `--tls-cert-file` /
//!   `--tls-key-file` for those servers, the upstream client configuration,
//!   and trust anchors (the system's plus CA files, one policy).
//! - [`flags`]: flag value parsers several subcommands share (byte counts,
//!   secrets from files).
//! - [`signature`]: the forge's webhook signatures (X-Hub-Signature-256).
//! - [`token_review`]: callers checked by TokenReview against an allow-list,
//!   with a bounded verdict cache.
//! - [`upstream`]: the layer below the HTTP features: service targets and
//!   header names, Service address lookup, and the one pooled upstream
//!   client with its typed errors. No feature imports another feature.
//! - [`service_relay`]: `agent service-relay`, HTTP to managed Services through
//!   the managed apiserver, with the caller's Authorization restored.
//! - [`provisioner`]: `agent provision-kubeconfig`, short-lived managed
//!   kubeconfigs from a given admin kubeconfig.
//! - [`read_cache`]: `agent read-cache`, a caching GET proxy safe across users.
//! - [`webhook_fanout`]: `agent webhook-fanout`, one signed webhook in, every
//!   backend out, from a durable queue.
//! - [`delivery_forwarder`]: `agent delivery-forwarder`, the forge's recorded
//!   webhook deliveries polled through its API and replayed to a private
//!   target.

pub mod admin;
pub mod apiserver_relay;
pub mod cli;
pub mod coalesce;
pub mod delivery_forwarder;
pub mod flags;
pub mod http_server;
pub mod kube_client;
pub mod leader;
pub mod managed_kubeconfig;
pub mod net;
pub mod provisioner;
pub mod read_cache;
pub mod secret_watch;
pub mod service_relay;
pub mod shutdown;
pub mod signature;
pub mod telemetry;
pub mod tls;
pub mod token_review;
pub mod upstream;
pub mod webhook_fanout;
