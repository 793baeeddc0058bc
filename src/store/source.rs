//! The snapshot source (SPEC §8.2, `snapshot.source`): where a fleet's
//! snapshot comes from when the control plane cannot write each replica's
//! disk — an HTTP(S) origin, S3, GCS or Azure Blob, through the
//! `object_store` crate (its retries, timeouts and credentials from the
//! environment).
//!
//! Every `snapshot.poll_interval_ms` one conditional request asks for a
//! version other than the one served (`If-None-Match` with its ETag; a 304
//! costs one round trip and nothing else). A new version is downloaded to a
//! temporary file beside `snapshot.path` (bounded size, its length checked
//! against what the origin announced), its signature checked when
//! `snapshot.verify_key` is set ([`signature`]), opened as a snapshot
//! (schema) — and only then renamed over `snapshot.path`. The watcher takes
//! it from there as from any publisher's rename: validation, keep-last-good,
//! cache refill and metrics are the same. A version refused here never
//! reaches the path; the last good one keeps serving.
//!
//! Failures back off exponentially (with jitter, up to [`MAX_BACKOFF`]), so a
//! fleet does not hammer a recovering origin in step; while the origin
//! cannot be reached `/readyz` lists `snapshot_source_unreachable` in
//! `degraded` (and turns 503 only by the staleness rule).

pub mod signature;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::{GetOptions, ObjectStore};
use prometheus::{IntCounter, IntCounterVec};

use self::signature::VerifyKey;

/// Largest snapshot accepted from a source (a 1M-key snapshot is ~200 MB).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;
/// Largest signature file read (the base64 of 64 bytes, with slack).
const MAX_SIGNATURE_BYTES: u64 = 1024;
/// Longest pause between attempts while the source fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest a request to the source may take (a whole download included).
const REQUEST_TIMEOUT: &str = "300s";
const CONNECT_TIMEOUT: &str = "5s";

/// How one poll went (`snapshot_fetches_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// a new version was renamed in
    Updated,
    /// the origin still has the version served
    NotModified,
    /// the origin could not be reached or answered an error
    Failed,
    /// a version was downloaded and refused (size, signature, not a snapshot)
    Rejected,
}

impl Fetch {
    pub fn label(self) -> &'static str {
        match self {
            Fetch::Updated => "updated",
            Fetch::NotModified => "not_modified",
            Fetch::Failed => "failed",
            Fetch::Rejected => "rejected",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("snapshot.source `{0}`: {1}")]
    Config(String, String),
    #[error("cannot reach the snapshot source: {0}")]
    Unreachable(String),
    #[error("snapshot from the source refused: {0}")]
    Refused(String),
    /// The download ended before the length the origin announced: retried
    /// with backoff like an unreachable origin (it is most often the
    /// network), but reported on `/readyz` like a refused version.
    #[error("snapshot download from the source truncated: {0}")]
    Truncated(String),
}

impl SourceError {
    fn fetch(&self) -> Fetch {
        match self {
            SourceError::Refused(_) => Fetch::Rejected,
            _ => Fetch::Failed,
        }
    }
}

/// Counters a source updates (registered by [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct SourceMetrics {
    pub fetches: IntCounterVec,
    pub bytes: IntCounter,
}

/// A version refused: its ETag and its signature's, as fetched.
#[derive(Clone, Debug)]
struct RefusedVersion {
    object: Option<String>,
    signature: Option<String>,
}

/// One configured source and what it last fetched.
pub struct Source {
    /// parts of the URL that may be secret, scrubbed from error texts
    secrets: Vec<String>,
    url: String,
    store: Box<dyn ObjectStore>,
    object: object_store::path::Path,
    signature: object_store::path::Path,
    verify: Option<VerifyKey>,
    dest: PathBuf,
    /// ETag (or version) of the version renamed in last
    served: Option<String>,
    /// the version refused last, not downloaded again while it stays
    refused: Option<RefusedVersion>,
    metrics: Option<SourceMetrics>,
    /// set while the origin cannot be reached (`/readyz` degraded)
    pub unreachable: Arc<AtomicBool>,
    /// where a refused version is reported (`/readyz` last_reload_error)
    snapshots: Option<Arc<crate::store::snapshot::SnapshotStore>>,
}

/// Options for the store from the environment (AWS_*, GOOGLE_*, AZURE_*:
/// credentials, region, endpoint), then keyward's timeouts.
fn store_options() -> Vec<(String, String)> {
    let mut opts: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            let k = k.to_ascii_uppercase();
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    opts.push(("timeout".into(), REQUEST_TIMEOUT.into()));
    opts.push(("connect_timeout".into(), CONNECT_TIMEOUT.into()));
    opts
}

