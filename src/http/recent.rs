//! Counts behind the status page's "last 5 minutes" (SPEC §8.5): requests
//! by outcome and keyward's refusals by `details.reason`, cumulative since
//! start. The admin samples them every few seconds and shows differences.
//! Outcomes are one atomic each; reasons (a closed set of `&'static str`)
//! live in [`SHARDS`] maps behind their own mutexes, picked by thread, so
//! no request waits on a global lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::http::metrics::Outcome;

const SHARDS: usize = 8;

#[derive(Default)]
pub struct Recent {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    reasons: [Mutex<HashMap<&'static str, u64>>; SHARDS],
}

/// The cumulative counts at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub outcomes: Vec<(&'static str, u64)>,
    pub reasons: HashMap<&'static str, u64>,
}

fn shard() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Recent {
    /// One request's outcome, and the reason when keyward refused it.
    pub fn record(&self, outcome: Outcome, reason: &'static str) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if !reason.is_empty() {
            let mut m = self.reasons[shard()]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn sample(&self) -> Sample {
        let mut reasons = HashMap::new();
        for s in &self.reasons {
            for (k, v) in s.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                *reasons.entry(*k).or_default() += v;
            }
        }
        Sample {
            outcomes: Outcome::ALL
                .iter()
                .map(|o| {
                    (
                        o.as_str(),
                        self.outcomes[*o as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            reasons,
        }
    }
}

impl Sample {
    /// What happened between `earlier` and `self` (zero counts left out).
    pub fn since(&self, earlier: &Sample) -> Sample {
        let before = |k: &str| {
            earlier
                .outcomes
                .iter()
                .find(|(o, _)| *o == k)
                .map_or(0, |(_, n)| *n)
        };
        Sample {
            outcomes: self
                .outcomes
                .iter()
                .map(|(o, n)| (*o, n.saturating_sub(before(o))))
                .filter(|(_, n)| *n > 0)
                .collect(),
            reasons: self
                .reasons
                .iter()
                .map(|(k, n)| {
                    (
                        *k,
                        n.saturating_sub(earlier.reasons.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}
