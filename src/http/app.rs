//! The connection loop: keyward as a pingora-core `HttpServerApp`. Each
//! request goes through named phases — read the head, hygiene, the
//! upstream's copy of the head, decide, read the body when the core asks,
//! apply (refuse, or add keyward's headers and forward), log — and nothing
//! here decides: policy is `auth::decide`, reached through the
//! [`Engine`]'s pinned view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::InvalidHeaderValue;
use http::request::Parts;
use http::{HeaderMap, HeaderValue};
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::{ErrorType, Result};

use crate::auth::decide::{
    stream_cap, AuthMethod, Body, Caller, Decision, Grant, Identity, RequestFacts, Standing,
};
use crate::auth::denial::Denial;
use crate::engine::Engine;
use crate::http::forward::{upstream_request, Failure, Unforwardable, Upstream};
use crate::http::hygiene;
use crate::http::metrics::Outcome;
use crate::http::streams::Stream;
use crate::ratelimit::RateState;
use crate::request::forwarding::Client;
use crate::request::headers::{self, IdentityHeader, X_REQUEST_ID};

/// Longest a downstream HTTP/1.1 keep-alive connection may sit idle between
/// requests. pingora's default is no limit at all (and a client's
/// `Keep-Alive: timeout=N` is taken as asked), so an idle connection would be
/// held forever; 60 s matches pingora's read timeout on a new connection.
pub(crate) const KEEPALIVE_IDLE_S: u64 = 60;
/// How long an idle keep-alive connection is kept for one more request once
/// draining starts (bounded by pingora's grace period, which ends it anyway).
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// What one request leaves for its metrics and access line.
struct Ctx {
    start: Instant,
    request_id: String,
    outcome: Outcome,
    /// keyward's own answer, when it made one
    status: u16,
    auth_time: Duration,
    /// who the request acted for (its organization is the access line's
    /// `org_id`, for refusals too: operators look up a customer's 403 by it)
    caller: Option<Caller>,
    client_ip: Option<std::net::IpAddr>,
    route: Option<usize>,
    /// `details.reason` of keyward's answer
    reason: &'static str,
    /// the decision forwarded the request (usage: forwarded, else denied)
    granted: bool,
    /// `"rate_limit"`: forwarded over a shadowed limit (SPEC §6.1)
    would_deny: &'static str,
    /// this request's spans, when `[tracing]` is on and it is sampled
    #[cfg(feature = "otel")]
    trace: Option<crate::http::otel::RequestTrace>,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            outcome: Outcome::Error,
            status: 0,
            auth_time: Duration::ZERO,
            caller: None,
            client_ip: None,
            route: None,
            reason: "",
            granted: false,
            would_deny: "",
            #[cfg(feature = "otel")]
            trace: None,
        }
    }

    fn auth_method(&self) -> Option<AuthMethod> {
        self.caller.as_ref().map(|c| c.method)
    }
}

/// How forwarding ended.
struct Sent {
    /// the downstream connection may carry another request
    reusable: bool,
    /// the upstream's status, or keyward's 502/504 (0: none written)
    status: u16,
    outcome: Outcome,
}

