//! The usage receiver (SPEC §8.4): with `[usage] listen`, `keyward sync`
//! accepts the usage keyward replicas push (`POST /v1/usage`) and writes it
//! back to the source database, one transaction per push.
//!
//! - Auth: `[usage] token_env` names the bearer token pushers present; it
//!   is held as its SHA-256 digest only and compared in constant time.
//!   Never logged.
//! - Body: `application/json`, at most [`MAX_BODY`] bytes, read frame by
//!   frame (never more than the cap is buffered).
//! - Write-back: per key one prepared UPDATE (`$1` id text, `$2` forwarded,
//!   `$3` denied, `$4` last used, bigints) on a connection the receiver
//!   owns (reconnected when it broke). Every key of a push in one
//!   transaction: all written, or none and a 503 so the pusher retries.
//!   Delivery is at-least-once: a push whose answer was lost is sent again.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::config::{SyncConfig, UsageConfig};
use super::{pg, SyncMetrics};

/// The one path pushes are accepted on.
pub const PATH: &str = "/v1/usage";
/// Largest push body accepted (413 past it).
pub const MAX_BODY: usize = 8 << 20;
/// Longest wait for a complete request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the whole body once the head is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a write-back may take (waiting for the connection included).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// UPDATEs in flight at once on the connection (pipelined).
const PIPELINE: usize = 256;

/// The parameter types of every usage UPDATE.
const PARAMS: [Type; 4] = [Type::TEXT, Type::INT8, Type::INT8, Type::INT8];

/// `preset = "betterauth"`'s write-back: BetterAuth's `apikey` table in
/// `schema`. `lastRequest` only moves forward (GREATEST ignores a NULL);
/// `requestCount` adds the forwarded requests (denied ones never reached
/// the application); `updatedAt` is left alone. The connection runs in
/// UTC, so a `timestamp` (without time zone) column gets UTC too.
pub fn betterauth_api_key_update(schema: &str) -> String {
    format!(
        "UPDATE \"{}\".\"apikey\" SET \"lastRequest\" = GREATEST(\"lastRequest\", to_timestamp($4)), \
         \"requestCount\" = COALESCE(\"requestCount\", 0) + $2 WHERE \"id\" = $1",
        schema.replace('"', "\"\"")
    )
}

/// The receiver's counters, on `[sync] admin_listen`'s `/metrics`.
pub struct UsageMetrics {
    pub pushes: IntCounterVec,
    pub keys_written: IntCounter,
    pub keys_ignored: IntCounter,
}

impl UsageMetrics {
    pub fn new(registry: &Registry) -> UsageMetrics {
        let opts = |n: &str, h: &str| Opts::new(n, h).namespace("keyward");
        let pushes = IntCounterVec::new(
            opts(
                "sync_usage_pushes_total",
                "Usage pushes received on [usage] listen, by result",
            ),
            &["result"],
        )
        .unwrap();
        let keys_written = IntCounter::with_opts(opts(
            "sync_usage_keys_written_total",
            "Keys of usage pushes written back to the source",
        ))
        .unwrap();
        let keys_ignored = IntCounter::with_opts(opts(
            "sync_usage_keys_ignored_total",
            "Keys of usage pushes accepted but not written (no SQL for their kind, no such row)",
        ))
        .unwrap();
        registry.register(Box::new(pushes.clone())).unwrap();
        registry.register(Box::new(keys_written.clone())).unwrap();
        registry.register(Box::new(keys_ignored.clone())).unwrap();
        for r in ["ok", "unauthorized", "bad_request", "failed"] {
            pushes.with_label_values(&[r]);
        }
        UsageMetrics {
            pushes,
            keys_written,
            keys_ignored,
        }
    }
}

/// One push, as keyward sends it. Unknown top-level fields are ignored
/// (a newer keyward may send more).
#[derive(Deserialize)]
struct Push {
    replica: String,
    interval: [i64; 2],
    keys: Vec<KeyUsage>,
}

