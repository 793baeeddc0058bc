//! The admin status page (SPEC §8.5) in a real headless browser (Debian
//! `chromium`, installed by scripts/setup.sh): the page loads without
//! external assets, shows what `/status.json` says, its explain form
//! returns a decision, and no secret reaches the DOM. Writes a screenshot
//! to `$CARGO_TARGET_TMPDIR/status-page.png` (docs/status-page.png is one).
mod common;
use common::*;

use std::process::Command;

fn chromium(args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .output()
        .expect("chromium is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text inside the element with `id` in a dumped DOM.
fn by_id(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].to_string()
}

#[test]
fn the_status_page_shows_status_json_and_explains_a_pasted_request() {
    let snap = Snap::new();
    snap.org("org_s", "tiny").workspace("ws_s", "org_s");
    let key = snap.api_key("org_s");
    let kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("plans.tiny.requests_per_window", 5)
            // a day-long window: the test reads the counts back seconds
            // later, and a 60 s window aligned to the epoch may have rolled
            // over by then (it did once in CI: `used` was gone)
            .set("rate_limit.window_s", 86_400),
    );
    for _ in 0..3 {
        assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    }
    kw.get("/api/v1/x", None)
        .assert_error(401, "UNAUTHENTICATED");
    let admin = format!("http://{}", kw.admin);
    let status = get(kw.admin, "/status.json").json();
    let dom = chromium(&["--dump-dom", &format!("{admin}/")]);
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "external asset"
    );
    assert_eq!(by_id(&dom, "ready"), "ready");
    assert_eq!(
        by_id(&dom, "generation"),
        status["snapshot"]["generation"].to_string()
    );
    assert_eq!(by_id(&dom, "degraded"), "none");
    assert_eq!(by_id(&dom, "streams"), "0");
    assert!(by_id(&dom, "backend").starts_with("local"));
    // the last 5 minutes: refusals by reason, the organization near its limit
    assert!(
        dom.contains("<td>missing_credential</td><td>1</td>"),
        "{dom}"
    );
    assert_eq!(status["recent"]["requests"]["forwarded"], 3);
    assert!(dom.contains("<td>org_s</td><td>3</td><td>5</td>"), "{dom}");
    assert_eq!(status["organizations_near_limit"][0]["id"], "org_s");
    // the explain form, posted by the browser as an operator would
    let dir = snap.dir.path();
    let form = dir.join("form.html");
    std::fs::write(
        &form,
        format!(
            "<html><body><form id=f method=post action=\"{admin}/explain\">\
             <input name=method value=GET><input name=target value=\"/api/v1/workspaces/ws_s/x\">\
             <textarea name=headers>Authorization: Bearer {key}</textarea></form>\
             <script>document.getElementById('f').submit()</script></body></html>"
        ),
    )
    .unwrap();
    let answer = chromium(&["--dump-dom", &format!("file://{}", form.display())]);
    assert_eq!(by_id(&answer, "answer"), "forwarded", "{answer}");
    assert!(
        answer.contains("x-org-id: org_s") && answer.contains("x-workspace-id: ws_s"),
        "{answer}"
    );
    assert!(
        !answer.contains(&key[4..]),
        "the pasted token is not echoed"
    );
    std::fs::write(
        &form,
        format!(
            "<html><body><form id=f method=post action=\"{admin}/explain\">\
             <input name=target value=\"/api/v1/x\"><textarea name=headers>Authorization: Bearer wvz_not_a_real_key_00000000</textarea></form>\
             <script>document.getElementById('f').submit()</script></body></html>"
        ),
    )
    .unwrap();
    let refused = chromium(&["--dump-dom", &format!("file://{}", form.display())]);
    assert!(
        by_id(&refused, "answer").starts_with("401 UNAUTHENTICATED"),
        "{refused}"
    );
    assert!(!refused.contains("not_a_real_key"));
    // explaining counted nothing
    assert_eq!(
        get(kw.admin, "/status.json").json()["organizations_near_limit"][0]["used"],
        3
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(&[
        "--window-size=1100,1250",
        &format!("--screenshot={}", shot.display()),
        &format!("{admin}/"),
    ]);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

#[test]
fn the_explain_form_refuses_what_it_cannot_read() {
    let snap = Snap::new();
    let kw = Keyward::start(&snap, Opts::new(echo()));
    let post = |ct: &str, body: &str| {
        send_bytes(
            kw.admin,
            "POST",
            "/explain",
            format!("Content-Type: {ct}\r\n").as_bytes(),
            Some(body.as_bytes()),
        )
    };
    post("application/x-www-form-urlencoded", "headers=no-colon").assert_error(400, "BAD_REQUEST");
    post("application/json", "{}").assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let big = format!("headers={}", "a".repeat(70_000));
    post("application/x-www-form-urlencoded", &big).assert_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(
        send_bytes(kw.admin, "GET", "/explain", b"", None).status,
        404
    );
}
