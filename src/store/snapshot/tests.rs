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
        crate::store::principals::load(r, TokenTable::ApiKey, &schema::token_hash_hex(t.as_bytes()))
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
