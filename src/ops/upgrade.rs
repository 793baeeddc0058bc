//! What a binary upgrade (`keyward run --upgrade`, SPEC §8.2) hands over
//! beside pingora's own listener hand-over: the admin listener and the
//! local rate-limit windows.
//!
//! pingora passes the proxy listeners over `server.upgrade_sock` when the
//! old process gets SIGQUIT; it knows nothing of the admin listener (its own
//! runtime, so a busy proxy never delays a scrape) nor of keyward's
//! counters. The same moment, the old process connects to
//! `<upgrade_sock>.admin`, which the new one listens on, and sends:
//!
//! 1. the admin listener's descriptor (SCM_RIGHTS), so both processes hold
//!    the same socket and accept queue: no connection attempt is refused or
//!    lost, whichever process accepts it; the old one then stops accepting;
//! 2. one JSON line of its local windows ([`WindowUse`]) at the hand-over,
//! 3. one more when it has drained and is about to exit.
//!
//! The new process adds what each line adds to the last ([`Absorbed`]), so
//! a window an upgrade crosses counts what both processes admitted in it.
//! Over-admission is bounded by what the two admit at once between the
//! hand-over and the last line (the old one serves only in-flight and
//! lingering keep-alive requests then). A shared backend (Redis) exports
//! nothing: its counts are already shared.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::ratelimit::{Limiter, WindowUse};

/// The socket the admin listener and the counts travel through.
pub fn admin_sock(upgrade_sock: &Path) -> PathBuf {
    let mut s = upgrade_sock.as_os_str().to_owned();
    s.push(".admin");
    PathBuf::from(s)
}

/// How long the old process keeps trying to reach the new one (pingora
/// tries as long for the proxy listeners).
const CONNECT_FOR: Duration = Duration::from_secs(5);
/// The hand-over's marker byte, sent with the descriptor.
const MARKER: &[u8] = b"K";

/// The old process's side, after sending: where its final counts go.
pub struct Sent {
    conn: UnixStream,
}

impl Sent {
    /// The counts once drained (step 3); the new process reads to the end.
    pub fn finish(mut self, limiter: &dyn Limiter) {
        if let Err(e) = write_line(&mut self.conn, &limiter.export()) {
            tracing::warn!(error = %e, "upgrade: cannot send the final rate-limit counts");
        }
    }
}

fn write_line(conn: &mut UnixStream, uses: &[WindowUse]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(uses)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// Old process, on SIGQUIT: connect to the new process (retrying while it
/// is not listening yet), send the admin listener and the counts as they
/// are now. Blocking; run it off the runtimes.
pub fn send(path: &Path, admin: RawFd, limiter: &dyn Limiter) -> std::io::Result<Sent> {
    let deadline = Instant::now() + CONNECT_FOR;
    let mut conn = loop {
        match UnixStream::connect(path) {
            Ok(c) => break c,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e),
        }
    };
    let fds = [admin];
    socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(MARKER)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    write_line(&mut conn, &limiter.export())?;
    Ok(Sent { conn })
}

/// What the new process took over.
pub struct Received {
    pub admin: std::net::TcpListener,
    conn: UnixStream,
}

/// New process, at start: listen on `path` and wait up to `wait` for the
/// old process's hand-over. Blocking.
pub fn receive(path: &Path, wait: Duration) -> std::io::Result<Received> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + wait;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let _ = std::fs::remove_file(path);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no running keyward handed its admin listener over",
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    let _ = std::fs::remove_file(path);
    drop(listener);
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut marker = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut marker)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut admin = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for
                // this message; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if admin.is_none() {
                    admin = Some(owned);
                }
            }
        }
    }
    let admin = admin.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the hand-over carried no admin listener",
        )
    })?;
    let admin = std::net::TcpListener::from(admin);
    admin.set_nonblocking(true)?;
    Ok(Received { admin, conn })
}

