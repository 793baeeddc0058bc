//! The snapshot store (SPEC §1–2): a read-only SQLite file published by the
//! control plane, validated before use, watched for new versions (atomic
//! rename or in-place change via `PRAGMA data_version`) and swapped
//! atomically. Lookups run on the calling thread through a read-only
//! connection the generation lends (cached prepared statements, one read
//! transaction per cache miss): an indexed point read costs a few
//! microseconds, far less than a hop to a blocking pool would. Never writes
//! the file.

pub mod changes;
mod generation;
mod records;
pub mod schema;
mod token_filter;
mod watch;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

pub use crate::auth::directory::StoreError;
pub use crate::auth::principal::{McpAuthMode, McpServerRecord, Org, OrgRecord};
pub use changes::{Change, Fallback};
pub use generation::*;
pub use records::*;
use schema::PolicyColumns;
pub use token_filter::*;
use watch::*;

use crate::store::filter::{self, GenFilter, TokenFilter};

use arc_swap::ArcSwapOption;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// swaps that kept the verdict cache (`keyward_snapshot_swaps_total{path="incremental"}`)
    pub incremental: AtomicU64,
    /// swaps that refilled it, per [`Fallback::ALL`] reason
    pub full: [AtomicU64; 6],
}

type SwapListener = Box<dyn Fn(&Generation) + Send + Sync>;

/// Queries per table in [`TABLES`] order.
type Lookups = [AtomicU64; 8];

pub struct SnapshotStore {
    path: PathBuf,
    current: ArcSwapOption<Generation>,
    /// The generation the last swap replaced, dropped by the reload thread
    /// on its next poll rather than by whichever worker thread happens to
    /// release it last: closing the last descriptor of a replaced (unlinked)
    /// file frees all its pages, which took a worker up to 260 ms at 1M keys.
    retired: Mutex<Option<Arc<Generation>>>,
    next_generation: AtomicU64,
    pub reloads: ReloadStats,
    lookups: Arc<Lookups>,
    /// What the token filter did (`keyward_token_filter_*`).
    pub filter_stats: Arc<FilterStats>,
    /// The generation whose filter chain should be built (the newest one
    /// started without a filter): older builds still queued skip.
    filter_wanted: Arc<AtomicU64>,
    /// One filter build at a time.
    filter_build: Arc<Mutex<()>>,
    before_swap: Mutex<Vec<SwapListener>>,
    listeners: Mutex<Vec<SwapListener>>,
}

#[cfg(test)]
mod tests;