/// rustls needs a process-wide provider for the stores' HTTPS (reqwest is
/// built without one): ring, as everywhere else in keyward.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use crate::config::source::parse_url;

/// The object store and object a source URL names, credentials from the
/// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`); also what `keyward sync`
/// uploads to (`output.upload`).
pub fn object_store_for(
    parsed: &url::Url,
) -> Result<(Box<dyn ObjectStore>, object_store::path::Path), String> {
    install_crypto_provider();
    let mut options = store_options();
    if parsed.scheme() == "http" {
        // the operator wrote http:// (an origin on a private network)
        options.push(("allow_http".into(), "true".into()));
    }
    object_store::parse_url_opts(parsed, options).map_err(|e| e.to_string())
}

/// The URL without credentials or query, for logs.
pub fn redacted(url: &url::Url) -> String {
    redact(url)
}

impl Source {
    /// A source for `url` writing to `dest`; checks the URL and key now.
    pub fn new(url: &str, dest: &Path, verify: Option<VerifyKey>) -> Result<Source, SourceError> {
        install_crypto_provider();
        // the URL may carry credentials: an error names it redacted
        let parsed = parse_url(url)
            .map_err(|e| SourceError::Config("(the snapshot.source URL)".to_string(), e))?;
        let bad = |e: String| SourceError::Config(redact(&parsed), scrub(&parsed, &e));
        let (store, object) = object_store_for(&parsed).map_err(bad)?;
        let signature = object_store::path::Path::from(format!("{object}.sig"));
        Ok(Source {
            url: redact(&parsed),
            secrets: secrets(&parsed),
            store,
            object,
            signature,
            verify,
            dest: dest.to_path_buf(),
            served: None,
            refused: None,
            metrics: None,
            unreachable: Arc::new(AtomicBool::new(false)),
            snapshots: None,
        })
    }

    /// Report refused versions to `store`: its `/readyz` body shows the
    /// last one, with the source and the reason, until a later version loads.
    pub fn reporting_to(mut self, store: Arc<crate::store::snapshot::SnapshotStore>) -> Source {
        self.snapshots = Some(store);
        self
    }

    pub fn with_metrics(mut self, m: SourceMetrics) -> Source {
        self.metrics = Some(m);
        self
    }

    /// An error's text without any secret part of the URL in it.
    fn scrubbed(&self, e: &SourceError) -> String {
        scrub_with(&self.secrets, &e.to_string())
    }

    /// One poll: ask for a newer version, and rename it in if it passes.
    pub async fn poll(&mut self) -> Fetch {
        let result = self.fetch().await;
        let fetch = match &result {
            Ok(f) => *f,
            Err(e) => e.fetch(),
        };
        match &result {
            Ok(Fetch::Updated) => {
                tracing::info!(source = %self.url, version = ?self.served, "snapshot fetched from the source")
            }
            Ok(_) => {}
            Err(e @ (SourceError::Refused(_) | SourceError::Truncated(_))) => {
                let e = self.scrubbed(e);
                tracing::error!(source = %self.url, error = %e, "keeping the last good snapshot");
                if let Some(snapshots) = &self.snapshots {
                    snapshots.report_error(format!("{e} (source {})", self.url));
                }
            }
            Err(e) => {
                let e = self.scrubbed(e);
                tracing::warn!(source = %self.url, error = %e, "snapshot source")
            }
        }
        let truncated = matches!(result, Err(SourceError::Truncated(_)));
        self.unreachable
            .store(fetch == Fetch::Failed && !truncated, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.fetches.with_label_values(&[fetch.label()]).inc();
        }
        fetch
    }

