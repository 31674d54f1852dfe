//! The command line: global flags, one `Command` variant per subcommand (its
//! doc comment is the subcommand's help text), and the dispatch to each
//! component's `run`.

use clap::{Parser, Subcommand};

use crate::{
    apiserver_relay, delivery_forwarder, provisioner, read_cache, service_relay,
    shutdown::Shutdown, telemetry::LogArgs, webhook_fanout,
};

/// Relays for hosted-mode Kubernetes add-ons: the hosting cluster does the
/// relay work for a managed cluster that runs no agent of its own.
///
/// Every flag can also be set through the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "agent", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    /// Threads of the async runtime. Default: one per CPU the runtime sees
    /// (or TOKIO_WORKER_THREADS). Match it to the pod's CPU limit: fewer
    /// threads hand work between each other less often. With 1, everything
    /// runs on one thread, the leanest for a pod of one CPU.
    #[arg(long, env = "CLUSTER_RELAY_WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size of its variants does not matter. The
// doc comments are the --help text, written for a terminal, not rustdoc.
#[allow(clippy::large_enum_variant, rustdoc::broken_intra_doc_links)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Raw TCP relay to the managed kube-apiserver.
    ///
    /// Clients speak TLS end to end with the managed kube-apiserver; the relay
    /// never terminates TLS. The target host:port is the `server` of the
    /// managed kubeconfig (a file or a Secret on the hosting cluster) and
    /// follows it when it changes: new connections go to the new target,
    /// established ones are left alone. Connections beyond
    /// --max-connections are closed at once and counted as rejected.
    ApiserverRelay(apiserver_relay::Args),

    /// Keep a short-lived managed kubeconfig Secret from a given admin one.
    ///
    /// Reads the given kubeconfig of the managed cluster from a Secret on the
    /// hosting cluster (--source-secret, watched through the API, never
    /// mounted), ensures a ServiceAccount and the RBAC the relays need on the
    /// managed cluster, and writes a kubeconfig for it with a token from the
    /// TokenRequest API to --target-secret. The token is replaced
    /// --refresh-before its expiry, when the source changes and when the
    /// target is missing, edited or rejected; a new token is verified against
    /// the managed apiserver before it is written. On failure the last good
    /// Secret stays, and the failure shows in metrics, logs, /readyz and the
    /// hub condition, retried with backoff. --cleanup removes it all.
    ProvisionKubeconfig(provisioner::Args),

    /// HTTP relay to Services of the managed cluster.
    ///
    /// --role entry (hosting cluster) serves kube-style paths
    /// /api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH and sends
    /// them through the managed apiserver's services/proxy to the exit relay,
    /// authenticated with the provisioned token (followed live); the
    /// caller's Authorization travels in Cluster-Proxy-Authorization.
    /// --role exit (managed cluster) accepts only --allowed-caller identities
    /// (TokenReview of Cluster-Proxy-Relay-Authorization; none configured
    /// means nobody), removes every Cluster-Proxy-* header, restores the
    /// caller's Authorization and forwards to the Service. Bodies stream both
    /// ways; WebSocket and other upgrades pass through.
    ServiceRelay(service_relay::Args),

    /// Caching reverse proxy for GET traffic, safe across users.
    ///
    /// --profile kubernetes stands in front of the managed kube-apiserver
    /// (the managed kubeconfig, as for apiserver-relay): every GET is first
    /// authorized for its caller by the apiserver (a SelfSubjectAccessReview
    /// with the caller's own token, reused --authz-cache-ttl), and only then
    /// served from the cache, which is shared by every allowed caller.
    /// Denied and unauthenticated callers, watches, writes and subresources
    /// go to the apiserver untouched; writes drop what they touch, and
    /// --watch-resource types are kept current by watches. --profile etag
    /// stands in front of ETag APIs such as GitHub's: entries per
    /// credential, fresh for --cache-ttl, then revalidated; the upstream's
    /// URLs in Link, Location and JSON bodies point back at the cache as
    /// the client reached it, so GitHub clients (PyGithub, Octokit,
    /// go-github) can use the cache as their base URL. Every response
    /// says how it was served in its cluster-relay-cache header (fresh_hit,
    /// revalidated_hit, miss, coalesced, bypass).
    ReadCache(read_cache::Args),

    /// One forge webhook in, every backend out, nothing lost.
    ///
    /// Takes POST / and POST /proxy, checks X-Hub-Signature-256 (HMAC-SHA256
    /// of the body with the secret from --secret-file or
    /// CLUSTER_RELAY_WEBHOOK_SECRET) before anything else, caps the body
    /// while reading it (--max-body-bytes), writes the delivery to an
    /// on-disk queue (--queue-dir) and answers 202 at once. Every backend
    /// (--backend, --backends-file) then gets it concurrently with its
    /// original headers; failed sends are retried with backoff and jitter,
    /// also after a restart, until --retry-max-age. The same
    /// X-GitHub-Delivery is fanned out once. With --enable-dynamic-backends,
    /// GET/POST /backends and DELETE /backends/NAME change the backends at
    /// runtime for callers with --admin-token-file's token or an
    /// --admin-user identity.
    WebhookFanout(webhook_fanout::Args),

    /// Forge webhook deliveries into a private network, no receiver exposed.
    ///
    /// Polls the webhook-delivery records the forge keeps (GitHub's
    /// hook-deliveries API of repositories and organizations; --api-url
    /// for GitHub Enterprise) as a GitHub App (--app-id,
    /// --app-private-key-file; installation tokens renewed
    /// --token-refresh-before expiry) or with a token (--token-file or
    /// CLUSTER_RELAY_GITHUB_TOKEN). Sources, hooks (by id, by config URL,
    /// or created) and targets come from --config. Every unseen delivery
    /// is POSTed to its target, oldest first, with its original
    /// X-GitHub-* and Content-Type headers and a fresh X-Hub-Signature-256
    /// (--secret-file or CLUSTER_RELAY_WEBHOOK_SECRET). Polls are
    /// conditional (ETag; a 304 costs no rate limit) and wait out
    /// X-RateLimit-Reset, Retry-After and secondary limits. Each hook's
    /// cursor (--cursor-configmap or --cursor-file) moves only past
    /// deliveries that were forwarded or dead-lettered; a GUID is
    /// forwarded once within --dedup-window. A delivery the target refuses
    /// for now (no connection, timeout, 5xx, 408, 429) is retried with
    /// backoff and jitter, nothing behind it overtaking it, until
    /// --retry-max-age after the forge recorded it; that, or another 4xx,
    /// dead-letters it, and --replay-dead-letters sends the dead letters
    /// again. A first start begins at the newest delivery, or --backfill
    /// back. With --leader-elect, of several replicas only the holder of
    /// a Lease forwards.
    DeliveryForwarder(delivery_forwarder::Args),
}

/// Runs a subcommand until it finishes or a shutdown signal ends it.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::ApiserverRelay(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            apiserver_relay::run(args, shutdown).await
        }
        Command::ServiceRelay(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            service_relay::run(args, shutdown).await
        }
        Command::ReadCache(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            read_cache::run(args, shutdown).await
        }
        Command::WebhookFanout(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            webhook_fanout::run(args, shutdown).await
        }
        Command::DeliveryForwarder(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            delivery_forwarder::run(args, shutdown).await
        }
        Command::ProvisionKubeconfig(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            provisioner::run(args, shutdown).await
        }
    }
}
