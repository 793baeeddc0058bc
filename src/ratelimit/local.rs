//! The local backend (`rate_limit.backend = "local"`, SPEC §6, §6.1): exact
//! fixed windows per organization, limit group and key on this instance.
//!
//! Each window owns one [`WindowCount`], so racing requests are admitted
//! exactly up to the limit and never beyond, with no lock for a request that
//! counts in one window; one that also counts in its key's window holds that
//! key's gate (never a global lock) while its organization answers. State
//! lives in a [`bounded_map`]: idle organizations are evicted and the number
//! tracked never exceeds the capacity. Window math comes from
//! [`super::window`]; this module must not compute windows itself, and it
//! never shares counts with other replicas (that is [`super::RedisLimiter`]).

use std::sync::{Arc, Mutex, MutexGuard};

use moka::sync::Cache;

use super::window::{bounded_map, entry, FixedWindow, WindowCount};
use super::{Limiter, RateState, Window, WindowUse, DEFAULT_ORG_CAPACITY, MAX_WINDOWS};

/// Exact per-key fixed windows on this instance.
pub struct LocalLimiter {
    window: FixedWindow,
    counts: Cache<Arc<str>, Arc<Slot>>,
}

/// One key's window, and the gate a request holds on it while it counts in
/// a later window too (SPEC §6.1: a key's window and its organization's).
#[derive(Debug, Default)]
struct Slot {
    count: WindowCount,
    gate: Mutex<()>,
}

impl LocalLimiter {
    pub fn new(window_s: u64) -> Self {
        Self::with_capacity(window_s, DEFAULT_ORG_CAPACITY)
    }

    pub fn with_capacity(window_s: u64, capacity: u64) -> Self {
        let window = FixedWindow::new(window_s);
        LocalLimiter {
            window,
            counts: bounded_map(window, capacity),
        }
    }

    pub fn tracked(&self) -> u64 {
        self.counts.run_pending_tasks();
        self.counts.entry_count()
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        entry(&self.counts, key, |_| Arc::default())
    }
}

