//! Building each generation's token filter (see `store::filter`) and what
//! it reports on `/metrics`.

use super::*;

/// What the token filter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct FilterStats {
    /// cache misses the filter answered `unknown` (no store lookup)
    pub ruled_out: AtomicU64,
    /// cache misses it let through to the store (a token in the snapshot,
    /// a false positive, or no filter built yet)
    pub passed: AtomicU64,
    /// filters built, and failed builds
    pub built: AtomicU64,
    pub failed: AtomicU64,
    /// keys and bytes of the last filter built
    pub keys: AtomicU64,
    pub bytes: AtomicU64,
}

impl FilterStats {
    /// These counters in the Prometheus text format (appended to
    /// `/metrics`).
    pub fn render(&self) -> String {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP keyward_token_filter_total Verdict-cache misses by the token filter's answer: ruled_out (unknown, no store lookup) or passed (to the store)\n\
             # TYPE keyward_token_filter_total counter\n\
             keyward_token_filter_total{{result=\"ruled_out\"}} {}\n\
             keyward_token_filter_total{{result=\"passed\"}} {}\n\
             # HELP keyward_token_filter_builds_total Token filter builds by result\n\
             # TYPE keyward_token_filter_builds_total counter\n\
             keyward_token_filter_builds_total{{result=\"ok\"}} {}\n\
             keyward_token_filter_builds_total{{result=\"failed\"}} {}\n\
             # HELP keyward_token_filter_keys Token hashes in the last filter built\n\
             # TYPE keyward_token_filter_keys gauge\n\
             keyward_token_filter_keys {}\n\
             # HELP keyward_token_filter_bytes Bytes of the last filter built\n\
             # TYPE keyward_token_filter_bytes gauge\n\
             keyward_token_filter_bytes {}\n",
            v(&self.ruled_out),
            v(&self.passed),
            v(&self.built),
            v(&self.failed),
            v(&self.keys),
            v(&self.bytes),
        )
    }
}

/// Rows per read transaction of a filter build: short enough not to stall
/// an in-place writer for long.
pub(super) const FILTER_SCAN_BATCH: i64 = 65_536;

/// The token tables and their hash columns (SPEC §2), as the filter scans them.
pub(super) const TOKEN_COLUMNS: [(&str, &str); 4] = [
    ("api_keys", "key_hash"),
    ("sessions", "token_hash"),
    ("service_keys", "key_hash"),
    ("mcp_tokens", "token_hash"),
];

impl SnapshotStore {
    /// Build `gen`'s token filter on a background thread and install it in
    /// its chain's cell (shared with the incremental generations after it).
    /// Builds run one at a time; one queued behind a newer chain's skips.
    pub(super) fn build_filter(&self, gen: &Arc<Generation>) {
        self.filter_wanted.store(gen.id, Ordering::Release);
        let weak = Arc::downgrade(gen);
        let wanted = self.filter_wanted.clone();
        let lock = self.filter_build.clone();
        let stats = self.filter_stats.clone();
        let work = move || {
            let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(gen) = weak.upgrade() else { return };
            if wanted.load(Ordering::Acquire) != gen.id {
                return; // a newer chain wants one
            }
            let started = Instant::now();
            match gen.scan_token_filter() {
                Ok(f) => {
                    stats.built.fetch_add(1, Ordering::Relaxed);
                    stats.keys.store(f.keys() as u64, Ordering::Relaxed);
                    stats.bytes.store(f.bytes() as u64, Ordering::Relaxed);
                    tracing::info!(
                        generation = gen.id,
                        keys = f.keys(),
                        bytes = f.bytes(),
                        ms = started.elapsed().as_millis() as u64,
                        "token filter built"
                    );
                    gen.filter.cell().install(Arc::new(f));
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(generation = gen.id, error = %e, "cannot build the token filter; every cache miss reads the store");
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("keyward-filter".into())
            .spawn(work)
        {
            tracing::warn!(error = %e, "cannot start the token filter build");
        }
    }
}
