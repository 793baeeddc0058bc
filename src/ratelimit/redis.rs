//! The Redis-backed limiter (`rate_limit.backend = "redis"`, SPEC §6): one
//! fixed window per organization shared by every replica, counted
//! local-first and synchronised in batches.
//!
//! Each replica keeps, per organization and window, what Redis last told it
//! (`remote`: the shared count, its own flushed requests included) and what
//! it admitted that Redis has not yet acknowledged (`pending`, then
//! `inflight` while an `INCRBY` is on the wire). A request is admitted when
//! `remote + pending + inflight < limit` **and** `pending + inflight < batch`.
//! A background task flushes every dirty organization in one pipeline when a
//! replica reaches half a batch, and at least every `redis_sync_interval_ms`.
//!
//! **Bound.** Per window, all replicas together admit at most
//! `limit + replicas × batch − 1` (a route `cost` c counts c requests, and a
//! request costing more than a batch passes alone: `batch` reads
//! `max(batch, c)` then). Key windows (SPEC §6.1 `api_keys.rate_limit`) and
//! limit groups are windows like the organization's, with the same bound,
//! and a request counts in all of its windows or in none.
//! Once the shared count reaches the limit,
//! every replica stops at its next reply; until then, each replica can hold
//! at most `batch` requests that Redis has not counted. With one replica the
//! count is exact. The price is a transient 429 when one replica admits a
//! whole batch for one organization faster than one Redis round trip.
//!
//! **Topologies** (`rate_limit.redis_mode`; the connections are in
//! [`link`]). The bound above is per key, and every key lives on one
//! server, so:
//!
//! * `single` (`redis_url`, `redis://` or `rediss://`): as stated.
//! * `cluster` (`redis_nodes`): the same bound, per organization. Each
//!   organization's key hashes to one slot and one master; a flush is split
//!   by slot into pipelines sent at once, and a node that fails costs only
//!   the organizations it holds (their counts stay pending and are retried;
//!   the backend reads down meanwhile). Resharding is followed by the client
//!   (`MOVED`/`ASK`).
//! * `sentinel` (`redis_nodes` = sentinels, `redis_sentinel_master`): the
//!   same bound while one master serves the window. A failover can lose
//!   increments the old master acknowledged but did not replicate (Redis
//!   replication is asynchronous), and, when the old master stays up
//!   (`SENTINEL FAILOVER`, a partition), increments it accepts until each
//!   replica notices the new master: at most [`link`]'s one-second recheck,
//!   or the first error. Those increments are lost from the shared count, so
//!   the window can admit that many again: the bound becomes
//!   `limit + replicas × batch − 1 + L`, where `L` is the increments lost in
//!   the failover (at most what all replicas flushed in the replication lag
//!   plus one second). The new master keeps everything that was replicated.
//!
//! **Outage.** A pipeline that fails or outlives `redis_timeout_ms` marks the
//! backend down (`keyward_rate_limit_backend_up` 0, `/readyz` degraded). While
//! down, each replica admits at most `limit / expected_replicas` per window
//! (never open, never 401/403/5xx), and keeps counting what it admits; when
//! Redis answers again those requests are flushed, so the shared window
//! includes them. Unacknowledged increments are counted again on retry: an
//! outage can only make the limit stricter, never looser.
//!
//! **Not here.** Window math and the bounded organization map come from
//! [`super::window`] (the window index is also the Redis key's suffix, so it
//! must be the same on every replica); this module must not compute windows
//! itself. `admit` and `peek` never wait on Redis: only the synchroniser
//! task talks to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use prometheus::IntGauge;
use tokio::sync::{mpsc, Notify};

use self::link::Link;
use super::window::{bounded_map, current, entry, FixedWindow};
use super::{BackendStatus, Limiter, RateState, Window, DEFAULT_ORG_CAPACITY, MAX_WINDOWS};
use crate::config::RedisConfig;

mod link;

