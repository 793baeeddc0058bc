//! The verdict cache: moka, keyed by `sha256(token)` (never the token),
//! holding positive and negative verdicts, plus small caches for the
//! per-request lookups keyed by client input (organization, workspace,
//! resource, MCP server ids). Every entry remembers the snapshot generation it
//! came from and is ignored once a newer snapshot is loaded; the whole cache
//! is also cleared on every swap. Capacity-bounded: clients cannot grow it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::CacheConfig;
use crate::principal::Verdict;
use crate::snapshot::{McpServerRecord, OrgRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenTable {
    ApiKey,
    Session,
    ServiceKey,
    McpToken,
}

pub type TokenKey = (TokenTable, [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    NegativeHit,
    Miss,
}

pub struct Entry<V> {
    generation: u64,
    negative: bool,
    pub value: V,
}

struct TtlPolicy {
    ttl: Duration,
    negative_ttl: Duration,
}

impl<K, V> moka::Expiry<K, Arc<Entry<V>>> for TtlPolicy {
    fn expire_after_create(&self, _k: &K, v: &Arc<Entry<V>>, _now: Instant) -> Option<Duration> {
        Some(if v.negative {
            self.negative_ttl
        } else {
            self.ttl
        })
    }
}

fn build<K, V>(capacity: u64, cfg: &CacheConfig) -> Cache<K, Arc<Entry<V>>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(TtlPolicy {
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
        })
        .build()
}

pub type LookupCache<V> = Cache<Arc<str>, Arc<Entry<Option<V>>>>;

pub struct AuthCache {
    tokens: Cache<TokenKey, Arc<Entry<Verdict>>>,
    pub orgs: LookupCache<OrgRecord>,
    pub workspaces: LookupCache<Arc<str>>,
    pub resources: LookupCache<Arc<str>>,
    pub mcp_servers: LookupCache<McpServerRecord>,
}

impl AuthCache {
    pub fn new(cfg: &CacheConfig) -> AuthCache {
        let small = (cfg.capacity / 4).max(1024);
        AuthCache {
            tokens: build(cfg.capacity, cfg),
            orgs: build(small, cfg),
            workspaces: build(small, cfg),
            resources: build(small, cfg),
            mcp_servers: build(small, cfg),
        }
    }

    pub fn token(&self, key: &TokenKey, generation: u64) -> Option<Arc<Entry<Verdict>>> {
        self.tokens.get(key).filter(|e| e.generation == generation)
    }

    pub fn put_token(
        &self,
        key: TokenKey,
        generation: u64,
        verdict: Verdict,
    ) -> Arc<Entry<Verdict>> {
        let negative = verdict.is_negative();
        let entry = Arc::new(Entry {
            generation,
            negative,
            value: verdict,
        });
        self.tokens.insert(key, entry.clone());
        entry
    }

    /// Look `key` up in `cache`, loading (and caching, negative included) on
    /// a miss. Loader errors are not cached.
    pub fn lookup<V: Clone + Send + Sync + 'static, E>(
        cache: &LookupCache<V>,
        key: &str,
        generation: u64,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(e) = cache.get(key).filter(|e| e.generation == generation) {
            return Ok(e.value.clone());
        }
        let value = load()?;
        cache.insert(
            Arc::from(key),
            Arc::new(Entry {
                generation,
                negative: value.is_none(),
                value: value.clone(),
            }),
        );
        Ok(value)
    }

    pub fn invalidate_all(&self) {
        self.tokens.invalidate_all();
        self.orgs.invalidate_all();
        self.workspaces.invalidate_all();
        self.resources.invalidate_all();
        self.mcp_servers.invalidate_all();
    }

    pub fn token_entries(&self) -> u64 {
        self.tokens.entry_count()
    }
}

impl<V> Entry<V> {
    pub fn is_negative(&self) -> bool {
        self.negative
    }
}