#[derive(Deserialize)]
struct KeyUsage {
    id: String,
    kind: String,
    #[serde(rename = "organization_id")]
    _organization_id: String,
    forwarded: u64,
    denied: u64,
    last_used: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ApiKey,
    McpToken,
}

/// A push's keys by (kind, id), merged and in lock order.
type Keys<'a> = BTreeMap<(Kind, &'a str), Totals>;

/// One key's usage, merged over the push's entries for it.
struct Totals {
    forwarded: i64,
    denied: i64,
    last_used: i64,
}

/// An answer other than 200: status, contract code, message, details and
/// the `result` label it is counted under.
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
    details: serde_json::Value,
    result: &'static str,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    let result = match status {
        401 => "unauthorized",
        503 => "failed",
        _ => "bad_request",
    };
    Refusal {
        status,
        code,
        message: message.into(),
        details: serde_json::json!({}),
        result,
    }
}

impl Refusal {
    fn with(mut self, details: serde_json::Value) -> Refusal {
        self.details = details;
        self
    }
}

/// keyward's error shape (SPEC §7).
fn json_response(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error_response(r: &Refusal) -> Response<Full<Bytes>> {
    let mut resp = json_response(
        r.status,
        serde_json::json!({"error": r.message, "code": r.code, "details": r.details}),
    );
    let h = resp.headers_mut();
    match r.status {
        401 => {
            h.insert("www-authenticate", "Bearer".parse().unwrap());
        }
        405 => {
            h.insert("allow", "POST".parse().unwrap());
        }
        _ => {}
    }
    resp
}

/// The connection the receiver owns, with its statements.
struct Conn {
    client: Client,
    api_key: Option<Statement>,
    mcp_token: Option<Statement>,
}

struct Receiver {
    url: String,
    ca_file: Option<PathBuf>,
    cfg: UsageConfig,
    /// `None` until the first push, and after the connection broke
    conn: tokio::sync::Mutex<Option<Conn>>,
    metrics: Arc<SyncMetrics>,
}

/// Bind `[usage] listen` (when set) and serve pushes; an address that
/// cannot be bound stops the start.
pub async fn start(cfg: &SyncConfig, metrics: &Arc<SyncMetrics>) -> Result<(), String> {
    let Some(usage) = &cfg.usage else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(usage.listen)
        .await
        .map_err(|e| format!("usage.listen {}: {e}", usage.listen))?;
    if usage.token_digest.is_none() && !usage.listen.ip().is_loopback() {
        tracing::warn!(listen = %usage.listen, "usage receiver without usage.token_env on a non-loopback address: anyone who reaches it can write usage");
    }
    if usage.api_key_update.is_none() && usage.mcp_token_update.is_none() {
        tracing::warn!("usage receiver has no api_key_update nor mcp_token_update: pushes are accepted and ignored");
    }
    tracing::info!(listen = %usage.listen, path = PATH, "usage receiver listening");
    let receiver = Arc::new(Receiver {
        url: cfg.url.clone(),
        ca_file: cfg.ca_file.clone(),
        cfg: usage.clone(),
        conn: tokio::sync::Mutex::new(None),
        metrics: metrics.clone(),
    });
    tokio::spawn(serve(listener, receiver));
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, r: Arc<Receiver>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "usage listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let r = r.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(r.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    r: Arc<Receiver>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != PATH {
        return Ok(error_response(&refuse(404, "NOT_FOUND", "Not found")));
    }
    let m = &r.metrics.usage;
    Ok(match r.push(req).await {
        Ok((written, ignored)) => {
            m.pushes.with_label_values(&["ok"]).inc();
            m.keys_written.inc_by(written);
            m.keys_ignored.inc_by(ignored);
            json_response(
                200,
                serde_json::json!({"written": written, "ignored": ignored}),
            )
        }
        Err(refusal) => {
            m.pushes.with_label_values(&[refusal.result]).inc();
            error_response(&refusal)
        }
    })
}

