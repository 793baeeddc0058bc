//! The verdict cache: moka, keyed by `sha256(token)` (never the token),
//! holding positive and negative verdicts, plus small caches for the
//! per-request lookups keyed by client input (organization, workspace,
//! resource, MCP server ids). Every entry remembers the snapshot generation it
//! came from and is ignored once a newer snapshot is loaded. On a swap the
//! cache is replaced by one refilled from the new generation
//! ([`AuthCache::refilled`]), so the hot set stays warm and no verdict
//! outlives the snapshot it was read from. Capacity-bounded: clients cannot
//! grow it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::CacheConfig;
use crate::principal::{self, Verdict};
use crate::snapshot::{Generation, McpServerRecord, OrgRecord, Reader, StoreError};

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
    /// End of the TTL of the first load: a refill on swap re-reads the value
    /// but neither extends nor shortens its life.
    expires: Instant,
    pub value: V,
}

impl<V> Entry<V> {
    fn new(generation: u64, negative: bool, expires: Instant, value: V) -> Arc<Entry<V>> {
        Arc::new(Entry {
            generation,
            negative,
            expires,
            value,
        })
    }
}

struct EntryExpiry;

impl<K, V> moka::Expiry<K, Arc<Entry<V>>> for EntryExpiry {
    fn expire_after_create(&self, _k: &K, v: &Arc<Entry<V>>, now: Instant) -> Option<Duration> {
        Some(v.expires.saturating_duration_since(now))
    }
}

fn build<K, V>(capacity: u64) -> Cache<K, Arc<Entry<V>>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(EntryExpiry)
        .build()
}

/// How long a swap may spend refilling the cache before the new generation
/// is served (keys not re-read by then just miss once): keeps a reload well
/// under a second with 100,000 cached keys.
const REFILL_BUDGET: Duration = Duration::from_millis(400);

/// Keys re-read per read transaction during a refill: amortizes the locking
/// without holding a shared lock (which would stall an in-place writer) for
/// long.
const REFILL_BATCH: usize = 512;

pub type LookupCache<V> = Cache<Arc<str>, Arc<Entry<Option<V>>>>;

pub struct AuthCache {
    ttl: Duration,
    negative_ttl: Duration,
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
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            tokens: build(cfg.capacity),
            orgs: build(small),
            workspaces: build(small),
            resources: build(small),
            mcp_servers: build(small),
        }
    }

    fn expires(&self, negative: bool) -> Instant {
        Instant::now()
            + if negative {
                self.negative_ttl
            } else {
                self.ttl
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
        let entry = Entry::new(generation, negative, self.expires(negative), verdict);
        self.tokens.insert(key, entry.clone());
        entry
    }

    /// Look `key` up in `cache`, loading (and caching, negative included) on
    /// a miss. Loader errors are not cached.
    pub fn lookup<V: Clone + Send + Sync + 'static, E>(
        &self,
        cache: &LookupCache<V>,
        key: &str,
        generation: u64,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(e) = cache.get(key).filter(|e| e.generation == generation) {
            return Ok(e.value.clone());
        }
        let value = load()?;
        let negative = value.is_none();
        let entry = Entry::new(generation, negative, self.expires(negative), value.clone());
        cache.insert(Arc::from(key), entry);
        Ok(value)
    }

    /// A new cache for `gen` holding the positive entries of `self`, each
    /// re-read from `gen` (never copied: a key revoked, expired or changed in
    /// `gen` gets `gen`'s answer), within [`REFILL_BUDGET`]. Negative entries
    /// are not carried: they live seconds and may be a client's junk. Runs on
    /// the reload thread before `gen` is served.
    pub fn refilled(&self, cfg: &CacheConfig, gen: &Generation) -> AuthCache {
        let fresh = AuthCache::new(cfg);
        let deadline = Instant::now() + REFILL_BUDGET;
        // Sorted by hash, neighbouring keys share index pages.
        let mut tokens: Vec<_> = self
            .tokens
            .iter()
            .filter(|(_, e)| !e.negative)
            .map(|(k, e)| (*k, e.expires))
            .collect();
        tokens.sort_unstable_by_key(|&((_, hash), _)| hash);
        let refill = |r: &Reader<'_>, &((table, hash), expires): &(TokenKey, Instant)| {
            let verdict = principal::load(r, table, &hex::encode(hash))?;
            let negative = verdict.is_negative();
            let entry = Entry::new(gen.id, negative, expires, verdict);
            fresh.tokens.insert((table, hash), entry);
            Ok(())
        };
        let done = refill_batches(gen, &tokens, deadline, refill)
            && refill_lookups(&self.orgs, &fresh.orgs, gen, deadline, |r, id| {
                r.organization(id)
            })
            && refill_lookups(
                &self.workspaces,
                &fresh.workspaces,
                gen,
                deadline,
                |r, id| Ok(r.workspace_org(id)?.map(Arc::from)),
            )
            && refill_lookups(&self.resources, &fresh.resources, gen, deadline, |r, id| {
                Ok(r.resource_workspace(id)?.map(Arc::from))
            })
            && refill_lookups(
                &self.mcp_servers,
                &fresh.mcp_servers,
                gen,
                deadline,
                |r, id| r.mcp_server(id),
            );
        if !done {
            tracing::warn!(
                generation = gen.id,
                "verdict cache refill stopped early (time budget or SQLite error); the rest will miss once"
            );
        }
        fresh
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

/// `refill` each item in read transactions of [`REFILL_BATCH`] until
/// `deadline`. False when stopped early (deadline, or an error: the item
/// then just misses later, where an error fails closed).
fn refill_batches<T>(
    gen: &Generation,
    items: &[T],
    deadline: Instant,
    refill: impl Fn(&Reader<'_>, &T) -> Result<(), StoreError>,
) -> bool {
    for batch in items.chunks(REFILL_BATCH) {
        if Instant::now() >= deadline {
            return false;
        }
        if let Err(e) = gen.read(|r| batch.iter().try_for_each(|item| refill(r, item))) {
            tracing::warn!(generation = gen.id, error = %e, "verdict cache refill failed");
            return false;
        }
    }
    true
}

fn refill_lookups<V: Clone + Send + Sync + 'static>(
    from: &LookupCache<V>,
    to: &LookupCache<V>,
    gen: &Generation,
    deadline: Instant,
    load: impl Fn(&Reader<'_>, &str) -> Result<Option<V>, StoreError>,
) -> bool {
    let keys: Vec<_> = from
        .iter()
        .filter(|(_, e)| !e.negative)
        .map(|(k, e)| (Arc::clone(&*k), e.expires))
        .collect();
    refill_batches(gen, &keys, deadline, |r, (key, expires)| {
        let value = load(r, key)?;
        let entry = Entry::new(gen.id, value.is_none(), *expires, value);
        to.insert(Arc::clone(key), entry);
        Ok(())
    })
}
