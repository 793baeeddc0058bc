//! Usage reported back (SPEC §8.4) from outside: the real binary pushes to
//! a receiver on a real socket that is down for a while, then answers.
mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Accept pushes on `listener`: while `up` is false drop each connection
/// unanswered (a receiver that is down); then record (authorization, body)
/// and answer 200. The port stays bound throughout, so no other process
/// can take it.
fn receiver(listener: TcpListener, up: Arc<AtomicBool>) -> Received {
    let got: Received = Arc::default();
    let out = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            if !up.load(Ordering::Acquire) {
                drop(conn);
                continue;
            }
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut len, mut auth) = (0usize, String::new());
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let lower = l.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = l["authorization:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            out.lock().unwrap().push((auth, v));
            let mut w = conn;
            let _ =
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    got
}

/// (forwarded, denied, last_used max) of key `id` over every push received.
fn totals(got: &[(String, serde_json::Value)], id: &str) -> (u64, u64, i64) {
    let mut t = (0, 0, 0);
    for (_, push) in got {
        for k in push["keys"].as_array().unwrap() {
            if k["id"] == id {
                t.0 += k["forwarded"].as_u64().unwrap();
                t.1 += k["denied"].as_u64().unwrap();
                t.2 = t.2.max(k["last_used"].as_i64().unwrap());
            }
        }
    }
    t
}

#[test]
fn counts_wait_while_the_receiver_is_down_and_arrive_whole_when_it_returns() {
    let snap = Snap::new();
    snap.org("org_u", "free");
    let (a, a_id) = snap.api_key_full(
        "org_u",
        Some(r#"{"scope":"org","readOnly":true}"#),
        None,
        None,
    );
    let (b, b_id) = snap.api_key_full("org_u", None, None, None);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let got = receiver(listener, up.clone());
    let mut opts = Opts::new(echo())
        .generous_plan()
        .set("server.replica_id", "replica-7")
        .set("usage.push_url", format!("http://{target}/v1/usage"))
        .set("usage.push_interval_ms", 100)
        .set("usage.push_token_env", "KW_PUSH_TOKEN");
    opts.env
        .push(("KW_PUSH_TOKEN".into(), "push-secret-1".into()));
    let kw = Keyward::start(&snap, opts);
    let start = now();
    for _ in 0..3 {
        assert_eq!(kw.get("/api/v1/x", Some(&a)).status, 200);
    }
    for _ in 0..2 {
        kw.send("DELETE", "/api/v1/x", bearer(&a), "")
            .assert_error(403, "SCOPE_DENIED");
    }
    assert_eq!(kw.get("/api/v1/x", Some(&b)).status, 200);
    // unknown credentials have no id to count
    kw.get("/api/v1/x", Some("wvz_nobody_000000000000000000"))
        .assert_error(401, "UNAUTHENTICATED");
    let failed = wait_until(Duration::from_secs(10), || {
        kw.metric("keyward_usage_pushes_total{result=\"failed\"}") >= 2.0
    });
    assert!(failed, "{}\n{}", kw.metrics(), kw.log());
    // more use while the receiver is still down
    assert_eq!(kw.get("/api/v1/x", Some(&a)).status, 200);
    assert!(kw.metric("keyward_usage_keys_pending") >= 1.0);
    assert!(got.lock().unwrap().is_empty());
    up.store(true, Ordering::Release);
    let whole = wait_until(Duration::from_secs(10), || {
        let g = got.lock().unwrap();
        totals(&g, &a_id).0 == 4 && totals(&g, &b_id).0 == 1
    });
    let g = got.lock().unwrap().clone();
    assert!(whole, "{g:?}");
    let (fa, da, last) = totals(&g, &a_id);
    assert_eq!((fa, da), (4, 2), "{g:?}");
    assert!(last >= start && last <= now());
    assert_eq!(totals(&g, &b_id), (1, 0, totals(&g, &b_id).2));
    let (auth, first) = &g[0];
    assert_eq!(auth, "Bearer push-secret-1");
    assert_eq!(first["replica"], "replica-7");
    let interval = first["interval"].as_array().unwrap();
    assert!(interval[0].as_i64().unwrap() <= start && interval[1].as_i64().unwrap() >= last);
    let k = &first["keys"][0];
    assert_eq!(k["kind"], "api_key");
    assert_eq!(k["organization_id"], "org_u");
    // never a token or its hash
    let text = serde_json::to_string(&g).unwrap();
    assert!(!text.contains(&a[4..]) && !text.contains(&hash(&a)));
    drop(g);
    // the next push carries only what was used since
    let seen = got.lock().unwrap().len();
    assert_eq!(kw.get("/api/v1/x", Some(&b)).status, 200);
    assert!(wait_until(Duration::from_secs(10), || got
        .lock()
        .unwrap()
        .len()
        > seen));
    let g = got.lock().unwrap();
    let last_push = &g.last().unwrap().1;
    let ids: Vec<&str> = last_push["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str()]);
    assert_eq!(last_push["keys"][0]["forwarded"], 1);
}

#[test]
fn a_push_token_env_that_is_not_set_is_a_config_error() {
    let err = check_refuses(
        &Snap::new(),
        "[usage]\npush_url = \"http://127.0.0.1:9/v1/usage\"\npush_token_env = \"KW_NOT_SET_ANYWHERE\"\n",
    );
    assert!(err.contains("usage.push_token_env"), "{err}");
}