pub struct KeywardApp {
    pub engine: Arc<Engine>,
    upstream: Upstream,
    https: bool,
    /// `server.auth_listen` (SPEC §8.3): answer with the decision instead
    /// of forwarding
    forward_auth: bool,
    /// `[tracing]`: None when off (one check per request)
    #[cfg(feature = "otel")]
    tracing: Option<Arc<crate::http::otel::Tracing>>,
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
            forward_auth: false,
            #[cfg(feature = "otel")]
            tracing: None,
        }
    }

    /// The forward-auth listener's app (`server.auth_listen`, SPEC §8.3):
    /// the original request is read from the asking proxy's headers and the
    /// decision is the answer; nothing is forwarded.
    pub fn for_forward_auth(mut self) -> KeywardApp {
        self.forward_auth = true;
        self.https = false;
        self
    }

    /// Trace requests (`[tracing]`, SPEC §8.2).
    #[cfg(feature = "otel")]
    pub fn with_tracing(mut self, tracing: Option<Arc<crate::http::otel::Tracing>>) -> KeywardApp {
        self.tracing = tracing;
        self
    }

    /// One request, after its head was read. Returns whether the downstream
    /// connection may carry another request.
    async fn handle(&self, session: &mut ServerSession, ctx: &mut Ctx) -> bool {
        // phase 1: hygiene — refuse what cannot be read one way
        cap_keepalive(session);
        ctx.request_id = hygiene::request_id(session.req_header());
        if self.forward_auth {
            if let Err(d) = crate::http::forward_auth::to_original(session.req_header_mut()) {
                return self.refuse(session, ctx, d, None).await;
            }
        }
        match hygiene::check(session) {
            Ok(None) => {}
            Ok(Some(path_and_query)) => {
                if !set_path(session, path_and_query) {
                    return self
                        .refuse(session, ctx, Denial::BadRequest("malformed_request"), None)
                        .await;
                }
            }
            Err(refused) => {
                if refused.close {
                    session.set_keepalive(None);
                }
                return self.refuse(session, ctx, refused.denial, None).await;
            }
        }

        // phase 2: the upstream's copy of the head (hop-by-hop fields and
        // every client spelling of keyward's headers out)
        let has_body = !session.is_body_empty();
        let mut up = match upstream_copy(session.req_header(), has_body) {
            Ok(parts) => parts,
            Err(Unforwardable(reason)) => {
                session.set_keepalive(None);
                return self
                    .refuse(session, ctx, Denial::BadRequest(reason), None)
                    .await;
            }
        };

        // phase 3: decide on the head, with one pinned policy and snapshot
        // (the swaps seen first: a stream judged on a generation replaced
        // before it is registered is judged again)
        let swaps = self.engine.streams.swaps();
        let pinned = self.engine.pin();
        let client = self.client(session, &pinned.policy.config.server.trusted_proxies);
        ctx.client_ip = Some(client.ip);
        let now = crate::clock::now_unix();
        let auth_start = Instant::now();
        #[cfg(feature = "otel")]
        if let Some(t) = &mut ctx.trace {
            t.decision_started();
        }
        let mut decision = pinned.decide(&facts(session.req_header(), client), now);

        // phase 4: the body, when the route inspects it
        let mut inspected = None;
        if self.forward_auth && !has_body && matches!(decision, Decision::NeedBody(_)) {
            // forward-auth without the body the route reads (Envoy's
            // `with_request_body` sends it; nginx, Traefik and Caddy do not)
            if let Decision::NeedBody(pending) = decision {
                ctx.caller = Some(pending.into_caller());
            }
            return self
                .refuse(session, ctx, Denial::Forbidden("body_required"), None)
                .await;
        }
        if let Decision::NeedBody(pending) = decision {
            let Ok(body) = self.read_body(session, pending.cap).await else {
                return false;
            };
            let read = match &body {
                Some(b) => Body::Read(b),
                None => Body::TooLarge,
            };
            decision = pinned.decide_body(&facts(session.req_header(), client), pending, read, now);
            up.headers.remove(http::header::EXPECT);
            inspected = Some(body.unwrap_or_default());
        }
        #[cfg(feature = "otel")]
        let propagation = ctx.trace.as_mut().and_then(|t| {
            let generation = self.engine.store.generation_id();
            let config = &pinned.policy.config;
            let inspected = inspected.is_some();
            t.decided(crate::http::otel::Decided::of(
                &decision, config, generation, inspected,
            ));
            t.propagation()
        });

        // phase 5: apply
        match decision {
            Decision::Refuse(r) => {
                ctx.auth_time = auth_start.elapsed();
                ctx.caller = r.caller;
                ctx.route = r.route;
                if matches!(r.denial, Denial::PayloadTooLarge) {
                    session.set_keepalive(None);
                }
                self.refuse(session, ctx, r.denial, r.rate).await
            }
            Decision::Forward(grant) => {
                if grant.caller.is_some() {
                    ctx.auth_time = auth_start.elapsed();
                }
                // a stream is registered (and capped) before it is forwarded
                let mut stream = None;
                if is_stream(session.req_header()) {
                    match self.open_stream(&pinned.policy.config, &grant, swaps) {
                        Ok(s) => stream = Some(s),
                        Err(denial) => {
                            ctx.caller = grant.caller;
                            ctx.route = grant.route;
                            return self.refuse(session, ctx, denial, grant.rate).await;
                        }
                    }
                }
                ctx.caller = grant.caller;
                ctx.route = grant.route;
                if self.forward_auth {
                    ctx.granted = true;
                    ctx.would_deny = grant.would_deny.unwrap_or("");
                    return self
                        .allow(session, ctx, client, &grant.identity, grant.rate)
                        .await;
                }
                ctx.outcome = Outcome::Forwarded;
                ctx.granted = true;
                ctx.would_deny = grant.would_deny.unwrap_or("");
                let strip = pinned.policy.config.upstream.strip_credentials;
                let apply = |up: &mut HeaderMap,
                             down: &HeaderMap|
                 -> std::result::Result<(), InvalidHeaderValue> {
                    upstream_headers(up, down, &ctx.request_id, client, &grant.identity, strip)?;
                    #[cfg(feature = "otel")]
                    if let Some(p) = &propagation {
                        p.apply(up);
                    }
                    Ok(())
                };
                if let Err(e) = apply(&mut up.headers, &session.req_header().headers) {
                    // An identity value from the snapshot that cannot be a
                    // header value: fail closed.
                    tracing::error!(error = %e, "cannot build the upstream request");
                    session.set_keepalive(None);
                    self.refuse(session, ctx, Denial::AuthUnavailable, None)
                        .await;
                    return false;
                }
                let rebuild = |s: &ServerSession| {
                    let mut parts = upstream_copy(s.req_header(), has_body).ok()?;
                    if inspected.is_some() {
                        parts.headers.remove(http::header::EXPECT);
                    }
                    apply(&mut parts.headers, &s.req_header().headers).ok()?;
                    Some(Box::new(RequestHeader::from(parts)))
                };
                let sent = self
                    .forward(
                        session,
                        up,
                        inspected.clone(),
                        grant.rate,
                        &ctx.request_id,
                        rebuild,
                        stream.as_mut(),
                    )
                    .await;
                drop(stream);
                ctx.outcome = sent.outcome;
                ctx.status = sent.status;
                sent.reusable
            }
            Decision::NeedBody(_) => {
                // decide_body never asks twice; the connection closes
                // after this answer, and its head says so
                session.set_keepalive(None);
                self.refuse(session, ctx, Denial::AuthUnavailable, None)
                    .await;
                false
            }
        }
    }

    /// Register a granted stream (SPEC §8.2 Streams) with what it was
    /// granted on; 429 `too_many_streams` past its organization's
    /// `max_streams`.
    fn open_stream(
        &self,
        config: &crate::config::Config,
        grant: &Grant<'_>,
        swaps: u64,
    ) -> std::result::Result<Stream, Denial> {
        let (standing, cap) = match &grant.caller {
            Some(caller) => {
                let route = grant.route.and_then(|i| config.routes.routes().get(i));
                (
                    Some(Standing::of(caller, &grant.identity, route, config)),
                    stream_cap(caller, config),
                )
            }
            None => (None, None),
        };
        self.engine
            .streams
            .open(standing, cap, swaps)
            .map_err(|_| Denial::TooManyStreams)
    }

    /// The client as SPEC §4.1 resolves it.
    fn client(&self, session: &ServerSession, trusted: &[ipnet::IpNet]) -> Client {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        Client::resolve(peer, self.https, &session.req_header().headers, trusted)
    }

    /// Read a body the core inspects, held in memory until the decision and
    /// then forwarded as read: `None` past `cap` bytes (the rest unread).
    async fn read_body(&self, session: &mut ServerSession, cap: usize) -> Result<Option<Bytes>> {
        if hygiene::expects_continue(session.req_header()) {
            // keyward reads the body before the upstream sees the request,
            // so it answers the client's Expect itself.
            session.write_continue_response().await?;
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if buf.len() + chunk.len() > cap {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }

    /// Forward-auth's yes (SPEC §8.3): 200, no body, the identity headers the
    /// upstream would receive (with the request id and forwarding headers)
    /// and `X-RateLimit-*`.
    async fn allow(
        &self,
        session: &mut ServerSession,
        ctx: &mut Ctx,
        client: Client,
        identity: &Identity,
        rate: Option<RateState>,
    ) -> bool {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        let down = &session.req_header().headers;
        if upstream_headers(
            &mut parts.headers,
            down,
            &ctx.request_id,
            client,
            identity,
            false,
        )
        .is_err()
        {
            return self
                .refuse(session, ctx, Denial::AuthUnavailable, None)
                .await;
        }
        parts.headers.insert(http::header::CONTENT_LENGTH, 0.into());
        if let Some(r) = &rate {
            headers::insert_rate(&mut parts.headers, r);
        }
        ctx.outcome = Outcome::Forwarded;
        ctx.status = 200;
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        let head = Box::new(ResponseHeader::from(parts));
        let ok = session.write_response_header(head).await.is_ok()
            && session.finish_body().await.is_ok();
        ok && session.is_body_done()
    }

    /// keyward answers the request itself. Returns whether the connection
    /// may carry another request.
    async fn refuse(
        &self,
        session: &mut ServerSession,
        ctx: &mut Ctx,
        denial: Denial,
        rate: Option<RateState>,
    ) -> bool {
        ctx.outcome = Outcome::of(&denial);
        ctx.status = denial.status();
        ctx.reason = denial.reason().unwrap_or("");
        if !session.is_body_done() {
            // A refused request's body is not read to its end (reusing the
            // connection would mean draining whatever the client sends):
            // the connection closes after the answer.
            session.set_keepalive(None);
        }
        write_denial(session, &denial, rate.as_ref(), &ctx.request_id)
            .await
            .is_ok()
    }

    /// Send the request upstream and stream the exchange (followed by
    /// `stream` when it is one).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        session: &mut ServerSession,
        up: Parts,
        inspected: Option<Bytes>,
        rate: Option<RateState>,
        request_id: &str,
        rebuild: impl Fn(&ServerSession) -> Option<Box<RequestHeader>>,
        stream: Option<&mut Stream>,
    ) -> Sent {
        let on_response = |resp: &mut HeaderMap| {
            if let Some(r) = &rate {
                headers::insert_rate(resp, r);
            }
        };
        let req = Box::new(RequestHeader::from(up));
        let result = self
            .upstream
            .forward_followed(session, req, inspected, on_response, rebuild, stream)
            .await;
        if result.is_err() {
            // A failed exchange leaves the connection in no known state: it
            // closes after keyward's answer, and that answer's head says so.
            session.set_keepalive(None);
        }
        match result {
            Ok(done) => Sent {
                reusable: true,
                status: done.status,
                outcome: Outcome::Forwarded,
            },
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
                if !answered {
                    let _ = write_denial(session, &denial, rate.as_ref(), request_id).await;
                }
                Sent {
                    reusable: false,
                    status: if answered { 0 } else { denial.status() },
                    outcome: Outcome::of(&denial),
                }
            }
            Err(Failure::Closed { closing, answered }) => {
                tracing::info!(
                    reason = closing.reason,
                    request_id,
                    "stream closed: its credential no longer stands"
                );
                if !answered {
                    let _ = write_denial(session, &closing.denial, rate.as_ref(), request_id).await;
                }
                Sent {
                    reusable: false,
                    status: if answered { 0 } else { closing.denial.status() },
                    outcome: if answered {
                        Outcome::Forwarded
                    } else {
                        Outcome::of(&closing.denial)
                    },
                }
            }
            Err(Failure::Downstream) => Sent {
                reusable: false,
                status: 0,
                outcome: Outcome::Error,
            },
        }
    }

    /// Metrics and the access line, once per request.
    fn log(&self, session: &ServerSession, ctx: &Ctx) {
        let total = ctx.start.elapsed();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let method = ctx.auth_method().map(AuthMethod::as_str).unwrap_or("none");
        let m = &self.engine.metrics;
        m.request(method, ctx.outcome);
        m.recent.record(ctx.outcome, ctx.reason);
        m.request_duration.observe(total.as_secs_f64());
        if ctx.caller.is_some() || ctx.auth_time > Duration::ZERO {
            m.auth_duration.observe(ctx.auth_time.as_secs_f64());
        }
        if let Some(caller) = &ctx.caller {
            record_usage(&self.engine.usage, caller, ctx.granted);
        }
        let req = session.req_header();
        #[cfg(feature = "otel")]
        if let Some(t) = &ctx.trace {
            t.finish(req.uri.path(), status, ctx.outcome, &ctx.request_id);
        }
        crate::access_log::write(&crate::access_log::Line {
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            auth_method: method,
            outcome: ctx.outcome.as_str(),
            org_id: ctx
                .caller
                .as_ref()
                .and_then(|c| c.org.as_ref())
                .map_or("", |o| &o.id),
            key_prefix: ctx
                .caller
                .as_ref()
                .and_then(Caller::key_prefix)
                .unwrap_or(""),
            request_id: &ctx.request_id,
            auth_us: ctx.auth_time.as_micros() as u64,
            total_us: total.as_micros() as u64,
            client_ip: ctx.client_ip,
            route: ctx.route,
            reason: ctx.reason,
            would_deny: ctx.would_deny,
            user_agent: crate::access_log::cut_user_agent(
                req.headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
        });
    }
}

