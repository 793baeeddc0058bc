//! The decision core (SPEC §3, §5, §5.1, §6): request facts → credential →
//! principal → route + workspace rules → limit → [`decide::Decision`].
//!
//! Owns what keyward decides, never how bytes move: nothing here knows
//! pingora, sockets, SQLite or threads. It owns the traits it reads
//! through — [`directory::Directory`] for lookups, [`limit::Limiter`] and
//! [`limit::Throttle`] for limits — and the store and the limiters, a layer
//! up, implement them (docs/layout.md).

pub mod credentials;
pub mod decide;
pub mod denial;
pub mod directory;
pub mod limit;
pub mod principal;
pub mod scope;
