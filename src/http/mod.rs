//! The shell: moves bytes between the client, the decision core and the
//! upstream on pingora-core. Reads the head, refuses what cannot be read one
//! way (request hygiene), gathers the facts the core reads, applies the
//! [`Decision`](crate::auth::decide::Decision) (a refusal, or the upstream
//! head with keyward's headers) and forwards. Decides nothing itself.

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod forward;
#[cfg(feature = "server")]
pub mod hygiene;
pub mod streams;