#[derive(Default)]
struct OrgState {
    window: u64,
    /// Shared count Redis last reported for `window`.
    remote: u64,
    /// Admitted here, not yet sent.
    pending: u64,
    /// Sent, not yet acknowledged.
    inflight: u64,
    /// Admitted while Redis was down (the fallback limit's count).
    fallback: u64,
    /// In the flush queue.
    queued: bool,
}

struct Org {
    key: Arc<str>,
    state: Mutex<OrgState>,
}

/// `rate_limit.backend = "redis"`.
pub struct RedisLimiter {
    window: FixedWindow,
    batch: u64,
    replicas: u64,
    orgs: Cache<Arc<str>, Arc<Org>>,
    dirty: mpsc::UnboundedSender<Arc<Org>>,
    wake: Arc<Notify>,
    up: Arc<AtomicBool>,
}

impl RedisLimiter {
    /// Build the limiter and spawn its synchroniser on `rt`. Never blocks:
    /// Redis is connected lazily, and the limiter starts "down" (fallback
    /// limits) until the first successful round trip.
    pub fn start(
        cfg: &RedisConfig,
        window_s: u64,
        rt: &tokio::runtime::Handle,
        backend_up: IntGauge,
    ) -> Result<Arc<RedisLimiter>, String> {
        let link = Link::new(cfg)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let window = FixedWindow::new(window_s);
        let limiter = Arc::new(RedisLimiter {
            window,
            batch: cfg.batch.max(1),
            replicas: cfg.expected_replicas.max(1),
            orgs: bounded_map(window, DEFAULT_ORG_CAPACITY),
            dirty: tx,
            wake: Arc::new(Notify::new()),
            up: Arc::new(AtomicBool::new(false)),
        });
        backend_up.set(0);
        let sync = Sync {
            link,
            interval: cfg.sync_interval,
            window_ms: window_s * 1000,
            rx,
            wake: limiter.wake.clone(),
            up: limiter.up.clone(),
            gauge: backend_up,
            retry: Vec::new(),
        };
        rt.spawn(sync.run());
        Ok(limiter)
    }

    fn org(&self, key: &str) -> Arc<Org> {
        entry(&self.orgs, key, |key| {
            Arc::new(Org {
                key,
                state: Mutex::new(OrgState::default()),
            })
        })
    }

    /// Limit in force and count used, as this replica sees them.
    fn view(&self, s: &OrgState, limit: u64, up: bool) -> (u64, u64) {
        let shared = s.remote + s.pending + s.inflight;
        if up {
            (limit, shared)
        } else {
            let fallback = (limit / self.replicas).max(1);
            // Never looser than what is already known to be used.
            (fallback, s.fallback.max(shared.min(fallback)))
        }
    }
}

/// Move `s` to the window a request in `window` counts in (never back: see
/// [`current`]) and return that window.
fn roll(s: &mut OrgState, window: u64) -> u64 {
    let window = current(s.window, window);
    if s.window != window {
        let queued = s.queued;
        *s = OrgState {
            window,
            queued,
            ..OrgState::default()
        };
    }
    window
}

