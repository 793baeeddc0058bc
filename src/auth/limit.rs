//! What the decision core asks of a limiter (SPEC §6): the [`Limiter`]
//! trait for per-organization windows, the [`Throttle`] trait for failed
//! authentications per client IP, and the values they answer with. The
//! counting lives in `crate::ratelimit`, which implements both.

use std::net::IpAddr;

/// `Retry-After`: max(1, ceil(reset − now)) (whole seconds, so ceil is exact).
pub fn retry_after(reset: i64, now: i64) -> u64 {
    (reset - now).max(1) as u64
}

/// Failed authentications per client IP: whether an address is blocked now
/// (with its `Retry-After`), and counting one more failure.
pub trait Throttle: Send + Sync {
    fn blocked(&self, ip: IpAddr, now: i64) -> Option<u64>;
    fn record_failure(&self, ip: IpAddr, now: i64);
}

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
        retry_after(self.reset, now)
    }

    /// The state of a window ending at `reset` in which `used` of `limit`
    /// are taken.
    pub(crate) fn counted(limit: u64, used: u64, reset: i64) -> Self {
        RateState {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        }
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
    /// The windows this instance counts itself, for a binary upgrade's
    /// hand-over (`keyward run --upgrade`); empty where the counts live in a
    /// shared backend.
    fn export(&self) -> Vec<WindowUse> {
        Vec::new()
    }
    /// Add what another process admitted (the hand-over's counts) to this
    /// instance's windows; a window that has already ended here is ignored.
    fn absorb(&self, _uses: &[WindowUse]) {}
}

/// Requests one organization was admitted in one window (an upgrade's
/// hand-over between the old and the new process).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowUse {
    pub key: String,
    pub window: u64,
    pub used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: &'static str,
    pub up: bool,
}
