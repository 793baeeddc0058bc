//! Follow mode `outbox` (SPEC §9): a table and triggers in the source that
//! record every changed row of a watched table in the writing transaction
//! and `NOTIFY keyward_outbox`.
//!
//! The position is a transaction-id watermark, not a sequence number:
//! sequence values are handed out before commit, so a row with a lower
//! `seq` can become visible after a higher one was read. Each round reads,
//! inside one repeatable-read transaction, every visible row whose writing
//! transaction id is at or above the position, re-reads the mapped rows
//! they name, and moves the position to the snapshot's `xmin` (the oldest
//! transaction still running: every id below it is finished, so no row
//! below it can appear later) once the snapshot has them. Rows at or above
//! `xmin` are read again next round (a long transaction elsewhere delays
//! nothing, it only makes rounds re-read); re-applying a row changes
//! nothing. Rows below the position are pruned.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::build::{read_table, snapshot_tx, Read, SyncError};
use super::config::SyncConfig;

pub const CHANNEL: &str = "keyward_outbox";

/// The SQL `keyward sync install` runs (or prints): the outbox, its
/// trigger function, and one row trigger plus one TRUNCATE trigger per
/// watched table.
pub fn install_sql(cfg: &SyncConfig, schema: &str) -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS keyward_outbox (\n\
         \x20 seq bigserial PRIMARY KEY,\n\
         \x20 xid xid8 NOT NULL DEFAULT pg_current_xact_id(),\n\
         \x20 at timestamptz NOT NULL DEFAULT now(),\n\
         \x20 source_table text NOT NULL,\n\
         \x20 row_id text NOT NULL        -- '*' after a TRUNCATE: rebuild\n\
         );\n\
         CREATE INDEX IF NOT EXISTS keyward_outbox_xid ON keyward_outbox (xid);\n\
         CREATE OR REPLACE FUNCTION keyward_outbox_record() RETURNS trigger\n\
         LANGUAGE plpgsql AS $$\n\
         BEGIN\n\
         \x20 IF TG_LEVEL = 'STATEMENT' THEN\n\
         \x20   INSERT INTO keyward_outbox (source_table, row_id) VALUES (TG_TABLE_NAME, '*');\n\
         \x20 ELSE\n\
         \x20   IF TG_OP IN ('UPDATE', 'DELETE') THEN\n\
         \x20     INSERT INTO keyward_outbox (source_table, row_id) VALUES (TG_TABLE_NAME, OLD.id::text);\n\
         \x20   END IF;\n\
         \x20   IF TG_OP IN ('INSERT', 'UPDATE') THEN\n\
         \x20     INSERT INTO keyward_outbox (source_table, row_id) VALUES (TG_TABLE_NAME, NEW.id::text);\n\
         \x20   END IF;\n\
         \x20 END IF;\n\
         \x20 PERFORM pg_notify('keyward_outbox', TG_TABLE_NAME);\n\
         \x20 RETURN NULL;\n\
         END $$;\n",
    );
    for t in cfg.watched() {
        let table = qualified(schema, &t);
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER keyward_outbox AFTER INSERT OR UPDATE OR DELETE ON {table}\n\
             \x20 FOR EACH ROW EXECUTE FUNCTION keyward_outbox_record();\n\
             CREATE OR REPLACE TRIGGER keyward_outbox_truncate AFTER TRUNCATE ON {table}\n\
             \x20 FOR EACH STATEMENT EXECUTE FUNCTION keyward_outbox_record();\n"
        ));
    }
    sql
}

/// `table` or `schema.table`, each part quoted.
fn qualified(schema: &str, table: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    match table.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote(s), quote(t)),
        None => format!("{}.{}", quote(schema), quote(table)),
    }
}

/// What one round found.
pub enum Round {
    /// the mapped rows the outbox named, re-read; move the position to `xmin`
    Changes {
        reads: Vec<(Read, Vec<String>)>,
        /// tables re-read whole (a `watch_all` table changed)
        whole: Vec<Read>,
        xmin: String,
        /// outbox rows consumed
        rows: u64,
    },
    /// a TRUNCATE, or a position the source has never reached (restored
    /// from a backup, another database): only a full build is right
    Rebuild(&'static str),
}

/// One round from `position` (see the module docs).
pub async fn round(
    client: &mut Client,
    cfg: &SyncConfig,
    position: &str,
) -> Result<Round, SyncError> {
    let pg = |e| SyncError::Source(super::pg::PgError::from(e));
    let (tx, xmin) = snapshot_tx(client).await?;
    let ahead: bool = tx
        .query_one(
            "SELECT $1::text::xid8 > pg_snapshot_xmax(pg_current_snapshot())",
            &[&position],
        )
        .await
        .map_err(pg)?
        .get(0);
    if ahead {
        return Ok(Round::Rebuild("position_ahead_of_source"));
    }
    let rows = tx
        .query(
            "SELECT source_table, row_id FROM keyward_outbox \
             WHERE xid >= $1::text::xid8 ORDER BY seq",
            &[&position],
        )
        .await
        .map_err(pg)?;
    let mut by_table: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        let (table, id): (String, String) = (r.get(0), r.get(1));
        if id == "*" {
            return Ok(Round::Rebuild("truncate"));
        }
        by_table.entry(table).or_default().insert(id);
    }
    let mut reads = Vec::new();
    let mut whole = Vec::new();
    for t in &cfg.tables {
        let bare = |w: &String| w.rsplit('.').next().unwrap_or(w).to_string();
        if t.watch_all.iter().any(|w| by_table.contains_key(&bare(w))) {
            whole.push(read_table(&tx, t, None).await?);
            continue;
        }
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for w in &t.watch {
            let bare = w.rsplit('.').next().unwrap_or(w);
            if let Some(s) = by_table.get(bare) {
                ids.extend(s.iter().cloned());
            }
        }
        if ids.is_empty() {
            continue;
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let read = read_table(&tx, t, Some(&ids)).await?;
        reads.push((read, ids));
    }
    tx.commit().await.map_err(pg)?;
    Ok(Round::Changes {
        reads,
        whole,
        xmin,
        rows: rows.len() as u64,
    })
}

/// Drop outbox rows the snapshot already has (below `position`).
pub async fn prune(client: &Client, position: &str) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM keyward_outbox WHERE xid < $1::text::xid8",
            &[&position],
        )
        .await
}

/// Seconds since the oldest outbox row not yet applied was written (0 when
/// none waits): `sync_lag_seconds`.
pub async fn lag(client: &Client, position: &str) -> Result<f64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(extract(epoch FROM now() - min(at)), 0)::float8 \
             FROM keyward_outbox WHERE xid >= $1::text::xid8",
            &[&position],
        )
        .await?;
    Ok(row.get(0))
}
