//! Live operations (issue 17, SPEC §2.1): in-place changes logged in the
//! optional `changes` table invalidate exactly the verdicts they name and
//! keep the rest of the cache warm; without the table, on a gap in `seq` or
//! when the table is dropped, the whole cache is refilled as before. And a
//! commit in WAL mode wakes the watcher through `NAME-wal`.
mod common;

use std::time::Duration;

use common::*;
use rusqlite::params;

const CHANGES: &str =
    "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);";

const INCREMENTAL: &str = "keyward_snapshot_swaps_total{path=\"incremental\",reason=\"changes\"}";
const HIT: &str = "keyward_cache_lookups_total{result=\"hit\"}";
const KEY_LOOKUPS: &str = "keyward_snapshot_lookups_total{table=\"api_keys\"}";

fn full(reason: &str) -> String {
    format!("keyward_snapshot_swaps_total{{path=\"full\",reason=\"{reason}\"}}")
}

/// Revoke the key `id` in place, logging it at `seq` (None: max + 1), in one
/// transaction, as a control plane does.
fn revoke_logged(snap: &Snap, id: &str, token: &str, seq: Option<i64>) {
    let mut c = snap.conn();
    let tx = c.transaction().unwrap();
    tx.execute("UPDATE api_keys SET revoked_at = 1 WHERE id = ?1", [id])
        .unwrap();
    let next: i64 = tx
        .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM changes", [], |r| {
            r.get(0)
        })
        .unwrap();
    tx.execute(
        "INSERT INTO changes (seq, kind, key) VALUES (?1, 'api_key', ?2)",
        params![seq.unwrap_or(next), hash(token)],
    )
    .unwrap();
    tx.commit().unwrap();
}

fn world_with_changes() -> World {
    let w = World::new();
    w.snap
        .sql(CHANGES)
        .sql("INSERT INTO changes (seq, kind, key) VALUES (7, 'organization', 'org_a')");
    w
}

/// Both keys answered twice: cached.
fn warm(kw: &Keyward, keys: &[&str]) {
    for k in keys {
        for _ in 0..2 {
            assert_eq!(kw.get("/api/v1/x", Some(k)).status, 200);
        }
    }
}

fn wait_status(kw: &Keyward, key: &str, status: u16, within: Duration) -> bool {
    wait_until(within, || kw.get("/api/v1/x", Some(key)).status == status)
}

#[test]
fn a_logged_revocation_in_place_keeps_the_other_keys_cached() {
    let w = world_with_changes();
    let other = w.snap.api_key("org_b");
    let kw = w.start(echo());
    warm(&kw, &[&w.org_key, &other]);
    let (lookups, incremental) = (kw.metric(KEY_LOOKUPS), kw.metric(INCREMENTAL));
    let generation = kw.generation();

    revoke_logged(&w.snap, &w.org_key_id, &w.org_key, None);
    assert!(
        wait_status(&kw, &w.org_key, 401, RELOAD_TIMEOUT),
        "the revocation was never served"
    );
    assert!(kw.generation() > generation, "a new generation was served");
    assert_eq!(
        kw.metric(INCREMENTAL),
        incremental + 1.0,
        "{}",
        kw.metrics()
    );
    // Only the revoked key was re-read: no refill of the cache. The watcher
    // re-reads it; a request may read it once more when moka did not admit
    // the watcher's entry (TinyLFU) — seen once in CI — but never the other key.
    let after = kw.metric(KEY_LOOKUPS);
    assert!(
        after == lookups + 1.0 || after == lookups + 2.0,
        "{lookups} -> {after}: {}",
        kw.metrics()
    );
    let hits = kw.metric(HIT);
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    assert_eq!(kw.metric(HIT), hits + 1.0, "the other key is still a hit");
    assert_eq!(
        kw.metric(KEY_LOOKUPS),
        after,
        "the other key was not re-read"
    );
    // and the row counts catch up shortly after
    kw.wait_caught_up(&w.snap);
}

#[test]
fn an_organization_change_reaches_the_cached_keys_of_that_organization() {
    let w = world_with_changes();
    let other = w.snap.api_key("org_b");
    let kw = w.start(echo());
    warm(&kw, &[&w.org_key, &other]);
    let incremental = kw.metric(INCREMENTAL);
    w.snap.sql(
        "BEGIN;
         UPDATE organizations SET disabled = 1 WHERE id = 'org_a';
         INSERT INTO changes (seq, kind, key) VALUES (8, 'organization', 'org_a');
         COMMIT;",
    );
    assert!(
        wait_until(RELOAD_TIMEOUT, || kw
            .get("/api/v1/x", Some(&w.org_key))
            .status
            == 403),
        "the disabled organization's cached key was still let through"
    );
    assert_eq!(kw.metric(INCREMENTAL), incremental + 1.0);
    let hits = kw.metric(HIT);
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    assert_eq!(
        kw.metric(HIT),
        hits + 1.0,
        "the other org's key is still a hit"
    );
}

