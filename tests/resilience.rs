//! Fault injection (issue 8): the snapshot broken while traffic flows, the
//! upstream killed and restarted under load, slow clients. keyward must keep
//! serving what it can, say what is wrong (metrics, /readyz), never hang a
//! client, and never turn an outage into a wrong answer.
mod common;

#[path = "resilience/slow_clients.rs"]
mod slow_clients;
#[path = "resilience/snapshot.rs"]
mod snapshot;
#[path = "resilience/upstream.rs"]
mod upstream;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request on a fresh connection with a client deadline: the status, or
/// `None` when no complete response head arrived in time (a hung request).
pub fn timed_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    deadline: Duration,
) -> Option<Resp> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, deadline).ok()?;
    s.set_read_timeout(Some(deadline)).ok()?;
    s.set_write_timeout(Some(deadline)).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if start.elapsed() > deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
    buf.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse_response(&buf))
}

/// Background traffic: `threads` loops of [`timed_get`] until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// (when, status or 0 for a hung/failed request, error code)
    pub results: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: std::net::SocketAddr, path: &str, token: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
        let handles = (0..threads)
            .map(|_| {
                let (stop, results) = (stop.clone(), results.clone());
                let (path, token) = (path.to_string(), token.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = timed_get(addr, &path, &token, Duration::from_secs(3));
                        let entry = match r {
                            Some(r) => {
                                let code = if r.status == 200 {
                                    String::new()
                                } else {
                                    r.code()
                                };
                                (Instant::now(), r.status, code)
                            }
                            None => (Instant::now(), 0, "hung".into()),
                        };
                        results.lock().unwrap().push(entry);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            results,
            handles,
        }
    }

    pub fn stop(self) -> Vec<(Instant, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        let r = self.results.lock().unwrap().clone();
        r
    }
}
