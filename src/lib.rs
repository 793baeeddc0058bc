//! keyward: an authentication sidecar on pingora. See README.md and SPEC.md.
//!
//! Data flows one way: request bytes → [`credentials`] → [`principal`]
//! (cached in [`cache`], loaded from [`snapshot`]) → [`routes`] + [`scope`] →
//! [`ratelimit`] → [`decision`] → [`proxy`] applies it.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod decision;
#[cfg(feature = "server")]
pub mod demo;
pub mod denial;
pub mod echo;
#[cfg(feature = "server")]
pub mod forward;
pub mod forwarding;
pub mod metrics;
pub mod principal;
#[cfg(feature = "server")]
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod scope;
#[cfg(feature = "server")]
pub mod server;
pub mod snapshot;
