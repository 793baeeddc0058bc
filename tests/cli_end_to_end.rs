//! The commands a new user runs first, from outside: `keyward demo` (the
//! printed curl lines answer as printed) and `keyward explain` on the shipped
//! config (exit codes 0 / 1 / 2, never a secret printed).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// A running `keyward demo`, stopped (SIGINT, then kill) when dropped.
struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: signalling our own child
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run one line the demo printed through the shell, as a user pasting it
/// would, adding only what makes curl print the status.
fn run_curl_line(line: &str) -> (u16, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} -w '\\n%{{http_code}}' --max-time 10"))
        .output()
        .expect("sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn demo_prints_a_key_and_curl_lines_that_answer_as_printed() {
    let mut child = keyward_cmd()
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .env_remove("BETTER_AUTH_SECRET")
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo { child };
    // read what it prints up to "Ctrl-C to stop." (then keep draining, so
    // the access log never blocks on a full pipe)
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = &tx {
                let done = line.starts_with("Ctrl-C to stop");
                printed.push(line);
                if done {
                    let _ = t.send(std::mem::take(&mut printed));
                    tx = None;
                }
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo never printed its curl lines");
    let key_line = printed
        .iter()
        .find(|l| l.starts_with("org-wide API key:"))
        .unwrap_or_else(|| panic!("no key printed: {printed:#?}"));
    let key = key_line.rsplit(' ').next().unwrap().to_string();
    assert!(key.starts_with("wvz_"), "{key}");
    let curls: Vec<&String> = printed.iter().filter(|l| l.starts_with("curl ")).collect();
    assert!(curls.len() >= 4, "{printed:#?}");
    // the forwarded one: the printed key, 200, the echo shows X-Org-ID
    let forwarded = curls
        .iter()
        .find(|l| l.contains(&key))
        .unwrap_or_else(|| panic!("no curl line with the key: {printed:#?}"));
    let ready = wait_until(Duration::from_secs(30), || {
        run_curl_line(forwarded).0 == 200
    });
    let (status, body) = run_curl_line(forwarded);
    assert!(ready && status == 200, "{forwarded}: {status} {body}");
    assert!(body.to_ascii_lowercase().contains("x-org-id"), "{body}");
    assert!(body.contains("org_demo"), "{body}");
    // the 401 and 403 lines answer what their comments say
    let comment_before = |l: &String| {
        let i = printed.iter().position(|p| p == l).unwrap();
        printed[i - 1].clone()
    };
    for line in &curls {
        let comment = comment_before(line);
        let (status, body) = run_curl_line(line);
        if comment.contains("401") {
            assert_eq!(status, 401, "{line}: {body}");
            assert!(body.contains("UNAUTHENTICATED"), "{body}");
        } else if comment.contains("403") {
            assert_eq!(status, 403, "{line}: {body}");
            assert!(body.contains("SCOPE_DENIED"), "{body}");
        } else if comment.contains("metrics") {
            assert_eq!(status, 200, "{line}: {body}");
            assert!(body.contains("\"ready\":true"), "{body}");
        }
    }
    // Ctrl-C: it stops and removes its seeded snapshot
    let pid = demo.child.id();
    drop(demo);
    let dir = std::env::temp_dir().join(format!("keyward-demo-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// `keyward explain` on the shipped config with `snap` as the snapshot.
fn explain(snap: &Snap, args: &[&str]) -> Output {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keyward.toml");
    keyward_cmd()
        .arg("explain")
        .arg("--config")
        .arg(&shipped)
        .arg("--snapshot")
        .arg(&snap.path)
        .args(args)
        .env_remove("BETTER_AUTH_SECRET")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn explain_on_the_shipped_config_exits_0_1_2_and_never_prints_a_secret() {
    let snap = Snap::new();
    snap.org("org_a", "pro")
        .workspace("ws_a", "org_a")
        .workspace("ws_b", "org_a");
    let key = snap.scoped_key("org_a", &["ws_a"]);
    let bearer = format!("Authorization: Bearer {key}");
    let path = "/api/v1/workspaces/ws_a/connections";

    // 0: forwarded, with the identity headers the upstream would get
    for json in [false, true] {
        let mut args = vec!["-H", bearer.as_str(), path];
        if json {
            args.insert(0, "--json");
        }
        let out = explain(&snap, &args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{t}");
        assert!(t.contains("org_a") && t.contains("ws_a"), "{t}");
        assert!(!t.contains(&key), "the key was printed: {t}");
        assert!(
            !t.contains(&key[4..]),
            "the key's secret part was printed: {t}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
            assert!(
                v.to_string().contains("X-Org-ID") || v.to_string().contains("x-org-id"),
                "{v}"
            );
        } else {
            assert!(t.to_ascii_lowercase().contains("x-org-id"), "{t}");
        }
    }

    // 1: refused — out of scope, no credential, an unknown key, a session
    // cookie with no secret configured; none of the presented secrets echoed
    let unknown = format!("wvz_{}", "Q".repeat(40));
    let unknown_bearer = format!("Authorization: Bearer {unknown}");
    let cookie = "Cookie: better-auth.session_token=sessiontokensecretvalue.c2lnbmF0dXJl";
    let refused: [(Vec<&str>, &str); 4] = [
        (
            vec!["-H", &bearer, "/api/v1/workspaces/ws_b/connections"],
            "SCOPE_DENIED",
        ),
        (vec![path], "UNAUTHENTICATED"),
        (vec!["-H", &unknown_bearer, path], "UNAUTHENTICATED"),
        (vec!["-H", cookie, path], "UNAUTHENTICATED"),
    ];
    for (args, code) in refused {
        let out = explain(&snap, &args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains(code), "{args:?}: {t}");
        for secret in [
            &key[..],
            &key[4..],
            &unknown[4..],
            "sessiontokensecretvalue",
        ] {
            assert!(!t.contains(secret), "{args:?} printed a secret: {t}");
        }
    }

    // 2: usage or config errors
    let missing = snap.dir.path().join("missing.toml");
    let out = keyward_cmd()
        .args(["explain", "--config"])
        .arg(&missing)
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = explain(&snap, &["-H", "no colon here", path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = explain(&snap, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = explain(
        &snap,
        &["--data", "@/nonexistent/body.json", "-X", "POST", path],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
