//! Rate limits (SPEC §6): per-organization fixed windows behind the
//! [`Limiter`] trait, and the per-IP throttle on failed authentication.
//!
//! The interface the decision core sees — [`Limiter`], [`Throttle`],
//! [`RateState`], [`RateOutcome`], [`BackendStatus`] — is the core's
//! (`auth::limit`); this module implements it. The pieces, after
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

pub use crate::auth::limit::{
    credential_key, group_key, BackendStatus, Limiter, RateOutcome, RateState, Throttle, Window,
    WindowUse, MAX_WINDOWS,
};
