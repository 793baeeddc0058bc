//! The verdict cache: moka, keyed by `sha256(token)` (never the token),
//! holding positive and negative verdicts, plus small caches for the
//! per-request lookups keyed by client input (organization, workspace,
//! resource, MCP server ids). Every entry remembers the snapshot generation it
//! came from. On a full swap (a new file, or an in-place change that did
//! not say what it changed) the cache is refilled in place from the new
//! generation ([`AuthCache::refill`]), so the hot set stays warm and no
//! verdict outlives the snapshot it was read from. On an incremental swap
//! (SPEC §2.1) the same cache goes on and only what changed is dropped, by
//! [`Tombs`]. Capacity-bounded: clients cannot grow it.
//!
//! # Which entry answers a request
//!
//! A request pinned to generation G accepts an entry tagged with generation
//! E when `G.cache_base() <= E <= G` (the base is G's own id after a full
//! load, inherited on an incremental one; never newer, see [`At::accepts`])
//! and no tombstone names the entry's key, or a row its
//! verdict embeds (its organization, its MCP server), with a generation
//! newer than E. Why tombstones rather than only replacing the changed
//! entries: a request pinned to the generation before a change may have
//! read the row just before the commit and insert its (now stale) verdict
//! after the watcher replaced that key's entry; or moka may evict or not
//! admit the fresh entry (TinyLFU) and then admit the late stale one. Either
//! way the stale entry is tagged with the older generation, which the
//! tombstone (set before the new generation is served) outvotes, so it can
//! never answer a request of a newer generation; it only costs a miss. A
//! verdict that embeds an organization or MCP server is outvoted by that
//! row's tombstone too, so dependents need not be found one by one.
//! Inserts also never replace an entry tagged with a newer generation
//! (per-key atomic `and_compute_with`), so the fresh verdict the watcher
//! writes for a changed key normally stays.
//!
//! A tombstone for generation T matters only to entries tagged before T,
//! which requests pinned to a generation before T inserted; those expire
//! within the TTL of their insertion, so tombstones are dropped
//! [`TOMB_GRACE`] after the longest TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use moka::ops::compute::Op;
use moka::sync::Cache;

pub use crate::auth::directory::Entry;
use crate::config::CacheConfig;
use crate::principal::Verdict;
pub use crate::principal::{TokenKey, TokenTable};
use crate::snapshot::{
    ApiKeyRecord, Change, Generation, McpServerRecord, McpTokenRecord, Org, Reader,
    ServiceKeyRecord, SessionRecord, StoreError,
};
use crate::store::principals::Rows;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    NegativeHit,
    Miss,
}

/// `keyward_cache_lookups_total{result}`'s children, resolved once: the
/// directory counts each lookup, the shell's registry exports them.
pub struct CacheCounters {
    hit: prometheus::IntCounter,
    miss: prometheus::IntCounter,
    negative: prometheus::IntCounter,
}

impl CacheCounters {
    pub fn new(vec: &prometheus::IntCounterVec) -> CacheCounters {
        CacheCounters {
            hit: vec.with_label_values(&["hit"]),
            miss: vec.with_label_values(&["miss"]),
            negative: vec.with_label_values(&["negative_hit"]),
        }
    }

