//! [`SnapshotDirectory`]: the store's [`Directory`] (the trait is the
//! core's, `auth::directory`), pinned to one snapshot generation and one
//! verdict cache for the whole request.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::auth::directory::Entry;
use crate::auth::directory::StoreError;
pub use crate::auth::directory::{Directory, Held, TokenKey};
use crate::auth::principal::{McpServerRecord, Org};
use crate::cache::{At, AuthCache, CacheCounters, CacheResult, Tombs};
use crate::principal::Verdict;
use crate::snapshot::Generation;

/// The verdict of a token the filter rules out (one shared entry).
fn unknown() -> Held {
    static UNKNOWN: OnceLock<Held> = OnceLock::new();
    UNKNOWN
        .get_or_init(|| Entry::detached(Verdict::Rejected("unknown")))
        .clone()
}

/// The snapshot and its verdict cache, pinned for one request: every lookup
/// reads the same generation, whatever swaps meanwhile.
pub struct SnapshotDirectory<'a> {
    generation: Option<Arc<Generation>>,
    cache: Arc<AuthCache>,
    counters: &'a CacheCounters,
}

impl<'a> SnapshotDirectory<'a> {
    pub fn pin(
        generation: Option<Arc<Generation>>,
        cache: Arc<AuthCache>,
        counters: &'a CacheCounters,
    ) -> SnapshotDirectory<'a> {
        SnapshotDirectory {
            generation,
            cache,
            counters,
        }
    }

    fn at(&self) -> At {
        At::of(self.generation.as_deref())
    }

    fn generation(&self) -> Result<&Generation, StoreError> {
        self.generation.as_deref().ok_or(StoreError::NotLoaded)
    }

    fn logged<T>(r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            tracing::error!(error = %e, "snapshot lookup failed");
        }
        r
    }
}

impl Directory for SnapshotDirectory<'_> {
    fn loaded(&self) -> bool {
        self.generation.is_some()
    }

    fn cached_token(&self, key: &TokenKey) -> Option<Held> {
        let entry = self.cache.token(key, self.at());
        self.counters.count(match &entry {
            Some(e) if e.is_negative() => CacheResult::NegativeHit,
            Some(_) => CacheResult::Hit,
            None => CacheResult::Miss,
        });
        entry
    }

    fn load_token(&self, key: TokenKey, workspace: Option<&str>) -> Result<Held, StoreError> {
        let gen = self.generation()?;
        // The token filter (`store::filter`): a hash in no token table of
        // this generation is `unknown` without a store lookup. Not cached:
        // the filter answers faster than the cache, and a flood of random
        // tokens would only churn it.
        let stats = gen.filter_stats();
        if gen.token_filter().rules_out(&key.1) {
            stats.ruled_out.fetch_add(1, Ordering::Relaxed);
            return Ok(unknown());
        }
        stats.passed.fetch_add(1, Ordering::Relaxed);
        let hash_hex = hex::encode(key.1);
        let cache = &self.cache;
        let verdict = Self::logged(gen.read(|r| {
            let verdict = cache.read_verdict(r, At::of(Some(gen)), key.0, &hash_hex)?;
            // One SQLite transaction per miss instead of two: the
            // transaction's locking is most of a miss's cost.
            if let (Verdict::ApiKey(_) | Verdict::Session(_), Some(ws)) = (&verdict, workspace) {
                cache.lookup(
                    &cache.workspaces,
                    Tombs::workspaces,
                    ws,
                    At::of(Some(gen)),
                    || r.workspace_org(ws).map(|o| o.map(Arc::from)),
                )?;
            }
            Ok(verdict)
        }))?;
        Ok(cache.put_token(key, gen.id, verdict))
    }

    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        let c = &self.cache;
        Self::logged(c.lookup(&c.orgs, Tombs::orgs, id, self.at(), || {
            self.generation()?.lookup(|r| r.organization(id))
        }))
    }

    fn workspace_owner(&self, id: &str) -> Result<Option<Arc<str>>, StoreError> {
        let c = &self.cache;
        Self::logged(
            c.lookup(&c.workspaces, Tombs::workspaces, id, self.at(), || {
                self.generation()?
                    .lookup(|r| r.workspace_org(id))
                    .map(|o| o.map(Arc::from))
            }),
        )
    }

    fn resource_workspace(&self, id: &str) -> Result<Option<Arc<str>>, StoreError> {
        let c = &self.cache;
        Self::logged(c.lookup(&c.resources, Tombs::resources, id, self.at(), || {
            self.generation()?
                .lookup(|r| r.resource_workspace(id))
                .map(|o| o.map(Arc::from))
        }))
    }

    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        let c = &self.cache;
        Self::logged(
            c.lookup(&c.mcp_servers, Tombs::mcp_servers, id, self.at(), || {
                self.generation()?.lookup(|r| r.mcp_server(id))
            }),
        )
    }
}
