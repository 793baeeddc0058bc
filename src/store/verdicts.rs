//! The verdict cache's lifecycle across snapshot swaps and config reloads:
//! which [`AuthCache`] requests use, how a full swap refills it in place
//! from the new generation, how an incremental swap (an in-place change
//! logged in the `changes` table, SPEC §2.1) drops only what changed, and
//! how a config reload replaces it. Requests only [`Verdicts::current`] it.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cache::{AuthCache, Refill, SharedTombs};
use crate::config::CacheConfig;
use crate::snapshot::{Fallback, SnapshotStore};

/// How long the refill thread re-reads a full swap's keys once the new
/// generation is served (50,000–100,000 keys a second; the rest miss once).
/// Nothing is re-read before the swap (see `AuthCache::refill`): rename →
/// served took 380 ms with 250 ms of it, 133–148 ms without, and the peak
/// RSS through 10 reloads under load fell from 173 to 151 MiB
/// (benches/load/snapshot_scale.sh, 1M keys, 100,000 warm).
const REFILL_AFTER_SWAP: Duration = Duration::from_millis(750);

/// The refill planned for a generation about to be served.
struct NextCache {
    generation: u64,
    cache: Arc<AuthCache>,
    /// keys still to re-read after the swap
    rest: Refill,
}

pub struct Verdicts {
    cache: ArcSwap<AuthCache>,
    /// read by every cache this one ever holds (a cache replaced by a config
    /// reload during an incremental change must still see its tombstones)
    tombs: SharedTombs,
    config: Mutex<CacheConfig>,
    next: Mutex<Option<NextCache>>,
    /// the refill thread's job (the thread starts on the first full swap)
    refills: Arc<RefillQueue>,
}

#[derive(Default)]
struct RefillQueue {
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    started: bool,
    closed: bool,
}

impl RefillQueue {
    /// The refill thread: one job at a time until the [`Verdicts`] is dropped.
    fn run(&self) {
        loop {
            let mut job = {
                let mut slot = self.slot.lock().unwrap();
                loop {
                    if slot.closed {
                        return;
                    }
                    if let Some(job) = slot.job.take() {
                        break job;
                    }
                    slot = self.wake.wait(slot).unwrap();
                }
            };
            let Some(store) = job.store.upgrade() else {
                continue;
            };
            if let Some(gen) = store.current().filter(|g| g.id == job.generation) {
                job.cache.refill(&mut job.plan, &gen, REFILL_AFTER_SWAP);
            }
        }
    }
}

impl Drop for Verdicts {
    fn drop(&mut self) {
        self.refills.slot.lock().unwrap().closed = true;
        self.refills.wake.notify_one();
    }
}

/// Keys to re-read into `cache` once `generation` is served.
struct Job {
    store: Weak<SnapshotStore>,
    generation: u64,
    cache: Arc<AuthCache>,
    plan: Refill,
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
            refills: Arc::default(),
        });
        // A full swap refills the cache in place from the new generation,
        // right after that generation is served (`refill`), on the refill
        // thread, while requests fill it too. Entries not yet re-read are
        // tagged with an older generation and ignored; requests still pinned
        // to the generation before ignore the new ones.
        //
        // An incremental generation keeps the cache: its changes are
        // applied to it before the generation is served (tombstones, then
        // the changed keys it holds re-read), see `store::cache`.
        let weak = Arc::downgrade(&v);
        store.before_swap(move |gen| {
            if let Some(v) = weak.upgrade() {
                let cache = v.cache.load_full();
                if let Some(changes) = gen.changes() {
                    if cache.apply(gen, changes) {
                        return;
                    }
                    gen.demand_full(Fallback::Cache);
                }
                *v.next.lock().unwrap() = Some(NextCache {
                    generation: gen.id,
                    rest: cache.refill_plan(),
                    cache,
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
            let next = v.next.lock().unwrap().take();
            if let Some(NextCache {
                generation,
                cache,
                rest,
            }) = next.filter(|n| n.generation == gen.id)
            {
                if !rest.is_empty() {
                    v.refill_later(Job {
                        store: store_weak.clone(),
                        generation,
                        cache,
                        plan: rest,
                    });
                }
            }
        });
        v
    }

    /// Hand `job` to the refill thread: off the reload thread (which must
    /// go on polling) and off the workers. One long-lived thread rather
    /// than one per swap: a thread's allocator pages that still hold
    /// entries when it exits stay resident, scattered (RSS after 10 reloads
    /// at 100,000 cached keys, benches/memory.rs). At most one job waits: a
    /// newer swap's replaces it (the older one's generation is no longer
    /// served), so a refill stuck on a replaced file cannot queue more.
    fn refill_later(&self, job: Job) {
        let q = &self.refills;
        let mut slot = q.slot.lock().unwrap();
        slot.job = Some(job);
        q.wake.notify_one();
        if slot.started {
            return;
        }
        let queue = q.clone();
        let started = std::thread::Builder::new()
            .name("keyward-refill".into())
            .spawn(move || queue.run());
        match started {
            Ok(_) => slot.started = true,
            Err(e) => {
                slot.job = None;
                tracing::warn!(error = %e, "cannot start the cache refill thread");
            }
        }
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
