//! Idle connections: the relay's resident memory while it holds as many idle
//! relayed connections as the open-file limit allows (10,000 is the target;
//! the relay spends two descriptors on each), and haproxy's for the same
//! count.
//!
//! The bench process holds the client ends. The upstream ends live in a
//! second process, the bench binary started again with [`HOLD_SERVER_ARG`],
//! since one process cannot hold both ends of 10,000 connections under a
//! 20,000 limit. Before memory is read, the connections are shown to be
//! established end to end: the relay's active gauge, its descriptors and
//! the hold server's count all match.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{ChildStdin, ChildStdout, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use bench_support::{
    procs::{self, Proc},
    report::{self, Table},
};
use tokio::io::AsyncReadExt as _;

use crate::{
    Cpus,
    peers::{self, Proxy, Tools},
};

/// The hidden first argument that turns the bench binary into the hold
/// server.
pub const HOLD_SERVER_ARG: &str = "--hold-server";
/// Descriptors the relay sets aside beyond two per connection when it sizes
/// its limit (src/apiserver_relay.rs); a larger --max-connections only
/// makes it warn.
const RELAY_RESERVE: u64 = 256;
/// Descriptors left free in the proxy for the metrics scrapes and slack.
const SPARE_FDS: u64 = 16;
/// Connections opened before waiting for them to arrive upstream, well
/// under the listen backlogs (4096), so no SYN is dropped and retried.
const BATCH: usize = 500;
const SETTLE: Duration = Duration::from_secs(20);

pub struct Params {
    pub target: usize,
}

/// Memory of one proxy holding `count` idle connections.
pub struct Measured {
    pub count: usize,
    pub before_kib: u64,
    pub holding_kib: u64,
    pub after_close_kib: u64,
}

impl Measured {
    pub fn per_connection_kib(&self) -> f64 {
        self.holding_kib.saturating_sub(self.before_kib) as f64 / self.count as f64
    }

    /// Linear projection of the resident memory holding `n` connections.
    pub fn projected_kib(&self, n: usize) -> f64 {
        self.before_kib as f64 + self.per_connection_kib() * n as f64
    }
}

pub struct Outcome {
    pub relay: Measured,
    /// Absent when haproxy is not installed, an error when it could not be
    /// measured.
    pub haproxy: Option<Result<Measured, String>>,
}

pub fn run(
    dir: &Path,
    tools: &Tools,
    params: &Params,
    cpus: &Cpus,
    fd_limit: u64,
) -> anyhow::Result<Outcome> {
    let mut hold = HoldServer::start(dir)?;
    let max_connections =
        (params.target as u64).min(fd_limit.saturating_sub(RELAY_RESERVE) / 2) as usize;
    let relay = peers::relay(dir, "idle", hold.addr, max_connections, cpus.proxy())?;
    let base_fds = procs::open_fds(relay.proc.pid())? as u64;
    let fits = (fd_limit.saturating_sub(base_fds + SPARE_FDS) / 2) as usize;
    let mut count = max_connections.min(fits);
    if count >= 1000 {
        count -= count % 100;
    }
    println!(
        "  fd limit (hard) {fd_limit}; the relay has {base_fds} fds open at start, so descriptors \
         leave room for {} connections, and its own sizing (2 per connection + {RELAY_RESERVE}) \
         for {} (its --max-connections here) → {} used, rounded down to a hundred",
        report::count(fits),
        report::count(max_connections),
        report::count(count),
    );

    let relay_measured = measure(&relay, &mut hold, count, || {
        relay
            .metric("cluster_relay_apiserver_relay_connections_active")
            .map(Some)
    })?;
    println!(
        "  relay: connections_total {}, rejected {}, accept errors {}",
        relay.metric("cluster_relay_apiserver_relay_connections_total")?,
        relay.metric("cluster_relay_apiserver_relay_connections_rejected_total")?,
        relay.metric("cluster_relay_apiserver_relay_accept_errors_total")?,
    );
    drop(relay);

    let haproxy = tools.haproxy.as_deref().map(|binary| {
        let proxy = peers::haproxy(dir, "idle", binary, hold.addr, count, cpus.proxy())
            .map_err(|err| format!("{err:#}"))?;
        let base = procs::open_fds(proxy.proc.pid()).map_err(|err| err.to_string())? as u64;
        if base + SPARE_FDS + 2 * count as u64 > fd_limit {
            return Err(format!(
                "does not fit: {base} fds at start + 2 × {count} > {fd_limit}"
            ));
        }
        measure(&proxy, &mut hold, count, || Ok(None)).map_err(|err| format!("{err:#}"))
    });

    let mut table = Table::new(&[
        "config",
        "connections",
        "RSS before",
        "RSS holding",
        "per connection",
        "RSS after close",
        "projection to 10,000",
    ]);
    let rows = std::iter::once(("relay", Some(Ok(&relay_measured)))).chain(std::iter::once((
        "haproxy",
        haproxy.as_ref().map(|h| h.as_ref()),
    )));
    for (name, measured) in rows {
        match measured {
            Some(Ok(m)) => table.row(vec![
                name.to_owned(),
                report::count(m.count),
                report::mib(m.before_kib as f64),
                report::mib(m.holding_kib as f64),
                format!("{:.2} KiB", m.per_connection_kib()),
                report::mib(m.after_close_kib as f64),
                format!("{} (projection)", report::mib(m.projected_kib(10_000))),
            ]),
            Some(Err(err)) => println!("  ! {name}: {err}"),
            None => println!("  {name}: not installed; skipped"),
        }
    }
    table.print();
    println!("  socat: not measured; it forks one process per connection ({count} processes)");
    Ok(Outcome {
        relay: relay_measured,
        haproxy,
    })
}

