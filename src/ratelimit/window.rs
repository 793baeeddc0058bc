//! The fixed-window arithmetic every limiter shares (SPEC §6), written once:
//! which window a unix second falls in, when that window ends, the
//! `Retry-After` it implies, the rule that a key's window only moves forward,
//! the exact lock-free per-key counter, and the bounded moka map that holds
//! per-key state.
//!
//! It owns no policy and no I/O: it never decides a limit, never reads the
//! clock (`now` is always passed in), and never touches the network. Backends
//! (`local`, `redis`) and the throttle build on it; nothing here knows them.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// Windows of `window_s` seconds aligned to multiples of `window_s` since
/// the unix epoch, so every replica and every restart agrees on the
/// boundaries (and the Redis key of a window) without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedWindow {
    window_s: u64,
}

impl FixedWindow {
    /// `window_s` is validated positive by the config; a zero is read as one
    /// second rather than a division by zero.
    pub(crate) fn new(window_s: u64) -> Self {
        FixedWindow {
            window_s: window_s.max(1),
        }
    }

    /// The window `now` falls in. Times before the epoch count as window 0.
    pub(crate) fn index(self, now: i64) -> u64 {
        now.max(0) as u64 / self.window_s
    }

    /// Unix seconds at which window `index` ends (`X-RateLimit-Reset`).
    pub(crate) fn reset(self, index: u64) -> i64 {
        (index + 1).saturating_mul(self.window_s) as i64
    }

    /// How long state must outlive its last use: two windows, so a key used
    /// at the end of one window is still there for the whole next one.
    fn idle(self) -> Duration {
        Duration::from_secs(self.window_s.saturating_mul(2).max(2))
    }
}

pub(crate) use crate::auth::limit::retry_after;

/// The window a request is counted in, given the window a key's state is in
/// and the window of the request's `now`. State never moves back: a request
/// stamped just before a boundary that reaches the key after another request
/// has opened the next window (two threads reading the wall clock either side
/// of the boundary, or the clock stepping back) is counted in the newer
/// window. Moving back would forget the newer window's count and admit past
/// the limit in it.
pub(crate) fn current(stored: u64, requested: u64) -> u64 {
    stored.max(requested)
}

/// A bounded per-key map for limiter state: at most `capacity` keys, and a
/// key idle for two windows is evicted (SPEC §6: memory is bounded, idle
/// organizations are evicted).
pub(crate) fn bounded_map<K, V>(window: FixedWindow, capacity: u64) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .time_to_idle(window.idle())
        .build()
}

/// The state for `key`, created with `make` on first use. The lookup by
/// `&str` comes first so the common case allocates no `Arc<str>`.
pub(crate) fn entry<V>(map: &Cache<Arc<str>, V>, key: &str, make: impl FnOnce(Arc<str>) -> V) -> V
where
    V: Clone + Send + Sync + 'static,
{
    match map.get(key) {
        Some(v) => v,
        None => {
            let key: Arc<str> = Arc::from(key);
            map.get_with(key.clone(), || make(key))
        }
    }
}

const COUNT_MASK: u64 = 0xffff_ffff;

/// One key's count in its current window, packed in one `AtomicU64` as
/// (window index << 32 | count). Admission is a compare-and-swap loop, so
/// racing callers are admitted exactly up to the limit and never beyond,
/// with no lock.
#[derive(Debug, Default)]
pub(crate) struct WindowCount(AtomicU64);

/// What [`WindowCount::try_take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Take {
    pub(crate) admitted: bool,
    /// The window the request was counted (or refused) in; see [`current`].
    pub(crate) window: u64,
    /// The window's count afterwards.
    pub(crate) used: u64,
}

impl WindowCount {
    /// The largest limit the packed count can hold.
    pub(crate) const MAX_LIMIT: u64 = COUNT_MASK;

    /// Count one request in `window` if the count is under `limit`.
    pub(crate) fn try_take(&self, window: u64, limit: u64) -> Take {
        self.try_take_n(window, limit, 1)
    }

