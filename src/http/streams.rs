//! Open streams follow their credential (SPEC §8.2 Streams, issue 17).
//!
//! A WebSocket handshake or a request that accepts `text/event-stream` is a
//! *stream* while its exchange is open: it is registered here with its
//! [`Standing`] (the credential's cache key — never the token — the
//! organization, the workspace it was judged for, the expiry) and holds a
//! [`Stream`] guard whose drop unregisters it, whichever way it ends.
//!
//! After every snapshot swap the checker thread judges every open stream
//! again against the generation now served, read directly (the verdict
//! cache may still be refilling) through the same principal loader and the
//! same rules as the decision core ([`Standing::recheck`]); a stream that no
//! longer stands is told to close, with the denial the same request would
//! now get, and counted in `streams_closed_total{reason}`. The same thread
//! closes streams whose credential expires meanwhile (the earliest
//! `expires_at` is its timer). It starts with the first stream; requests
//! never wait for it.
//!
//! `plans.NAME.max_streams` is counted here too: per organization, open
//! streams only (the map holds an entry per organization with a stream
//! open, so it is bounded by the open connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::auth::decide::{lapse_reason, Standing};
use crate::auth::denial::Denial;
use crate::metrics::Metrics;
use crate::snapshot::{Generation, SnapshotStore, StoreError};

