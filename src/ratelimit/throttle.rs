//! The per-IP throttle on failed authentication (SPEC §6): presented
//! credentials that fail are counted per client IP — IPv4 address, or the
//! /64 of an IPv6 one — and past `rate_limit.auth_failures_per_ip` in a
//! window the IP is refused until the window ends.
//!
//! It only counts and answers; it must not decide what counts as a failure
//! or which IP is the client (the decision core and
//! [`client_ip`](super::client_ip) do), and it never counts a request that
//! presented no credential. Window math and the bounded map come from
//! [`super::window`]; memory is bounded like the organization limiter's.

use std::net::IpAddr;
use std::sync::Arc;

use moka::sync::Cache;

use super::window::{bounded_map, retry_after, FixedWindow, WindowCount};

/// Most client IPs (or IPv6 /64s) tracked at once.
const IP_CAPACITY: u64 = 100_000;

/// Failed authentications per client IP (SPEC §6).
pub struct AuthFailureThrottle {
    limit: u64,
    window: FixedWindow,
    counts: Cache<IpAddr, Arc<WindowCount>>,
}

impl AuthFailureThrottle {
    pub fn new(window_s: u64, limit: u64) -> Self {
        let window = FixedWindow::new(window_s);
        AuthFailureThrottle {
            limit,
            window,
            counts: bounded_map(window, IP_CAPACITY),
        }
    }

    /// Seconds until the IP may try again, when it is over the limit.
    pub fn blocked(&self, ip: IpAddr, now: i64) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let count = self.counts.get(&throttle_key(ip))?;
        let (w, used) = count.used(self.window.index(now));
        (used >= self.limit).then(|| retry_after(self.window.reset(w), now))
    }

    /// Count one failed authentication of a presented credential (a request
    /// with no credential at all is never counted: behind NAT that would
    /// lock every user of the address out, SPEC §6).
    pub fn record_failure(&self, ip: IpAddr, now: i64) {
        if self.limit == 0 {
            return;
        }
        let count = self.counts.get_with(throttle_key(ip), Default::default);
        let _ = count.try_take(self.window.index(now), self.limit);
    }
}

impl crate::auth::limit::Throttle for AuthFailureThrottle {
    fn blocked(&self, ip: IpAddr, now: i64) -> Option<u64> {
        AuthFailureThrottle::blocked(self, ip, now)
    }

    fn record_failure(&self, ip: IpAddr, now: i64) {
        AuthFailureThrottle::record_failure(self, ip, now)
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
    fn blocked_until_the_window_ends() {
        let t = AuthFailureThrottle::new(60, 1);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        t.record_failure(ip, 1000);
        assert_eq!(t.blocked(ip, 1000), Some(20), "window [960, 1020)");
        assert_eq!(t.blocked(ip, 1019), Some(1));
        assert_eq!(t.blocked(ip, 1020), None, "the next window starts fresh");
    }

    #[test]
    fn a_zero_limit_never_throttles() {
        let t = AuthFailureThrottle::new(60, 0);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        t.record_failure(ip, 1000);
        assert_eq!(t.blocked(ip, 1000), None);
    }
}