#[test]
fn a_gap_in_seq_falls_back_to_a_full_refill() {
    let w = world_with_changes();
    let other = w.snap.api_key("org_b");
    let kw = w.start(echo());
    warm(&kw, &[&w.org_key, &other]);
    let gaps = kw.metric(&full("gap"));
    // 7 was the last seen: 9 leaves a hole
    revoke_logged(&w.snap, &w.org_key_id, &w.org_key, Some(9));
    assert!(wait_status(&kw, &w.org_key, 401, RELOAD_TIMEOUT));
    assert_eq!(kw.metric(&full("gap")), gaps + 1.0, "{}", kw.metrics());
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    // the next logged change follows 9 again: incremental
    let incremental = kw.metric(INCREMENTAL);
    let (other_id,): (String,) = w
        .snap
        .conn()
        .query_row(
            "SELECT id FROM api_keys WHERE key_hash = ?1",
            [hash(&other)],
            |r| Ok((r.get(0)?,)),
        )
        .unwrap();
    revoke_logged(&w.snap, &other_id, &other, None);
    assert!(wait_status(&kw, &other, 401, RELOAD_TIMEOUT));
    assert_eq!(
        kw.metric(INCREMENTAL),
        incremental + 1.0,
        "{}",
        kw.metrics()
    );
}

#[test]
fn dropping_the_changes_table_falls_back_to_a_full_refill() {
    let w = world_with_changes();
    let kw = w.start(echo());
    warm(&kw, &[&w.org_key]);
    let dropped = kw.metric(&full("no_changes_table"));
    w.snap.conn()
        .execute_batch(&format!(
            "BEGIN; DROP TABLE changes; UPDATE api_keys SET revoked_at = 1 WHERE id = '{}'; COMMIT;",
            w.org_key_id
        ))
        .unwrap();
    assert!(wait_status(&kw, &w.org_key, 401, RELOAD_TIMEOUT));
    assert_eq!(kw.metric(&full("no_changes_table")), dropped + 1.0);
}

#[test]
fn a_commit_without_a_changes_row_falls_back_to_a_full_refill() {
    let w = world_with_changes();
    let kw = w.start(echo());
    warm(&kw, &[&w.org_key]);
    let unlogged = kw.metric(&full("unlogged_commit"));
    w.snap
        .conn()
        .execute(
            "UPDATE api_keys SET revoked_at = 1 WHERE id = ?1",
            [&w.org_key_id],
        )
        .unwrap();
    assert!(wait_status(&kw, &w.org_key, 401, RELOAD_TIMEOUT));
    assert_eq!(kw.metric(&full("unlogged_commit")), unlogged + 1.0);
}

#[test]
fn a_key_added_in_place_after_a_negative_verdict_is_valid_at_once() {
    let w = world_with_changes();
    let kw = w.start(echo());
    let token = "wvz_added_in_place_0123456789";
    for _ in 0..2 {
        kw.get("/api/v1/x", Some(token))
            .assert_error(401, "UNAUTHENTICATED");
    }
    w.snap.sql(&format!(
        "BEGIN;
         INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES ('key_added', 'org_a', '{h}', 'wvz_adde');
         INSERT INTO changes (seq, kind, key) VALUES (8, 'api_key', '{h}');
         COMMIT;",
        h = hash(token)
    ));
    assert!(wait_status(&kw, token, 200, RELOAD_TIMEOUT));
    assert_eq!(kw.metric(INCREMENTAL), 1.0, "{}", kw.metrics());
}

#[test]
fn a_commit_in_wal_mode_is_served_without_waiting_for_the_poll_interval() {
    // A poll interval far longer than the test: only the notification on
    // snapshot.db-wal can make the revocation visible in time.
    let w = World::new();
    let mode: String = w
        .snap
        .conn()
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut opts = Opts::new(echo());
    opts.poll_ms = 600_000;
    let kw = w.start_with(opts);
    warm(&kw, &[&w.org_key]);
    // The writer stays open, so the -wal file is not checkpointed away.
    let writer = w.snap.conn();
    for round in 0..3 {
        let generation = kw.generation();
        writer
            .execute(
                "UPDATE organizations SET rate_limit = ?1 WHERE id = 'org_b'",
                [round],
            )
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(3), || kw.generation() > generation),
            "commit {round} in WAL mode was not served within 3 s (poll interval 600 s)"
        );
    }
    writer
        .execute(
            "UPDATE api_keys SET revoked_at = 1 WHERE id = ?1",
            [&w.org_key_id],
        )
        .unwrap();
    assert!(
        wait_status(&kw, &w.org_key, 401, Duration::from_secs(3)),
        "the revocation in WAL mode was not served within 3 s (poll interval 600 s)"
    );
}

#[test]
fn a_logged_commit_in_wal_mode_is_applied_incrementally() {
    let w = world_with_changes();
    w.snap
        .conn()
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    let other = w.snap.api_key("org_b");
    let mut opts = Opts::new(echo());
    opts.poll_ms = 600_000;
    let kw = w.start_with(opts);
    warm(&kw, &[&w.org_key, &other]);
    let _writer = w.snap.conn();
    revoke_logged(&w.snap, &w.org_key_id, &w.org_key, None);
    assert!(wait_status(&kw, &w.org_key, 401, Duration::from_secs(3)));
    assert_eq!(kw.metric(INCREMENTAL), 1.0, "{}", kw.metrics());
    let hits = kw.metric(HIT);
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    assert_eq!(kw.metric(HIT), hits + 1.0);
}
