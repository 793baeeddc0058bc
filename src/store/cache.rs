//! The verdict cache: moka, keyed by `sha256(token)` (never the token),
//! holding positive and negative verdicts, plus small caches for the
//! per-request lookups keyed by client input (organization, workspace,
//! resource, MCP server ids). Every entry remembers the snapshot generation it
//! came from and is ignored once a newer snapshot is loaded. On a swap the
//! cache is replaced by one refilled from the new generation
//! ([`AuthCache::refill`]), so the hot set stays warm and no verdict
//! outlives the snapshot it was read from. Capacity-bounded: clients cannot
//! grow it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::CacheConfig;
pub use crate::principal::TokenTable;
use crate::principal::Verdict;
use crate::snapshot::{Generation, McpServerRecord, OrgRecord, Reader, StoreError};

/// A token as the cache knows it: its table and `sha256(token)` (never the token).
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

    /// What a swap must carry over from this cache: its positive entries'
    /// keys (negative ones live seconds and may be a client's junk), with
    /// their TTL deadlines. Holding this instead of the old cache lets the
    /// old cache be freed at the swap while the refill continues.
    pub fn refill_plan(&self) -> Refill {
        fn keys<K, V>(c: &Cache<K, Arc<Entry<V>>>) -> Vec<(K, Instant)>
        where
            K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
            V: Send + Sync + 'static,
        {
            c.iter()
                .filter(|(_, e)| !e.negative)
                .map(|(k, e)| ((*k).clone(), e.expires))
                .collect()
        }
        let mut tokens = keys(&self.tokens);
        // Sorted by hash, neighbouring keys share index pages.
        tokens.sort_unstable_by_key(|&((_, hash), _)| hash);
        Refill {
            tokens,
            orgs: keys(&self.orgs),
            workspaces: keys(&self.workspaces),
            resources: keys(&self.resources),
            mcp_servers: keys(&self.mcp_servers),
        }
    }

    /// Fill this (new) cache for `gen` with the entries `plan` names, each
    /// re-read from `gen` (never copied: a key revoked, expired or changed
    /// in `gen` gets `gen`'s answer), for at most `budget`; what is done
    /// leaves `plan`, so a second call continues the first. True when
    /// `plan` is empty.
    pub fn refill(&self, plan: &mut Refill, gen: &Generation, budget: Duration) -> bool {
        let started = Instant::now();
        let deadline = started + budget;
        let before = plan.tokens.len();
        let done = refill_keys(
            &mut plan.tokens,
            &self.tokens,
            gen,
            deadline,
            |r, &(t, h)| {
                crate::store::principals::load(r, t, &hex::encode(h)).map(|v| (v.is_negative(), v))
            },
        ) && refill_keys(&mut plan.orgs, &self.orgs, gen, deadline, |r, id| {
            lookup_entry(r.organization(id)?)
        }) && refill_keys(
            &mut plan.workspaces,
            &self.workspaces,
            gen,
            deadline,
            |r, id| lookup_entry(r.workspace_org(id)?.map(Arc::from)),
        ) && refill_keys(
            &mut plan.resources,
            &self.resources,
            gen,
            deadline,
            |r, id| lookup_entry(r.resource_workspace(id)?.map(Arc::from)),
        ) && refill_keys(
            &mut plan.mcp_servers,
            &self.mcp_servers,
            gen,
            deadline,
            |r, id| lookup_entry(r.mcp_server(id)?),
        );
        tracing::info!(
            generation = gen.id,
            carried = before - plan.tokens.len(),
            left = plan.tokens.len(),
            done,
            ms = started.elapsed().as_millis() as u64,
            "verdict cache refill"
        );
        done
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

impl Entry<Verdict> {
    /// A verdict outside any cache (in-memory directories, `keyward explain`).
    pub fn detached(value: Verdict) -> Arc<Entry<Verdict>> {
        let negative = value.is_negative();
        Entry::new(0, negative, Instant::now(), value)
    }
}

/// Keys a swap carries over to the next cache ([`AuthCache::refill_plan`]).
pub struct Refill {
    tokens: Vec<(TokenKey, Instant)>,
    orgs: Vec<(Arc<str>, Instant)>,
    workspaces: Vec<(Arc<str>, Instant)>,
    resources: Vec<(Arc<str>, Instant)>,
    mcp_servers: Vec<(Arc<str>, Instant)>,
}

fn lookup_entry<V>(value: Option<V>) -> Result<(bool, Option<V>), StoreError> {
    Ok((value.is_none(), value))
}

/// Re-read `keys` with `load` into `to`, tagged with `gen`, in read
/// transactions of [`REFILL_BATCH`], until `deadline`; the keys done (and
/// any already in `to`, which requests filled) leave `keys`. Stops early at
/// the deadline or on an error (the rest then just miss, where an error
/// fails closed). True when `keys` is empty.
fn refill_keys<K, V>(
    keys: &mut Vec<(K, Instant)>,
    to: &Cache<K, Arc<Entry<V>>>,
    gen: &Generation,
    deadline: Instant,
    load: impl Fn(&Reader<'_>, &K) -> Result<(bool, V), StoreError>,
) -> bool
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut done = 0;
    for batch in keys.chunks(REFILL_BATCH) {
        if Instant::now() >= deadline {
            break;
        }
        let read = gen.read(|r| {
            batch
                .iter()
                .filter(|(key, _)| !to.contains_key(key))
                .try_for_each(|(key, expires)| {
                    let (negative, value) = load(r, key)?;
                    to.insert(key.clone(), Entry::new(gen.id, negative, *expires, value));
                    Ok(())
                })
        });
        if let Err(e) = read {
            tracing::warn!(generation = gen.id, error = %e, "verdict cache refill failed");
            break;
        }
        done += batch.len();
    }
    keys.drain(..done);
    keys.is_empty()
}
