//! The snapshot store (SPEC §1–2): a read-only SQLite file published by the
//! control plane, validated before use, watched for new versions (atomic
//! rename or in-place change via `PRAGMA data_version`) and swapped
//! atomically. Lookups run on the calling thread through a read-only
//! connection the generation lends (cached prepared statements, one read
//! transaction per cache miss): an indexed point read costs a few
//! microseconds, far less than a hop to a blocking pool would. Never writes
//! the file.

pub mod changes;
pub mod schema;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

pub use crate::auth::directory::StoreError;
pub use crate::auth::principal::{McpAuthMode, McpServerRecord, Org, OrgRecord};
pub use changes::{Change, Fallback};

use crate::store::filter::{self, GenFilter, TokenFilter};

use arc_swap::ArcSwapOption;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// One loaded, validated version of the snapshot file.
#[derive(Debug)]
pub struct Generation {
    pub id: u64,
    dev: u64,
    ino: u64,
    /// unix seconds when this version was produced (meta.generated_at, else mtime)
    pub produced_at: i64,
    /// Row counts; an incremental generation starts with its predecessor's
    /// and gets its own shortly after it is served (see [`CountsCell`]).
    pub counts: CountsCell,
    /// The highest `changes.seq` this version includes (SPEC §2.1); None
    /// without a `changes` table.
    changes_seq: Option<i64>,
    /// Cached verdicts tagged with a generation older than this are not
    /// this generation's answer: its own id after a full load (everything
    /// may have changed), inherited from its predecessor on an incremental
    /// one (only the keys in `changes` changed; see `store::cache`).
    cache_base: AtomicU64,
    /// What changed since the predecessor: Some on an incremental
    /// generation (an in-place commit logged in the `changes` table).
    changes: Option<Vec<Change>>,
    /// Why this generation takes the full path (when it does).
    fallback: Mutex<Option<Fallback>>,
    path: PathBuf,
    lookups: Arc<Lookups>,
    /// The token filter of this generation's chain (see `store::filter`).
    filter: GenFilter,
    stats: Arc<FilterStats>,
    /// Connections to this version's file, idle between lookups: as many as
    /// lookups ever ran at once (one per worker thread). The first is the one
    /// that validated the version: it pins the file (inode) even after
    /// another file is renamed over the path. All close when the generation
    /// is dropped, which the reload thread does (see `SnapshotStore::retired`).
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

/// A generation's [`Counts`]: read when it is loaded from a file; on an
/// incremental generation first its predecessor's (a `count(*)` over 1M
/// rows on every in-place change would cost tens of ms before a revocation
/// is served), then its own, counted on the watcher thread at most once a
/// second after it is served. Reads as [`Counts`].
#[derive(Debug)]
pub struct CountsCell {
    carried: Counts,
    own: OnceLock<Counts>,
}

impl CountsCell {
    fn loaded(c: Counts) -> CountsCell {
        let own = OnceLock::new();
        let _ = own.set(c);
        CountsCell {
            carried: Counts::default(),
            own,
        }
    }

    fn carried(c: Counts) -> CountsCell {
        CountsCell {
            carried: c,
            own: OnceLock::new(),
        }
    }

    /// The counts are this generation's own (not carried over).
    pub fn is_own(&self) -> bool {
        self.own.get().is_some()
    }
}

impl std::ops::Deref for CountsCell {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        self.own.get().unwrap_or(&self.carried)
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub organizations: u64,
    pub workspaces: u64,
    pub api_keys: u64,
    pub sessions: u64,
    pub service_keys: u64,
    pub mcp_servers: u64,
    pub mcp_tokens: u64,
    pub resources: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub organization_id: String,
    pub key_prefix: Option<String>,
    pub permissions: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub active_organization_id: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct ServiceKeyRecord {
    pub id: String,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct McpTokenRecord {
    pub id: String,
    pub kind: String,
    pub mcp_server_id: String,
    pub end_user_id: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Tables counted in `keyward_snapshot_lookups_total{table}`.
pub const TABLES: [&str; 8] = [
    "organizations",
    "workspaces",
    "api_keys",
    "sessions",
    "service_keys",
    "mcp_servers",
    "mcp_tokens",
    "resources",
];

#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// swaps that kept the verdict cache (`keyward_snapshot_swaps_total{path="incremental"}`)
    pub incremental: AtomicU64,
    /// swaps that refilled it, per [`Fallback::ALL`] reason
    pub full: [AtomicU64; 6],
}

type SwapListener = Box<dyn Fn(&Generation) + Send + Sync>;

/// Queries per table in [`TABLES`] order.
type Lookups = [AtomicU64; 8];

pub struct SnapshotStore {
    path: PathBuf,
    current: ArcSwapOption<Generation>,
    /// The generation the last swap replaced, dropped by the reload thread
    /// on its next poll rather than by whichever worker thread happens to
    /// release it last: closing the last descriptor of a replaced (unlinked)
    /// file frees all its pages, which took a worker up to 260 ms at 1M keys.
    retired: Mutex<Option<Arc<Generation>>>,
    next_generation: AtomicU64,
    pub reloads: ReloadStats,
    lookups: Arc<Lookups>,
    /// What the token filter did (`keyward_token_filter_*`).
    pub filter_stats: Arc<FilterStats>,
    /// The generation whose filter chain should be built (the newest one
    /// started without a filter): older builds still queued skip.
    filter_wanted: Arc<AtomicU64>,
    /// One filter build at a time.
    filter_build: Arc<Mutex<()>>,
    before_swap: Mutex<Vec<SwapListener>>,
    listeners: Mutex<Vec<SwapListener>>,
}

/// inotify on the snapshot's directory, reporting events that name the
/// snapshot file itself (a rename over it, a write to it) or its WAL
/// (`NAME-wal`: a commit in WAL mode) on `changed`;
/// bursts collapse into one wake-up. `None` (logged) when inotify is
/// unavailable: the watcher then polls only.
fn file_notifier(
    path: &Path,
    changed: std::sync::mpsc::SyncSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let name = path.file_name()?.to_owned();
    let mut wal = name.clone();
    wal.push("-wal");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let started = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Opening or reading the file (keyward's own connections do) is
            // no change.
            if matches!(
                event.kind,
                notify::EventKind::Access(
                    notify::event::AccessKind::Open(_) | notify::event::AccessKind::Read
                )
            ) {
                return;
            }
            if event.paths.iter().any(|p| {
                let n = p.file_name();
                n == Some(&name) || n == Some(&wal)
            }) {
                let _ = changed.try_send(());
            }
        }
    })
    .and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no change notifications for the snapshot; polling only");
            None
        }
    }
}

fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_millis(200))?;
    // No mmap: a snapshot truncated in place (`cp new.db snapshot.db`) would
    // turn a mapped read into SIGBUS and kill the process; read() just fails.
    let _ = conn.pragma_update(None, "mmap_size", 0i64);
    // A 512 KiB page cache instead of SQLite's default 2 MiB: a larger one
    // did not shorten cache misses (their time is per-transaction file
    // locking, see docs/benchmarks.md "Decision path"), and each thread that reads (workers,
    // reload, refill, filter build) has a connection per generation, two
    // generations alive across a swap (peak RSS, benches/load/snapshot_scale.sh).
    let _ = conn.pragma_update(None, "cache_size", -512i64);
    Ok(conn)
}

/// Why a snapshot version was not loaded (it is kept out; the last good
/// one is served).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot stat {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    /// a publisher renamed another file over the path while it was opened:
    /// worth another attempt
    #[error("the snapshot path changed while opening")]
    Replaced,
    #[error("cannot open: {0}")]
    Open(rusqlite::Error),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("cannot read table `{table}`: {source}")]
    Table {
        table: &'static str,
        source: rusqlite::Error,
    },
}

fn identity(path: &Path) -> Result<(u64, u64, std::fs::Metadata), ReloadError> {
    let m = std::fs::metadata(path).map_err(|source| ReloadError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((m.dev(), m.ino(), m))
}

/// Open `path` only if it is still the file (dev, inode) `want` names, with
/// the schema checked; the file seen before and after opening must agree, so
/// a rename in between is caught.
fn open_matching(path: &Path, want: (u64, u64)) -> Result<Connection, ReloadError> {
    let (dev, ino, _) = identity(path)?;
    if (dev, ino) != want {
        return Err(ReloadError::Replaced);
    }
    let conn = open_read_only(path).map_err(ReloadError::Open)?;
    schema::validate(&conn)?;
    let (dev, ino, _) = identity(path)?;
    if (dev, ino) != want {
        return Err(ReloadError::Replaced);
    }
    Ok(conn)
}

/// How a candidate generation is loaded.
enum Load {
    /// everything read afresh; `seq`: the `changes` starting point when the
    /// watcher read it already (with the data_version it compares against)
    Full {
        reason: Fallback,
        seq: Option<Option<i64>>,
    },
    /// an in-place commit that logged what it changed
    Incremental {
        old: Arc<Generation>,
        changes: Vec<Change>,
        seq: i64,
    },
}

/// Delays of the re-checks after a file notification that found no change
/// (see `watch`): 250 ms in all.
const WAL_RECHECKS_MS: [u64; 5] = [5, 15, 30, 50, 150];

/// Least time between two row counts of incremental generations.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

fn count_rows(conn: &Connection, table: &'static str) -> Result<u64, ReloadError> {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(|source| ReloadError::Table { table, source })
}

/// Every table's row count, as `/readyz` reports them.
fn count_all(conn: &Connection) -> Result<Counts, ReloadError> {
    Ok(Counts {
        organizations: count_rows(conn, "organizations")?,
        workspaces: count_rows(conn, "workspaces")?,
        api_keys: count_rows(conn, "api_keys")?,
        sessions: count_rows(conn, "sessions")?,
        service_keys: count_rows(conn, "service_keys")?,
        mcp_servers: count_rows(conn, "mcp_servers")?,
        mcp_tokens: count_rows(conn, "mcp_tokens")?,
        resources: count_rows(conn, "resources")?,
    })
}

/// When this version was produced: `meta.generated_at`, else the file's mtime.
fn produced_at(conn: &Connection, meta: &std::fs::Metadata) -> i64 {
    let generated_at: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'generated_at'",
            [],
            |r| r.get::<_, rusqlite::types::Value>(0),
        )
        .optional()
        .ok()
        .flatten()
        .and_then(|v| match v {
            rusqlite::types::Value::Integer(i) => Some(i),
            rusqlite::types::Value::Text(t) => t.trim().parse().ok(),
            _ => None,
        });
    generated_at.unwrap_or_else(|| {
        meta.modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(crate::clock::now_unix)
    })
}