impl Limiter for RedisLimiter {
    /// Every window's state is locked (in the order given: credential, then
    /// organization, so two requests never wait on each other in a circle),
    /// checked, and only then counted: all or none, exact on this replica.
    fn charge(
        &self,
        windows: &[Window<'_>],
        cost: u64,
        now: i64,
        states: &mut [RateState],
    ) -> Option<usize> {
        let cost = cost.max(1);
        let up = self.up.load(Ordering::Acquire);
        let index = self.window.index(now);
        let orgs: [Option<Arc<Org>>; MAX_WINDOWS] =
            std::array::from_fn(|i| windows.get(i).map(|w| self.org(w.key)));
        let mut locked: [Option<std::sync::MutexGuard<'_, OrgState>>; MAX_WINDOWS] =
            Default::default();
        let mut refused = None;
        let mut wake = false;
        for (i, w) in windows.iter().enumerate() {
            let org = orgs[i].as_ref().expect("one state per window");
            let mut s = org.state.lock().unwrap_or_else(|p| p.into_inner());
            let reset = self.window.reset(roll(&mut s, index));
            let (eff, used) = self.view(&s, w.limit, up);
            states[i] = RateState::counted(eff, used, reset);
            let unsynced = s.pending + s.inflight;
            // A cost larger than a batch still passes when nothing is pending.
            let over_batch = up && unsynced > 0 && unsynced + cost > self.batch;
            if over_batch {
                wake = true;
            }
            locked[i] = Some(s);
            if refused.is_none() && (used + cost > eff || over_batch) {
                refused = Some(i);
            }
        }
        if refused.is_none() {
            for (i, s) in locked.iter_mut().enumerate() {
                let Some(s) = s else { continue };
                s.pending += cost;
                if !up {
                    s.fallback += cost;
                }
                states[i].remaining = states[i].remaining.saturating_sub(cost);
                if up && s.pending * 2 >= self.batch {
                    wake = true;
                }
                if !s.queued {
                    s.queued = true;
                    let org = orgs[i].clone().expect("one state per window");
                    let _ = self.dirty.send(org);
                }
            }
        }
        drop(locked);
        if wake {
            self.wake.notify_one();
        }
        refused
    }

    fn peek(&self, key: &str, limit: u64, now: i64) -> RateState {
        let mut w = self.window.index(now);
        let up = self.up.load(Ordering::Acquire);
        let (eff, used) = match self.orgs.get(key) {
            Some(org) => {
                let s = org.state.lock().unwrap();
                w = current(s.window, w);
                if s.window == w {
                    self.view(&s, limit, up)
                } else {
                    self.view(&OrgState::default(), limit, up)
                }
            }
            None => self.view(&OrgState::default(), limit, up),
        };
        RateState::counted(eff, used, self.window.reset(w))
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            backend: "redis",
            up: self.up.load(Ordering::Acquire),
        }
    }
}

/// The synchroniser: owns the Redis connection and the flush queue.
struct Sync {
    link: Link,
    interval: Duration,
    window_ms: u64,
    rx: mpsc::UnboundedReceiver<Arc<Org>>,
    wake: Arc<Notify>,
    up: Arc<AtomicBool>,
    gauge: IntGauge,
    /// Organizations whose last flush failed; sent again next round.
    retry: Vec<Arc<Org>>,
}

impl Sync {
    async fn run(mut self) {
        loop {
            let down = !self.up.load(Ordering::Acquire);
            // While down, probe at a gentle pace rather than on every wake.
            let pause = if down {
                Duration::from_millis(200)
            } else {
                self.interval
            };
            tokio::select! {
                _ = self.wake.notified(), if !down => {}
                _ = tokio::time::sleep(pause) => {}
            }
            let mut batch = std::mem::take(&mut self.retry);
            while let Ok(org) = self.rx.try_recv() {
                batch.push(org);
            }
            if self.rx.is_closed() && batch.is_empty() {
                return;
            }
            if down && !self.ping().await {
                self.retry = batch;
                continue;
            }
            self.link.recheck().await;
            self.flush(batch).await;
        }
    }

    async fn ping(&mut self) -> bool {
        let ok = self.link.ping().await;
        if ok {
            self.set_up(true);
        }
        ok
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.gauge.set(up as i64);
        match (was, up) {
            (false, true) => tracing::info!("redis rate-limit backend reachable: shared limits in force"),
            (true, false) => tracing::warn!("redis rate-limit backend unreachable: falling back to local limits (limit / expected_replicas)"),
            _ => {}
        }
    }