/// Longest the checker sleeps with nothing to do (it also wakes on every
/// swap and every new stream that may have missed one).
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Streams judged in one read transaction (a long read transaction would
/// hold off a control plane committing in rollback-journal mode).
const BATCH: usize = 256;

/// Why a stream is being closed: the `streams_closed_total` label and the
/// answer the same request would now get.
#[derive(Debug, Clone)]
pub struct Closing {
    pub reason: &'static str,
    pub denial: Denial,
}

pub struct Streams {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    wake: Condvar,
    /// snapshot swaps seen (a request reads it before it is judged: a swap
    /// in between means its stream is judged again once registered)
    swaps: AtomicU64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Open>,
    /// open streams per organization with a `max_streams` cap
    per_org: HashMap<Arc<str>, u64>,
    /// a swap (or a registration that may have missed one) since the last check
    recheck: bool,
    checker_started: bool,
}

struct Open {
    /// None: a stream on an `auth = "none"` route (counted, nothing to follow)
    standing: Option<Standing>,
    /// the organization whose `max_streams` it counts against
    capped_org: Option<Arc<str>>,
    close: watch::Sender<Option<Closing>>,
    closing: bool,
}

/// One open stream; dropping it unregisters the stream.
pub struct Stream {
    streams: Arc<Streams>,
    id: u64,
    closed: watch::Receiver<Option<Closing>>,
}

impl Stream {
    /// Resolves when the stream must close (never, while it stands).
    pub async fn closed(&mut self) -> Closing {
        loop {
            if let Some(c) = self.closed.borrow_and_update().clone() {
                return c;
            }
            if self.closed.changed().await.is_err() {
                // the registry dropped the sender: the entry is gone
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.streams.lock();
        if let Some(open) = st.open.remove(&self.id) {
            if let Some(org) = open.capped_org {
                if let Some(n) = st.per_org.get_mut(&org) {
                    *n -= 1;
                    if *n == 0 {
                        st.per_org.remove(&org);
                    }
                }
            }
            self.streams.metrics.streams_open.dec();
        }
    }
}

/// The organization is at its `max_streams`.
#[derive(Debug)]
pub struct TooManyStreams;

impl Streams {
    /// The registry of `store`'s streams: judged again on each of its swaps.
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Arc<Streams> {
        let s = Arc::new(Streams {
            store: store.clone(),
            metrics,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            swaps: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&s);
        store.on_swap(move |_| {
            if let Some(s) = weak.upgrade() {
                s.swaps.fetch_add(1, Ordering::AcqRel);
                let mut st = s.lock();
                if st.open.values().any(|o| o.standing.is_some()) {
                    st.recheck = true;
                    s.wake.notify_one();
                }
            }
        });
        s
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps seen so far: read before a request is judged, handed to
    /// [`Streams::open`].
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Acquire)
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Register a stream judged on `standing` when [`Streams::swaps`] was
    /// `swaps`; `cap` is its organization's `max_streams`.
    pub fn open(
        self: &Arc<Self>,
        standing: Option<Standing>,
        cap: Option<(Arc<str>, u64)>,
        swaps: u64,
    ) -> Result<Stream, TooManyStreams> {
        let mut st = self.lock();
        let capped_org = match cap {
            Some((org, max)) => {
                let n = st.per_org.entry(org.clone()).or_insert(0);
                if *n >= max {
                    if *n == 0 {
                        st.per_org.remove(&org);
                    }
                    return Err(TooManyStreams);
                }
                *n += 1;
                Some(org)
            }
            None => None,
        };
        let id = st.next_id;
        st.next_id += 1;
        let (close, closed) = watch::channel(None);
        let follows = standing.is_some();
        let expires = standing.as_ref().and_then(|s| s.expires_at);
        st.open.insert(
            id,
            Open {
                standing,
                capped_org,
                close,
                closing: false,
            },
        );
        self.metrics.streams_open.inc();
        if follows {
            if !st.checker_started {
                st.checker_started = true;
                self.start_checker();
            }
            // judged on a generation a swap has replaced since: judge again
            if self.swaps() != swaps {
                st.recheck = true;
                self.wake.notify_one();
            } else if expires.is_some() {
                // the checker's timer may need to move earlier
                self.wake.notify_one();
            }
        }
        drop(st);
        Ok(Stream {
            streams: self.clone(),
            id,
            closed,
        })
    }

    fn start_checker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("keyward-streams".into())
            .spawn(move || checker(weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the stream checker: open streams are not closed on revocation");
        }
    }

    /// Tell an open stream to close (once), and count it.
    fn close(&self, open: &mut Open, denial: Denial) {
        if open.closing {
            return;
        }
        open.closing = true;
        let reason = lapse_reason(&denial);
        self.metrics
            .streams_closed
            .with_label_values(&[reason])
            .inc();
        open.close.send_replace(Some(Closing { reason, denial }));
    }

    /// Judge every followed open stream again on the generation served now.
    fn recheck_all(&self) {
        let todo: Vec<(u64, Standing)> = {
            let st = self.lock();
            st.open
                .iter()
                .filter(|(_, o)| !o.closing)
                .filter_map(|(id, o)| Some((*id, o.standing.clone()?)))
                .collect()
        };
        let Some(gen) = self.store.current() else {
            return;
        };
        for batch in todo.chunks(BATCH) {
            let now = crate::clock::now_unix();
            match judge(&gen, batch, now) {
                Ok(results) => {
                    let mut st = self.lock();
                    for (id, result) in results {
                        let Some(open) = st.open.get_mut(&id) else {
                            continue;
                        };
                        match result {
                            Ok(expires_at) => {
                                if let Some(s) = &mut open.standing {
                                    s.expires_at = expires_at;
                                }
                            }
                            Err(denial) => self.close(open, denial),
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot judge open streams again; they stay open until the next swap")
                }
            }
        }
    }

    /// Close the streams whose credential has expired; the next expiry.
    fn expire(&self) -> Option<i64> {
        let now = crate::clock::now_unix();
        let mut st = self.lock();
        let mut next: Option<i64> = None;
        for open in st.open.values_mut() {
            let Some(exp) = open.standing.as_ref().and_then(|s| s.expires_at) else {
                continue;
            };
            if open.closing {
                continue;
            }
            if exp <= now {
                self.close(open, Denial::unauthenticated("expired"));
            } else {
                next = Some(next.map_or(exp, |n| n.min(exp)));
            }
        }
        next
    }
}

/// Each stream of `batch` judged on `gen` in one read transaction.
#[allow(clippy::type_complexity)]
fn judge(
    gen: &Generation,
    batch: &[(u64, Standing)],
    now: i64,
) -> Result<Vec<(u64, Result<Option<i64>, Denial>)>, StoreError> {
    gen.read(|r| {
        batch
            .iter()
            .map(|(id, s)| {
                let verdict = crate::store::principals::load(r, s.key.0, &hex::encode(s.key.1))?;
                let result = s.recheck(
                    &verdict,
                    |org| r.organization(org),
                    |ws| r.workspace_org(ws).map(|o| o.map(Arc::from)),
                    now,
                )?;
                Ok((*id, result))
            })
            .collect()
    })
}

/// The checker thread: judge again after swaps, close on expiry, sleep
/// until the next expiry or the next wake-up; ends with the registry.
fn checker(weak: Weak<Streams>) {
    loop {
        let Some(s) = weak.upgrade() else { return };
        let recheck = std::mem::take(&mut s.lock().recheck);
        if recheck {
            s.recheck_all();
        }
        let next = s.expire();
        let mut wait = IDLE_WAKE;
        if let Some(exp) = next {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let at = Duration::from_secs(exp.max(0) as u64);
            wait = wait.min(at.saturating_sub(now));
        }
        let st = s.lock();
        if !st.recheck {
            let _ = s.wake.wait_timeout(st, wait);
        }
    }
}
