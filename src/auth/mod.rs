//! The decision core (SPEC §3, §5, §5.1, §6): request facts → credential →
//! principal → route + workspace rules → limit → [`decide::Decision`].
//!
//! Owns what keyward decides, never how bytes move: nothing here knows
//! pingora, sockets, SQLite or threads. Lookups go through the
//! [`Directory`](crate::store::Directory) trait, limits through
//! [`Limiter`](crate::ratelimit::Limiter); both are passed in.

pub mod credentials;
pub mod decide;
pub mod denial;
pub mod directory;
pub mod limit;
pub mod principal;
pub mod scope;