    async fn fetch(&mut self) -> Result<Fetch, SourceError> {
        // After a refusal, ask for a version other than the refused one: a
        // bad version is downloaded once, not at every poll — unless its
        // signature changed since (a control plane that uploads the
        // signature after the snapshot).
        let refused = self.refused.clone();
        let options = GetOptions {
            if_none_match: refused
                .as_ref()
                .map_or(self.served.clone(), |r| r.object.clone()),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&self.object, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotModified { .. }) => match refused {
                Some(r) if self.verify.is_some() && self.signature_changed(&r).await? => {
                    let options = GetOptions {
                        if_none_match: self.served.clone(),
                        ..GetOptions::default()
                    };
                    match self.store.get_opts(&self.object, options).await {
                        Ok(got) => got,
                        Err(object_store::Error::NotModified { .. }) => {
                            self.refused = None;
                            return Ok(Fetch::NotModified);
                        }
                        Err(e) => return Err(SourceError::Unreachable(e.to_string())),
                    }
                }
                _ => return Ok(Fetch::NotModified),
            },
            Err(e) => return Err(SourceError::Unreachable(e.to_string())),
        };
        let version = got.meta.e_tag.clone().or(got.meta.version.clone());
        if version.is_some() && version == self.served {
            // an origin that ignores If-None-Match
            self.refused = None;
            return Ok(Fetch::NotModified);
        }
        let announced = got.meta.size;
        let temp = self.temp_path();
        let mut signature_tag = None;
        let checked = if announced > MAX_SNAPSHOT_BYTES {
            Err(SourceError::Refused(format!(
                "{announced} bytes, more than the {} accepted",
                MAX_SNAPSHOT_BYTES
            )))
        } else {
            match self.download(got.into_stream(), &temp, announced).await {
                Ok(()) => self.check(&temp, &mut signature_tag).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&temp);
            if matches!(e, SourceError::Refused(_)) {
                self.refused = Some(RefusedVersion {
                    object: version,
                    signature: signature_tag,
                });
            }
            return Err(e);
        }
        std::fs::rename(&temp, &self.dest).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            SourceError::Unreachable(format!("cannot rename into {}: {e}", self.dest.display()))
        })?;
        self.served = version;
        self.refused = None;
        Ok(Fetch::Updated)
    }

    /// Whether the signature differs from the one a version was refused with.
    async fn signature_changed(&self, r: &RefusedVersion) -> Result<bool, SourceError> {
        let options = GetOptions {
            if_none_match: r.signature.clone(),
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.signature, options).await {
            // a signature now, where there was none or another
            Ok(_) => Ok(true),
            Err(object_store::Error::NotModified { .. } | object_store::Error::NotFound { .. }) => {
                Ok(false)
            }
            Err(e) => Err(SourceError::Unreachable(e.to_string())),
        }
    }

    /// `.NAME.download` beside the destination (same file system: the
    /// rename is atomic).
    fn temp_path(&self) -> PathBuf {
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot.db".into());
        self.dest.with_file_name(format!(".{name}.download"))
    }

    async fn download(
        &self,
        mut body: futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
        temp: &Path,
        announced: u64,
    ) -> Result<(), SourceError> {
        use std::io::Write;
        let mut file = std::fs::File::create(temp).map_err(|e| {
            SourceError::Unreachable(format!("cannot write {}: {e}", temp.display()))
        })?;
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                SourceError::Truncated(format!("{total} of {announced} bytes: {e}"))
            })?;
            total += chunk.len() as u64;
            if total > announced.min(MAX_SNAPSHOT_BYTES) {
                return Err(SourceError::Refused(format!(
                    "longer than the {announced} bytes announced"
                )));
            }
            file.write_all(&chunk).map_err(|e| {
                SourceError::Unreachable(format!("cannot write {}: {e}", temp.display()))
            })?;
        }
        if total != announced {
            return Err(SourceError::Truncated(format!(
                "{total} of {announced} bytes"
            )));
        }
        file.sync_all().map_err(|e| {
            SourceError::Unreachable(format!("cannot sync {}: {e}", temp.display()))
        })?;
        if let Some(m) = &self.metrics {
            m.bytes.inc_by(total);
        }
        Ok(())
    }

    /// The downloaded file's signature (with a verify key) and schema.
    async fn check(&self, temp: &Path, sig_tag: &mut Option<String>) -> Result<(), SourceError> {
        if let Some(key) = &self.verify {
            let sig = self.signature_bytes(sig_tag).await?;
            let file = std::fs::File::open(temp).map_err(|e| {
                SourceError::Unreachable(format!("cannot read {}: {e}", temp.display()))
            })?;
            // SAFETY: the file is keyward's own temporary file, not renamed
            // in yet; nothing else writes or truncates it while mapped.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| {
                SourceError::Unreachable(format!("cannot map {}: {e}", temp.display()))
            })?;
            key.verify(&map, &sig)
                .map_err(|e| SourceError::Refused(e.to_string()))?;
        }
        let path = temp.to_path_buf();
        tokio::task::spawn_blocking(move || check_file(&path))
            .await
            .map_err(|e| SourceError::Unreachable(e.to_string()))?
            .map_err(|e| SourceError::Refused(format!("not a valid snapshot: {e}")))
    }

    async fn signature_bytes(&self, tag: &mut Option<String>) -> Result<Vec<u8>, SourceError> {
        let got = match self
            .store
            .get_opts(&self.signature, GetOptions::default())
            .await
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(SourceError::Refused(format!(
                    "no signature at {}.sig",
                    self.url
                )))
            }
            Err(e) => return Err(SourceError::Unreachable(e.to_string())),
        };
        *tag = got.meta.e_tag.clone();
        if got.meta.size > MAX_SIGNATURE_BYTES {
            return Err(SourceError::Refused(
                "the signature file is too large".into(),
            ));
        }
        let text = got
            .bytes()
            .await
            .map_err(|e| SourceError::Unreachable(e.to_string()))?;
        signature::decode_signature(&text).map_err(|e| SourceError::Refused(e.to_string()))
    }

    /// Poll forever on `interval`, backing off on failures.
    pub async fn run(mut self, interval: Duration) {
        let mut failures: u32 = 0;
        loop {
            let pause = match self.poll().await {
                // a refused version is not downloaded again (see fetch)
                Fetch::Updated | Fetch::NotModified | Fetch::Rejected => {
                    failures = 0;
                    interval
                }
                Fetch::Failed => {
                    failures = failures.saturating_add(1);
                    backoff(interval, failures)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// Open `path` read-only as a snapshot and check its schema.
fn check_file(path: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    crate::snapshot::schema::validate(&conn).map_err(|e| e.to_string())?;
    conn.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())
        .and_then(|ok| if ok == "ok" { Ok(()) } else { Err(ok) })
}

/// The pause after `failures` failed polls in a row: the interval doubled
/// per failure up to [`MAX_BACKOFF`], then a random 50–100 % of it, so a
/// fleet that failed together does not retry together.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let exp = interval
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF)
        .max(interval);
    let jitter = 0.5 + rand_fraction() * 0.5;
    exp.mul_f64(jitter)
}

fn rand_fraction() -> f64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The URL without credentials or query (pre-signed URLs carry secrets).
fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The parts of a source URL that may be secret (user, password — as
/// written and percent-decoded —, query, fragment): never in a log line or
/// `/readyz`, even inside a library's error text that quotes the URL.
fn secrets(url: &url::Url) -> Vec<String> {
    let decoded = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut out = Vec::new();
    for part in [
        Some(url.username()),
        url.password(),
        url.query(),
        url.fragment(),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.is_empty())
    {
        out.push(part.to_string());
        out.push(decoded(part));
    }
    // longest first, so a part inside another is not left half-replaced
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn scrub(url: &url::Url, text: &str) -> String {
    scrub_with(&secrets(url), text)
}

fn scrub_with(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parts_of_the_url_never_reach_an_error_text() {
        let url = url::Url::parse(
            "http://alice:hunter%32pw@127.0.0.1:1/snap.db?X-Amz-Signature=SECRETQ#frag-SECRETF",
        )
        .unwrap();
        assert_eq!(redact(&url), "http://127.0.0.1:1/snap.db");
        let text = "Error performing GET http://alice:hunter%32pw@127.0.0.1:1/snap.db?X-Amz-Signature=SECRETQ#frag-SECRETF (hunter2pw)";
        let out = scrub(&url, text);
        for s in ["alice", "hunter", "SECRETQ", "SECRETF"] {
            assert!(!out.contains(s), "{out}");
        }
        assert!(out.contains("127.0.0.1:1/snap.db"));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let i = Duration::from_secs(1);
        for f in 1..30 {
            let b = backoff(i, f);
            let full = i.saturating_mul(1 << f.min(16)).min(MAX_BACKOFF);
            assert!(b >= full / 2 && b <= full, "{f}: {b:?}");
        }
        assert!(backoff(Duration::from_secs(120), 3) >= Duration::from_secs(60));
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        let dest = Path::new("/tmp/x/snapshot.db");
        assert!(Source::new("ftp://h/x", dest, None).is_err());
        assert!(Source::new("http://h/", dest, None).is_err());
        let s = Source::new("https://user:pw@h/snap.db?X-Amz-Signature=s", dest, None).unwrap();
        assert_eq!(s.url, "https://h/snap.db");
        assert_eq!(s.signature.as_ref(), "snap.db.sig");
        assert_eq!(s.temp_path(), Path::new("/tmp/x/.snapshot.db.download"));
    }
}