impl SnapshotStore {
    pub fn new(path: impl Into<PathBuf>) -> Arc<SnapshotStore> {
        Arc::new(SnapshotStore {
            path: path.into(),
            current: ArcSwapOption::empty(),
            retired: Mutex::new(None),
            next_generation: AtomicU64::new(1),
            reloads: ReloadStats::default(),
            lookups: Default::default(),
            filter_stats: Default::default(),
            filter_wanted: Default::default(),
            filter_build: Default::default(),
            before_swap: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Called on the reload thread with a validated generation before it is
    /// served (to prepare what must change with it, e.g. a cache refilled
    /// from it).
    pub fn before_swap(&self, f: impl Fn(&Generation) + Send + Sync + 'static) {
        self.before_swap.lock().unwrap().push(Box::new(f));
    }

    /// Called right after every swap (cache swap, metrics).
    pub fn on_swap(&self, f: impl Fn(&Generation) + Send + Sync + 'static) {
        self.listeners.lock().unwrap().push(Box::new(f));
    }

    /// Record `error` as the last reload error (`/readyz`) without a reload:
    /// a version the snapshot source downloaded and refused never reaches
    /// the path, so no reload of the path would report it. Cleared, like
    /// every reload error, when a later version loads.
    pub fn report_error(&self, error: String) {
        *self.reloads.last_error.lock().unwrap() = Some(error);
    }

    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// Generation id, 0 before any snapshot loaded. Lock-free.
    pub fn generation_id(&self) -> u64 {
        self.current.load().as_ref().map(|g| g.id).unwrap_or(0)
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn lookups(&self, table: usize) -> u64 {
        self.lookups[table].load(Ordering::Relaxed)
    }

    /// Open and validate the file as it is now; on success swap it in
    /// (a full load: the verdict cache is refilled).
    /// On failure keep the last good generation, record and return the error.
    pub fn reload(&self) -> Result<Arc<Generation>, ReloadError> {
        self.load_and_swap(Load::Full {
            reason: Fallback::Opened,
            seq: None,
        })
    }

    fn load_and_swap(&self, how: Load) -> Result<Arc<Generation>, ReloadError> {
        match self.load_candidate(how) {
            Ok(gen) => Ok(self.publish(gen)),
            Err(e) => {
                self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %e, "snapshot rejected; keeping the last good one");
                *self.reloads.last_error.lock().unwrap() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Serve `gen`: `before_swap` listeners (which may still turn an
    /// incremental generation into a full one), the swap, `on_swap`
    /// listeners.
    fn publish(&self, gen: Generation) -> Arc<Generation> {
        let gen = Arc::new(gen);
        for l in self.before_swap.lock().unwrap().iter() {
            l(&gen);
        }
        let old = self.current.swap(Some(gen.clone()));
        *self.retired.lock().unwrap() = old;
        self.reloads.ok.fetch_add(1, Ordering::Relaxed);
        *self.reloads.last_error.lock().unwrap() = None;
        match gen.fallback() {
            None => self.reloads.incremental.fetch_add(1, Ordering::Relaxed),
            Some(f) => self.reloads.full[f as usize].fetch_add(1, Ordering::Relaxed),
        };
        for l in self.listeners.lock().unwrap().iter() {
            l(&gen);
        }
        if gen.filter.cell().claim_build() {
            self.build_filter(&gen);
        }
        match gen.changes() {
            Some(c) => tracing::info!(
                generation = gen.id,
                changes = c.len(),
                seq = gen.changes_seq,
                "snapshot change applied incrementally"
            ),
            None => tracing::info!(
                generation = gen.id,
                counts = ?*gen.counts,
                reason = gen.fallback().map(Fallback::as_str),
                "snapshot loaded"
            ),
        }
        gen
    }

    fn load_candidate(&self, how: Load) -> Result<Generation, ReloadError> {
        let (meta, conn, old) = match &how {
            Load::Full { .. } => {
                // The connection must be to the file whose identity the
                // generation records; retry if a publisher renames a file in
                // between.
                let mut attempt = 0;
                loop {
                    let (dev, ino, meta) = identity(&self.path)?;
                    match open_matching(&self.path, (dev, ino)) {
                        Ok(conn) => break (meta, conn, None),
                        Err(ReloadError::Replaced) if attempt < 3 => attempt += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            // Same file, changed in place: checked again (a commit may have
            // dropped a table), its connections taken over.
            Load::Incremental { old, .. } => {
                let conn = open_matching(&self.path, (old.dev, old.ino))?;
                (identity(&self.path)?.2, conn, Some(old.clone()))
            }
        };
        let produced_at = produced_at(&conn, &meta);
        let id = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut idle = vec![conn];
        let (counts, cache_base, changes_seq, changes, fallback, token_filter) = match how {
            Load::Full { reason, seq } => {
                let counts = count_all(&idle[0])?;
                // The starting point (SPEC §2.1): the watcher's, read with
                // the data_version it compares against; else this file's now.
                let seq = match seq {
                    Some(s) => s,
                    None => {
                        changes::read(&idle[0], None)
                            .map_err(|source| ReloadError::Table {
                                table: "changes",
                                source,
                            })?
                            .last_seq
                    }
                };
                (
                    CountsCell::loaded(counts),
                    id,
                    seq,
                    None,
                    Some(reason),
                    GenFilter::fresh(),
                )
            }
            Load::Incremental { changes, seq, .. } => {
                let old = old.expect("incremental has a predecessor");
                idle.extend(old.idle.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
                // Tokens named by the change pass the inherited filter.
                let token_filter = old
                    .filter
                    .with_added(changes.iter().filter_map(|c| match c {
                        Change::Token(_, hash) => Some(*hash),
                        _ => None,
                    }));
                (
                    CountsCell::carried((*old.counts).clone()),
                    old.cache_base(),
                    Some(seq),
                    Some(changes),
                    None,
                    token_filter,
                )
            }
        };
        Ok(Generation {
            id,
            dev: meta.dev(),
            ino: meta.ino(),
            produced_at,
            counts,
            changes_seq,
            cache_base: AtomicU64::new(cache_base),
            changes,
            fallback: Mutex::new(fallback),
            path: self.path.clone(),
            lookups: self.lookups.clone(),
            filter: token_filter,
            stats: self.filter_stats.clone(),
            idle: Mutex::new(idle),
            returned: Condvar::new(),
        })
    }

    /// Count the rows of the served generation if it still shows its
    /// predecessor's counts, at most once per [`RECOUNT_EVERY`]; the time
    /// until the next count is due when one is pending.
    fn recount(&self, last: &mut Option<Instant>) -> Option<Duration> {
        let gen = self.current().filter(|g| !g.counts.is_own())?;
        if let Some(wait) = last.and_then(|t| RECOUNT_EVERY.checked_sub(t.elapsed())) {
            return Some(wait.max(Duration::from_millis(1)));
        }
        *last = Some(Instant::now());
        let counted =
            gen.lookup(|r| count_all(r.conn).map_err(|e| StoreError::Query(e.to_string())));
        match counted {
            Ok(c) => {
                let _ = gen.counts.own.set(c);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the snapshot's rows");
                Some(RECOUNT_EVERY)
            }
        }
    }

    /// Age of the served snapshot in seconds.
    pub fn age_seconds(&self) -> Option<i64> {
        self.current()
            .map(|g| (crate::clock::now_unix() - g.produced_at).max(0))
    }

    /// Start the watcher thread: checks for a renamed-in file (inode change)
    /// or an in-place commit (`PRAGMA data_version`) as soon as inotify
    /// reports a change to the snapshot file, and every `interval` whatever
    /// it reports (the fallback where inotify is missing or blind, e.g. on
    /// network file systems).
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let (changed, wake) = std::sync::mpsc::sync_channel::<()>(1);
        let notifier = file_notifier(&self.path, changed);
        std::thread::Builder::new()
            .name("keyward-snapshot".into())
            .spawn(move || {
                let _notifier = notifier; // watches as long as this thread runs
                let mut probe: Option<ChangeProbe> = None;
                let mut last_failed_identity: Option<FileVersion> = None;
                let mut last_count = None;
                // Re-checks left after a notification that found nothing.
                let mut rechecks: &[u64] = &[];
                loop {
                    let Some(store) = weak.upgrade() else { return };
                    let found = store.poll_once(&mut probe, &mut last_failed_identity);
                    let count_due = store.recount(&mut last_count);
                    drop(store);
                    if found {
                        rechecks = &[];
                    }
                    // A change event, the poll interval, a pending count or
                    // re-check, whichever first (without notifications, the
                    // interval alone).
                    let mut wait = count_due.map_or(interval, |d| d.min(interval));
                    if let Some((first, rest)) = rechecks.split_first() {
                        wait = wait.min(Duration::from_millis(*first));
                        rechecks = rest;
                    }
                    match wake.recv_timeout(wait) {
                        // A commit in WAL mode appends to NAME-wal (the
                        // event) before it publishes the frames in the
                        // wal-index (NAME-shm, written through mmap: no
                        // event), so data_version may not have moved yet
                        // when the event is read: look again a few times
                        // over the next 250 ms rather than wait the whole
                        // poll interval.
                        Ok(()) => rechecks = &WAL_RECHECKS_MS,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(wait)
                        }
                    }
                }
            })
            .expect("spawn snapshot watcher")
    }

    /// One check for a new version; true when one was swapped in (or
    /// rejected).
    fn poll_once(
        &self,
        probe: &mut Option<ChangeProbe>,
        last_failed: &mut Option<FileVersion>,
    ) -> bool {
        drop(self.retired.lock().unwrap().take());
        let current = self.current();
        let meta = std::fs::metadata(&self.path).ok();
        let identity = meta.as_ref().map(|m| FileVersion {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: m.mtime_nsec() + m.mtime() * 1_000_000_000,
            len: m.len(),
        });
        let how = match (&current, &meta) {
            (None, None) => return false,
            (None, Some(_)) => Load::Full {
                reason: Fallback::Opened,
                seq: None,
            },
            (Some(_), None) => {
                // Deleted: keep serving, say so once per disappearance.
                if last_failed.is_none() {
                    self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                    let e = format!("snapshot {} is missing", self.path.display());
                    tracing::error!(error = %e, "keeping the last good snapshot");
                    *self.reloads.last_error.lock().unwrap() = Some(e);
                    *last_failed = Some(FileVersion::MISSING);
                }
                return false;
            }
            (Some(g), Some(m)) => {
                if (m.dev(), m.ino()) != (g.dev, g.ino) {
                    Load::Full {
                        reason: Fallback::Opened,
                        seq: None,
                    }
                } else {
                    // Same file: ask SQLite whether another connection committed.
                    if probe.as_ref().map(|p| p.generation) != Some(g.id) {
                        *probe = ChangeProbe::open(&self.path, g.id);
                    }
                    match probe {
                        Some(p) => match data_version(&p.conn) {
                            Some(now) if now != p.data_version => {
                                // What the commits since logged, read with
                                // the data_version it answers for.
                                match changes::read(&p.conn, g.changes_seq) {
                                    Ok(seen) => {
                                        p.data_version = seen.data_version;
                                        match changes::plan(
                                            g.changes_seq,
                                            seen.last_seq,
                                            &seen.rows,
                                        ) {
                                            Ok((changes, seq)) => Load::Incremental {
                                                old: g.clone(),
                                                changes,
                                                seq,
                                            },
                                            Err(reason) => Load::Full { reason, seq: None },
                                        }
                                    }
                                    Err(_) => {
                                        p.data_version = now;
                                        Load::Full {
                                            reason: Fallback::Unlogged,
                                            seq: None,
                                        }
                                    }
                                }
                            }
                            Some(_) => return false,
                            None => Load::Full {
                                reason: Fallback::Opened,
                                seq: None,
                            },
                        },
                        None => Load::Full {
                            reason: Fallback::Opened,
                            seq: None,
                        },
                    }
                }
            }
        };
        // Do not re-log the same broken file every poll.
        if identity.is_some() && *last_failed == identity {
            return false;
        }
        let how = match how {
            Load::Full { reason, .. } => {
                // Open the change probe *before* loading, so a commit that
                // lands while the new generation loads still moves
                // data_version past this baseline; the generation starts
                // from the `seq` read with that baseline.
                let fresh_probe = ChangeProbe::open(&self.path, 0);
                let seq = fresh_probe.as_ref().map(|p| p.seq);
                match self.load_and_swap(Load::Full { reason, seq }) {
                    Ok(gen) => {
                        *last_failed = None;
                        *probe = fresh_probe.map(|p| ChangeProbe {
                            generation: gen.id,
                            ..p
                        });
                    }
                    Err(_) => *last_failed = identity,
                }
                return true;
            }
            incremental => incremental,
        };
        match self.load_and_swap(how) {
            Ok(gen) => {
                *last_failed = None;
                // the same probe goes on: its data_version is the one the
                // changes were read with
                if let Some(p) = probe {
                    p.generation = gen.id;
                }
            }
            Err(_) => *last_failed = identity,
        }
        true
    }

    // ------------------------------------------------------------ lookups

    /// Run `f` in one read transaction on the current generation.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let gen = self.current.load();
        gen.as_ref().ok_or(StoreError::NotLoaded)?.read(f)
    }

    /// One lookup in its own (implicit) read transaction.
    fn lookup<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let gen = self.current.load();
        gen.as_ref()
            .ok_or(StoreError::NotLoaded)?
            .with_reader(false, f)
    }

    pub fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        self.lookup(|r| r.organization(id))
    }

    pub fn workspace_org(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.lookup(|r| r.workspace_org(id))
    }

    pub fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        self.lookup(|r| r.mcp_server(id))
    }

    pub fn resource_workspace(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.lookup(|r| r.resource_workspace(id))
    }
}

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
const FILTER_SCAN_BATCH: i64 = 65_536;

/// The token tables and their hash columns (SPEC §2), as the filter scans them.
const TOKEN_COLUMNS: [(&str, &str); 4] = [
    ("api_keys", "key_hash"),
    ("sessions", "token_hash"),
    ("service_keys", "key_hash"),
    ("mcp_tokens", "token_hash"),
];

impl SnapshotStore {
    /// Build `gen`'s token filter on a background thread and install it in
    /// its chain's cell (shared with the incremental generations after it).
    /// Builds run one at a time; one queued behind a newer chain's skips.
    fn build_filter(&self, gen: &Arc<Generation>) {
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

impl Generation {
    /// This generation's token filter (see `store::filter`).
    pub fn token_filter(&self) -> &GenFilter {
        &self.filter
    }

    pub fn filter_stats(&self) -> &FilterStats {
        &self.stats
    }

    /// Read every token hash of this generation's file (by rowid, in read
    /// transactions of [`FILTER_SCAN_BATCH`] rows) into a filter.
    fn scan_token_filter(&self) -> Result<TokenFilter, StoreError> {
        let mut keys = Vec::with_capacity(
            (self.counts.api_keys
                + self.counts.sessions
                + self.counts.service_keys
                + self.counts.mcp_tokens) as usize,
        );
        for (table, column) in TOKEN_COLUMNS {
            let sql = format!(
                "SELECT rowid, {column} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            );
            let mut after = i64::MIN;
            loop {
                let rows = self.lookup(|r| {
                    let mut stmt = r.conn.prepare_cached(&sql).map_err(query_error)?;
                    let mut rows = stmt
                        .query(params![after, FILTER_SCAN_BATCH])
                        .map_err(query_error)?;
                    let mut n = 0;
                    while let Some(row) = rows.next().map_err(query_error)? {
                        n += 1;
                        after = row.get(0).map_err(query_error)?;
                        // NULL or not text: no lookup finds it
                        if let Ok(Some(h)) =
                            row.get_ref(1).map(|v| v.as_str_or_null().ok().flatten())
                        {
                            if let Some(k) = filter::fold_hex(h) {
                                keys.push(k);
                            }
                        }
                    }
                    Ok(n)
                })?;
                if rows < FILTER_SCAN_BATCH {
                    break;
                }
            }
        }
        TokenFilter::build(keys).map_err(|e| StoreError::Query(e.to_string()))
    }

    /// Cached verdicts tagged with an older generation are not this one's
    /// answer (see the field).
    pub fn cache_base(&self) -> u64 {
        self.cache_base.load(Ordering::Acquire)
    }

    /// What changed since the predecessor, on an incremental generation
    /// (None: a full load, everything may have changed).
    pub fn changes(&self) -> Option<&[Change]> {
        if self.fallback().is_some() {
            return None;
        }
        self.changes.as_deref()
    }

    /// Why this generation takes the full path; None: incremental.
    pub fn fallback(&self) -> Option<Fallback> {
        *self.fallback.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make an incremental generation a full one (for a `before_swap`
    /// listener, before it is served): no cached verdict older than it is
    /// its answer.
    pub fn demand_full(&self, reason: Fallback) {
        let mut f = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason);
        }
        self.cache_base.store(self.id, Ordering::Release);
    }

    /// The highest `changes.seq` this version includes.
    pub fn changes_seq(&self) -> Option<i64> {
        self.changes_seq
    }

    /// Run `f` in one read transaction on this generation's file.
    ///
    /// Why one transaction: every SQLite read transaction takes and drops a
    /// shared `fcntl` lock and checks for a hot journal (the file may be
    /// committed in place, so it cannot be opened immutable); a cache miss
    /// that reads the key, its organization and more in autocommit mode pays
    /// that once per statement. Inside `BEGIN … COMMIT` it pays it once.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(true, f)
    }

    /// One lookup in its own (implicit) read transaction on this generation.
    pub fn lookup<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(false, f)
    }

    fn with_reader<T>(
        &self,
        transaction: bool,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.checkout();
        let reader = Reader {
            conn: &conn,
            lookups: &self.lookups,
        };
        if !transaction {
            return f(&reader);
        }
        // Cached statements: parsing BEGIN and COMMIT costs about as much as
        // a point read. A read-only transaction has nothing to undo; the
        // checkout rolls back whatever an error or a failed COMMIT left open.
        conn.prepare_cached("BEGIN")
            .and_then(|mut s| s.execute([]))
            .map_err(query_error)?;
        let value = f(&reader)?;
        if !conn.is_autocommit() {
            conn.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map_err(query_error)?;
        }
        Ok(value)
    }

    /// An idle connection to this generation's file; a new one when all are
    /// busy and the path still names this file; else wait for one.
    fn checkout(&self) -> Checkout<'_> {
        let conn = self.idle_conn(false).or_else(|| {
            open_matching(&self.path, (self.dev, self.ino))
                .ok()
                // The path names another (newer, or broken) file: never read
                // that one for this generation. The connection that
                // validated it is always returned after use, so this ends.
                .or_else(|| self.idle_conn(true))
        });
        Checkout { gen: self, conn }
    }

    fn idle_conn(&self, wait: bool) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match idle.pop() {
                Some(conn) => return Some(conn),
                None if !wait => return None,
                None => idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// A connection lent by a generation, given back (outside any transaction)
/// when dropped, even by a panic.
struct Checkout<'g> {
    gen: &'g Generation,
    conn: Option<Connection>,
}

impl std::ops::Deref for Checkout<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("checked out")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return; // stuck in a transaction: close it rather than lend it again
        }
        self.gen
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        self.gen.returned.notify_one();
    }
}

fn query_error(e: rusqlite::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

/// Lookups on one connection of one generation, inside [`Generation::read`]
/// or alone. Each query is counted in `keyward_snapshot_lookups_total`.
pub struct Reader<'a> {
    conn: &'a Connection,
    lookups: &'a Lookups,
}

impl Reader<'_> {
    fn query<T>(
        &self,
        table: usize,
        sql: &str,
        key: &str,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.lookups[table].fetch_add(1, Ordering::Relaxed);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(params![key], row).optional())
            .map_err(query_error)
    }

    pub fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        self.query(
            0,
            "SELECT id, plan, rate_limit, quota_exceeded, disabled FROM organizations WHERE id = ?1",
            id,
            |r| {
                Ok(Arc::new(OrgRecord {
                    id: Arc::from(r.get::<_, String>(0)?),
                    plan: Arc::from(r.get::<_, String>(1)?),
                    rate_limit: r.get::<_, Option<i64>>(2)?.map(|n| n.max(0) as u64),
                    quota_exceeded: r.get::<_, Option<i64>>(3)?.unwrap_or(0) != 0,
                    disabled: r.get::<_, Option<i64>>(4)?.unwrap_or(0) != 0,
                }))
            },
        )
    }