/// Count a request of an API key or MCP token (SPEC §8.4) by its id.
fn record_usage(usage: &crate::http::usage::Usage, caller: &Caller, forwarded: bool) {
    use crate::auth::principal::Verdict;
    use crate::http::usage::KeyKind;
    if !usage.enabled() {
        return;
    }
    let (kind, id, org) = match &caller.verdict.value {
        Verdict::ApiKey(k) => (KeyKind::ApiKey, &k.id, &k.org_id),
        Verdict::Mcp(t) => match &caller.org {
            Some(o) => (KeyKind::McpToken, &t.id, &o.id),
            None => return,
        },
        _ => return,
    };
    usage.record(kind, id, org, forwarded, crate::clock::now_unix());
}

/// The upstream's copy of the head without any client spelling of
/// keyward's own headers (built again for the one retry).
fn upstream_copy(h: &RequestHeader, has_body: bool) -> Result<Parts, Unforwardable> {
    upstream_request(h, has_body, |n| headers::is_keywards(n.as_str()))
}

/// A request that opens a stream while its exchange lasts (SPEC §8.2): a
/// WebSocket handshake, or one that accepts `text/event-stream`.
fn is_stream(h: &RequestHeader) -> bool {
    crate::http::forward::is_websocket_upgrade(h)
        || h.headers.get_all(http::header::ACCEPT).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .filter_map(|t| t.split(|&b| b == b';').next())
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/event-stream"))
        })
}

