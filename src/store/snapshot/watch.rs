//! Loading and reloading: opening a version read-only and checked,
//! watching the path (inotify plus polling, `PRAGMA data_version` for
//! in-place commits), applying SPEC §2.1 `changes`, and swapping.

use super::*;

/// inotify on the snapshot's directory, reporting events that name the
/// snapshot file itself (a rename over it, a write to it) or its WAL
/// (`NAME-wal`: a commit in WAL mode) on `changed`;
/// bursts collapse into one wake-up. `None` (logged) when inotify is
/// unavailable: the watcher then polls only.
pub(super) fn file_notifier(
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

pub(super) fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
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

pub(super) fn identity(path: &Path) -> Result<(u64, u64, std::fs::Metadata), ReloadError> {
    let m = std::fs::metadata(path).map_err(|source| ReloadError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((m.dev(), m.ino(), m))
}

/// Open `path` only if it is still the file (dev, inode) `want` names, with
/// the schema checked; the file seen before and after opening must agree, so
/// a rename in between is caught.
pub(super) fn open_matching(path: &Path, want: (u64, u64)) -> Result<Connection, ReloadError> {
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
pub(super) enum Load {
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
pub(super) const WAL_RECHECKS_MS: [u64; 5] = [5, 15, 30, 50, 150];

/// Least time between two row counts of incremental generations.
pub(super) const RECOUNT_EVERY: Duration = Duration::from_secs(1);

pub(super) fn count_rows(conn: &Connection, table: &'static str) -> Result<u64, ReloadError> {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(|source| ReloadError::Table { table, source })
}

/// Every table's row count, as `/readyz` reports them.
pub(super) fn count_all(conn: &Connection) -> Result<Counts, ReloadError> {
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
pub(super) fn produced_at(conn: &Connection, meta: &std::fs::Metadata) -> i64 {
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

    pub(super) fn load_and_swap(&self, how: Load) -> Result<Arc<Generation>, ReloadError> {
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
    pub(super) fn publish(&self, gen: Generation) -> Arc<Generation> {
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

    pub(super) fn load_candidate(&self, how: Load) -> Result<Generation, ReloadError> {
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
        let policy = PolicyColumns::read(&conn).map_err(|source| ReloadError::Table {
            table: "api_keys",
            source,
        })?;
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
            policy,
        })
    }

    /// Count the rows of the served generation if it still shows its
    /// predecessor's counts, at most once per [`RECOUNT_EVERY`]; the time
    /// until the next count is due when one is pending.
    pub(super) fn recount(&self, last: &mut Option<Instant>) -> Option<Duration> {
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
    pub(super) fn poll_once(
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
    pub(super) fn lookup<T>(
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

/// A connection that tells whether another connection committed to the
/// served file since (`PRAGMA data_version`), for the generation it was
/// opened for; it also reads the `changes` table.
pub(super) struct ChangeProbe {
    pub(super) generation: u64,
    pub(super) conn: Connection,
    pub(super) data_version: i64,
    /// `max(changes.seq)` when opened, read with `data_version`
    pub(super) seq: Option<i64>,
}

impl ChangeProbe {
    pub(super) fn open(path: &Path, generation: u64) -> Option<ChangeProbe> {
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
pub(super) struct FileVersion {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) mtime_ns: i64,
    pub(super) len: u64,
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

pub(super) fn data_version(conn: &Connection) -> Option<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
}