    pub fn workspace_org(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.query(
            1,
            "SELECT organization_id FROM workspaces WHERE id = ?1",
            id,
            |r| r.get(0),
        )
    }

    pub fn api_key(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.query(
            2,
            "SELECT id, organization_id, key_prefix, permissions, expires_at, revoked_at FROM api_keys WHERE key_hash = ?1",
            hash_hex,
            |r| {
                Ok(ApiKeyRecord {
                    id: r.get(0)?,
                    organization_id: r.get(1)?,
                    key_prefix: r.get(2)?,
                    permissions: r.get(3)?,
                    expires_at: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            },
        )
    }

    pub fn session(&self, hash_hex: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.query(
            3,
            "SELECT id, user_id, active_organization_id, expires_at FROM sessions WHERE token_hash = ?1",
            hash_hex,
            |r| {
                Ok(SessionRecord {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    active_organization_id: r.get(2)?,
                    expires_at: r.get(3)?,
                })
            },
        )
    }

    pub fn service_key(&self, hash_hex: &str) -> Result<Option<ServiceKeyRecord>, StoreError> {
        self.query(
            4,
            "SELECT id, revoked_at FROM service_keys WHERE key_hash = ?1",
            hash_hex,
            |r| {
                Ok(ServiceKeyRecord {
                    id: r.get(0)?,
                    revoked_at: r.get(1)?,
                })
            },
        )
    }

    pub fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        self.query(
            5,
            "SELECT id, organization_id, workspace_id, auth_mode FROM mcp_servers WHERE id = ?1",
            id,
            |r| {
                Ok(McpServerRecord {
                    id: r.get(0)?,
                    organization_id: r.get(1)?,
                    workspace_id: r.get(2)?,
                    auth_mode: McpAuthMode::parse(&r.get::<_, String>(3)?),
                })
            },
        )
    }

    pub fn mcp_token(&self, hash_hex: &str) -> Result<Option<McpTokenRecord>, StoreError> {
        self.query(
            6,
            "SELECT id, kind, mcp_server_id, end_user_id, expires_at, revoked_at FROM mcp_tokens WHERE token_hash = ?1",
            hash_hex,
            |r| {
                Ok(McpTokenRecord {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    mcp_server_id: r.get(2)?,
                    end_user_id: r.get(3)?,
                    expires_at: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            },
        )
    }

    pub fn resource_workspace(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.query(
            7,
            "SELECT workspace_id FROM resources WHERE id = ?1",
            id,
            |r| r.get(0),
        )
    }
}

/// A connection that tells whether another connection committed to the
/// served file since (`PRAGMA data_version`), for the generation it was
/// opened for; it also reads the `changes` table.
struct ChangeProbe {
    generation: u64,
    conn: Connection,
    data_version: i64,
    /// `max(changes.seq)` when opened, read with `data_version`
    seq: Option<i64>,
}

impl ChangeProbe {
    fn open(path: &Path, generation: u64) -> Option<ChangeProbe> {
        let conn = open_read_only(path).ok()?;
        let seen = changes::read(&conn, None).ok()?;
        Some(ChangeProbe {
            generation,
            conn,
            data_version: seen.data_version,
            seq: seen.last_seq,
        })
    }
}

/// A version of the file at the snapshot path, to not re-log the same
/// broken file every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
    len: u64,
}

impl FileVersion {
    /// The path names no file.
    const MISSING: FileVersion = FileVersion {
        dev: 0,
        ino: 0,
        mtime_ns: 0,
        len: 0,
    };
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::At;
    use crate::principal::{TokenTable, Verdict};
    use crate::store::verdicts::Verdicts;

    const A: &str = "wvz_key_a_0123456789";
    const B: &str = "wvz_key_b_0123456789";

    fn key(t: &str) -> (TokenTable, [u8; 32]) {
        (TokenTable::ApiKey, schema::token_hash(t.as_bytes()))
    }

    fn verdict(gen: &Generation, t: &str) -> Verdict {
        gen.read(|r| {
            crate::store::principals::load(
                r,
                TokenTable::ApiKey,
                &schema::token_hash_hex(t.as_bytes()),
            )
        })
        .unwrap()
    }

    fn wait_filter(gen: &Generation) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !gen.token_filter().ready() {
            assert!(Instant::now() < deadline, "no filter built");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The token filter over generations: built after a full load, keys
    /// added in place with a `changes` row pass, an unlogged in-place
    /// change drops it until rebuilt, and no lookup reaches SQLite for a
    /// hash it rules out.
    #[test]
    fn the_token_filter_follows_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let w = schema::init(&path).unwrap();
        w.execute_batch(
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
             INSERT INTO organizations (id, plan) VALUES ('org_a', 'free');",
        )
        .unwrap();
        // more than one scan batch of api keys, one token of each other table
        w.execute_batch("BEGIN").unwrap();
        let tok = |i: usize| format!("wvz_filter_{i}");
        for i in 0..70_000 {
            w.execute(
                "INSERT INTO api_keys (id, organization_id, key_hash) VALUES (?1, 'org_a', ?2)",
                params![format!("k{i}"), schema::token_hash_hex(tok(i).as_bytes())],
            )
            .unwrap();
        }
        w.execute_batch(&format!(
            "INSERT INTO sessions (id, user_id, token_hash, expires_at) VALUES ('s', 'u', '{}', 9999999999);
             INSERT INTO service_keys (id, key_hash) VALUES ('sk', '{}');
             COMMIT;",
            schema::token_hash_hex(b"session_tok"),
            schema::token_hash_hex(b"service_tok"),
        ))
        .unwrap();
        let store = SnapshotStore::new(&path);
        let g1 = store.reload().unwrap();
        wait_filter(&g1);
        let f = g1.token_filter();
        for i in 0..70_000 {
            assert!(!f.rules_out(&schema::token_hash(tok(i).as_bytes())), "{i}");
        }
        assert!(!f.rules_out(&schema::token_hash(b"session_tok")));
        assert!(!f.rules_out(&schema::token_hash(b"service_tok")));
        let unknown: Vec<[u8; 32]> = (0..10_000)
            .map(|i| schema::token_hash(format!("wvz_unknown_{i}").as_bytes()))
            .collect();
        let ruled_out = unknown.iter().filter(|h| f.rules_out(h)).count();
        assert!(ruled_out >= 9_990, "{ruled_out}");
        assert_eq!(store.filter_stats.keys.load(Ordering::Relaxed), 70_002);

        // a key added in place with its `changes` row passes at once
        let mut probe = ChangeProbe::open(&path, g1.id);
        let mut failed = None;
        w.execute_batch(&format!(
            "BEGIN; INSERT INTO api_keys (id, organization_id, key_hash) VALUES ('new', 'org_a', '{h}');
             INSERT INTO changes VALUES (1, 'api_key', '{h}'); COMMIT;",
            h = schema::token_hash_hex(b"wvz_added_in_place")
        ))
        .unwrap();
        assert!(store.poll_once(&mut probe, &mut failed));
        let g2 = store.current().unwrap();
        assert!(g2.changes().is_some(), "incremental");
        assert!(g2.token_filter().ready(), "the chain's filter goes on");
        assert!(!g2
            .token_filter()
            .rules_out(&schema::token_hash(b"wvz_added_in_place")));
        assert!(g2.token_filter().rules_out(&unknown[0]) || !f.rules_out(&unknown[0]));

        // an unlogged in-place change: no filter until rebuilt
        w.execute(
            "INSERT INTO api_keys (id, organization_id, key_hash) VALUES ('quiet', 'org_a', ?1)",
            params![schema::token_hash_hex(b"wvz_added_quietly")],
        )
        .unwrap();
        assert!(store.poll_once(&mut probe, &mut failed));
        let g3 = store.current().unwrap();
        assert_eq!(g3.fallback(), Some(Fallback::Unlogged));
        let quiet = schema::token_hash(b"wvz_added_quietly");
        assert!(!g3.token_filter().rules_out(&quiet));
        wait_filter(&g3);
        assert!(
            !g3.token_filter().rules_out(&quiet),
            "rebuilt from the file"
        );
        assert!(!g3
            .token_filter()
            .rules_out(&schema::token_hash(b"wvz_added_in_place")));
        assert_eq!(store.filter_stats.keys.load(Ordering::Relaxed), 70_004);
    }

    /// The race of an incremental change: a request pinned to the
    /// generation before it read the row before the commit and inserts its
    /// verdict after the watcher applied the change.
    #[test]
    fn a_stale_verdict_inserted_after_an_incremental_change_never_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let w = schema::init(&path).unwrap();
        w.execute_batch(&format!(
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
             INSERT INTO organizations (id, plan) VALUES ('org_a', 'free'), ('org_b', 'free');
             INSERT INTO api_keys (id, organization_id, key_hash) VALUES ('a', 'org_a', '{}'), ('b', 'org_b', '{}');",
            schema::token_hash_hex(A.as_bytes()),
            schema::token_hash_hex(B.as_bytes()),
        ))
        .unwrap();
        let store = SnapshotStore::new(&path);
        let cfg = crate::config::CacheConfig {
            capacity: 1000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
        };
        let verdicts = Verdicts::attach(&cfg, &store);
        let g1 = store.reload().unwrap();
        assert_eq!(
            (g1.changes_seq(), g1.fallback()),
            (Some(0), Some(Fallback::Opened))
        );
        let cache = verdicts.current();
        // what requests pinned to g1 read before the commit
        let mut stale_a: Vec<Verdict> = (0..3).map(|_| verdict(&g1, A)).collect();
        let b = verdict(&g1, B);
        assert!(!stale_a[0].is_negative());
        cache.put_token(key(A), g1.id, stale_a.pop().unwrap());
        cache.put_token(key(B), g1.id, b);

        let mut probe = ChangeProbe::open(&path, g1.id);
        let mut failed = None;
        w.execute_batch(&format!(
            "BEGIN; UPDATE api_keys SET revoked_at = 1 WHERE id = 'a';
             INSERT INTO changes VALUES (1, 'api_key', '{}'); COMMIT;",
            schema::token_hash_hex(A.as_bytes())
        ))
        .unwrap();
        assert!(store.poll_once(&mut probe, &mut failed));
        let g2 = store.current().unwrap();
        assert_eq!(g2.changes().map(|c| c.len()), Some(1), "incremental");
        assert_eq!(
            (g2.cache_base(), g2.changes_seq()),
            (g1.cache_base(), Some(1))
        );
        assert!(
            Arc::ptr_eq(&cache, &verdicts.current()),
            "the same cache goes on"
        );
        let at2 = At::of(Some(&g2));
        // the changed key was re-read; the other stays as it was
        assert!(cache.token(&key(A), at2).unwrap().is_negative());
        assert!(!cache.token(&key(B), at2).unwrap().is_negative());

        // the late insert of the request pinned to g1 does not replace the
        // fresh entry …
        cache.put_token(key(A), g1.id, stale_a.pop().unwrap());
        assert!(cache.token(&key(A), at2).unwrap().is_negative());
        // … and when the fresh entry is gone (evicted, or refused by
        // TinyLFU), a stale one tagged g1 is outvoted by the tombstone
        cache.evict_token(&key(A));
        cache.put_token(key(A), g1.id, stale_a.pop().unwrap());
        assert!(cache.token(&key(A), at2).is_none());

        // an organization change outvotes the keys that embed it
        let mut failed = None;
        w.execute_batch(
            "BEGIN; UPDATE organizations SET disabled = 1 WHERE id = 'org_b';
             INSERT INTO changes VALUES (2, 'organization', 'org_b'); COMMIT;",
        )
        .unwrap();
        assert!(store.poll_once(&mut probe, &mut failed));
        let g3 = store.current().unwrap();
        assert!(g3.changes().is_some());
        assert!(cache.token(&key(B), At::of(Some(&g3))).is_none());

        // a gap: the full path; the same cache is refilled in place from g4,
        // and no entry tagged before g4 is accepted
        w.execute_batch(
            "BEGIN; UPDATE organizations SET disabled = 0 WHERE id = 'org_b';
             INSERT INTO changes VALUES (9, 'organization', 'org_b'); COMMIT;",
        )
        .unwrap();
        assert!(store.poll_once(&mut probe, &mut failed));
        let g4 = store.current().unwrap();
        assert_eq!(g4.fallback(), Some(Fallback::Gap));
        assert_eq!((g4.cache_base(), g4.changes_seq()), (g4.id, Some(9)));
        let at4 = At::of(Some(&g4));
        assert!(
            Arc::ptr_eq(&cache, &verdicts.current()),
            "refilled in place"
        );
        // re-read by the refill thread once g4 is served
        let deadline = Instant::now() + Duration::from_secs(5);
        let b = loop {
            match cache.token(&key(B), at4) {
                Some(b) => break b,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => panic!("not re-read from g4"),
            }
        };
        assert!(
            matches!(&b.value, Verdict::ApiKey(k) if k.org.as_ref().is_some_and(|o| !o.disabled)),
            "g4's answer: org_b enabled again"
        );
        cache.evict_token(&key(B));
        cache.put_token(key(B), g3.id, verdict(&g3, B));
        assert!(cache.token(&key(B), at4).is_none(), "a late g3 insert");
        assert_eq!(store.reloads.incremental.load(Ordering::Relaxed), 2);
    }
}
