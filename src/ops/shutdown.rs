//! keyward's answer to the shutdown signals (SPEC §8.2), in place of
//! pingora's own watcher.
//!
//! pingora 0.9, on SIGQUIT, sends the listeners to the upgrading process and
//! then keeps accepting for a fixed 5 s (`CLOSE_TIMEOUT`) before its grace
//! period even starts, so the old process lived `5 + grace` seconds. The
//! listeners are the very sockets the new process now holds (same accept
//! queue), so nothing needs the old one to accept meanwhile: a connection
//! attempt waits in the queue until the new process accepts it. keyward
//! therefore sends the listeners itself, through pingora's own transfer
//! format ([`Fds`]), and answers pingora with a graceful *terminate*: it
//! stops accepting at once, finishes in-flight requests within
//! `shutdown_grace_s`, and exits. A watchdog makes "gone within
//! `shutdown_grace_s` + 1 s of the signal" true whatever a runtime does.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockaddrStorage};
use pingora::server::{Fds, ShutdownSignal, ShutdownSignalWatch};

/// Longest the hand-over may hold the drain's start.
const SEND_WAIT: Duration = Duration::from_secs(1);

/// What the watchdog leaves of the second after the grace period for the
/// exit itself.
const EXIT_MARGIN: Duration = Duration::from_millis(150);

/// SIGQUIT (upgrade), SIGTERM (graceful), SIGINT (fast), for `Server::run`.
pub struct Signals {
    /// `server.upgrade_sock`
    pub upgrade_sock: String,
    /// `server.listen`
    pub listen: SocketAddr,
    /// the listener table's keys, one per listening socket (`reuseport_key`)
    pub keys: Vec<String>,
    /// the admin listener (never one of the proxy's sockets)
    pub admin: SocketAddr,
    /// `server.shutdown_grace_s`
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install the shutdown signal handlers");
            return std::future::pending().await;
        };
        let upgrading = tokio::select! {
            _ = quit.recv() => true,
            _ = term.recv() => false,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        };
        exit_by(self.grace + Duration::from_secs(1) - EXIT_MARGIN);
        if upgrading && !std::path::Path::new(&self.upgrade_sock).exists() {
            tracing::warn!(
                upgrade_sock = %self.upgrade_sock,
                "SIGQUIT: no upgrading keyward listens; draining as on SIGTERM"
            );
        } else if upgrading {
            let (path, listen, admin, keys) = (
                self.upgrade_sock.clone(),
                self.listen,
                self.admin,
                self.keys.clone(),
            );
            // A waiting process accepts at once; a stale socket file (pingora
            // retries it for 5 s) must not eat the grace period.
            let send =
                tokio::task::spawn_blocking(move || send_listeners(&path, listen, admin, &keys));
            match tokio::time::timeout(SEND_WAIT, send).await {
                Ok(Ok(Ok(n))) => tracing::info!(
                    listeners = n,
                    "SIGQUIT: listeners sent to the upgrading keyward"
                ),
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = %e, "SIGQUIT: listeners not sent; draining and exiting")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "SIGQUIT: listeners not sent"),
                Err(_) => tracing::error!(
                    "SIGQUIT: the upgrading keyward did not take the listeners in time; draining"
                ),
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Exit after `bound` whatever is still running (the normal path has
/// finished long before: pingora's grace period, then a runtime shutdown of
/// at most 1 s that is instant once the connections closed).
fn exit_by(bound: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        tracing::warn!(
            after_ms = bound.as_millis() as u64,
            "shutdown: still running at the bound; exiting"
        );
        std::process::exit(0);
    });
}

/// Send this process's proxy listening sockets to the process listening on
/// `path`, keyed as its listener table expects.
fn send_listeners(
    path: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    keys: &[String],
) -> Result<usize, String> {
    let fds = listening_sockets(listen, admin);
    if fds.len() != keys.len() {
        tracing::warn!(
            found = fds.len(),
            expected = keys.len(),
            "SIGQUIT: listening sockets found differ from the workers"
        );
    }
    let mut table = Fds::new();
    for (key, fd) in keys.iter().zip(&fds) {
        table.add(key.clone(), *fd);
    }
    if table.is_empty() {
        return Err(format!("no listening socket on {listen}"));
    }
    let n = keys.len().min(fds.len());
    table
        .send_to_sock(path)
        .map(|_| n)
        .map_err(|e| format!("{path}: {e}"))
}

/// The descriptors of this process's listening TCP sockets bound to
/// `listen` (any port when its port is 0), the admin listener excepted,
/// lowest first.
fn listening_sockets(listen: SocketAddr, admin: SocketAddr) -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            // SAFETY: the descriptor is only inspected, and only while this
            // function runs; one that closed meanwhile fails the calls.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            if !getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false) {
                return false;
            }
            let Some(local) = getsockname::<SockaddrStorage>(fd)
                .ok()
                .and_then(|a| inet(&a))
            else {
                return false;
            };
            local != admin
                && local.ip() == listen.ip()
                && (listen.port() == 0 || local.port() == listen.port())
        })
        .collect();
    fds.sort_unstable();
    fds
}

fn inet(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    let v6 = a.as_sockaddr_in6()?;
    Some(SocketAddr::from((v6.ip(), v6.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_listening_sockets_and_not_the_admin_one() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = a.local_addr().unwrap();
        let admin = b.local_addr().unwrap();
        // a connected (not listening) socket on the same address is not one
        let _c = std::net::TcpStream::connect(listen).unwrap();
        let found = listening_sockets(listen, admin);
        use std::os::fd::AsRawFd;
        assert_eq!(found, vec![a.as_raw_fd()]);
        // port 0: every listener on the address but the admin one
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(listening_sockets(any, admin).contains(&a.as_raw_fd()));
        assert!(!listening_sockets(any, admin).contains(&b.as_raw_fd()));
    }
}
