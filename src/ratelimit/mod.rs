//! Rate limits (SPEC §6): exact fixed windows per organization behind the
//! [`Limiter`] trait, and the per-IP throttle on failed authentication.
//!
//! Each key owns one `AtomicU64` packing (window index << 32 | count);
//! admission is a compare-and-swap loop, so racing requests are admitted
//! exactly up to the limit and never beyond, with no lock. Windows are
//! aligned to multiples of `window_s` since the epoch. State lives in a
//! bounded moka cache with time-to-idle: idle keys are evicted, and the
//! number of tracked keys never exceeds the capacity.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

pub mod shared;
pub use shared::RedisLimiter;

/// What the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: u64,
    pub remaining: u64,
    /// unix seconds at which the current window ends
    pub reset: i64,
}

impl RateState {
    /// `Retry-After`: max(1, ceil(reset − now)).
    pub fn retry_after(&self, now: i64) -> u64 {
        (self.reset - now).max(1) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    Admitted(RateState),
    Limited(RateState),
}

/// A per-organization limiter. A shared backend (Redis) implements the same
/// trait; the proxy only sees this.
pub trait Limiter: Send + Sync {
    /// Count one request for `key` if it fits under `limit`.
    fn admit(&self, key: &str, limit: u64, now: i64) -> RateOutcome;
    /// The current state without counting (for denied responses).
    fn peek(&self, key: &str, limit: u64, now: i64) -> RateState;
    /// Which backend, and whether it is usable (for metrics and /readyz).
    fn status(&self) -> BackendStatus {
        BackendStatus {
            backend: "local",
            up: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: &'static str,
    pub up: bool,
}

#[derive(Default)]
struct Window(AtomicU64);

const COUNT_MASK: u64 = 0xffff_ffff;

impl Window {
    fn try_take(&self, window: u64, limit: u64) -> (bool, u64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (w, c) = (cur >> 32, cur & COUNT_MASK);
            let used = if w == window { c } else { 0 };
            if used >= limit {
                return (false, used);
            }
            let next = (window << 32) | (used + 1);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return (true, used + 1),
                Err(actual) => cur = actual,
            }
        }
    }

    fn used(&self, window: u64) -> u64 {
        let cur = self.0.load(Ordering::Relaxed);
        if cur >> 32 == window {
            cur & COUNT_MASK
        } else {
            0
        }
    }
}

struct Windows<K: Hash + Eq + Send + Sync + 'static> {
    window_s: u64,
    map: Cache<K, Arc<Window>>,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> Windows<K> {
    fn new(window_s: u64, capacity: u64) -> Self {
        Windows {
            window_s,
            map: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(window_s.saturating_mul(2).max(2)))
                .build(),
        }
    }

    fn index(&self, now: i64) -> (u64, i64) {
        let w = now.max(0) as u64 / self.window_s;
        (w, ((w + 1) * self.window_s) as i64)
    }
}

/// Exact per-key fixed windows on this instance.
pub struct LocalLimiter {
    windows: Windows<Arc<str>>,
}

/// Most organizations tracked at once (~120 bytes each: ≈ 32 MiB at most).
pub const DEFAULT_ORG_CAPACITY: u64 = 262_144;

impl LocalLimiter {
    pub fn new(window_s: u64) -> Self {
        Self::with_capacity(window_s, DEFAULT_ORG_CAPACITY)
    }

    pub fn with_capacity(window_s: u64, capacity: u64) -> Self {
        LocalLimiter {
            windows: Windows::new(window_s, capacity),
        }
    }

    pub fn tracked(&self) -> u64 {
        self.windows.map.run_pending_tasks();
        self.windows.map.entry_count()
    }
}

impl Limiter for LocalLimiter {
    fn admit(&self, key: &str, limit: u64, now: i64) -> RateOutcome {
        let (w, reset) = self.windows.index(now);
        let win = match self.windows.map.get(key) {
            Some(win) => win,
            None => self.windows.map.get_with(Arc::from(key), Default::default),
        };
        let (ok, used) = win.try_take(w, limit.min(COUNT_MASK));
        let state = RateState {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        };
        if ok {
            RateOutcome::Admitted(state)
        } else {
            RateOutcome::Limited(state)
        }
    }

    fn peek(&self, key: &str, limit: u64, now: i64) -> RateState {
        let (w, reset) = self.windows.index(now);
        let used = self
            .windows
            .map
            .get(key)
            .map(|win| win.used(w))
            .unwrap_or(0);
        RateState {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        }
    }
}

/// Failed authentications per client IP (SPEC §6).
pub struct AuthFailureThrottle {
    limit: u64,
    windows: Windows<IpAddr>,
}

impl AuthFailureThrottle {
    pub fn new(window_s: u64, limit: u64) -> Self {
        AuthFailureThrottle {
            limit,
            windows: Windows::new(window_s, 100_000),
        }
    }

    /// Seconds until the IP may try again, when it is over the limit.
    pub fn blocked(&self, ip: IpAddr, now: i64) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let (w, reset) = self.windows.index(now);
        let win = self.windows.map.get(&throttle_key(ip))?;
        (win.used(w) >= self.limit).then(|| (reset - now).max(1) as u64)
    }

    /// Count one failed authentication of a presented credential (a request
    /// with no credential at all is never counted: behind NAT that would
    /// lock every user of the address out, SPEC §6).
    pub fn record_failure(&self, ip: IpAddr, now: i64) {
        if self.limit == 0 {
            return;
        }
        let (w, _) = self.windows.index(now);
        let win = self
            .windows
            .map
            .get_with(throttle_key(ip), Default::default);
        let _ = win.try_take(w, self.limit);
    }
}

/// What the throttle counts under: an IPv4 address, or the /64 of an IPv6
/// one (one host gets a whole /64 to rotate through). IPv4-mapped IPv6
/// addresses count as their IPv4 address.
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

pub use crate::forwarding::client_ip;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_throttled_per_slash_64() {
        let t = AuthFailureThrottle::new(60, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        t.record_failure(a, 1000);
        assert!(t.blocked(b, 1000).is_none());
        t.record_failure(b, 1000);
        assert!(t.blocked(a, 1000).is_some(), "same /64");
        assert!(t.blocked(other, 1000).is_none(), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(throttle_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

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
    fn tracked_keys_stay_bounded() {
        let l = LocalLimiter::with_capacity(60, 1000);
        for i in 0..20_000 {
            l.admit(&format!("org{i}"), 10, 100);
        }
        assert!(l.tracked() <= 1000, "{}", l.tracked());
    }
}
