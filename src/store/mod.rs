//! What keyward knows about credentials: the read-only SQLite snapshot the
//! control plane publishes (schema, generations, watcher), the verdict cache
//! in front of it, and the [`Directory`] the decision core reads through.
//!
//! Owns all snapshot I/O and the cache's lifecycle (swap, refill); decides
//! nothing about requests.

pub mod cache;
pub mod clock;
pub mod directory;
pub mod filter;
pub mod memory;
pub mod principals;
pub mod snapshot;
pub mod source;
pub mod verdicts;

pub use directory::{Directory, SnapshotDirectory};
