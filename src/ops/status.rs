//! The status page (SPEC §8.5): the admin listener's `/` (HTML for
//! operators: no external assets, no script, works with scripts off) and
//! `/status.json` (the same data), and `POST /explain`, the page's form
//! that runs `keyward explain` for a pasted request against the live
//! snapshot. Nothing here echoes a pasted header value: the explain answer
//! shows steps and identity headers, which never hold a secret.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::engine::Engine;
use crate::http::recent::Sample;
use crate::ops::explain::{explain, Answer, Explained, Request};

/// How far back "recent" goes, and how often a sample is kept.
const WINDOW_S: i64 = 300;
const SAMPLE_EVERY_S: i64 = 10;
/// Organizations listed as closest to their limit.
const NEAR_LIMIT: usize = 10;

/// Cumulative samples of the last [`WINDOW_S`] (unix second, sample).
#[derive(Default)]
pub struct Samples(Mutex<VecDeque<(i64, Sample)>>);

/// The admin listener's samples (one admin listener per process; only the
/// admin runtime touches them).
pub static SAMPLES: std::sync::LazyLock<Samples> = std::sync::LazyLock::new(Samples::default);

/// Largest explain form accepted.
pub const FORM_MAX: usize = 64 * 1024;

impl Samples {
    /// Keep a sample now if the last is older than [`SAMPLE_EVERY_S`]; the
    /// difference between now and the oldest kept.
    pub fn recent(&self, engine: &Engine, now: i64) -> (i64, Sample) {
        let current = engine.metrics.recent.sample();
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.back().is_none_or(|(t, _)| now - t >= SAMPLE_EVERY_S) {
            q.push_back((now, current.clone()));
        }
        while q.front().is_some_and(|(t, _)| now - t > WINDOW_S) {
            q.pop_front();
        }
        match q.front() {
            Some((t, first)) => (now - t, current.since(first)),
            None => (0, Sample::default()),
        }
    }
}

/// The source URL without credentials it may carry.
fn shown_source(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(unparsable)".to_string(),
    }
}

/// Organizations using the most of their window on this instance (ids
/// only; with the Redis backend the counts live there and none are shown).
fn near_limit(engine: &Engine, now: i64) -> Vec<Value> {
    let policy = engine.policy.load();
    let cfg = &policy.config;
    let window = now.max(0) as u64 / cfg.rate_limit.window_s.max(1);
    let Some(gen) = engine.store.current() else {
        return Vec::new();
    };
    let mut uses: Vec<_> = engine
        .limiter
        .export()
        .into_iter()
        .filter(|u| u.window == window && !u.key.contains('\u{1f}'))
        .collect();
    uses.sort_by_key(|u| std::cmp::Reverse(u.used));
    let mut out: Vec<(f64, Value)> = uses
        .into_iter()
        .take(NEAR_LIMIT * 4)
        .filter_map(|u| {
            let org = gen.read(|r| r.organization(&u.key)).ok()??;
            let plan = cfg
                .plans
                .get(&*org.plan)
                .or_else(|| cfg.plans.get("default"));
            let limit = org.rate_limit.or(plan.map(|p| p.requests_per_window))?;
            let share = u.used as f64 / limit.max(1) as f64;
            Some((
                share,
                json!({"id": &*org.id, "used": u.used, "limit": limit,
                       "remaining": limit.saturating_sub(u.used)}),
            ))
        })
        .collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.into_iter().take(NEAR_LIMIT).map(|(_, v)| v).collect()
}