/// The facts the core reads, from the (normalized) head.
fn facts(h: &RequestHeader, client: Client) -> RequestFacts<'_> {
    RequestFacts {
        method: &h.method,
        path: h.uri.path(),
        query: h.uri.query(),
        headers: &h.headers,
        client,
    }
}

/// Cap the idle time before the next request on this connection
/// (Some(0) is pingora's "keep alive without limit").
fn cap_keepalive(session: &mut ServerSession) {
    if session
        .get_keepalive()
        .is_some_and(|t| t == 0 || t > KEEPALIVE_IDLE_S)
    {
        session.set_keepalive(Some(KEEPALIVE_IDLE_S));
    }
}

/// Rewrite the head's target to the normalized path, so the upstream acts
/// on the path keyward decided on (SPEC §5).
fn set_path(session: &mut ServerSession, path_and_query: String) -> bool {
    match http::Uri::builder().path_and_query(path_and_query).build() {
        Ok(uri) => {
            session.req_header_mut().set_uri(uri);
            true
        }
        Err(_) => false,
    }
}

/// keyward's headers on the upstream's copy of the head, the one place
/// SPEC §4 and §4.1 are applied: the request id, the forwarding headers,
/// the identity headers, and `strip_credentials`. `down` is the client's
/// head (the client's spellings were left out of `up`).
fn upstream_headers(
    up: &mut HeaderMap,
    down: &HeaderMap,
    request_id: &str,
    client: Client,
    identity: &Identity,
    strip_credentials: bool,
) -> std::result::Result<(), InvalidHeaderValue> {
    up.insert(X_REQUEST_ID, HeaderValue::from_str(request_id)?);
    client.write(up, down);
    if strip_credentials {
        up.remove(http::header::AUTHORIZATION);
        up.remove(http::header::COOKIE);
    }
    let values = [
        (IdentityHeader::OrgId, &identity.org_id),
        (IdentityHeader::ApiKeyId, &identity.api_key_id),
        (IdentityHeader::UserId, &identity.user_id),
        (IdentityHeader::WorkspaceId, &identity.workspace_id),
        (
            IdentityHeader::AllowedWorkspaces,
            &identity.allowed_workspaces,
        ),
        (IdentityHeader::McpServerId, &identity.mcp_server_id),
        (IdentityHeader::EndUserId, &identity.end_user_id),
    ];
    for (header, value) in values {
        if let Some(v) = value {
            up.insert(header.name(), HeaderValue::from_str(v)?);
        }
    }
    if let Some(m) = identity.auth_method {
        up.insert(
            IdentityHeader::AuthMethod.name(),
            HeaderValue::from_static(m.as_str()),
        );
    }
    Ok(())
}