    pub fn count(&self, r: CacheResult) {
        match r {
            CacheResult::Hit => self.hit.inc(),
            CacheResult::Miss => self.miss.inc(),
            CacheResult::NegativeHit => self.negative.inc(),
        }
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

/// How long past the longest TTL a tombstone is kept: covers requests
/// pinned to an older generation that insert late (after reading a body).
pub const TOMB_GRACE: Duration = Duration::from_secs(300);
/// Most tombstones kept; an incremental change that would exceed it takes
/// the full path instead (which ignores every older entry, so needs none).
pub const TOMB_CAP: usize = 200_000;

type Ids = HashMap<Arc<str>, u64>;

/// Keys changed in place (SPEC §2.1), each with the generation that changed
/// it: an entry tagged with an older generation is not the answer (see the
/// module documentation). Copy-on-write: only the watcher writes.
#[derive(Default, Clone)]
pub struct Tombs {
    tokens: HashMap<TokenKey, u64>,
    orgs: Ids,
    workspaces: Ids,
    resources: Ids,
    mcp_servers: Ids,
    /// generation and when its tombstones were set, oldest first
    set: VecDeque<(u64, Instant)>,
}

impl Tombs {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
            + self.orgs.len()
            + self.workspaces.len()
            + self.resources.len()
            + self.mcp_servers.len()
    }

    pub fn orgs(&self) -> &Ids {
        &self.orgs
    }
    pub fn workspaces(&self) -> &Ids {
        &self.workspaces
    }
    pub fn resources(&self) -> &Ids {
        &self.resources
    }
    pub fn mcp_servers(&self) -> &Ids {
        &self.mcp_servers
    }

    fn newer(map: &Ids, id: &str, than: u64) -> bool {
        map.get(id).is_some_and(|&t| t > than)
    }

    /// A token entry tagged `generation` holding `v` is outvoted.
    fn token_dead(&self, key: &TokenKey, v: &Verdict, generation: u64) -> bool {
        if self.tokens.get(key).is_some_and(|&t| t > generation) {
            return true;
        }
        let org = |id: Option<&str>| id.is_some_and(|id| Self::newer(&self.orgs, id, generation));
        match v {
            Verdict::ApiKey(k) => org(Some(&k.org_id)),
            Verdict::Session(s) => org(s.active_org_id.as_deref()),
            Verdict::Mcp(m) => {
                Self::newer(&self.mcp_servers, &m.server_id, generation)
                    || org(m.server.as_ref().map(|s| s.organization_id.as_str()))
            }
            Verdict::ServiceKey(_) | Verdict::Rejected(_) => false,
        }
    }

    /// These tombstones plus `changes` made by `generation`, without the
    /// ones older than `keep`; None when that would exceed [`TOMB_CAP`].
    pub fn with(&self, changes: &[Change], generation: u64, keep: Duration) -> Option<Tombs> {
        let mut t = self.clone();
        let now = Instant::now();
        // Drop generations whose tombstones were set more than `keep` ago.
        let mut cut = None;
        while let Some(&(g, at)) = t.set.front() {
            if now.duration_since(at) <= keep {
                break;
            }
            cut = Some(g);
            t.set.pop_front();
        }
        if let Some(cut) = cut {
            t.tokens.retain(|_, g| *g > cut);
            for m in [
                &mut t.orgs,
                &mut t.workspaces,
                &mut t.resources,
                &mut t.mcp_servers,
            ] {
                m.retain(|_, g| *g > cut);
            }
        }
        for c in changes {
            match c {
                Change::Token(table, hash) => {
                    t.tokens.insert((*table, *hash), generation);
                }
                Change::Organization(id) => {
                    t.orgs.insert(Arc::from(id.as_str()), generation);
                }
                Change::Workspace(id) => {
                    t.workspaces.insert(Arc::from(id.as_str()), generation);
                }
                Change::Resource(id) => {
                    t.resources.insert(Arc::from(id.as_str()), generation);
                }
                Change::McpServer(id) => {
                    t.mcp_servers.insert(Arc::from(id.as_str()), generation);
                }
            }
        }
        t.set.push_back((generation, now));
        (t.len() <= TOMB_CAP).then_some(t)
    }
}

/// The tombstones every cache of one [`crate::store::verdicts::Verdicts`] reads.
pub type SharedTombs = Arc<ArcSwap<Tombs>>;

/// The generation a request is pinned to, as the cache needs it.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// what new entries are tagged with
    pub id: u64,
    /// the oldest tag accepted ([`Generation::cache_base`])
    pub base: u64,
}

impl At {
    /// An entry tagged `generation` may answer a request pinned here: not
    /// older than the base, and not newer than the request's own
    /// generation. Entries of a newer generation go into the cache a
    /// request may still read (an incremental change's keys before that
    /// generation is served; a full swap's refill while requests of the one
    /// before are in flight); such a request must not combine them with
    /// rows it reads from its own file (a key it reads as active with an organization the next
    /// snapshot re-enabled, when the next one revoked the key). It misses
    /// and reads its own generation instead; its insert then keeps the
    /// newer entry (`put_unless_newer`).
    pub fn accepts(&self, generation: u64) -> bool {
        (self.base..=self.id).contains(&generation)
    }