/// Opens `count` idle connections through `proxy`, checks they are held end
/// to end (by the hold server, by the proxy's own count where it keeps one,
/// and by two descriptors each in the proxy), reads the proxy's memory, then
/// closes them and waits until both ends have let go.
fn measure(
    proxy: &Proxy,
    hold: &mut HoldServer,
    count: usize,
    proxy_count: impl Fn() -> anyhow::Result<Option<f64>>,
) -> anyhow::Result<Measured> {
    let pid = proxy.proc.pid();
    let before_kib = procs::rss_kib(pid)?;
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        for _ in 0..BATCH.min(count - clients.len()) {
            let client = TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(5))
                .with_context(|| format!("connection {} to {}", clients.len() + 1, proxy.name))?;
            clients.push(client);
        }
        let opened = clients.len();
        procs::wait_for(
            &format!("{opened} connections at the hold server"),
            SETTLE,
            || Ok(hold.counts()?.0 >= opened),
        )?;
    }
    let mut seen = String::new();
    procs::wait_for(
        &format!("{count} connections held end to end via {}", proxy.name),
        SETTLE,
        || {
            let (held, _) = hold.counts()?;
            let own = proxy_count()?;
            let fds = procs::open_fds(pid)?;
            let own_count = match own {
                Some(own) => format!("the proxy reports {own} active; "),
                None => String::new(),
            };
            seen = format!("hold server holds {held}; {own_count}{fds} fds open in the proxy");
            Ok(held == count && own.is_none_or(|own| own == count as f64) && fds >= 2 * count)
        },
    )
    .with_context(|| format!("last seen: {seen}"))?;
    let holding_kib = procs::rss_kib(pid)?;
    println!(
        "  {}: {} connections established end to end ({seen})",
        proxy.name,
        report::count(count),
    );
    drop(clients);
    procs::wait_for(
        &format!("{} to close every connection", proxy.name),
        SETTLE,
        || Ok(hold.counts()?.0 == 0 && proxy_count()?.is_none_or(|own| own == 0.0)),
    )?;
    Ok(Measured {
        count,
        before_kib,
        holding_kib,
        after_close_kib: procs::rss_kib(pid)?,
    })
}

/// The bench binary as the hold server, and the pipe to ask it how many
/// connections it holds.
struct HoldServer {
    // Declared first so the pipes close before the kill: either ends it.
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    _proc: Proc,
}

impl HoldServer {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut command = procs::command(std::env::current_exe()?);
        command
            .arg(HOLD_SERVER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("hold-server.log"))?);
        let mut proc = Proc::spawn("hold server", command, None, None)?;
        let (stdin, stdout) = proc.take_pipes();
        let (stdin, mut stdout) = (
            stdin.context("hold server stdin")?,
            BufReader::new(stdout.context("hold server stdout")?),
        );
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|port| port.trim().parse().ok())
            .with_context(|| format!("hold server said {line:?}, not its port"))?;
        Ok(Self {
            stdin,
            stdout,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            _proc: proc,
        })
    }

    /// Connections held now, and accepted in all.
    fn counts(&mut self) -> anyhow::Result<(usize, usize)> {
        writeln!(self.stdin, "count")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("hold server exited");
        }
        let mut numbers = line.split_whitespace().map(str::parse::<usize>);
        match (numbers.next(), numbers.next()) {
            (Some(Ok(held)), Some(Ok(accepted))) => Ok((held, accepted)),
            _ => bail!("hold server said {line:?}"),
        }
    }
}

/// The hold server's `main`: accepts and holds connections, reading only to
/// notice them close; answers each line on stdin with "held accepted", and
/// exits when stdin closes, i.e. when the bench is gone.
pub fn hold_server_main() -> ExitCode {
    match hold_server() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hold server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn hold_server() -> anyhow::Result<()> {
    procs::raise_nofile()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let listener = socket.listen(4096)?;
        println!("port {}", listener.local_addr()?.port());
        let held = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        {
            let (held, accepted) = (held.clone(), accepted.clone());
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    if line.is_err() {
                        break;
                    }
                    println!(
                        "{} {}",
                        held.load(Ordering::SeqCst),
                        accepted.load(Ordering::SeqCst)
                    );
                }
                std::process::exit(0);
            });
        }
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    held.fetch_add(1, Ordering::SeqCst);
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let held = held.clone();
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let mut buffer = [0u8; 64];
                        while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                        held.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                // Out of descriptors: wait for closes rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}