/// `/status.json`.
pub fn status(engine: &Engine, samples: &Samples) -> Value {
    let now = crate::clock::now_unix();
    let (ready_status, ready) = crate::ops::admin::readiness(engine);
    let cfg = &engine.policy.load().config;
    let (span, recent) = samples.recent(engine, now);
    let mut denials: Vec<(&str, u64)> = recent.reasons.into_iter().collect();
    denials.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    json!({
        "ready": ready_status == 200,
        "degraded": ready["degraded"],
        "snapshot": {
            "generation": ready["snapshot"]["generation"],
            "age_seconds": ready["snapshot"]["age_seconds"],
            "max_staleness_seconds": ready["snapshot"]["max_staleness_seconds"],
            "source": cfg.snapshot.source.as_deref().map(shown_source),
            "signature": if cfg.snapshot.verify_key.is_some() { "required" } else { "not required" },
            "last_reload_error": ready["snapshot"]["last_reload_error"],
        },
        "rate_limit": ready["rate_limit"],
        "recent": {
            "seconds": span,
            "requests": recent.outcomes.into_iter().map(|(o, n)| (o.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "denials": denials.into_iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        },
        "organizations_near_limit": near_limit(engine, now),
        "streams_open": engine.metrics.streams_open.get(),
    })
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}.bad{color:#a00}.ok{color:#070}\
textarea,input{font:13px monospace}pre{background:#f4f4f4;padding:.6em}";

/// `/`: the status, and the answer of an explain form when one was posted.
pub fn page(status: &Value, explained: Option<(&Request, &Explained)>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>keyward status</title>\
         <style>{STYLE}</style></head><body><h1>keyward</h1>"
    );
    let ready = status["ready"].as_bool().unwrap_or(false);
    let _ = write!(
        h,
        "<p id=\"ready\" class=\"{}\">{}</p>",
        if ready { "ok" } else { "bad" },
        if ready { "ready" } else { "not ready" }
    );
    let degraded = status["degraded"].as_array().cloned().unwrap_or_default();
    let _ = write!(
        h,
        "<p>degraded: <span id=\"degraded\">{}</span></p>",
        if degraded.is_empty() {
            "none".to_string()
        } else {
            esc(&degraded.iter().map(text).collect::<Vec<_>>().join(", "))
        }
    );
    let s = &status["snapshot"];
    let _ = write!(h, "<h2>Snapshot</h2><table>");
    for (id, label, v) in [
        ("generation", "generation", &s["generation"]),
        ("age", "age (s)", &s["age_seconds"]),
        ("source", "source", &s["source"]),
        ("signature", "signature", &s["signature"]),
        ("reload-error", "last reload error", &s["last_reload_error"]),
    ] {
        let _ = write!(
            h,
            "<tr><th>{label}</th><td id=\"{id}\">{}</td></tr>",
            esc(&text(v))
        );
    }
    let rl = &status["rate_limit"];
    let _ = write!(
        h,
        "<tr><th>rate-limit backend</th><td id=\"backend\">{} ({})</td></tr></table>",
        esc(&text(&rl["backend"])),
        if rl["up"].as_bool().unwrap_or(false) {
            "up"
        } else {
            "down"
        }
    );
    let r = &status["recent"];
    let _ = write!(
        h,
        "<h2>Last {} s</h2><table id=\"requests\"><tr><th>outcome</th><th>requests</th></tr>",
        text(&r["seconds"])
    );
    if let Some(m) = r["requests"].as_object() {
        for (k, v) in m {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), text(v));
        }
    }
    let _ = write!(
        h,
        "</table><table id=\"denials\"><tr><th>refused because</th><th>requests</th></tr>"
    );
    for d in r["denials"].as_array().cloned().unwrap_or_default() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&text(&d["reason"])),
            text(&d["count"])
        );
    }
    let _ = write!(h, "</table><h2>Organizations closest to their limit</h2><table id=\"near-limit\"><tr><th>organization</th><th>used</th><th>limit</th></tr>");
    for o in status["organizations_near_limit"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&text(&o["id"])),
            text(&o["used"]),
            text(&o["limit"])
        );
    }
    let _ = write!(
        h,
        "</table><p>open streams: <span id=\"streams\">{}</span></p>",
        text(&status["streams_open"])
    );
    // the explain form: a plain POST (works without scripts); pasted
    // values are never written back into the page
    let _ = write!(
        h,
        "<h2>Explain a request</h2><form id=\"explain\" method=\"post\" action=\"/explain\">\
         <p><input name=\"method\" value=\"GET\" size=\"7\"> <input name=\"target\" value=\"/\" size=\"60\"> \
         client <input name=\"peer\" value=\"127.0.0.1\" size=\"15\"></p>\
         <p><textarea name=\"headers\" rows=\"4\" cols=\"90\" placeholder=\"Authorization: Bearer wvz_…\"></textarea></p>\
         <p><button type=\"submit\">explain</button></p></form>"
    );
    if let Some((req, e)) = explained {
        let answer = match &e.answer {
            Answer::Forward { .. } => "forwarded".to_string(),
            Answer::Refuse {
                status,
                code,
                reason,
            } => {
                format!(
                    "{status} {code}{}",
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )
            }
        };
        let _ = write!(
            h,
            "<h2>Answer for {} {}</h2><p id=\"answer\">{}</p><ol id=\"steps\">",
            esc(&req.method),
            esc(&req.target),
            esc(&answer)
        );
        for step in &e.steps {
            let _ = write!(
                h,
                "<li><b>{}</b>: {}</li>",
                esc(step.step),
                esc(&step.detail)
            );
        }
        let _ = write!(h, "</ol>");
        if let Answer::Forward { headers } = &e.answer {
            let _ = write!(h, "<pre id=\"identity\">");
            for (k, v) in headers {
                let _ = writeln!(h, "{}: {}", esc(k), esc(v));
            }
            let _ = write!(h, "</pre>");
        }
    }
    let _ = write!(h, "<p><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></p></body></html>");
    h
}

/// `POST /explain`: the form's fields (urlencoded) as a request.
pub fn form_request(body: &[u8]) -> Result<Request, String> {
    let mut req = Request {
        method: "GET".into(),
        target: "/".into(),
        headers: Vec::new(),
        body: None,
        peer: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "method" => req.method = v.trim().to_string(),
            "target" => req.target = v.trim().to_string(),
            "peer" => {
                req.peer = v
                    .trim()
                    .parse()
                    .map_err(|_| "client: not an IP address".to_string())?
            }
            "headers" => {
                for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let (name, value) = line
                        .split_once(':')
                        .ok_or_else(|| "headers: one `Name: value` per line".to_string())?;
                    req.headers
                        .push((name.trim().to_string(), value.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    if !req.target.starts_with('/') {
        return Err("the path must start with /".into());
    }
    Ok(req)
}

/// Explain `req` against the live policy and snapshot (nothing counted).
pub fn explain_live(engine: &Engine, req: &Request) -> Explained {
    let pinned = engine.pin();
    explain(
        &pinned.policy,
        pinned.directory(),
        req,
        crate::clock::now_unix(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_reads_one_header_per_line_and_refuses_the_rest() {
        let r = form_request(b"method=POST&target=%2Fapi%2Fv1%2Fx&peer=203.0.113.7&headers=Authorization%3A+Bearer+wvz_x%0D%0AX-A%3A+b").unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/api/v1/x")
        );
        assert_eq!(
            r.headers,
            [
                ("Authorization".into(), "Bearer wvz_x".into()),
                ("X-A".into(), "b".into())
            ]
        );
        assert!(form_request(b"headers=nonsense").is_err());
        assert!(form_request(b"target=http%3A%2F%2Fx").is_err());
        assert!(form_request(b"peer=nope").is_err());
    }

    #[test]
    fn values_are_escaped_and_sources_lose_their_credentials() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
        assert_eq!(
            shown_source("https://user:pw@cp.example/snap.db?token=abc#frag"),
            "https://cp.example/snap.db"
        );
    }
}
