//! What the decision core may ask about credentials and the organizations
//! behind them, as one trait ([`Directory`]) so the core never sees the
//! cache, SQLite or a generation swap; the store implements it
//! ([`SnapshotDirectory`](crate::store::SnapshotDirectory)), the core's unit
//! tests use an in-memory one.

use std::sync::Arc;
use std::time::Instant;

pub use crate::auth::principal::TokenKey;
use crate::auth::principal::{McpServerRecord, Org, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no valid snapshot loaded")]
    NotLoaded,
    #[error("snapshot query failed: {0}")]
    Query(String),
}

/// A cached value with its generation, negative flag and end of life.
pub struct Entry<V> {
    pub(crate) generation: u64,
    pub(crate) negative: bool,
    /// End of the TTL of the first load: a refill on swap re-reads the value
    /// but neither extends nor shortens its life.
    pub(crate) expires: Instant,
    pub value: V,
}

impl<V> Entry<V> {
    pub(crate) fn new(
        generation: u64,
        negative: bool,
        expires: Instant,
        value: V,
    ) -> Arc<Entry<V>> {
        Arc::new(Entry {
            generation,
            negative,
            expires,
            value,
        })
    }
}

impl<V> Entry<V> {
    pub fn is_negative(&self) -> bool {
        self.negative
    }
}

impl Entry<Verdict> {
    /// A verdict outside any cache (in-memory directories, `keyward explain`).
    pub fn detached(value: Verdict) -> Arc<Entry<Verdict>> {
        let negative = value.is_negative();
        Entry::new(0, negative, Instant::now(), value)
    }
}

/// A token's verdict as the cache holds it (shared, never copied).
pub type Held = Arc<Entry<Verdict>>;

pub trait Directory {
    /// A snapshot is loaded (else every authenticated request is 503).
    fn loaded(&self) -> bool;
    /// The cached verdict for a token, if any (positive or negative),
    /// without touching the store.
    fn cached_token(&self, key: &TokenKey) -> Option<Held>;
    /// Read a token's verdict from the store and cache it. `workspace` is the
    /// workspace the request names (when known before its body): a store
    /// that reads in transactions may read its owner in the same one.
    fn load_token(&self, key: TokenKey, workspace: Option<&str>) -> Result<Held, StoreError>;
    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError>;
    /// The organization that owns a workspace.
    fn workspace_owner(&self, id: &str) -> Result<Option<Arc<str>>, StoreError>;
    /// The workspace a resource belongs to.
    fn resource_workspace(&self, id: &str) -> Result<Option<Arc<str>>, StoreError>;
    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError>;
}