/// `Authorization: Bearer <token>` against the configured token's digest.
fn authorize(want: &[u8; 32], headers: &HeaderMap) -> Result<(), Refusal> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(refuse(401, "UNAUTHENTICATED", "A bearer token is required")
            .with(serde_json::json!({"reason": "missing"})));
    };
    let v = v.as_bytes();
    let token = match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
        _ => {
            return Err(refuse(
                401,
                "UNAUTHENTICATED",
                "Authorization must be a bearer token",
            )
            .with(serde_json::json!({"reason": "malformed"})))
        }
    };
    let got: [u8; 32] = Sha256::digest(token).into();
    if bool::from(got.ct_eq(want)) {
        Ok(())
    } else {
        Err(
            refuse(401, "UNAUTHENTICATED", "The bearer token is not valid")
                .with(serde_json::json!({"reason": "invalid"})),
        )
    }
}

/// `application/json` (parameters allowed), not content-encoded.
fn check_media_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"));
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if json && !encoded {
        Ok(())
    } else {
        Err(refuse(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "A usage push must be application/json, not content-encoded",
        ))
    }
}

fn too_large() -> Refusal {
    refuse(413, "PAYLOAD_TOO_LARGE", "The usage push is too large")
        .with(serde_json::json!({"limit_bytes": MAX_BODY}))
}

