//! `agent service-relay --role exit`, the process under test, in front of
//! the upstream; its peers and the upstream are nginx
//! ([`bench_support::servers`]).

use std::path::Path;

use bench_support::{
    procs::{self, Proc},
    servers::{self, START_TIMEOUT, Server},
};

/// The Service name the relay's requests name, resolved by `--resolve`.
pub const NAMESPACE: &str = "bench";
pub const SERVICE: &str = "upstream";

/// `agent service-relay --role exit` in front of the upstream (named
/// `upstream.bench.svc`, resolved to 127.0.0.1 by `--resolve`), reviewing
/// callers against the control plane of `kubeconfig`; ready (/readyz 200).
/// `worker_threads` is `--worker-threads`; `None` keeps the runtime's
/// default (one per core).
pub fn exit_relay(
    dir: &Path,
    tag: &str,
    kubeconfig: &Path,
    caller: &str,
    worker_threads: Option<usize>,
) -> anyhow::Result<Server> {
    let log = dir.join(format!("{tag}.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    if let Some(n) = worker_threads {
        command.args(["--worker-threads", &n.to_string()]);
    }
    command
        .args(["service-relay", "--role", "exit"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--allowed-caller", caller])
        .arg("--resolve")
        .arg(format!("{SERVICE}.{NAMESPACE}.svc=127.0.0.1"))
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        // info, for the lines naming the bound addresses; the relay logs
        // nothing at info per request.
        .args(["--log-format", "json", "--log-level", "info"]);
    command.env_remove("TOKIO_WORKER_THREADS");
    let mut proc = Proc::spawn(
        &format!("agent service-relay ({tag})"),
        command,
        None,
        Some(&log),
    )?;

    let (addr, admin) = procs::agent_addrs(&mut proc, &log, START_TIMEOUT)?;
    procs::wait_for("the relay's /readyz", START_TIMEOUT, || {
        proc.ensure_running()?;
        Ok(servers::get(admin, "/readyz", &[]).is_ok_and(|(status, _)| status == 200))
    })?;
    Ok(Server { addr, proc })
}
