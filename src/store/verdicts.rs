//! The verdict cache's lifecycle across snapshot swaps and config reloads:
//! which [`AuthCache`] requests use, how a full swap replaces it with one
//! refilled from the new generation, how an incremental swap (an in-place
//! change logged in the `changes` table, SPEC §2.1) keeps it and drops only
//! what changed, and how a replaced one is freed off the workers. Requests
//! only [`Verdicts::current`] it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cache::{AuthCache, Refill, SharedTombs};
use crate::config::CacheConfig;
use crate::snapshot::{Fallback, SnapshotStore};

/// How long a swap may refill the verdict cache before the new generation is
/// served (15,000–35,000 keys on a 1M-key snapshot; the rest miss until refilled
/// after the swap, within [`REFILL_AFTER_SWAP`], or by requests).
const REFILL_BEFORE_SWAP: Duration = Duration::from_millis(250);
const REFILL_AFTER_SWAP: Duration = Duration::from_millis(750);
/// Longest wait for the last request holding a replaced cache.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// The cache refilled for a generation about to be served.
struct NextCache {
    generation: u64,
    cache: Arc<AuthCache>,
    /// keys still to carry over after the swap
    rest: Option<Refill>,
}

pub struct Verdicts {
    cache: ArcSwap<AuthCache>,
    /// read by every cache this one ever holds (a cache replaced by a config
    /// reload during an incremental change must still see its tombstones)
    tombs: SharedTombs,
    config: Mutex<CacheConfig>,
    next: Mutex<Option<NextCache>>,
}

impl Verdicts {
    /// A cache for `config`, refilled on every swap of `store`.
    pub fn attach(config: &CacheConfig, store: &Arc<SnapshotStore>) -> Arc<Verdicts> {
        let tombs = SharedTombs::default();
        let v = Arc::new(Verdicts {
            cache: ArcSwap::from_pointee(AuthCache::with_tombs(config, tombs.clone())),
            tombs,
            config: Mutex::new(config.clone()),
            next: Mutex::new(None),
        });
        // A swap replaces the cache with one refilled from the new
        // generation: partly before that generation is served (so a reload
        // stays well under a second), the rest right after, on a short-lived
        // thread, while requests fill it too. Between the two stores a
        // request may see the new generation with the old cache: its entries
        // are tagged with the old generation and ignored.
        //
        // An incremental generation keeps the cache: its changes are
        // applied to it before the generation is served (tombstones, then
        // the changed keys it holds re-read), see `store::cache`.
        let weak = Arc::downgrade(&v);
        store.before_swap(move |gen| {
            if let Some(v) = weak.upgrade() {
                if let Some(changes) = gen.changes() {
                    if v.cache.load().apply(gen, changes) {
                        return;
                    }
                    gen.demand_full(Fallback::Cache);
                }
                let mut plan = v.cache.load().refill_plan();
                let next = Arc::new(v.new_cache(&v.config.lock().unwrap()));
                let done = next.refill(&mut plan, gen, REFILL_BEFORE_SWAP);
                *v.next.lock().unwrap() = Some(NextCache {
                    generation: gen.id,
                    cache: next,
                    rest: (!done).then_some(plan),
                });
            }
        });
        let weak = Arc::downgrade(&v);
        let store_weak = Arc::downgrade(store);
        store.on_swap(move |gen| {
            let Some(v) = weak.upgrade() else { return };
            if gen.changes().is_some() {
                return; // incremental: the same cache goes on
            }
            let (next, rest) = match v.next.lock().unwrap().take() {
                Some(n) if n.generation == gen.id => (n.cache, n.rest),
                _ => (Arc::new(v.new_cache(&v.config.lock().unwrap())), None),
            };
            let old = v.cache.swap(next.clone());
            finish_swap(store_weak.clone(), gen.id, old, next, rest);
        });
        v
    }

    fn new_cache(&self, config: &CacheConfig) -> AuthCache {
        AuthCache::with_tombs(config, self.tombs.clone())
    }

    /// The cache requests read now.
    pub fn current(&self) -> Arc<AuthCache> {
        self.cache.load_full()
    }

    /// A reloaded config: a new, empty cache when its settings changed.
    pub fn reconfigure(&self, config: &CacheConfig) {
        let mut current = self.config.lock().unwrap();
        if *current != *config {
            *current = config.clone();
            self.cache.store(Arc::new(self.new_cache(config)));
        }
    }
}

/// After a swap, off the reload thread (which must go on polling) and off
/// the workers: drop the replaced cache once no request holds it (freeing
/// 100,000 entries took the worker that released it last 300 ms), then carry
/// the keys left over into the new cache.
fn finish_swap(
    store: std::sync::Weak<SnapshotStore>,
    generation: u64,
    old: Arc<AuthCache>,
    next: Arc<AuthCache>,
    rest: Option<Refill>,
) {
    let work = move || {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(old);
        let (Some(mut plan), Some(store)) = (rest, store.upgrade()) else {
            return;
        };
        if let Some(gen) = store.current().filter(|g| g.id == generation) {
            next.refill(&mut plan, &gen, REFILL_AFTER_SWAP);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("keyward-refill".into())
        .spawn(work)
    {
        tracing::warn!(error = %e, "cannot start the cache refill thread");
    }
}
