//! The pingora shell: reads a request off pingora-core's HTTP session,
//! gathers its facts, calls the decision core and applies the result (a
//! keyward answer, or identity headers and [`forward`](crate::forward) to the
//! upstream), then writes the access line. Policy lives in `decision`; this
//! module only wires it to the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::InvalidHeaderValue;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::{ErrorType, Result};

use crate::decision::{AuthMethod, Authenticated, Engine, Identity, Request};
use crate::denial::Denial;
use crate::forward::{upstream_request, Failure, Unforwardable, Upstream};
use crate::forwarding::{is_forwarding_header, spelled_as, Client};
use crate::ratelimit::RateState;
use crate::routes::{self, AuthMode};

/// Longest a downstream HTTP/1.1 keep-alive connection may sit idle between
/// requests. pingora's default is no limit at all (and a client's
/// `Keep-Alive: timeout=N` is taken as asked), so an idle connection would be
/// held forever; 60 s matches pingora's read timeout on a new connection.
const KEEPALIVE_IDLE_S: u64 = 60;

/// Identity headers (SPEC §4) compared with `_` read as `-`, lowercase.
const IDENTITY_HEADERS: [&str; 9] = [
    "x-org-id",
    "x-auth-method",
    "x-api-key-id",
    "x-user-id",
    "x-workspace-id",
    "x-allowed-workspaces",
    "x-mcp-server-id",
    "x-end-user-id",
    "x-service-key",
];

fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS.iter().any(|h| spelled_as(name, h))
}

fn is_request_id_header(name: &str) -> bool {
    spelled_as(name, "x-request-id")
}

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `http://…` or `https://…` (absolute-form, RFC 9112 §3.2.2).
fn is_absolute_http(target: &[u8]) -> bool {
    let starts = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    starts(b"http://") || starts(b"https://")
}

/// Content-Length beside Transfer-Encoding, and a repeated or comma-listed
/// Content-Length (SPEC §7). pingora refuses differing lengths and obs-fold
/// itself, but collapses equal duplicates and drops Content-Length when
/// Transfer-Encoding is present (RFC 9112 §6.3), so this reads the raw
/// header lines. Requests with neither header skip the scan.
fn malformed_framing(session: &ServerSession) -> bool {
    let headers = &session.req_header().headers;
    if !headers.contains_key(http::header::TRANSFER_ENCODING)
        && !headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return false;
    }
    match session.as_http1() {
        Some(h1) => raw_framing_is_malformed(&h1.get_headers_raw_bytes()),
        None => false,
    }
}

fn raw_framing_is_malformed(raw_header: &[u8]) -> bool {
    let mut content_length = 0usize;
    let mut transfer_encoding = false;
    for line in raw_header.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            if line[colon + 1..].contains(&b',') {
                return true;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    content_length > 1 || (content_length == 1 && transfer_encoding)
}

/// 32 lowercase hex digits of randomness (hex-encoded directly: `format!`
/// costs more than the rest of the request id path together).
fn new_request_id() -> String {
    let v: u128 = rand::random();
    hex::encode(v.to_be_bytes())
}

/// Write a keyward-made response: contract JSON, Content-Length, extras.
async fn write_denial(
    session: &mut ServerSession,
    denial: &Denial,
    rate: Option<&RateState>,
    request_id: &str,
) -> Result<()> {
    let body = denial.body();
    let mut h = ResponseHeader::build(denial.status(), Some(6))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.set_content_length(body.len())?;
    for (k, v) in denial.headers() {
        h.insert_header(k, v)?;
    }
    if let Some(r) = rate {
        rate_headers(&mut h, r)?;
    }
    if !request_id.is_empty() {
        h.insert_header("x-request-id", request_id)?;
    }
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(body, true).await
}

/// The request as the decision core sees it (built again after an inspected
/// body was read, because reading it needs the session mutably).
fn request_facts(h: &RequestHeader, client: Client) -> Request<'_> {
    Request {
        method: &h.method,
        path: h.uri.path(),
        query: h.uri.query(),
        headers: &h.headers,
        client,
    }
}