    async fn flush(&mut self, orgs: Vec<Arc<Org>>) {
        let mut sent = Vec::with_capacity(orgs.len());
        let mut incrs = Vec::with_capacity(orgs.len());
        for org in orgs {
            let mut s = org.state.lock().unwrap();
            s.queued = false;
            if s.pending == 0 {
                continue;
            }
            let (w, n) = (s.window, s.pending);
            s.pending = 0;
            s.inflight += n;
            drop(s);
            incrs.push((format!("keyward:rl:{}:{}", org.key, w), n));
            sent.push((org, w, n));
        }
        if sent.is_empty() {
            return;
        }
        let totals = self.link.incr(&incrs, self.window_ms * 2).await;
        let mut failed = Vec::new();
        let mut error = None;
        for ((org, w, n), total) in sent.into_iter().zip(totals) {
            match total {
                Ok(total) => {
                    let mut s = org.state.lock().unwrap();
                    if s.window == w {
                        s.inflight -= n;
                        s.remote = s.remote.max(total);
                    }
                }
                Err(e) => {
                    error.get_or_insert(e);
                    failed.push((org, w, n));
                }
            }
        }
        match error {
            None => self.set_up(true),
            Some(e) => {
                tracing::debug!(error = %e, keys = failed.len(), "redis: flush failed");
                self.failed(failed);
            }
        }
    }

    /// Put unacknowledged counts back to pending (they may be counted twice:
    /// stricter, never looser) and mark the backend down.
    fn failed(&mut self, sent: Vec<(Arc<Org>, u64, u64)>) {
        self.set_up(false);
        for (org, w, n) in sent {
            let mut s = org.state.lock().unwrap();
            if s.window == w {
                s.inflight -= n;
                s.pending += n;
            }
            if !s.queued {
                s.queued = true;
                drop(s);
                self.retry.push(org);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::RateOutcome;

    fn limiter(batch: u64, replicas: u64) -> (tokio::runtime::Runtime, Arc<RedisLimiter>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on port 1: the backend stays down.
        let cfg = RedisConfig {
            topology: crate::config::RedisTopology::Single {
                url: "redis://127.0.0.1:1/0".into(),
            },
            ca_file: None,
            timeout: Duration::from_millis(5),
            expected_replicas: replicas,
            batch,
            sync_interval: Duration::from_millis(10),
        };
        let l =
            RedisLimiter::start(&cfg, 60, rt.handle(), IntGauge::new("g", "g").unwrap()).unwrap();
        (rt, l)
    }

    #[test]
    fn down_backend_falls_back_to_a_share_of_the_limit() {
        let (_rt, l) = limiter(8, 4);
        let admitted = (0..100)
            .filter(|_| matches!(l.admit("org", 100, 600), RateOutcome::Admitted(_)))
            .count();
        assert_eq!(admitted, 25);
        assert_eq!(l.peek("org", 100, 600).limit, 25);
        assert_eq!(l.peek("org", 100, 600).remaining, 0);
        assert!(!l.status().up);
        // A new window starts a new share.
        assert!(matches!(l.admit("org", 100, 660), RateOutcome::Admitted(s) if s.remaining == 24));
    }

    #[test]
    fn a_request_stamped_before_the_boundary_keeps_the_open_window_counted() {
        let (_rt, l) = limiter(8, 1);
        for _ in 0..3 {
            l.admit("org", 10, 660);
        }
        // Stamped in the previous window, counted in the open one: the three
        // requests above stay pending for Redis instead of being forgotten.
        assert!(
            matches!(l.admit("org", 10, 659), RateOutcome::Admitted(s) if s.reset == 720 && s.remaining == 6)
        );
        assert_eq!(l.peek("org", 10, 660).remaining, 6);
        assert_eq!(l.peek("org", 10, 659).remaining, 6);
        let org = l.orgs.get("org").unwrap();
        let s = org.state.lock().unwrap();
        assert_eq!((s.window, s.pending + s.inflight), (11, 4));
    }

    #[test]
    fn batch_caps_unacknowledged_admissions_while_up() {
        let (_rt, l) = limiter(8, 1);
        l.up.store(true, Ordering::Release);
        // The synchroniser cannot flush (no Redis, and this runtime is not
        // driven), so at most one batch is admitted.
        let admitted = (0..100)
            .filter(|_| matches!(l.admit("org", 1000, 600), RateOutcome::Admitted(_)))
            .count();
        assert_eq!(admitted, 8);
    }
}