    pub fn of(gen: Option<&Generation>) -> At {
        match gen {
            Some(g) => At {
                id: g.id,
                base: g.cache_base(),
            },
            // nothing loaded: nothing cached is an answer
            None => At {
                id: 0,
                base: u64::MAX,
            },
        }
    }
}

/// Insert `entry` unless the key holds one tagged with a newer generation.
fn put_unless_newer<K, V>(cache: &Cache<K, Arc<Entry<V>>>, key: K, entry: Arc<Entry<V>>)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    cache.entry(key).and_compute_with(|cur| match cur {
        Some(c) if c.value().generation > entry.generation => Op::Nop,
        _ => Op::Put(entry),
    });
}

/// The rows of `reader`, except that organizations come from `cache`'s
/// organization lookups (read once, then shared): every verdict of one
/// organization holds the same record instead of a copy per key (about 100
/// bytes a cached key, benches/memory.rs).
struct SharedOrgs<'a, 'r> {
    cache: &'a AuthCache,
    reader: &'a Reader<'r>,
    at: At,
}

impl Rows for SharedOrgs<'_, '_> {
    fn api_key(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.reader.api_key(hash_hex)
    }
    fn session(&self, hash_hex: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.reader.session(hash_hex)
    }
    fn service_key(&self, hash_hex: &str) -> Result<Option<ServiceKeyRecord>, StoreError> {
        self.reader.service_key(hash_hex)
    }
    fn mcp_token(&self, hash_hex: &str) -> Result<Option<McpTokenRecord>, StoreError> {
        self.reader.mcp_token(hash_hex)
    }
    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        self.reader.mcp_server(id)
    }
    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        let c = self.cache;
        c.lookup(&c.orgs, Tombs::orgs, id, self.at, || {
            self.reader.organization(id)
        })
    }
}

pub struct AuthCache {
    ttl: Duration,
    negative_ttl: Duration,
    tombs: SharedTombs,
    tokens: Cache<TokenKey, Arc<Entry<Verdict>>>,
    pub orgs: LookupCache<Org>,
    pub workspaces: LookupCache<Arc<str>>,
    pub resources: LookupCache<Arc<str>>,
    pub mcp_servers: LookupCache<McpServerRecord>,
}

impl AuthCache {
    pub fn new(cfg: &CacheConfig) -> AuthCache {
        AuthCache::with_tombs(cfg, SharedTombs::default())
    }

