//! Connect + first-byte latency: a server in the bench writes one byte as
//! soon as it accepts, and a client times connect → first byte read, one
//! connection after another, directly and through each proxy. Through a
//! proxy this covers its accept, its dial upstream and the first relayed
//! byte, which is what a client opening a fresh connection to the apiserver
//! waits for on top of the TLS handshake.

use bench_support::{
    procs::{self, OtherLoad},
    report::{self, Table},
};
use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    Cpus,
    peers::{self, Tools},
};

pub struct Params {
    /// Timed connections per configuration.
    pub connections: usize,
    /// Bound on the whole measurement, all configurations together.
    pub budget: Duration,
}

pub struct Row {
    pub name: &'static str,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

/// Connections per configuration before switching to the next, so slow
/// drifts in machine load reach every configuration alike.
const BLOCK: usize = 100;
/// Untimed connections per configuration first (page faults, first accept).
const WARMUP: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(dir: &Path, tools: &Tools, params: &Params, cpus: &Cpus) -> anyhow::Result<Vec<Row>> {
    let server = FirstByteServer::start()?;
    let mut proxies = vec![peers::relay(dir, "latency", server.addr, 64, cpus.proxy())?];
    if let Some(haproxy) = tools.haproxy.as_deref() {
        proxies.push(peers::haproxy(
            dir,
            "latency",
            haproxy,
            server.addr,
            1000,
            cpus.proxy(),
        )?);
    }
    if let Some(socat) = tools.socat.as_deref() {
        proxies.push(peers::socat(
            dir,
            "latency",
            socat,
            server.addr,
            cpus.proxy(),
        )?);
    }
    let targets: Vec<(&'static str, SocketAddr)> = std::iter::once(("direct", server.addr))
        .chain(proxies.iter().map(|p| (p.name, p.addr)))
        .collect();

    for &(_, addr) in &targets {
        for _ in 0..WARMUP {
            connect_first_byte(addr)?;
        }
    }
    let load = OtherLoad::start();
    let deadline = Instant::now() + params.budget;
    let mut samples: Vec<Vec<Duration>> =
        vec![Vec::with_capacity(params.connections); targets.len()];
    let mut failures = vec![0usize; targets.len()];
    while Instant::now() < deadline && samples.iter().any(|s| s.len() < params.connections) {
        procs::check_interrupted()?;
        for ((_, addr), (taken, failed)) in
            targets.iter().zip(samples.iter_mut().zip(&mut failures))
        {
            let block = BLOCK.min(params.connections - taken.len());
            for _ in 0..block {
                match connect_first_byte(*addr) {
                    Ok(elapsed) => taken.push(elapsed),
                    Err(_) => *failed += 1,
                }
            }
        }
    }
    let other = load.percent();

    let mut rows = Vec::new();
    let mut table = Table::new(&[
        "config",
        "p50",
        "p99",
        "+p50 vs direct",
        "+p99 vs direct",
        "samples",
        "failed",
    ]);
    let mut direct: Option<(Duration, Duration)> = None;
    for ((name, _), (mut taken, failed)) in targets.iter().zip(samples.into_iter().zip(failures)) {
        taken.sort();
        let (p50, p99) = (
            report::percentile(&taken, 50.0),
            report::percentile(&taken, 99.0),
        );
        let both = p50.zip(p99);
        if direct.is_none() {
            direct = both;
        }
        let delta = |pick: fn((Duration, Duration)) -> Duration| {
            report::or_dash(
                both.zip(direct)
                    .filter(|_| *name != "direct")
                    .map(|(mine, base)| report::micros_delta(pick(mine), pick(base))),
            )
        };
        table.row(vec![
            (*name).to_owned(),
            report::or_dash(p50.map(report::micros)),
            report::or_dash(p99.map(report::micros)),
            delta(|(p50, _)| p50),
            delta(|(_, p99)| p99),
            report::count(taken.len()),
            failed.to_string(),
        ]);
        rows.push(Row { name, p50, p99 });
    }
    table.print();
    println!("  other load during the measurement: {other:.0}% of the machine");
    Ok(rows)
}

fn connect_first_byte(addr: SocketAddr) -> io::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    Ok(started.elapsed())
}

/// Writes one byte on every accepted connection and closes it; runs on its
/// own thread so the timing client never waits for it to be scheduled on
/// the same thread.
struct FirstByteServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FirstByteServer {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("first-byte-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    // A fresh socket's send buffer is empty, so
                                    // this write completes at once.
                                    let _ = stream.try_write(b"!");
                                }
                            }
                        }
                    }
                });
            })?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for FirstByteServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
