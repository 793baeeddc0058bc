//! The shell: moves bytes between the client, the decision core and the
//! upstream on pingora-core. Reads the head, refuses what cannot be read one
//! way (request hygiene), gathers the facts the core reads, applies the
//! [`Decision`](crate::auth::decide::Decision) (a refusal, or the upstream
//! head with keyward's headers) and forwards. Decides nothing itself.
//! Reports what it did: [`metrics`], the [`access_log`] and (feature
//! `otel`) traces.

pub mod access_log;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod connection;
#[cfg(feature = "server")]
pub mod forward;
#[cfg(feature = "server")]
pub mod forward_auth;
#[cfg(feature = "server")]
pub mod hygiene;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "server")]
pub mod proxy_protocol;
pub mod recent;
pub mod streams;
pub mod tls;
pub mod usage;