/// Write a keyward-made response: contract JSON, Content-Length, extras.
/// Built as plain `http` parts with static names, like the upstream's
/// response gets its `X-RateLimit-*` (header names go down in canonical case).
async fn write_denial(
    session: &mut ServerSession,
    denial: &Denial,
    rate: Option<&RateState>,
    request_id: &str,
) -> Result<()> {
    let body = denial.body();
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(denial.status())
        .map_err(|_| pingora::Error::explain(ErrorType::InternalError, "denial status"))?;
    let h = &mut parts.headers;
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, body.len().into());
    if let Some((name, value)) = denial.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if let Some(r) = rate {
        headers::insert_rate(h, r);
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        if !request_id.is_empty() {
            h.insert(X_REQUEST_ID, id);
        }
    }
    session
        .write_response_header(Box::new(ResponseHeader::from(parts)))
        .await?;
    session.write_response_body(body, true).await
}

/// HTTP/2 streams come through pingora's accept loop, one boxed call per
/// stream; HTTP/1 connections are served by [`crate::http::connection`].
#[async_trait]
impl HttpServerApp for KeywardApp {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.serve(session, shutdown).await
    }
}

impl KeywardApp {
    /// One request on a session: read, handle, log; the connection back
    /// when it may carry another.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // phase 0: read the head. Once shutdown (or an upgrade's hand-over)
        // starts, an idle keep-alive connection still gets DRAIN_LINGER for
        // its next request, which is answered with `Connection: close`:
        // closing it at once races a client that is sending on it, and
        // that request would fail (zero failed requests through upgrades,
        // SPEC §8.2). A connection idle for longer is closed as any idle one.
        let mut shutdown = shutdown.clone();
        let read = {
            let read = session.read_request();
            tokio::pin!(read);
            let first = if *shutdown.borrow() {
                None
            } else {
                tokio::select! {
                    biased;
                    r = &mut read => Some(r),
                    _ = shutdown.changed() => None,
                }
            };
            match first {
                Some(r) => r,
                None => match tokio::time::timeout(DRAIN_LINGER, &mut read).await {
                    Ok(r) => r,
                    Err(_) => return None,
                },
            }
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
                    self.engine.metrics.request("none", Outcome::of(&d));
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = Ctx::new();
        #[cfg(feature = "otel")]
        if let Some(t) = &self.tracing {
            let head = session.req_header();
            ctx.trace = t.request(&head.method, &head.headers);
        }
        let reusable = self.handle(&mut session, &mut ctx).await;
        self.log(&session, &ctx);
        if !reusable {
            session.shutdown().await;
            return None;
        }
        crate::http::forward::keep_alive(session).await
    }
}
