//! Operating keyward: the admin listener (`/metrics`, `/healthz`,
//! `/readyz`), `keyward explain`, shutdown and binary upgrades, the
//! allocator, and the embedded demo with its echo upstream. Reads the
//! engine's state; never decides a request.

pub mod admin;
pub mod allocator;
#[cfg(feature = "server")]
pub mod demo;
pub mod echo;
pub mod explain;
#[cfg(feature = "server")]
pub mod shutdown;
pub mod status;
pub mod upgrade;
