//! keyward: an authentication sidecar on pingora. See README.md, docs/ and SPEC.md.
//!
//! Data flows one way: request bytes → [`http`] (hygiene, facts) →
//! [`auth`] (credential → principal, read through the [`store`] →
//! route + workspace rules → limit from [`ratelimit`]) → a decision that
//! [`http`] applies. [`config`] is read at start and on SIGHUP; [`ops`]
//! observes. The [`engine`] wires them per process and pins one policy and
//! snapshot generation per request.
//!
//! Layers, lowest first (a module names only its own layer or lower ones;
//! `tests/layers.rs` checks it): [`config`] → [`auth`], [`request`] (the
//! pure core) → [`store`], [`ratelimit`] → [`http`], [`engine`] → [`ops`],
//! `server`, [`sync`], the CLI. See docs/layout.md.

pub mod auth;
pub mod config;
pub mod engine;
pub mod http;
pub mod ops;
pub mod ratelimit;
pub mod request;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod sync;

// Short paths for the leaf modules (used by tests, benches, fuzz targets
// and the CLI); the folders above are where they live.
pub use auth::{credentials, denial, principal, scope};
pub use config::routes;
#[cfg(feature = "server")]
pub use http::forward;
pub use http::{access_log, metrics};
#[cfg(feature = "server")]
pub use ops::demo;
pub use ops::{admin, echo};
pub use request::forwarding;
pub use store::clock;
pub use store::{cache, snapshot};