    /// Count `n` in `window` if at least `n` are left under `limit` (SPEC
    /// §6.1 route `cost`); a window with fewer left is not touched.
    pub(crate) fn try_take_n(&self, window: u64, limit: u64, n: u64) -> Take {
        let limit = limit.min(Self::MAX_LIMIT);
        let n = n.max(1);
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (stored, count) = (cur >> 32, cur & COUNT_MASK);
            let window = current(stored, window);
            let used = if stored == window { count } else { 0 };
            if used >= limit || limit - used < n {
                return Take {
                    admitted: false,
                    window,
                    used,
                };
            }
            let next = (window << 32) | (used + n);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Take {
                        admitted: true,
                        window,
                        used: used + n,
                    }
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// The window a request in `window` would be counted in, and its count,
    /// without counting.
    /// The window stored and its count, as they are.
    pub(crate) fn load(&self) -> (u64, u64) {
        let cur = self.0.load(Ordering::Relaxed);
        (cur >> 32, cur & COUNT_MASK)
    }

    /// Count `n` more in `window` (requests another process admitted);
    /// ignored when this counter is already in a later window.
    pub(crate) fn add(&self, window: u64, n: u64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (stored, count) = (cur >> 32, cur & COUNT_MASK);
            let used = match stored.cmp(&window) {
                std::cmp::Ordering::Greater => return,
                std::cmp::Ordering::Equal => count,
                std::cmp::Ordering::Less => 0,
            };
            let next = (window << 32) | (used + n).min(COUNT_MASK);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Undo a [`try_take_n`](Self::try_take_n) of `n` in `window` (another
    /// window of the same request refused it); nothing when the count has
    /// moved on to a later window since.
    pub(crate) fn give_back(&self, window: u64, n: u64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (stored, count) = (cur >> 32, cur & COUNT_MASK);
            if stored != window {
                return;
            }
            let next = (window << 32) | count.saturating_sub(n);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn used(&self, window: u64) -> (u64, u64) {
        let cur = self.0.load(Ordering::Relaxed);
        let (stored, count) = (cur >> 32, cur & COUNT_MASK);
        let window = current(stored, window);
        (window, if stored == window { count } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let w = FixedWindow::new(60);
        assert_eq!(w.index(0), 0);
        assert_eq!(w.index(59), 0);
        assert_eq!(w.index(60), 1);
        assert_eq!(w.index(6_119), 101);
        assert_eq!(w.index(-5), 0, "before the epoch is window 0");
        // Same boundaries whatever second the process started in.
        assert_eq!(FixedWindow::new(7).index(20), 2);
    }

    #[test]
    fn reset_is_the_end_of_the_window() {
        let w = FixedWindow::new(60);
        assert_eq!(w.reset(w.index(61)), 120);
        assert_eq!(w.reset(w.index(119)), 120);
        assert_eq!(w.reset(w.index(120)), 180);
        assert_eq!(w.reset(0), 60);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(retry_after(120, 61), 59);
        assert_eq!(retry_after(120, 119), 1);
        assert_eq!(retry_after(120, 120), 1);
        assert_eq!(retry_after(120, 500), 1, "a stale reset still waits 1 s");
    }

    #[test]
    fn a_zero_window_is_one_second_not_a_panic() {
        let w = FixedWindow::new(0);
        assert_eq!(w.index(5), 5);
        assert_eq!(w.reset(5), 6);
    }

    #[test]
    fn a_count_never_moves_back_to_an_earlier_window() {
        let c = WindowCount::default();
        assert!(c.try_take(2, 2).admitted);
        // A request stamped in window 1 arriving now counts in window 2.
        let late = c.try_take(1, 2);
        assert_eq!(
            late,
            Take {
                admitted: true,
                window: 2,
                used: 2
            }
        );
        assert!(!c.try_take(2, 2).admitted, "window 2 is full");
        assert_eq!(c.used(1), (2, 2));
        assert_eq!(c.used(3), (3, 0));
        assert!(c.try_take(3, 2).admitted, "the next window starts fresh");
    }

    #[test]
    fn a_cost_takes_n_or_nothing_and_can_be_given_back() {
        let c = WindowCount::default();
        assert_eq!(c.try_take_n(1, 10, 4).used, 4);
        assert_eq!(c.try_take_n(1, 10, 4).used, 8);
        let refused = c.try_take_n(1, 10, 4);
        assert!(!refused.admitted);
        assert_eq!(refused.used, 8, "a refused cost takes nothing");
        assert!(c.try_take_n(1, 10, 2).admitted, "what is left still fits");
        c.give_back(1, 2);
        assert_eq!(c.used(1), (1, 8));
        c.give_back(0, 8);
        assert_eq!(
            c.used(1),
            (1, 8),
            "a give-back for another window is ignored"
        );
    }

    #[test]
    fn bounded_map_keeps_at_most_its_capacity() {
        let map = bounded_map::<Arc<str>, u64>(FixedWindow::new(60), 10);
        for i in 0..1_000u64 {
            entry(&map, &format!("k{i}"), |_| i);
        }
        map.run_pending_tasks();
        assert!(map.entry_count() <= 10, "{}", map.entry_count());
        assert_eq!(entry(&map, "fresh", |k| k.len() as u64), 5);
        assert_eq!(entry(&map, "fresh", |_| 99), 5, "created once");
    }
}