/// The body, frame by frame, refused once past [`MAX_BODY`].
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, Refusal> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(body.size_hint().lower() as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| refuse(400, "BAD_REQUEST", "The body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// The push's keys merged by (kind, id), sorted (a stable lock order);
/// the second count is the entries of kinds this receiver does not know.
fn merge(push: &Push) -> Result<(Keys<'_>, u64), Refusal> {
    let mut keys = Keys::new();
    let mut unknown = 0;
    for (i, k) in push.keys.iter().enumerate() {
        let kind = match k.kind.as_str() {
            "api_key" => Kind::ApiKey,
            "mcp_token" => Kind::McpToken,
            _ => {
                unknown += 1;
                continue;
            }
        };
        let (Ok(forwarded), Ok(denied)) = (i64::try_from(k.forwarded), i64::try_from(k.denied))
        else {
            return Err(refuse(400, "BAD_REQUEST", "A count is out of range").with(
                serde_json::json!({"reason": format!("keys[{i}]: counts must fit a bigint")}),
            ));
        };
        let t = keys.entry((kind, k.id.as_str())).or_insert(Totals {
            forwarded: 0,
            denied: 0,
            last_used: k.last_used,
        });
        t.forwarded = t.forwarded.saturating_add(forwarded);
        t.denied = t.denied.saturating_add(denied);
        t.last_used = t.last_used.max(k.last_used);
    }
    Ok((keys, unknown))
}

impl Receiver {
    /// One push: (keys written, keys ignored), or why not.
    async fn push(&self, req: Request<Incoming>) -> Result<(u64, u64), Refusal> {
        if req.method() != Method::POST {
            return Err(refuse(
                405,
                "METHOD_NOT_ALLOWED",
                "Usage is pushed with POST",
            ));
        }
        if let Some(want) = &self.cfg.token_digest {
            authorize(want, req.headers())?;
        }
        check_media_type(req.headers())?;
        let body = tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body()))
            .await
            .map_err(|_| refuse(408, "REQUEST_TIMEOUT", "The body did not arrive in time"))??;
        let push: Push = serde_json::from_slice(&body).map_err(|e| {
            refuse(
                400,
                "BAD_REQUEST",
                "The usage push is not valid JSON of the expected shape",
            )
            .with(serde_json::json!({"reason": e.to_string()}))
        })?;
        let (keys, unknown) = merge(&push)?;
        let sql_for = |kind: Kind| match kind {
            Kind::ApiKey => self.cfg.api_key_update.is_some(),
            Kind::McpToken => self.cfg.mcp_token_update.is_some(),
        };
        let no_sql = keys.keys().filter(|(kind, _)| !sql_for(*kind)).count() as u64;
        let ignored = unknown + no_sql;
        if no_sql as usize == keys.len() {
            return Ok((0, ignored));
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.write(&keys)).await;
        let failure = match written {
            Ok(Ok((written, missing))) => {
                tracing::debug!(replica = %push.replica, interval = ?push.interval, written, ignored = ignored + missing, "usage written back");
                return Ok((written, ignored + missing));
            }
            Ok(Err(e)) => e,
            Err(_) => "the write-back did not finish in time".to_string(),
        };
        tracing::error!(error = %failure, replica = %push.replica, keys = keys.len(), "usage push not written (answered 503, the pusher retries)");
        Err(refuse(
            503,
            "SERVICE_UNAVAILABLE",
            "The usage could not be written back: retry later",
        ))
    }

    /// The keys in one transaction on the receiver's connection (made
    /// anew when there is none or it broke): (rows' keys written, keys
    /// without a row).
    async fn write(&self, keys: &Keys<'_>) -> Result<(u64, u64), String> {
        let mut slot = self.conn.lock().await;
        // taken out: dropped (and closed) if this future is, mid-transaction
        let mut conn = match slot.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => self.connect().await?,
        };
        let result = transact(&mut conn, keys).await;
        if !conn.client.is_closed() {
            *slot = Some(conn);
        }
        result.map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<Conn, String> {
        let client = pg::connect(&self.url, self.ca_file.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        // a `timestamp` (without time zone) column gets UTC
        client
            .batch_execute("SET TimeZone = 'UTC'")
            .await
            .map_err(|e| pg::PgError::from(e).to_string())?;
        let prepare = |key: &'static str, sql: &Option<String>| {
            let client = &client;
            let sql = sql.clone();
            async move {
                match sql {
                    Some(sql) => client
                        .prepare_typed(&sql, &PARAMS)
                        .await
                        .map(Some)
                        .map_err(|e| format!("usage.{key}: {}", pg::PgError::from(e))),
                    None => Ok(None),
                }
            }
        };
        let api_key = prepare("api_key_update", &self.cfg.api_key_update).await?;
        let mcp_token = prepare("mcp_token_update", &self.cfg.mcp_token_update).await?;
        Ok(Conn {
            client,
            api_key,
            mcp_token,
        })
    }
}

/// Every key with a statement, pipelined, in one transaction; rolled back
/// on any error.
async fn transact(conn: &mut Conn, keys: &Keys<'_>) -> Result<(u64, u64), pg::PgError> {
    let Conn {
        client,
        api_key,
        mcp_token,
    } = conn;
    let work: Vec<(&Statement, &str, &Totals)> = keys
        .iter()
        .filter_map(|((kind, id), t)| {
            let stmt = match kind {
                Kind::ApiKey => api_key.as_ref(),
                Kind::McpToken => mcp_token.as_ref(),
            }?;
            Some((stmt, *id, t))
        })
        .collect();
    let tx = client.transaction().await?;
    let (mut written, mut missing) = (0u64, 0u64);
    for chunk in work.chunks(PIPELINE) {
        let updates = chunk.iter().map(|(stmt, id, t)| {
            let params: [&(dyn ToSql + Sync); 4] = [id, &t.forwarded, &t.denied, &t.last_used];
            let tx = &tx;
            async move { tx.execute(*stmt, &params).await }
        });
        match futures_util::future::try_join_all(updates).await {
            Ok(rows) => {
                for n in rows {
                    if n > 0 {
                        written += 1;
                    } else {
                        missing += 1;
                    }
                }
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e.into());
            }
        }
    }
    tx.commit().await?;
    Ok((written, missing))
}
