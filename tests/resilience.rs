//! Fault injection (issue 8): the snapshot broken while traffic flows, the
//! upstream killed and restarted under load, slow clients. keyward must keep
//! serving what it can, say what is wrong (metrics, /readyz), never hang a
//! client, and never turn an outage into a wrong answer. The world is
//! `common::World` with keyward on the generous plan.
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

/// Client deadline of each [`Load`] request: no answer by then is a hung request.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(3);
/// Pause between two requests of one [`Load`] thread.
const LOAD_GAP: Duration = Duration::from_millis(5);

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
                        let r = timed_get(addr, &path, &token, LOAD_DEADLINE);
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
                        std::thread::sleep(LOAD_GAP);
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
