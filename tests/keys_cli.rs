//! `keyward keys list | revoke | rotate` (SPEC §8.2) as an operator runs
//! them: the real binary against a snapshot made with `keyward snapshot
//! init`, and a running keyward serving that file while it changes.
mod common;
use common::*;

use std::path::Path;
use std::process::Output;

/// Run `keyward ARGS…`.
fn keyward(args: &[&str]) -> Output {
    keyward_cmd().args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run `keyward ARGS…` and expect success; its stdout.
fn ok(args: &[&str]) -> String {
    let out = keyward(args);
    assert!(
        out.status.success(),
        "keyward {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Run `keyward ARGS…` and expect failure; its stderr.
fn fails(args: &[&str]) -> String {
    let out = keyward(args);
    assert!(
        !out.status.success(),
        "keyward {args:?} succeeded: {}",
        stdout(&out)
    );
    stderr(&out)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A [`Snap`] whose file was made by `keyward snapshot init`, with org
/// `org_a` (workspaces `ws_1`, `ws_2`) and `org_b`.
fn cli_snap() -> Snap {
    let snap = Snap::new();
    std::fs::remove_file(&snap.path).unwrap();
    ok(&["snapshot", "init", path(&snap.path)]);
    snap.org("org_a", "free")
        .org("org_b", "free")
        .workspace("ws_1", "org_a")
        .workspace("ws_2", "org_a");
    snap
}

/// `keyward keys create`; the key it prints, checked to be one line.
fn create(snap: &Snap, org: &str, workspaces: &[&str]) -> String {
    let mut args = vec![
        "keys",
        "create",
        "--snapshot",
        path(&snap.path),
        "--org",
        org,
    ];
    for ws in workspaces {
        args.extend(["--workspace", ws]);
    }
    one_key(&ok(&args))
}

/// The key in `out`, which must be one `wvz_` key alone on one line.
fn one_key(out: &str) -> String {
    let key = out.strip_suffix('\n').unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        key.starts_with("wvz_") && key.len() > 8 && !key.contains(char::is_whitespace),
        "not one key alone on one line: {out:?}"
    );
    key.to_string()
}

fn key_id(snap: &Snap, key: &str) -> String {
    snap.conn()
        .query_row(
            "SELECT id FROM api_keys WHERE key_hash = ?1",
            [hash(key)],
            |r| r.get(0),
        )
        .unwrap()
}

/// (expires_at, revoked_at) of key `id`.
fn times(snap: &Snap, id: &str) -> (Option<i64>, Option<i64>) {
    snap.conn()
        .query_row(
            "SELECT expires_at, revoked_at FROM api_keys WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn list(snap: &Snap, extra: &[&str]) -> String {
    let mut args = vec!["keys", "list", "--snapshot", path(&snap.path)];
    args.extend(extra);
    ok(&args)
}

/// The list line of key `id`, split into its columns.
fn row(listing: &str, id: &str) -> Vec<String> {
    listing
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no line for {id}:\n{listing}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn rfc3339(secs: i64) -> String {
    keyward::snapshot::schema::keys::rfc3339(secs)
}

#[test]
fn list_shows_every_key_and_never_a_hash_or_secret() {
    let snap = cli_snap();
    let org_key = create(&snap, "org_a", &[]);
    let scoped = create(&snap, "org_a", &["ws_1", "ws_2"]);
    let other = create(&snap, "org_b", &[]);
    let (org_id, scoped_id, other_id) = (
        key_id(&snap, &org_key),
        key_id(&snap, &scoped),
        key_id(&snap, &other),
    );
    snap.sql(&format!(
        "UPDATE api_keys SET expires_at = 1900000000 WHERE id = '{scoped_id}';
         UPDATE api_keys SET revoked_at = 1800000000 WHERE id = '{other_id}';"
    ));

    let all = list(&snap, &[]);
    let json = list(&snap, &["--json"]);
    for out in [&all, &json] {
        for key in [&org_key, &scoped, &other] {
            assert!(
                !out.contains(key.as_str()),
                "the secret {key} is listed:\n{out}"
            );
            assert!(
                !out.contains(&hash(key)),
                "the hash of {key} is listed:\n{out}"
            );
            // the body past the prefix appears nowhere either
            assert!(!out.contains(&key[8..]), "{out}");
        }
    }

    // a header, then one line per key in aligned columns
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 4, "{all}");
    assert!(
        lines[0].split_whitespace().eq([
            "ID",
            "ORG",
            "PREFIX",
            "SCOPE",
            "EXPIRES_AT",
            "REVOKED_AT"
        ]),
        "{all}"
    );
    let column = |name: &str| lines[0].find(name).unwrap();
    for l in &lines[1..] {
        for name in ["ORG", "PREFIX", "SCOPE", "EXPIRES_AT", "REVOKED_AT"] {
            let at = column(name);
            assert!(
                l.as_bytes()[at - 1] == b' ' && l.as_bytes()[at] != b' ',
                "column {name} not aligned:\n{all}"
            );
        }
    }
    assert_eq!(
        row(&all, &org_id),
        [org_id.as_str(), "org_a", &org_key[..8], "org", "-", "-"]
    );
    assert_eq!(
        row(&all, &scoped_id),
        [
            scoped_id.as_str(),
            "org_a",
            &scoped[..8],
            "ws_1,ws_2",
            "2030-03-17T17:46:40Z",
            "-"
        ]
    );
    assert_eq!(
        row(&all, &other_id),
        [
            other_id.as_str(),
            "org_b",
            &other[..8],
            "org",
            "-",
            "2027-01-15T08:00:00Z"
        ]
    );

    // --org filters
    let a = list(&snap, &["--org", "org_a"]);
    assert_eq!(a.lines().count(), 3, "{a}");
    assert!(!a.contains(&other_id) && !a.contains("org_b"), "{a}");

    // --json: the same rows for machines
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let scoped_row = rows.iter().find(|r| r["id"] == scoped_id.as_str()).unwrap();
    assert_eq!(
        scoped_row,
        &serde_json::json!({
            "id": scoped_id,
            "org": "org_a",
            "prefix": &scoped[..8],
            "scope": "workspace",
            "workspace_ids": ["ws_1", "ws_2"],
            "expires_at": "2030-03-17T17:46:40Z",
            "revoked_at": null,
        })
    );
    assert!(rows.iter().all(|r| r.get("key_hash").is_none()));
}

#[test]
fn list_and_changes_refuse_a_missing_snapshot_without_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    for args in [
        vec!["keys", "list", "--snapshot", path(&missing)],
        vec!["keys", "revoke", "--snapshot", path(&missing), "key_x"],
        vec!["keys", "rotate", "--snapshot", path(&missing), "key_x"],
    ] {
        let e = fails(&args);
        assert!(e.contains("no such snapshot"), "{args:?}: {e}");
    }
    assert!(!missing.exists());
}

#[test]
fn revoke_makes_a_running_keyward_answer_401_for_that_key_only() {
    let snap = cli_snap();
    let key = create(&snap, "org_a", &[]);
    let kept = create(&snap, "org_a", &[]);
    let id = key_id(&snap, &key);
    let kw = Keyward::start(&snap, Opts::new(echo()).generous_plan());
    // cached as valid before the revocation
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    assert_eq!(kw.get("/api/v1/x", Some(&kept)).status, 200);

    let before = now();
    let out = ok(&["keys", "revoke", "--snapshot", path(&snap.path), &id]);
    assert!(out.contains(&id) && out.contains("revoked"), "{out}");
    assert!(!out.contains(&key), "{out}");
    let (_, revoked_at) = times(&snap, &id);
    let revoked_at = revoked_at.expect("revoked_at set");
    assert!((before..=now()).contains(&revoked_at), "{revoked_at}");

    assert!(
        wait_until(RELOAD_TIMEOUT, || kw.get("/api/v1/x", Some(&key)).status
            == 401),
        "the revoked key is still admitted: {}",
        kw.log()
    );
    assert_eq!(kw.get("/api/v1/x", Some(&kept)).status, 200);
    let listed = row(&list(&snap, &[]), &id);
    assert_eq!(listed[5], rfc3339(revoked_at));

    // again: refused, and the first revocation time is kept
    let e = fails(&["keys", "revoke", "--snapshot", path(&snap.path), &id]);
    assert!(e.contains("already revoked") && e.contains(&id), "{e}");
    assert_eq!(times(&snap, &id).1, Some(revoked_at));

    let e = fails(&["keys", "revoke", "--snapshot", path(&snap.path), "key_nope"]);
    assert!(e.contains("no API key with id `key_nope`"), "{e}");
}

/// Rotate `id` with `grace` (None: the default); (new key, stderr, the time
/// before the command ran).
fn rotate(snap: &Snap, id: &str, grace: Option<&str>) -> (String, String, i64) {
    let mut args = vec!["keys", "rotate", "--snapshot", path(&snap.path), id];
    if let Some(g) = grace {
        args.extend(["--grace", g]);
    }
    let before = now();
    let out = keyward(&args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    (one_key(&stdout(&out)), stderr(&out), before)
}

fn assert_expires_after(snap: &Snap, id: &str, before: i64, grace: i64) {
    let (expires_at, revoked_at) = times(snap, id);
    let expires_at = expires_at.expect("expires_at set");
    let want = before + grace;
    assert!(
        (want - 5..=now() + grace + 5).contains(&expires_at),
        "expires_at {expires_at}, want about {want}"
    );
    assert_eq!(revoked_at, None);
}

#[test]
fn rotate_prints_one_new_key_with_the_same_scope_and_the_old_one_gets_the_grace() {
    let snap = cli_snap();
    let scoped = create(&snap, "org_a", &["ws_1"]);
    let id = key_id(&snap, &scoped);
    snap.sql(&format!(
        "UPDATE api_keys SET permissions = '{{\"scope\":\"workspace\",\"workspaceIds\":[\"ws_1\"],\"label\":\"ci\"}}' WHERE id = '{id}'"
    ));
    let kw = Keyward::start(&snap, Opts::new(echo()).generous_plan());
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_1/x", Some(&scoped)).status,
        200
    );

    // the default grace is 24 h
    let (new, err, before) = rotate(&snap, &id, None);
    assert_ne!(new, scoped);
    let new_id = key_id(&snap, &new);
    assert!(err.contains(&new_id) && !err.contains(&new), "{err}");
    assert_expires_after(&snap, &id, before, 24 * 3600);
    let perms = |id: &str| -> Option<String> {
        snap.conn()
            .query_row(
                "SELECT permissions FROM api_keys WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(perms(&new_id), perms(&id), "permissions copied verbatim");
    assert_eq!(times(&snap, &new_id), (None, None));
    let listed = list(&snap, &["--org", "org_a"]);
    assert_eq!(row(&listed, &new_id)[3], "ws_1");

    // the new key works, with the same scope; the old one works through the grace
    kw.wait_caught_up(&snap);
    let r = kw.get("/api/v1/workspaces/ws_1/x", Some(&new));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert_eq!(r.upstream_header("x-api-key-id"), vec![new_id.clone()]);
    assert_eq!(r.upstream_header("x-allowed-workspaces"), vec!["ws_1"]);
    assert_eq!(kw.get("/api/v1/workspaces/ws_2/x", Some(&new)).status, 403);
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_1/x", Some(&scoped)).status,
        200
    );
}

#[test]
fn rotate_grace_parses_seconds_and_minutes_and_the_old_key_expires() {
    let snap = cli_snap();
    let a = create(&snap, "org_a", &[]);
    let b = create(&snap, "org_a", &[]);
    let c = create(&snap, "org_a", &[]);
    let (a_id, b_id, c_id) = (key_id(&snap, &a), key_id(&snap, &b), key_id(&snap, &c));

    let (_, _, before) = rotate(&snap, &a_id, Some("90s"));
    assert_expires_after(&snap, &a_id, before, 90);
    let (_, _, before) = rotate(&snap, &b_id, Some("15m"));
    assert_expires_after(&snap, &b_id, before, 900);

    // 0s: the old key stops at once, the new one works
    let kw = Keyward::start(&snap, Opts::new(echo()).generous_plan());
    assert_eq!(kw.get("/api/v1/x", Some(&c)).status, 200);
    let (new, _, _) = rotate(&snap, &c_id, Some("0s"));
    assert!(
        wait_until(RELOAD_TIMEOUT, || kw.get("/api/v1/x", Some(&c)).status
            == 401),
        "the rotated key outlived its grace: {}",
        kw.log()
    );
    assert_eq!(kw.get("/api/v1/x", Some(&new)).status, 200, "{}", kw.log());
}

#[test]
fn rotate_refuses_a_bad_grace_and_a_revoked_or_unknown_key_and_writes_nothing() {
    let snap = cli_snap();
    let key = create(&snap, "org_a", &[]);
    let id = key_id(&snap, &key);
    let rows = |snap: &Snap| -> i64 {
        snap.conn()
            .query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))
            .unwrap()
    };

    // `--grace=V`, so that clap hands `-5s` to the parser too
    for bad in ["5x", "5", "1h30m", "-5s", "1.5h", ""] {
        let grace = format!("--grace={bad}");
        let out = keyward(&[
            "keys",
            "rotate",
            "--snapshot",
            path(&snap.path),
            &id,
            &grace,
        ]);
        assert!(!out.status.success(), "{grace} accepted");
        let e = stderr(&out);
        assert!(e.contains("s, m, h or d"), "{grace}: {e}");
        assert!(stdout(&out).is_empty());
    }
    assert_eq!(times(&snap, &id), (None, None));

    let e = fails(&["keys", "rotate", "--snapshot", path(&snap.path), "key_nope"]);
    assert!(e.contains("no API key with id `key_nope`"), "{e}");

    ok(&["keys", "revoke", "--snapshot", path(&snap.path), &id]);
    let out = keyward(&["keys", "rotate", "--snapshot", path(&snap.path), &id]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).is_empty(),
        "a key was printed: {}",
        stdout(&out)
    );
    let e = stderr(&out);
    assert!(e.contains("revoked") && e.contains(&id), "{e}");
    assert_eq!(rows(&snap), 1, "a refused rotation wrote a key");
    assert_eq!(times(&snap, &id).0, None);
}