fn rate_headers(h: &mut ResponseHeader, r: &RateState) -> Result<()> {
    h.insert_header(X_RATELIMIT_LIMIT, r.limit)?;
    h.insert_header(X_RATELIMIT_REMAINING, r.remaining)?;
    h.insert_header(X_RATELIMIT_RESET, r.reset)?;
    Ok(())
}

/// [`rate_headers`] on the upstream's response, through its plain `http`
/// parts: pingora's case-preserving `insert_header` parses each name and
/// keeps a second map; this inserts static names (the response then goes
/// down in canonical header case).
fn add_rate_headers(resp: &mut ResponseHeader, r: &RateState) {
    let mut parts = http::response::Parts::from(std::mem::replace(
        resp,
        ResponseHeader::build_no_case(200, Some(0)).expect("200 is a status"),
    ));
    parts.headers.insert(X_RATELIMIT_LIMIT, r.limit.into());
    parts
        .headers
        .insert(X_RATELIMIT_REMAINING, r.remaining.into());
    parts.headers.insert(X_RATELIMIT_RESET, r.reset.into());
    *resp = ResponseHeader::from(parts);
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");
const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
const X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const X_WORKSPACE_ID: HeaderName = HeaderName::from_static("x-workspace-id");
const X_ALLOWED_WORKSPACES: HeaderName = HeaderName::from_static("x-allowed-workspaces");
const X_MCP_SERVER_ID: HeaderName = HeaderName::from_static("x-mcp-server-id");
const X_END_USER_ID: HeaderName = HeaderName::from_static("x-end-user-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[derive(Default)]
struct Ctx {
    start: Option<Instant>,
    request_id: String,
    identity: Option<Identity>,
    rate: Option<RateState>,
    auth_method: Option<AuthMethod>,
    key_prefix: Option<Arc<str>>,
    outcome: &'static str,
    status: u16,
    auth_time: Duration,
    has_body: bool,
    /// who the client is (SPEC §4.1), for the forwarding headers
    client: Option<Client>,
}

/// What the decision left to do.
enum Next {
    /// keyward answered the request itself.
    Answered,
    /// Forward this head (identity headers still to add) and, for an
    /// inspected route, the body read to decide on.
    Forward(Box<Parts>, Option<Bytes>),
}

pub struct KeywardApp {
    pub engine: Arc<Engine>,
    upstream: Upstream,
    https: bool,
}

impl KeywardApp {
    pub fn new(engine: Arc<Engine>, conf: &ServerConf) -> KeywardApp {
        let cfg = &engine.policy.load().config;
        let upstream = Upstream::new(&cfg.upstream, conf);
        let https = cfg.server.tls.is_some();
        KeywardApp {
            engine,
            upstream,
            https,
        }
    }

    /// One request, after its head was read. Returns whether the downstream
    /// connection may carry another request.
    async fn handle(&self, session: &mut ServerSession, ctx: &mut Ctx) -> bool {
        let (mut parts, body) = match self.decide(session, ctx).await {
            Ok(Next::Forward(parts, body)) => (parts, body),
            Ok(Next::Answered) => return true,
            Err(_) => return false,
        };
        if let Err(e) = self.add_identity(&mut parts.headers, &session.req_header().headers, ctx) {
            // An identity value from the snapshot that cannot be a header
            // value: fail closed.
            tracing::error!(error = %e, "cannot build the upstream request");
            let d = Denial::AuthUnavailable;
            ctx.outcome = d.outcome();
            ctx.status = d.status();
            let _ = write_denial(session, &d, None, &ctx.request_id).await;
            return false;
        }
        let req = Box::new(RequestHeader::from(*parts));
        let rate = ctx.rate;
        let on_response = |resp: &mut ResponseHeader| {
            if let Some(r) = &rate {
                add_rate_headers(resp, r);
            }
        };
        let inspected = body.is_some();
        let rebuild = |s: &ServerSession| {
            let mut parts = upstream_request(s.req_header(), ctx.has_body, spoofed).ok()?;
            if inspected {
                parts.headers.remove(http::header::EXPECT);
            }
            self.add_identity(&mut parts.headers, &s.req_header().headers, ctx)
                .ok()?;
            Some(Box::new(RequestHeader::from(parts)))
        };
        let forwarded = self
            .upstream
            .forward(session, req, body, on_response, rebuild)
            .await;
        match forwarded {
            Ok(done) => {
                ctx.status = done.status;
                true
            }
            Err(Failure::Upstream { timeout, answered }) => {
                let (denial, kind) = if timeout {
                    (Denial::UpstreamTimeout, "timeout")
                } else {
                    (Denial::UpstreamUnavailable, "unavailable")
                };
                self.engine
                    .metrics
                    .upstream_errors
                    .with_label_values(&[kind])
                    .inc();
                ctx.outcome = denial.outcome();
                if !answered {
                    ctx.status = denial.status();
                    let _ =
                        write_denial(session, &denial, ctx.rate.as_ref(), &ctx.request_id).await;
                }
                false
            }
            Err(Failure::Downstream) => {
                ctx.outcome = "error";
                false
            }
        }
    }

    async fn deny(
        &self,
        session: &mut ServerSession,
        ctx: &mut Ctx,
        denial: Denial,
        rate: Option<RateState>,
    ) -> Result<Next> {
        ctx.outcome = denial.outcome();
        ctx.status = denial.status();
        ctx.rate = rate;
        if !session.is_body_done() {
            // A refused request's body is not read to its end (reusing the
            // connection would mean draining whatever the client sends):
            // the connection closes after the answer.
            session.set_keepalive(None);
        }
        write_denial(session, &denial, rate.as_ref(), &ctx.request_id).await?;
        Ok(Next::Answered)
    }

    /// Everything keyward decides about one request; writes the answer when
    /// it is keyward's, else returns the upstream's copy of the head.
    async fn decide(&self, session: &mut ServerSession, ctx: &mut Ctx) -> Result<Next> {
        ctx.start = Some(Instant::now());
        // Cap the idle time before the next request on this connection
        // (Some(0) is pingora's "keep alive without limit").
        if session
            .get_keepalive()
            .is_some_and(|t| t == 0 || t > KEEPALIVE_IDLE_S)
        {
            session.set_keepalive(Some(KEEPALIVE_IDLE_S));
        }
        ctx.request_id = match session.req_header().headers.get("x-request-id") {
            Some(v)
                if valid_request_id(v.as_bytes())
                    && session
                        .req_header()
                        .headers
                        .get_all("x-request-id")
                        .iter()
                        .count()
                        == 1 =>
            {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => new_request_id(),
        };

        // Malformed framing is refused, never forwarded (SPEC §7).
        if malformed_framing(session) {
            session.set_keepalive(None);
            let d = Denial::BadRequest("malformed_framing");
            return self.deny(session, ctx, d, None).await;
        }
        // `post` would miss POST routes here and hit them upstream (SPEC §5.1).
        if routes::is_noncanonical_method(&session.req_header().method) {
            let d = Denial::BadRequest("noncanonical_method");
            return self.deny(session, ctx, d, None).await;
        }
        {
            let h = session.req_header();
            if routes::method_override(&h.headers, h.uri.query()) {
                let d = Denial::BadRequest("method_override");
                return self.deny(session, ctx, d, None).await;
            }
        }

        // Decide on exactly the path the upstream will act on (SPEC §5).
        // pingora keeps a target that is not origin-form verbatim while its
        // Uri holds only a path ("/" for targets it cannot classify):
        // absolute-form http(s) targets (whose authority pingora has checked
        // against Host) are forwarded in origin-form, anything else is refused.
        let origin_form = {
            let h = session.req_header();
            let target = h.raw_path();
            let origin = target.first() == Some(&b'/');
            if !h.raw_path_is_utf8() || !(origin || is_absolute_http(target)) {
                let d = Denial::BadRequest(routes::PathError::NotOriginForm.reason());
                return self.deny(session, ctx, d, None).await;
            }
            origin
        };
        let normalized = match routes::normalize(session.req_header().uri.path()) {
            Ok(std::borrow::Cow::Borrowed(_)) if origin_form => None,
            Ok(p) => Some(p.into_owned()),
            Err(e) => {
                return self
                    .deny(session, ctx, Denial::BadRequest(e.reason()), None)
                    .await
            }
        };
        if let Some(p) = normalized {
            let pq = match session.req_header().uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            let uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|_| {
                    pingora::Error::explain(ErrorType::InvalidHTTPHeader, "normalized path")
                })?;
            session.req_header_mut().set_uri(uri);
        }
        // The upstream's copy of the head (hop-by-hop fields out), refused
        // here when it cannot be forwarded at all.
        let has_body = !session.is_body_empty();
        ctx.has_body = has_body;
        let mut up_req = match upstream_request(session.req_header(), has_body, spoofed) {
            Ok(r) => Box::new(r),
            Err(Unforwardable(reason)) => {
                session.set_keepalive(None);
                let d = Denial::BadRequest(reason);
                return self.deny(session, ctx, d, None).await;
            }
        };

        let now = crate::clock::now_unix();
        let auth_start = Instant::now();
        let engine = &self.engine;
        let policy = engine.policy.load();
        let cfg = &policy.config;
        let req_header = session.req_header();
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let client = Client::resolve(
            peer_ip,
            self.https,
            &req_header.headers,
            &cfg.server.trusted_proxies,
        );
        ctx.client = Some(client);
        let (route, captures) = cfg.routes.find(&req_header.method, req_header.uri.path());
        if route.auth == AuthMode::None {
            ctx.outcome = "forwarded";
            return Ok(Next::Forward(up_req, None));
        }
        let req = request_facts(req_header, client);
        let caller = match engine.authenticate(&req, route, &captures, now) {
            Authenticated::Caller(c) => c,
            Authenticated::Denied(d, rate) => {
                ctx.auth_time = auth_start.elapsed();
                return self.deny(session, ctx, d, rate).await;
            }
        };
        ctx.auth_method = Some(caller.method);
        ctx.key_prefix = caller.key_prefix().map(Arc::from);

        let needs_body = route.workspace.as_ref().is_some_and(|w| w.needs_body())
            && matches!(caller.method, AuthMethod::ApiKey | AuthMethod::Session);
        let (decision, body) = if needs_body {
            // Only a body keyward and the upstream read the same way is
            // inspected, judged from the head (415 before 413, SPEC §5.1).
            if let Err(e) = crate::scope::inspectable_body(&session.req_header().headers) {
                ctx.auth_time = auth_start.elapsed();
                let d = Denial::UnsupportedMediaType(e.reason());
                return self.deny(session, ctx, d, None).await;
            }
            // Held in memory until the decision, then forwarded as read.
            let cap = cfg.server.max_body_inspect_bytes;
            if expects_continue(session.req_header()) {
                // keyward reads the body before the upstream sees the
                // request, so it answers the client's Expect itself.
                session.write_continue_response().await?;
            }
            up_req.headers.remove(http::header::EXPECT);
            let mut buf = BytesMut::new();
            let mut too_large = false;
            while let Some(chunk) = session.read_request_body().await? {
                if buf.len() + chunk.len() > cap {
                    too_large = true;
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            if too_large {
                ctx.auth_time = auth_start.elapsed();
                session.set_keepalive(None);
                return self.deny(session, ctx, Denial::PayloadTooLarge, None).await;
            }
            let body = buf.freeze();
            let req = request_facts(session.req_header(), client);
            let d = engine.authorize(&req, route, &captures, &caller, Some(&body), now);
            (d, Some(body))
        } else {
            let d = engine.authorize(&req, route, &captures, &caller, None, now);
            (d, None)
        };
        ctx.auth_time = auth_start.elapsed();
        match decision {
            Ok((identity, rate)) => {
                ctx.identity = Some(identity);
                ctx.rate = rate;
                ctx.outcome = "forwarded";
                Ok(Next::Forward(up_req, body))
            }
            Err((d, rate)) => self.deny(session, ctx, d, rate).await,
        }
    }

    /// keyward's identity and forwarding headers (SPEC §4, §4.1; the
    /// client's spellings were left out of the copy). `down` is the client's head.
    fn add_identity(
        &self,
        h: &mut HeaderMap,
        down: &HeaderMap,
        ctx: &Ctx,
    ) -> Result<(), InvalidHeaderValue> {
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&ctx.request_id)?);
        if let Some(client) = &ctx.client {
            client.write(h, down);
        }
        if self.engine.policy.load().config.upstream.strip_credentials {
            h.remove(http::header::AUTHORIZATION);
            h.remove(http::header::COOKIE);
        }
        if let Some(id) = &ctx.identity {
            let mut set = |name: HeaderName, v: &Option<Arc<str>>| {
                if let Some(v) = v {
                    h.insert(name, HeaderValue::from_str(v)?);
                }
                Ok(())
            };
            set(X_ORG_ID, &id.org_id)?;
            set(X_API_KEY_ID, &id.api_key_id)?;
            set(X_USER_ID, &id.user_id)?;
            set(X_WORKSPACE_ID, &id.workspace_id)?;
            set(X_ALLOWED_WORKSPACES, &id.allowed_workspaces)?;
            set(X_MCP_SERVER_ID, &id.mcp_server_id)?;
            set(X_END_USER_ID, &id.end_user_id)?;
            if let Some(m) = id.auth_method {
                h.insert(X_AUTH_METHOD, HeaderValue::from_static(m));
            }
        }
        Ok(())
    }

    /// Metrics and the access line, once per request.
    fn log(&self, session: &ServerSession, ctx: &Ctx) {
        let total = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let method = ctx.auth_method.map(AuthMethod::as_str).unwrap_or("none");
        let outcome = if ctx.outcome.is_empty() {
            "error"
        } else {
            ctx.outcome
        };
        let m = &self.engine.metrics;
        m.request(method, outcome);
        m.request_duration.observe(total.as_secs_f64());
        if ctx.auth_method.is_some() || ctx.auth_time > Duration::ZERO {
            m.auth_duration.observe(ctx.auth_time.as_secs_f64());
        }
        let req = session.req_header();
        crate::access_log::write(&crate::access_log::Line {
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            auth_method: method,
            outcome,
            org_id: ctx
                .identity
                .as_ref()
                .and_then(|i| i.org_id.as_deref())
                .unwrap_or(""),
            key_prefix: ctx.key_prefix.as_deref().unwrap_or(""),
            request_id: &ctx.request_id,
            auth_us: ctx.auth_time.as_micros() as u64,
            total_us: total.as_micros() as u64,
        });
    }
}

/// Every client spelling of keyward's own headers, left out of the
/// upstream's copy (SPEC §4).
fn spoofed(n: &HeaderName) -> bool {
    is_identity_header(n.as_str())
        || is_request_id_header(n.as_str())
        || is_forwarding_header(n.as_str())
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1).
fn expects_continue(h: &RequestHeader) -> bool {
    h.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[async_trait]
impl HttpServerApp for KeywardApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // An idle keep-alive connection is dropped as soon as shutdown starts.
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return None;
        }
        let read = tokio::select! {
            biased;
            r = session.read_request() => r,
            _ = shutdown.changed() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    // pingora's parser refused the head: answered in the
                    // contract's format, and the connection closes.
                    let d = Denial::BadRequest("malformed_request");
                    let _ = write_denial(&mut session, &d, None, "").await;
                    self.engine.metrics.request("none", d.outcome());
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = Ctx::default();
        let reusable = self.handle(&mut session, &mut ctx).await;
        self.log(&session, &ctx);
        if !reusable {
            session.shutdown().await;
            return None;
        }
        crate::forward::keep_alive(session).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_in_every_spelling() {
        for n in [
            "x-org-id",
            "X-ORG-ID",
            "x_org_id",
            "X_Org-Id",
            "x-service-key",
            "X_Allowed_Workspaces",
        ] {
            assert!(is_identity_header(&n.to_ascii_lowercase()), "{n}");
        }
        for n in ["x-org-idx", "x-org", "authorization", "x-request-id"] {
            assert!(!is_identity_header(n), "{n}");
        }
        assert!(is_request_id_header("x_request_id"));
    }

    #[test]
    fn framing() {
        let ok = |h: &str| !raw_framing_is_malformed(h.as_bytes());
        assert!(ok("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
        assert!(ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(ok(
            "POST / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\ncontent-length: 5\n\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!ok("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"));
        assert!(is_absolute_http(b"HTTPS://h/p") && is_absolute_http(b"http://h"));
        assert!(!is_absolute_http(b"foo:/p") && !is_absolute_http(b"/http://h"));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_.:X"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