impl Received {
    /// Add the old process's counts to `limiter` as its lines arrive, on a
    /// thread of its own, until it closes the connection (or `until`); the
    /// admin listener to serve.
    pub fn absorb_counts(
        self,
        limiter: Arc<dyn Limiter>,
        until: Duration,
    ) -> std::net::TcpListener {
        let conn = self.conn;
        let spawned = std::thread::Builder::new()
            .name("keyward-upgrade".into())
            .spawn(move || {
                let _ = conn.set_read_timeout(Some(until));
                let mut absorbed = Absorbed::default();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Vec<WindowUse>>(&line) {
                        Ok(uses) => limiter.absorb(&absorbed.next(uses)),
                        Err(e) => {
                            tracing::warn!(error = %e, "upgrade: unreadable rate-limit counts");
                            break;
                        }
                    }
                }
                tracing::info!("upgrade: rate-limit counts taken over");
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "upgrade: cannot start the counts thread");
        }
        self.admin
    }
}

/// What was already added from earlier lines, so that each line adds only
/// its growth.
#[derive(Default)]
struct Absorbed {
    seen: HashMap<(String, u64), u64>,
}

impl Absorbed {
    fn next(&mut self, uses: Vec<WindowUse>) -> Vec<WindowUse> {
        uses.into_iter()
            .filter_map(|u| {
                let before = self.seen.entry((u.key.clone(), u.window)).or_insert(0);
                let grew = u.used.saturating_sub(*before);
                *before = (*before).max(u.used);
                (grew > 0).then_some(WindowUse { used: grew, ..u })
            })
            .collect()
    }
}

/// The old process's admin listener, kept to hand over: a duplicate of the
/// descriptor the admin task accepts on, and the switch that stops it.
pub struct AdminHandle {
    pub fd: OwnedFd,
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// The slot the old process keeps its [`Sent`] in until it has drained.
pub type Pending = Arc<Mutex<Option<Sent>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::LocalLimiter;

    fn u(key: &str, window: u64, used: u64) -> WindowUse {
        WindowUse {
            key: key.into(),
            window,
            used,
        }
    }

    #[test]
    fn each_line_adds_only_its_growth() {
        let mut a = Absorbed::default();
        assert_eq!(a.next(vec![u("o", 5, 3)]), vec![u("o", 5, 3)]);
        assert_eq!(
            a.next(vec![u("o", 5, 7), u("p", 5, 1)]),
            vec![u("o", 5, 4), u("p", 5, 1)]
        );
        assert_eq!(a.next(vec![u("o", 5, 7)]), vec![]);
        assert_eq!(a.next(vec![u("o", 6, 2)]), vec![u("o", 6, 2)]);
    }

    #[test]
    fn the_admin_listener_and_the_counts_cross_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock.admin");
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = admin.local_addr().unwrap();
        let old = LocalLimiter::new(3600);
        let now = crate::clock::now_unix();
        for _ in 0..3 {
            old.admit("org_1", 100, now);
        }
        let receiver = {
            let path = path.clone();
            std::thread::spawn(move || receive(&path, Duration::from_secs(5)).unwrap())
        };
        let sent = send(&path, admin.as_raw_fd(), &old).unwrap();
        old.admit("org_1", 100, now);
        let received = receiver.join().unwrap();
        assert_eq!(received.admin.local_addr().unwrap(), addr);
        let new: Arc<dyn Limiter> = Arc::new(LocalLimiter::new(3600));
        let taken = received.absorb_counts(new.clone(), Duration::from_secs(5));
        sent.finish(&old);
        let deadline = Instant::now() + Duration::from_secs(5);
        while new.peek("org_1", 100, now).remaining != 96 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            new.peek("org_1", 100, now).remaining,
            96,
            "3 + 1 carried over"
        );
        // both processes now hold one socket: a connection is queued for either
        drop(admin);
        assert!(std::net::TcpStream::connect(addr).is_ok());
        drop(taken);
    }
}
