//! The upstream keep-alive pool: idle connections per worker thread, no
//! lock. Only `Upstream::session` takes from it and only a clean exchange
//! gives back to it.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use super::Upstream;

/// Idle time of a pooled upstream connection before it is closed.
pub(super) const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Idle upstream connections one worker thread keeps.
const IDLE_PER_THREAD: usize = 128;

/// An upstream connection waiting for its next request.
struct Idle {
    upstream: usize,
    stream: Stream,
    since: Instant,
}

thread_local! {
    /// The keep-alive pool, per worker thread, oldest first. keyward's
    /// workers are single-threaded runtimes without work stealing, so a
    /// connection's requests stay on one thread and this pool needs no lock
    /// (pingora's shared pool took a lock, spawned a watcher task per
    /// release and checked the socket's peer with a syscall per reuse).
    /// Closed or expired connections are found and dropped when taken.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

impl Upstream {
    pub(super) fn take_idle(&self) -> Option<Stream> {
        IDLE.with_borrow_mut(|idle| {
            let now = Instant::now();
            while let Some(pos) = idle.iter().rposition(|c| c.upstream == self.id) {
                let mut c = idle.remove(pos);
                if now.duration_since(c.since) < UPSTREAM_IDLE && still_open(&mut c.stream) {
                    return Some(c.stream);
                }
            }
            None
        })
    }

    /// Back to the pool, when the exchange left the connection reusable.
    pub(super) async fn release(&self, mut up: UpstreamSession) {
        up.respect_keepalive();
        let Some(stream) = up.reuse().await else {
            return;
        };
        IDLE.with_borrow_mut(|idle| {
            let now = Instant::now();
            let expired = idle
                .iter()
                .take_while(|c| now.duration_since(c.since) >= UPSTREAM_IDLE)
                .count();
            idle.drain(..expired);
            if idle.len() >= IDLE_PER_THREAD {
                idle.remove(0);
            }
            idle.push(Idle {
                upstream: self.id,
                stream,
                since: now,
            });
        });
    }
}

/// A pooled connection the upstream has not closed and sent nothing on (a
/// read that would block; the read registers no task: nothing waits on it).
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}
