//! One loaded, validated version of the file: its connections (lent per
//! lookup, given back on drop), its token filter, and the [`Reader`] every
//! lookup goes through.

use super::*;

/// One loaded, validated version of the snapshot file.
#[derive(Debug)]
pub struct Generation {
    pub id: u64,
    pub(super) dev: u64,
    pub(super) ino: u64,
    /// unix seconds when this version was produced (meta.generated_at, else mtime)
    pub produced_at: i64,
    /// Row counts; an incremental generation starts with its predecessor's
    /// and gets its own shortly after it is served (see [`CountsCell`]).
    pub counts: CountsCell,
    /// The highest `changes.seq` this version includes (SPEC §2.1); None
    /// without a `changes` table.
    pub(super) changes_seq: Option<i64>,
    /// Cached verdicts tagged with a generation older than this are not
    /// this generation's answer: its own id after a full load (everything
    /// may have changed), inherited from its predecessor on an incremental
    /// one (only the keys in `changes` changed; see `store::cache`).
    pub(super) cache_base: AtomicU64,
    /// What changed since the predecessor: Some on an incremental
    /// generation (an in-place commit logged in the `changes` table).
    pub(super) changes: Option<Vec<Change>>,
    /// Why this generation takes the full path (when it does).
    pub(super) fallback: Mutex<Option<Fallback>>,
    pub(super) path: PathBuf,
    pub(super) lookups: Arc<Lookups>,
    /// The token filter of this generation's chain (see `store::filter`).
    pub(super) filter: GenFilter,
    pub(super) stats: Arc<FilterStats>,
    /// Connections to this version's file, idle between lookups: as many as
    /// lookups ever ran at once (one per worker thread). The first is the one
    /// that validated the version: it pins the file (inode) even after
    /// another file is renamed over the path. All close when the generation
    /// is dropped, which the reload thread does (see `SnapshotStore::retired`).
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) returned: Condvar,
    /// the optional SPEC §6.1 columns this version has
    pub(super) policy: PolicyColumns,
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
    pub(super) fn scan_token_filter(&self) -> Result<TokenFilter, StoreError> {
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

    pub(super) fn with_reader<T>(
        &self,
        transaction: bool,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.checkout();
        let reader = Reader {
            conn: &conn,
            lookups: &self.lookups,
            policy: self.policy,
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
    pub(super) fn checkout(&self) -> Checkout<'_> {
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

    pub(super) fn idle_conn(&self, wait: bool) -> Option<Connection> {
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
pub(super) struct Checkout<'g> {
    pub(super) gen: &'g Generation,
    pub(super) conn: Option<Connection>,
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

pub(super) fn query_error(e: rusqlite::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

/// An optional SPEC §6.1 INTEGER column: a value of another type (TEXT,
/// REAL, BLOB) fails closed as a limit of nothing, never as no limit, and
/// never as a lookup error (which would be retried on every request).
fn policy_integer(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n),
        _ => Some(i64::MIN),
    })
}

/// An optional SPEC §6.1 TEXT column: a value of another type (or not
/// UTF-8) reads as text no parser accepts, so the key is unusable (403).
fn policy_text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Text(t) => {
            Some(std::str::from_utf8(t).map_or_else(|_| "\u{0}".to_string(), String::from))
        }
        _ => Some("\u{0}".to_string()),
    })
}

/// Lookups on one connection of one generation, inside [`Generation::read`]
/// or alone. Each query is counted in `keyward_snapshot_lookups_total`.
pub struct Reader<'a> {
    pub(super) conn: &'a Connection,
    pub(super) lookups: &'a Lookups,
    pub(super) policy: PolicyColumns,
}

impl Reader<'_> {
    pub(super) fn query<T>(
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
        // the optional columns read as NULL when the file lacks them
        let sql = match (
            self.policy.api_key_rate_limit,
            self.policy.api_key_allowed_ips,
        ) {
            (false, false) => "SELECT id, organization_id, key_prefix, permissions, expires_at, revoked_at, NULL, NULL FROM api_keys WHERE key_hash = ?1",
            (true, false) => "SELECT id, organization_id, key_prefix, permissions, expires_at, revoked_at, rate_limit, NULL FROM api_keys WHERE key_hash = ?1",
            (false, true) => "SELECT id, organization_id, key_prefix, permissions, expires_at, revoked_at, NULL, allowed_ips FROM api_keys WHERE key_hash = ?1",
            (true, true) => "SELECT id, organization_id, key_prefix, permissions, expires_at, revoked_at, rate_limit, allowed_ips FROM api_keys WHERE key_hash = ?1",
        };
        self.query(2, sql, hash_hex, |r| {
            Ok(ApiKeyRecord {
                id: r.get(0)?,
                organization_id: r.get(1)?,
                key_prefix: r.get(2)?,
                permissions: r.get(3)?,
                expires_at: r.get(4)?,
                revoked_at: r.get(5)?,
                rate_limit: policy_integer(r, 6)?,
                allowed_ips: policy_text(r, 7)?,
            })
        })
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
        let sql = if self.policy.mcp_token_rate_limit {
            "SELECT id, kind, mcp_server_id, end_user_id, expires_at, revoked_at, rate_limit FROM mcp_tokens WHERE token_hash = ?1"
        } else {
            "SELECT id, kind, mcp_server_id, end_user_id, expires_at, revoked_at, NULL FROM mcp_tokens WHERE token_hash = ?1"
        };
        self.query(6, sql, hash_hex, |r| {
            Ok(McpTokenRecord {
                id: r.get(0)?,
                kind: r.get(1)?,
                mcp_server_id: r.get(2)?,
                end_user_id: r.get(3)?,
                expires_at: r.get(4)?,
                revoked_at: r.get(5)?,
                rate_limit: policy_integer(r, 6)?,
            })
        })
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
