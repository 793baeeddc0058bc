//! The access log: one line per request (SPEC §8.2), formatted by hand into
//! a per-thread batch and handed to the non-blocking writer (one message
//! per batch, at most 100 ms old).
//!
//! Why not `tracing::info!`: formatting the line through tracing-subscriber's
//! `fmt` layer cost ~16k instructions per request (field visitors, `Debug`
//! dispatch, date formatting), more than the whole authentication decision
//! (callgrind on the release binary). This path writes the same fields, in
//! the same text or JSON shape, in a fraction of that. It still honours the
//! `KEYWARD_LOG` filter (target `keyward::access`, level INFO). Without an
//! installed sink (library use, tests in-process) it falls back to tracing.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlocking;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

static SINK: OnceLock<(NonBlocking, Format)> = OnceLock::new();

/// Route access lines to `writer` (the process's log writer) in `format`.
pub fn install(writer: NonBlocking, format: Format) {
    let _ = SINK.set((writer, format));
}

/// One request's access line. Never holds a secret: `key_prefix` is the
/// stored prefix (8 characters at most).
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub auth_method: &'a str,
    pub outcome: &'a str,
    pub org_id: &'a str,
    pub key_prefix: &'a str,
    pub request_id: &'a str,
    pub auth_us: u64,
    pub total_us: u64,
    /// the client IP keyward resolved (SPEC §4.1); None before it was
    pub client_ip: Option<std::net::IpAddr>,
    /// index of the matched `[[route]]`
    pub route: Option<usize>,
    /// `details.reason` of keyward's own answer, empty when forwarded
    pub reason: &'a str,
    /// `"rate_limit"`: forwarded over a shadowed limit (SPEC §6.1); empty
    /// otherwise (left out of the line)
    pub would_deny: &'a str,
    /// the client's `User-Agent`, cut to [`USER_AGENT_MAX`] bytes
    pub user_agent: &'a str,
}

/// Longest `User-Agent` an access line keeps.
pub const USER_AGENT_MAX: usize = 128;

/// At most [`USER_AGENT_MAX`] bytes of a user agent, on a character boundary.
pub fn cut_user_agent(ua: &str) -> &str {
    if ua.len() <= USER_AGENT_MAX {
        return ua;
    }
    let mut end = USER_AGENT_MAX;
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    &ua[..end]
}

/// A worker thread's pending lines. They go to the writer as one message
/// when the batch reaches `BATCH_BYTES`, when the oldest line is
/// `BATCH_AGE` old (checked on each request and by a timer task on the
/// thread's own runtime), and when the thread exits.
struct Batch {
    buf: Vec<u8>,
    writer: Option<NonBlocking>,
    since: Option<std::time::Instant>,
    timer: bool,
    timer_spawned: bool,
}

/// 64 KiB, like nginx's `access_log … buffer=64k`: each batch is one
/// message to the writer thread and one `write(2)`; at 16 KiB the writer
/// thread woke four times as often (and spun in its channel's receive each
/// time) and an inotify watch on the log's directory (the snapshot's, in
/// the load benchmark) reported four times as many changes.
const BATCH_BYTES: usize = 64 * 1024;
const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(100);

impl Batch {
    /// Without a timer on this thread (not a pingora worker), nothing would
    /// flush an idle batch: write each line at once.
    fn timer_runs(&self) -> bool {
        self.timer_spawned
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(w) = &mut self.writer {
            // Lossy under back-pressure, like every other log line.
            let _ = w.write_all(&self.buf);
        }
        self.buf.clear();
        self.since = None;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { buf: Vec::new(), writer: None, since: None, timer: false, timer_spawned: false })
    };
}

/// pingora runs one single-threaded runtime per worker (work stealing off),
/// so a task spawned here runs on this thread and sees this thread's batch.
fn start_timer(b: &mut Batch) {
    b.timer = true;
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return;
    }
    b.timer_spawned = true;
    rt.spawn(async {
        loop {
            tokio::time::sleep(BATCH_AGE).await;
            let _ = BATCH.try_with(|cell| {
                if let Ok(mut b) = cell.try_borrow_mut() {
                    if b.since.is_some_and(|t| t.elapsed() >= BATCH_AGE) {
                        b.flush();
                    }
                }
            });
        }
    });
}

pub fn write(line: &Line<'_>) {
    if !tracing::enabled!(target: "keyward::access", tracing::Level::INFO) {
        return;
    }
    let Some((sink, format)) = SINK.get() else {
        tracing::info!(
            target: "keyward::access",
            method = line.method,
            path = line.path,
            status = line.status,
            auth_method = line.auth_method,
            outcome = line.outcome,
            org_id = line.org_id,
            key_prefix = line.key_prefix,
            request_id = line.request_id,
            auth_us = line.auth_us,
            total_us = line.total_us,
            client_ip = ?line.client_ip,
            route = ?line.route,
            reason = line.reason,
            would_deny = line.would_deny,
            user_agent = line.user_agent,
        );
        return;
    };
    BATCH.with(|cell| {
        let b = &mut *cell.borrow_mut();
        if b.writer.is_none() {
            b.writer = Some(sink.clone());
        }
        if !b.timer {
            start_timer(b);
        }
        match format {
            Format::Text => text(&mut b.buf, line),
            Format::Json => json(&mut b.buf, line),
        }
        let since = *b.since.get_or_insert_with(std::time::Instant::now);
        if b.buf.len() >= BATCH_BYTES || since.elapsed() >= BATCH_AGE || !b.timer_runs() {
            b.flush();
        }
    });
}