impl Limiter for LocalLimiter {
    /// Exact for every window: each window but the last is counted under its
    /// gate, held until the last window (the organization's, lock-free, so
    /// the common one-window request never waits) has answered. A window's
    /// count is only given back while its gate is still held, so no other
    /// request of that window ever sees a count that is undone: racing
    /// requests are admitted exactly up to each limit.
    fn charge(
        &self,
        windows: &[Window<'_>],
        cost: u64,
        now: i64,
        states: &mut [RateState],
    ) -> Option<usize> {
        let index = self.window.index(now);
        // no window: nothing refuses
        let (last, gated) = windows.split_last()?;
        debug_assert!(windows.len() <= MAX_WINDOWS && states.len() >= windows.len());
        let slots: [Option<Arc<Slot>>; MAX_WINDOWS] =
            std::array::from_fn(|i| gated.get(i).map(|w| self.slot(w.key)));
        let mut guards: [Option<MutexGuard<'_, ()>>; MAX_WINDOWS] = Default::default();
        let mut taken: [Option<u64>; MAX_WINDOWS] = [None; MAX_WINDOWS];
        // undo what the gated windows took (their gates still held), and
        // their states with it
        let give_back = |taken: &[Option<u64>; MAX_WINDOWS], states: &mut [RateState]| {
            for (i, (slot, w)) in slots.iter().zip(taken).enumerate() {
                if let (Some(slot), Some(w)) = (slot, w) {
                    slot.count.give_back(*w, cost);
                    states[i].remaining = (states[i].remaining + cost).min(gated[i].limit);
                }
            }
        };
        for (i, w) in gated.iter().enumerate() {
            let slot = slots[i].as_ref().expect("one slot per gated window");
            guards[i] = Some(slot.gate.lock().unwrap_or_else(|p| p.into_inner()));
            let take = slot.count.try_take_n(index, w.limit, cost);
            states[i] = RateState::counted(w.limit, take.used, self.window.reset(take.window));
            if !take.admitted {
                give_back(&taken, states);
                return Some(i);
            }
            taken[i] = Some(take.window);
        }
        let n = gated.len();
        let take = self
            .slot(last.key)
            .count
            .try_take_n(index, last.limit, cost);
        states[n] = RateState::counted(last.limit, take.used, self.window.reset(take.window));
        if !take.admitted {
            give_back(&taken, states);
            return Some(n);
        }
        drop(guards);
        None
    }

    fn peek(&self, key: &str, limit: u64, now: i64) -> RateState {
        let w = self.window.index(now);
        let (w, used) = match self.counts.get(key) {
            Some(slot) => slot.count.used(w),
            None => (w, 0),
        };
        RateState::counted(limit, used, self.window.reset(w))
    }

    fn export(&self) -> Vec<WindowUse> {
        self.counts
            .iter()
            .filter_map(|(key, slot)| {
                let (window, used) = slot.count.load();
                (used > 0).then(|| WindowUse {
                    key: key.to_string(),
                    window,
                    used,
                })
            })
            .collect()
    }

    fn absorb(&self, uses: &[WindowUse]) {
        for u in uses {
            self.slot(&u.key).count.add(u.window, u.used);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::ratelimit::RateOutcome;

    #[test]
    fn admits_exactly_the_limit_under_contention() {
        let l = Arc::new(LocalLimiter::new(60));
        let now = 6_000;
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let RateOutcome::Admitted(_) = l.admit("org", 100, now) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        // the next window starts fresh
        assert!(
            matches!(l.admit("org", 100, now + 60), RateOutcome::Admitted(s) if s.remaining == 99 && s.reset == 6_120)
        );
    }

    #[test]
    fn headers_state() {
        let l = LocalLimiter::new(60);
        assert_eq!(
            l.peek("o", 5, 61),
            RateState {
                limit: 5,
                remaining: 5,
                reset: 120
            }
        );
        l.admit("o", 5, 61);
        assert_eq!(l.peek("o", 5, 61).remaining, 4);
        assert_eq!(l.peek("o", 5, 61).retry_after(61), 59);
        assert_eq!(l.peek("o", 5, 119).retry_after(120), 1);
    }

    #[test]
    fn a_hand_over_adds_the_old_process_counts_to_the_same_window() {
        let old = LocalLimiter::new(60);
        for _ in 0..7 {
            old.admit("a", 10, 6_000);
        }
        old.admit("b", 10, 5_990); // an earlier window
        let new = LocalLimiter::new(60);
        new.admit("a", 10, 6_001);
        let mut uses = old.export();
        uses.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(uses.len(), 2);
        new.absorb(&uses);
        assert_eq!(new.peek("a", 10, 6_001).remaining, 2, "7 old + 1 new");
        assert_eq!(
            new.peek("b", 10, 6_001).remaining,
            10,
            "a past window is not carried"
        );
        // a window the new process has moved past is ignored
        new.admit("c", 10, 6_100);
        new.absorb(&[WindowUse {
            key: "c".into(),
            window: 100,
            used: 5,
        }]);
        assert_eq!(new.peek("c", 10, 6_100).remaining, 9);
    }

    #[test]
    fn tracked_keys_stay_bounded() {
        let l = LocalLimiter::with_capacity(60, 1000);
        for i in 0..20_000 {
            l.admit(&format!("org{i}"), 10, 100);
        }
        assert!(l.tracked() <= 1000, "{}", l.tracked());
    }

    #[test]
    fn a_request_stamped_before_the_boundary_counts_in_the_open_window() {
        let l = LocalLimiter::new(60);
        assert!(matches!(l.admit("o", 2, 60), RateOutcome::Admitted(_)));
        // Read the clock at 59, reached the limiter after the request at 60:
        // counted in window [60, 120), which it must not reopen.
        assert!(
            matches!(l.admit("o", 2, 59), RateOutcome::Admitted(s) if s.reset == 120 && s.remaining == 0)
        );
        assert!(matches!(l.admit("o", 2, 60), RateOutcome::Limited(_)));
    }

    proptest! {
        /// Whatever order calls arrive in (clocks read on several threads,
        /// or a clock stepping back), no organization is ever admitted more
        /// than `limit` times in one window, and no request is counted in a
        /// window earlier than its own.
        #[test]
        fn never_admits_more_than_the_limit_in_one_window(
            window_s in 1u64..30,
            limit in 0u64..6,
            calls in prop::collection::vec((0u8..3, 0i64..400), 0..300),
        ) {
            let win = FixedWindow::new(window_s);
            let l = LocalLimiter::new(window_s);
            let mut admitted: HashMap<(u8, i64), u64> = HashMap::new();
            for (org, now) in calls {
                let own_reset = win.reset(win.index(now));
                match l.admit(&format!("org{org}"), limit, now) {
                    RateOutcome::Admitted(s) => {
                        prop_assert!(s.reset >= own_reset);
                        let n = admitted.entry((org, s.reset)).or_default();
                        *n += 1;
                        prop_assert!(*n <= limit, "org{} window ending {}: {} > {}", org, s.reset, n, limit);
                        prop_assert_eq!(s.remaining, limit - *n);
                    }
                    RateOutcome::Limited(s) => {
                        prop_assert!(s.reset >= own_reset);
                        prop_assert_eq!(s.remaining, 0);
                    }
                }
            }
        }

        /// With the clock moving forward, each window admits exactly
        /// min(limit, offered): the limiter is exact, not just safe.
        #[test]
        fn admits_exactly_min_of_limit_and_offered_when_time_moves_forward(
            window_s in 1u64..30,
            limit in 0u64..6,
            mut calls in prop::collection::vec((0u8..3, 0i64..400), 0..300),
        ) {
            calls.sort_by_key(|&(_, now)| now);
            let win = FixedWindow::new(window_s);
            let l = LocalLimiter::new(window_s);
            let mut offered: HashMap<(u8, u64), u64> = HashMap::new();
            let mut admitted: HashMap<(u8, u64), u64> = HashMap::new();
            for (org, now) in calls {
                let w = win.index(now);
                *offered.entry((org, w)).or_default() += 1;
                if let RateOutcome::Admitted(_) = l.admit(&format!("org{org}"), limit, now) {
                    *admitted.entry((org, w)).or_default() += 1;
                }
            }
            for (k, n) in offered {
                prop_assert_eq!(admitted.get(&k).copied().unwrap_or(0), n.min(limit), "{:?}", k);
            }
        }
    }
}
