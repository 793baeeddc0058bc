//! Rate limits (SPEC §6): per-organization fixed windows behind the
//! [`Limiter`] trait, and the per-IP throttle on failed authentication.
//!
//! This module owns the interface the decision core sees — [`Limiter`],
//! [`RateState`], [`RateOutcome`], [`BackendStatus`] — and nothing else; it
//! must not hold counting logic of its own. The pieces, after
//! envoyproxy/ratelimit's `algorithm/` + one folder per backend:
//!
//! * `window` — the window math (aligned to multiples of `window_s` since
//!   the epoch, reset, `Retry-After`), the exact lock-free per-key counter
//!   and the bounded moka map, written once for everything below.
//! * `local` — [`LocalLimiter`]: exact windows on this instance.
//! * `redis` — [`RedisLimiter`]: one window per organization shared by
//!   every replica through Redis, with a local fallback while it is down.
//! * `throttle` — [`AuthFailureThrottle`], [`throttle_key`]: failed
//!   authentications per client IP (IPv6 per /64).
//!
//! Nothing here reads the clock: every call takes `now` in unix seconds.

mod local;
mod redis;
mod throttle;
mod window;

pub use self::local::LocalLimiter;
pub use self::redis::RedisLimiter;
pub use self::throttle::{throttle_key, AuthFailureThrottle};
pub use crate::forwarding::client_ip;

/// Most organizations tracked at once (~120 bytes each: ≈ 32 MiB at most).
pub const DEFAULT_ORG_CAPACITY: u64 = 262_144;

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
        window::retry_after(self.reset, now)
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