    /// A cache reading `tombs` (shared with the caches it replaces or that
    /// replace it).
    pub fn with_tombs(cfg: &CacheConfig, tombs: SharedTombs) -> AuthCache {
        let small = (cfg.capacity / 4).max(1024);
        AuthCache {
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            tombs,
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

    /// The entry for `key` that answers a request pinned `at` (see the
    /// module documentation).
    pub fn token(&self, key: &TokenKey, at: At) -> Option<Arc<Entry<Verdict>>> {
        let e = self.tokens.get(key)?;
        if !at.accepts(e.generation) {
            return None;
        }
        let tombs = self.tombs.load();
        if !tombs.is_empty() && tombs.token_dead(key, &e.value, e.generation) {
            return None;
        }
        Some(e)
    }

    /// What generation `at` (read through `reader`, inside its
    /// transaction) says the token hashed to `hash_hex` is, sharing this
    /// cache's organization records.
    pub fn read_verdict(
        &self,
        reader: &Reader<'_>,
        at: At,
        table: TokenTable,
        hash_hex: &str,
    ) -> Result<Verdict, StoreError> {
        let rows = SharedOrgs {
            cache: self,
            reader,
            at,
        };
        crate::store::principals::load(&rows, table, hash_hex)
    }

    pub fn put_token(
        &self,
        key: TokenKey,
        generation: u64,
        verdict: Verdict,
    ) -> Arc<Entry<Verdict>> {
        let negative = verdict.is_negative();
        let entry = Entry::new(generation, negative, self.expires(negative), verdict);
        put_unless_newer(&self.tokens, key, entry.clone());
        entry
    }

    /// Look `key` up in `cache` (whose tombstones `tombs` selects), loading
    /// (and caching, negative included) on a miss. Loader errors are not
    /// cached.
    pub fn lookup<V: Clone + Send + Sync + 'static, E>(
        &self,
        cache: &LookupCache<V>,
        tombs: fn(&Tombs) -> &Ids,
        key: &str,
        at: At,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(e) = cache.get(key).filter(|e| {
            at.accepts(e.generation) && {
                let t = self.tombs.load();
                t.is_empty() || !Tombs::newer(tombs(&t), key, e.generation)
            }
        }) {
            return Ok(e.value.clone());
        }
        let value = load()?;
        let negative = value.is_none();
        let entry = Entry::new(at.id, negative, self.expires(negative), value.clone());
        put_unless_newer(cache, Arc::from(key), entry);
        Ok(value)
    }

    /// Apply an incremental generation's `changes` to this cache: the
    /// tombstones first, then every changed key this cache holds re-read
    /// from `gen` (tagged with it, keeping its TTL deadline), so hot keys
    /// stay hits. Dependents (keys of a changed organization or MCP server)
    /// are outvoted by the tombstones and re-read by the next request.
    /// False (nothing changed) when the tombstones would exceed
    /// [`TOMB_CAP`]: the caller takes the full path.
    pub fn apply(&self, gen: &Generation, changes: &[Change]) -> bool {
        let keep = self.ttl.max(self.negative_ttl) + TOMB_GRACE;
        let Some(tombs) = self.tombs.load().with(changes, gen.id, keep) else {
            return false;
        };
        self.tombs.store(Arc::new(tombs));
        let started = Instant::now();
        let mut plan = Refill {
            tokens: Vec::new(),
            orgs: Vec::new(),
            workspaces: Vec::new(),
            resources: Vec::new(),
            mcp_servers: Vec::new(),
        };
        fn held<K, V>(c: &Cache<K, Arc<Entry<V>>>, k: K, to: &mut Vec<(K, Instant)>)
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
            V: Send + Sync + 'static,
        {
            if let Some(e) = c.get(&k) {
                to.push((k, e.expires));
            }
        }
        for c in changes {
            match c {
                Change::Token(t, h) => held(&self.tokens, (*t, *h), &mut plan.tokens),
                Change::Organization(id) => {
                    held(&self.orgs, Arc::from(id.as_str()), &mut plan.orgs)
                }
                Change::Workspace(id) => held(
                    &self.workspaces,
                    Arc::from(id.as_str()),
                    &mut plan.workspaces,
                ),
                Change::Resource(id) => {
                    held(&self.resources, Arc::from(id.as_str()), &mut plan.resources)
                }
                Change::McpServer(id) => held(
                    &self.mcp_servers,
                    Arc::from(id.as_str()),
                    &mut plan.mcp_servers,
                ),
            }
        }
        let held = plan.tokens.len();
        // No deadline: at most MAX_CHANGES keys, and the tombstones already
        // make a key not re-read here a miss, never a stale hit.
        let done = self.fill(&mut plan, gen, started + Duration::from_secs(5));
        tracing::debug!(
            generation = gen.id,
            changes = changes.len(),
            refreshed = held,
            done,
            us = started.elapsed().as_micros() as u64,
            "verdict cache: incremental change applied"
        );
        true
    }

    /// What a full swap must re-read into this cache: its positive entries'
    /// keys (negative ones live seconds and may be a client's junk), with
    /// their TTL deadlines.
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

    /// Re-read the entries `plan` names from `gen` into this cache, in
    /// place, tagged with `gen` (never copied: a key revoked, expired or
    /// changed in `gen` gets `gen`'s answer), for at most `budget`; what is
    /// done leaves `plan`, so a second call continues the first. True when
    /// `plan` is empty.
    ///
    /// In place rather than into a new cache: the replaced entry is freed
    /// as its successor goes in, so a swap never holds two caches (peak RSS
    /// through 10 reloads at 100,000 cached keys: benches/memory.rs). Until
    /// a key is re-read, requests pinned to `gen` ignore its older entry
    /// (`At::base`); requests still pinned to the generation before ignore
    /// the new one ([`At::accepts`]). Only once `gen` is served: a refill
    /// before would replace entries requests pinned to the generation still
    /// served use, so they would miss and read rows an in-place commit
    /// already changed while their token filter does not know the keys that
    /// commit added (an old key refused before its successor works: found
    /// by tests/keys_cli.rs under load).
    pub fn refill(&self, plan: &mut Refill, gen: &Generation, budget: Duration) -> bool {
        let started = Instant::now();
        let before = plan.tokens.len();
        let done = self.fill(plan, gen, started + budget);
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

    /// Re-read `plan`'s keys from `gen` into this cache until `deadline`.
    fn fill(&self, plan: &mut Refill, gen: &Generation, deadline: Instant) -> bool {
        refill_keys(
            &mut plan.tokens,
            &self.tokens,
            gen,
            deadline,
            |r, &(t, h)| {
                self.read_verdict(r, At::of(Some(gen)), t, &hex::encode(h))
                    .map(|v| (v.is_negative(), v))
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
        )
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

    /// Drop `key` as an eviction (or a TinyLFU refusal) would.
    #[cfg(test)]
    pub(crate) fn evict_token(&self, key: &TokenKey) {
        self.tokens.invalidate(key);
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

impl Refill {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
            && self.orgs.is_empty()
            && self.workspaces.is_empty()
            && self.resources.is_empty()
            && self.mcp_servers.is_empty()
    }
}

fn lookup_entry<V>(value: Option<V>) -> Result<(bool, Option<V>), StoreError> {
    Ok((value.is_none(), value))
}

/// Re-read `keys` with `load` into `to`, tagged with `gen`, in read
/// transactions of [`REFILL_BATCH`], until `deadline`; the keys done (and
/// any `to` already holds from `gen` or later, which requests filled)
/// leave `keys`. Stops early at the deadline or on an error (the rest then
/// just miss, where an error fails closed). True when `keys` is empty.
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
                .filter(|(key, _)| to.get(key).is_none_or(|e| e.generation < gen.id))
                .try_for_each(|(key, expires)| {
                    let (negative, value) = load(r, key)?;
                    put_unless_newer(
                        to,
                        key.clone(),
                        Entry::new(gen.id, negative, *expires, value),
                    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{ApiKey, Scope};
    use crate::snapshot::OrgRecord;

    fn active(org_disabled: bool) -> Verdict {
        let org = Arc::new(OrgRecord {
            id: Arc::from("org_x"),
            plan: Arc::from("free"),
            rate_limit: None,
            quota_exceeded: false,
            disabled: org_disabled,
        });
        Verdict::ApiKey(ApiKey {
            id: Arc::from("k"),
            prefix: Arc::from("wvz_"),
            org_id: org.id.clone(),
            org: Some(org),
            scope: Scope::OrgWide,
            expires_at: None,
            read_only: false,
            allowed_ips: crate::principal::AllowedIps::Any,
            own_limit: None,
        })
    }

    /// Entries of a newer generation may be in the cache while a request
    /// pinned to the one before is in flight: it must not read them (it
    /// would combine them with rows of its own file).
    #[test]
    fn entries_of_a_newer_generation_do_not_answer_an_older_pin() {
        let cache = AuthCache::new(&CacheConfig {
            capacity: 100,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
        });
        let key = (TokenTable::ApiKey, [7u8; 32]);
        cache.put_token(key, 2, active(false));
        let g1 = At { id: 1, base: 1 };
        let g2 = At { id: 2, base: 2 };
        assert!(cache.token(&key, g1).is_none(), "newer than the pin");
        assert!(cache.token(&key, g2).is_some());
        // the older pin's late insert keeps the newer entry
        cache.put_token(key, 1, active(true));
        assert!(cache.token(&key, g2).is_some_and(|e| matches!(
            &e.value,
            Verdict::ApiKey(k) if !k.org.as_ref().unwrap().disabled
        )));
        // and lookups: an organization re-read for generation 2
        let org = |at| {
            cache.lookup(&cache.orgs, Tombs::orgs, "org_x", at, || {
                Ok::<_, ()>(Some(Arc::new(OrgRecord {
                    id: Arc::from("org_x"),
                    plan: Arc::from("free"),
                    rate_limit: None,
                    quota_exceeded: false,
                    disabled: at.id == 1,
                })))
            })
        };
        assert!(!org(g2).unwrap().unwrap().disabled);
        assert!(
            org(g1).unwrap().unwrap().disabled,
            "read from its own generation"
        );
    }
}
