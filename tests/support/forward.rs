//! The pod-to-host direction for [`super::NetnsPod`]: a TCP relay from
//! `127.0.0.1:PORT` inside a pod's network namespace to `127.0.0.1:PORT` on
//! the host.
//!
//! The apiservers bind the host's 127.0.0.1 only, and inside a pod 127.0.0.1
//! is the pod's own loopback. A short-lived thread enters the pod's namespace
//! (`setns`) just to bind the listening socket, which stays in that namespace
//! for its whole life; accepting and connecting upstream happen on host
//! threads. So a process in the pod reaches the apiserver at the very URL of
//! the admin kubeconfig (whose certificate is valid for 127.0.0.1), and no
//! server binds anything but loopback addresses.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Relays connections to the pod's `127.0.0.1:port` to the host's; stopped
/// (listener and every relayed connection closed) on drop.
pub struct Forwarder {
    port: u16,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Both ends of every open connection, to cut them on stop.
    conns: Arc<Mutex<HashMap<u64, [TcpStream; 2]>>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    /// Starts relaying; `netns` is a name under /run/netns.
    pub fn start(netns: &str, port: u16) -> anyhow::Result<Forwarder> {
        let path = format!("/run/netns/{netns}");
        let listener = std::thread::spawn(move || -> io::Result<TcpListener> {
            let ns = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd changes only this thread's
            // network namespace; the thread ends right after binding.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        })
        .join()
        .expect("the bind thread does not panic")
        .with_context(|| format!("binding 127.0.0.1:{port} in network namespace {netns}"))?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (listener, stop) = (listener.clone(), stop.clone());
            let (conns, workers) = (conns.clone(), workers.clone());
            std::thread::Builder::new()
                .name(format!("forward-{netns}-{port}"))
                .spawn(move || accept_loop(&listener, port, &stop, &conns, &workers))
                .context("starting the accept thread")?
        };
        Ok(Forwarder {
            port,
            listener,
            stop,
            accept: Some(accept),
            conns,
            workers,
        })
    }

    /// The port relayed (the same inside the pod and on the host).
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn accept_loop(
    listener: &TcpListener,
    port: u16,
    stop: &AtomicBool,
    conns: &Arc<Mutex<HashMap<u64, [TcpStream; 2]>>>,
    workers: &Mutex<Vec<JoinHandle<()>>>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let upstream_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let pod_side = match accepted {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("support: forwarder for port {port}: accept: {err}");
                return;
            }
        };
        // One failed connection must not end the relay.
        let upstream = match TcpStream::connect_timeout(&upstream_addr, CONNECT_TIMEOUT) {
            Ok(stream) => stream,
            Err(err) => {
                eprintln!("support: forwarder for port {port}: connect upstream: {err}");
                continue;
            }
        };
        let (Ok(pod_clone), Ok(up_clone)) = (pod_side.try_clone(), upstream.try_clone()) else {
            continue;
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, [pod_clone, up_clone]);
        let conns = conns.clone();
        let worker = std::thread::spawn(move || {
            relay(pod_side, upstream);
            conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
        workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(worker);
    }
}

/// Copies both ways until both sides have finished sending.
fn relay(pod_side: TcpStream, upstream: TcpStream) {
    let (Ok(mut pod_read), Ok(mut up_read)) = (pod_side.try_clone(), upstream.try_clone()) else {
        return;
    };
    let (mut pod_write, mut up_write) = (pod_side, upstream);
    let down = std::thread::spawn(move || {
        let _ = io::copy(&mut up_read, &mut pod_write);
        let _ = pod_write.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut pod_read, &mut up_write);
    let _ = up_write.shutdown(Shutdown::Write);
    let _ = down.join();
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(): on Linux it then fails with EINVAL.
        // SAFETY: the fd stays open while `self.listener` holds it.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for [a, b] in self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for worker in workers {
            let _ = worker.join();
        }
    }
}
