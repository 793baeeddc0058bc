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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// One window a request counts in (SPEC §6, §6.1): the organization's
/// main window, one of its limit groups, or a key's own window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    /// the limiter's key: the organization id for its main window (see
    /// [`group_key`], [`credential_key`] for the others)
    pub key: &'a str,
    pub limit: u64,
}

/// The most windows one request counts in: its credential's and its
/// organization's (main or group).
pub const MAX_WINDOWS: usize = 2;

/// The limiter key of an organization's limit group (SPEC §6.1 route
/// `limit`). The unit separator cannot be part of a snapshot id keyward
/// serves in a header, so it cannot collide with an organization id.
pub fn group_key(org: &str, group: &str) -> String {
    format!("{org}\u{1f}g\u{1f}{group}")
}

/// The limiter key of a credential's own window (`api_keys.rate_limit`,
/// `mcp_tokens.rate_limit`), by its kind and id.
pub fn credential_key(kind: &str, id: &str) -> String {
    format!("\u{1f}k\u{1f}{kind}\u{1f}{id}")
}

/// A limiter of fixed windows per key. A shared backend (Redis) implements
/// the same trait; the proxy only sees this.
pub trait Limiter: Send + Sync {
    /// Count `cost` in every one of `windows` if each has `cost` left, else
    /// in none (SPEC §6.1: a request refused by one window uses up none).
    /// `states[i]` is set to window `i`'s state afterwards; the answer is the
    /// index of the window that refused, None when admitted. At most
    /// [`MAX_WINDOWS`] windows; racing callers are admitted exactly up to
    /// every limit when the windows come in the same order (credential
    /// first, organization last).
    fn charge(
        &self,
        windows: &[Window<'_>],
        cost: u64,
        now: i64,
        states: &mut [RateState],
    ) -> Option<usize>;
    /// Count one request for `key` if it fits under `limit`.
    fn admit(&self, key: &str, limit: u64, now: i64) -> RateOutcome {
        let mut states = [RateState::default()];
        match self.charge(&[Window { key, limit }], 1, now, &mut states) {
            None => RateOutcome::Admitted(states[0]),
            Some(_) => RateOutcome::Limited(states[0]),
        }
    }
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
