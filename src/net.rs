//! Small socket helpers shared by the servers: binding a listener with a
//! flag-named error, and raising the open-file limit for many connections.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Binds `addr` with a backlog sized for bursts of connections and logs the
/// bound address (tests read it from the `listening` line). Errors name
/// `flag`.
pub fn listen(addr: SocketAddr, flag: &str, name: &'static str) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // The kernel caps this at net.core.somaxconn.
        socket.listen(4096)
    };
    let listener = bind().map_err(|err| anyhow::anyhow!("{flag} {addr}: cannot listen: {err}"))?;
    let local = listener.local_addr()?;
    tracing::info!(listener = name, addr = %local, "listening");
    Ok(listener)
}

/// Raises the limit on open files to at least `wanted` where the process
/// may (root may raise the hard limit too), else to the hard limit, and
/// returns the limit now in force.
// rlim_t is u64 here but not on every platform.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted as libc::rlim_t {
            return limit.rlim_cur as u64;
        }
        let target = (wanted as libc::rlim_t).max(limit.rlim_cur);
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: target.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur as u64;
        }
        let to_hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) == 0 {
            return to_hard.rlim_cur as u64;
        }
    }
    limit.rlim_cur as u64
}