fn text(b: &mut Vec<u8>, l: &Line<'_>) {
    timestamp(b);
    b.extend_from_slice(b"  INFO keyward::access: method=");
    b.extend_from_slice(l.method.as_bytes());
    field(b, " path=", l.path);
    int(b, " status=", l.status.into());
    field(b, " auth_method=", l.auth_method);
    field(b, " outcome=", l.outcome);
    field(b, " org_id=", l.org_id);
    field(b, " key_prefix=", l.key_prefix);
    field(b, " request_id=", l.request_id);
    if let Some(ip) = l.client_ip {
        b.extend_from_slice(b" client_ip=");
        b.extend_from_slice(crate::request::forwarding::IpText::of(ip).as_bytes());
    }
    match l.route {
        Some(r) => int(b, " route=", r as u64),
        None => b.extend_from_slice(b" route=-"),
    }
    if !l.reason.is_empty() {
        field(b, " reason=", l.reason);
    }
    if !l.would_deny.is_empty() {
        field(b, " would_deny=", l.would_deny);
    }
    int(b, " auth_us=", l.auth_us);
    int(b, " total_us=", l.total_us);
    // last, quoted: a user agent has spaces
    b.extend_from_slice(b" user_agent=\"");
    b.extend(l.user_agent.bytes().map(|c| {
        if c.is_ascii_control() || c == b'"' || c == b'\\' {
            b'?'
        } else {
            c
        }
    }));
    b.extend_from_slice(b"\"\n");
}

/// A number, formatted without `fmt`.
fn int(b: &mut Vec<u8>, name: &str, n: u64) {
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Text values are written raw like tracing's formatter, except that control
/// characters become `?`, so no value can start a forged log line.
fn field(b: &mut Vec<u8>, name: &str, v: &str) {
    b.extend_from_slice(name.as_bytes());
    b.extend(
        v.bytes()
            .map(|c| if c.is_ascii_control() { b'?' } else { c }),
    );
}

fn json(b: &mut Vec<u8>, l: &Line<'_>) {
    b.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(b);
    b.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"keyward::access\"");
    for (k, v) in [
        ("method", l.method),
        ("path", l.path),
        ("auth_method", l.auth_method),
        ("outcome", l.outcome),
        ("org_id", l.org_id),
        ("key_prefix", l.key_prefix),
        ("request_id", l.request_id),
        ("reason", l.reason),
        ("user_agent", l.user_agent),
    ] {
        let _ = write!(b, ",\"{k}\":\"");
        json_escape(b, v);
        b.push(b'"');
    }
    if let Some(ip) = l.client_ip {
        b.extend_from_slice(b",\"client_ip\":\"");
        b.extend_from_slice(crate::request::forwarding::IpText::of(ip).as_bytes());
        b.push(b'"');
    }
    if !l.would_deny.is_empty() {
        b.extend_from_slice(b",\"would_deny\":\"");
        json_escape(b, l.would_deny);
        b.push(b'"');
    }
    if let Some(r) = l.route {
        let _ = write!(b, ",\"route\":{r}");
    }
    let _ = writeln!(
        b,
        ",\"status\":{},\"auth_us\":{},\"total_us\":{}}}",
        l.status, l.auth_us, l.total_us
    );
}

fn json_escape(b: &mut Vec<u8>, v: &str) {
    for c in v.bytes() {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            c if c < 0x20 => {
                let _ = write!(b, "\\u{c:04x}");
            }
            c => b.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-22T20:42:33.030224Z`.
/// The part up to the seconds is formatted once per second per thread.
fn timestamp(b: &mut Vec<u8>) {
    thread_local! {
        static PREFIX: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
    }
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    PREFIX.with(|p| {
        let (cached, text) = &mut *p.borrow_mut();
        if *cached != secs {
            let (y, m, day) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            let mut out = &mut text[..];
            let _ = write!(
                out,
                "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.",
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            *cached = secs;
        }
        b.extend_from_slice(text);
    });
    let micros = d.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    b.extend_from_slice(&digits);
    b.push(b'Z');
}

pub use crate::store::clock::civil_from_days;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Line<'static> {
        Line {
            method: "GET",
            path: "/api/v1/x",
            status: 200,
            auth_method: "api_key",
            outcome: "forwarded",
            org_id: "org\"a\n",
            key_prefix: "wvz_abcd",
            request_id: "r1",
            auth_us: 3,
            total_us: 250,
            client_ip: Some("203.0.113.7".parse().unwrap()),
            route: Some(3),
            reason: "workspace_not_in_scope",
            would_deny: "",
            user_agent: "curl/8.5 \"x\"\n",
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn json_line_parses_and_escapes() {
        let mut b = Vec::new();
        json(&mut b, &sample());
        assert_eq!(b.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["org_id"], "org\"a\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["client_ip"], "203.0.113.7");
        assert_eq!(v["route"], 3);
        assert_eq!(v["reason"], "workspace_not_in_scope");
        assert_eq!(v["user_agent"], "curl/8.5 \"x\"\n");
        assert_eq!(v["target"], "keyward::access");
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    #[test]
    fn text_line_is_one_line() {
        let mut b = Vec::new();
        text(&mut b, &sample());
        let s = String::from_utf8(b).unwrap();
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.contains(" INFO keyward::access: method=GET path=/api/v1/x status=200 "));
        assert!(s.contains("org_id=org\"a? key_prefix=wvz_abcd"));
        assert!(
            s.contains(" client_ip=203.0.113.7 route=3 reason=workspace_not_in_scope "),
            "{s}"
        );
        assert!(s.ends_with(" user_agent=\"curl/8.5 ?x??\"\n"), "{s}");
    }

    #[test]
    fn user_agents_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = cut_user_agent(&long);
        assert!(cut.len() <= USER_AGENT_MAX && cut.chars().all(|c| c == 'é'));
        assert_eq!(cut_user_agent("curl/8"), "curl/8");
    }
}
