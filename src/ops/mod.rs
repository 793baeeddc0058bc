//! Operating keyward: the admin listener (`/metrics`, `/healthz`,
//! `/readyz`), metrics, the access log, the clock, and the embedded demo with
//! its echo upstream. Reads the engine's state; never decides a request.

pub mod access_log;
pub mod admin;
pub mod allocator;
pub mod clock;
#[cfg(feature = "server")]
pub mod demo;
pub mod echo;
pub mod explain;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "server")]
pub mod shutdown;
pub mod upgrade;
