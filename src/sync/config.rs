//! `keyward sync`'s own TOML file (SPEC §9), read like keyward's: serde
//! structs that reject unknown keys, then a checked model.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::preset;

#[derive(Debug, thiserror::Error)]
pub enum SyncConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> SyncConfigError {
    SyncConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    source: RawSource,
    #[serde(default)]
    preset: RawPreset,
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
    output: RawOutput,
    #[serde(default)]
    follow: RawFollow,
    #[serde(default)]
    sync: RawSync,
    usage: Option<RawUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<String>,
    url_env: Option<String>,
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    preset: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    plan_query: Option<String>,
    /// the BetterAuth table names' schema (default `public`)
    schema: Option<String>,
    /// keyward's `rate_limit.window_s`: an api-key rate limit over this
    /// window becomes the key's §6.1 `rate_limit` (default 60)
    window_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    query: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
    #[serde(default)]
    watch_all: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    path: Option<PathBuf>,
    upload: Option<String>,
    sign_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFollow {
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_full_rebuild_s")]
    full_rebuild_interval_s: u64,
}

impl Default for RawFollow {
    fn default() -> Self {
        RawFollow {
            mode: default_mode(),
            interval_ms: default_interval_ms(),
            full_rebuild_interval_s: default_full_rebuild_s(),
        }
    }
}

fn default_mode() -> String {
    "outbox".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_full_rebuild_s() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(default = "default_admin")]
    admin_listen: String,
    #[serde(default = "default_staleness")]
    max_staleness_s: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            admin_listen: default_admin(),
            max_staleness_s: default_staleness(),
        }
    }
}

fn default_admin() -> String {
    "127.0.0.1:9091".into()
}
fn default_staleness() -> u64 {
    300
}

/// `[usage]`: the usage receiver (SPEC §8.4), off without the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    listen: String,
    #[serde(default)]
    token_env: String,
    api_key_update: Option<String>,
    mcp_token_update: Option<String>,
}

/// The usage receiver's settings. No `Debug`: it holds the token's digest.
#[derive(Clone)]
pub struct UsageConfig {
    pub listen: SocketAddr,
    /// SHA-256 of the bearer token pushers must present (`token_env`);
    /// `None`: no auth
    pub token_digest: Option<[u8; 32]>,
    /// the UPDATE per api key (`$1` id, `$2` forwarded, `$3` denied, `$4`
    /// last used); `None`: api keys are ignored
    pub api_key_update: Option<String>,
    pub mcp_token_update: Option<String>,
}

/// `[usage]` checked; `betterauth_schema` when the BetterAuth preset is on
/// (its `apikey` table is the default api-key write-back).
fn usage_config(
    raw: RawUsage,
    betterauth_schema: Option<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<UsageConfig, SyncConfigError> {
    use sha2::Digest;
    let listen = raw
        .listen
        .parse()
        .map_err(|e| invalid("usage.listen", format!("{e}")))?;
    let token_digest = match raw.token_env.as_str() {
        "" => None,
        var => {
            let token = env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                invalid(
                    "usage.token_env",
                    format!("the environment has no {var} (or it is empty): set it, or token_env = \"\" for no auth (bind loopback then)"),
                )
            })?;
            Some(sha2::Sha256::digest(token.trim().as_bytes()).into())
        }
    };
    // "" turns a write-back off (the preset's too)
    let sql = |s: Option<String>| s.map(|s| s.trim().to_string());
    let api_key_update = match sql(raw.api_key_update) {
        Some(s) => (!s.is_empty()).then_some(s),
        None => betterauth_schema.map(super::usage::betterauth_api_key_update),
    };
    let mcp_token_update = sql(raw.mcp_token_update).filter(|s| !s.is_empty());
    Ok(UsageConfig {
        listen,
        token_digest,
        api_key_update,
        mcp_token_update,
    })
}

/// How the source stores a token column (SPEC §9 `hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashEncoding {
    Hex,
    Base64Url,
    Base64,
    /// the token itself: sync hashes it
    Plain,
}

impl HashEncoding {
    fn parse(s: &str) -> Option<HashEncoding> {
        Some(match s {
            "hex" => HashEncoding::Hex,
            "base64url" => HashEncoding::Base64Url,
            "base64" => HashEncoding::Base64,
            "plain" => HashEncoding::Plain,
            _ => return None,
        })
    }
}

/// One snapshot table's mapping.
#[derive(Debug, Clone)]
pub struct Table {
    /// the snapshot table (SPEC §2)
    pub name: String,
    pub query: String,
    /// the token column and how the source stores it (token tables only)
    pub hash: Option<(&'static str, HashEncoding)>,
    /// source tables whose changed rows (by `id`) are this table's rows
    pub watch: Vec<String>,
    /// source tables any change of which re-reads this whole table (rows
    /// that depend on another table's rows, e.g. memberships)
    pub watch_all: Vec<String>,
    /// a column computed by sync rather than the query (presets)
    pub derive: Option<Derive>,
}

/// Columns a preset computes from what the query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derive {
    /// `organization_id` arrives as BetterAuth's `apikey.metadata` (JSON
    /// text) and `_members` as the organizations the key's user belongs to
    /// (comma-separated): the key's organization is the metadata's top-level
    /// `organizationId`, kept only when the user is a member of it.
    BetterAuthKeyOrganization,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Outbox,
    Poll,
    Off,
}

/// No `Debug`: `url` may hold a password.
#[derive(Clone)]
pub struct SyncConfig {
    /// the connection string (from `url` or the environment); never logged
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub tables: Vec<Table>,
    /// the snapshot file written (with `upload`: the working copy uploaded)
    pub output: PathBuf,
    /// `output.upload`: where each new version is put (object, then `.sig`)
    pub upload: Option<url::Url>,
    /// `output.sign_key`: Ed25519 PKCS#8 PEM the upload is signed with
    pub sign_key: Option<PathBuf>,
    pub mode: Mode,
    pub interval: Duration,
    pub full_rebuild_interval: Duration,
    pub admin_listen: SocketAddr,
    pub max_staleness: Duration,
    /// `[usage]`: the usage receiver, when set
    pub usage: Option<UsageConfig>,
}

/// The token column of each token table.
pub fn token_column(table: &str) -> Option<&'static str> {
    match table {
        "api_keys" => Some("key_hash"),
        "sessions" => Some("token_hash"),
        "service_keys" => Some("key_hash"),
        "mcp_tokens" => Some("token_hash"),
        _ => None,
    }
}

impl SyncConfig {
    pub fn load(path: &Path) -> Result<SyncConfig, SyncConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SyncConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        SyncConfig::from_toml_str(&text, base, |k| std::env::var(k).ok())
    }

    pub fn from_toml_str(
        text: &str,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<SyncConfig, SyncConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| SyncConfigError::Parse(e.to_string()))?;
        let url = match (&raw.source.url, &raw.source.url_env) {
            (Some(u), None) => u.clone(),
            (None, Some(var)) => env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid("source.url_env", format!("the environment has no {var}"))
            })?,
            (None, None) => return Err(invalid("source", "names neither url nor url_env")),
            (Some(_), Some(_)) => {
                return Err(invalid("source", "names both url and url_env: pick one"))
            }
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "source.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        let ca_file = (!raw.source.ca_file.is_empty()).then(|| base.join(&raw.source.ca_file));
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();
        let betterauth_schema = (raw.source.preset == "betterauth")
            .then(|| raw.preset.schema.clone().unwrap_or_else(|| "public".into()));
        let usage = raw
            .usage
            .map(|u| usage_config(u, betterauth_schema.as_deref(), &env))
            .transpose()?;
        match raw.source.preset.as_str() {
            "" => {}
            "betterauth" => {
                let schema = raw.preset.schema.as_deref().unwrap_or("public");
                for t in preset::betterauth(
                    schema,
                    raw.preset.plan_query.as_deref(),
                    raw.preset.window_s.unwrap_or(60),
                ) {
                    tables.insert(t.name.clone(), t);
                }
            }
            other => {
                return Err(invalid(
                    "source.preset",
                    format!("unknown preset `{other}` (known: betterauth, or \"\")"),
                ))
            }
        }
        for (name, t) in raw.tables {
            let known = crate::store::snapshot::schema::REQUIRED
                .iter()
                .any(|(n, _)| *n == name);
            if !known {
                return Err(invalid(
                    format!("tables.{name}"),
                    "is not a snapshot table (SPEC §2)",
                ));
            }
            let hash = match (token_column(&name), t.hash.as_deref()) {
                (Some(col), h) => {
                    // no default: a source holding raw hex tokens must not
                    // land in the snapshot as if they were digests
                    let h = h.ok_or_else(|| {
                        invalid(
                            format!("tables.{name}.hash"),
                            "is required for a token table: hex, base64url, base64 (digests) or plain (tokens, hashed by sync)",
                        )
                    })?;
                    let enc = HashEncoding::parse(h).ok_or_else(|| {
                        invalid(
                            format!("tables.{name}.hash"),
                            format!("`{h}`: use hex, base64url, base64 or plain"),
                        )
                    })?;
                    Some((col, enc))
                }
                (None, None) => None,
                (None, Some(_)) => return Err(invalid(
                    format!("tables.{name}.hash"),
                    "only token tables (api_keys, sessions, service_keys, mcp_tokens) have a hash",
                )),
            };
            tables.insert(
                name.clone(),
                Table {
                    name,
                    query: t.query,
                    hash,
                    watch: t.watch,
                    watch_all: t.watch_all,
                    derive: None,
                },
            );
        }
        if tables.is_empty() {
            return Err(invalid(
                "tables",
                "no table is mapped (set source.preset or [tables.*])",
            ));
        }
        let upload = match raw.output.upload {
            Some(u) => {
                let parsed = crate::config::source::parse_url(&u)
                    .map_err(|e| invalid("output.upload", e))?;
                Some(parsed)
            }
            None => None,
        };
        let sign_key = match (&upload, raw.output.sign_key) {
            (Some(_), Some(k)) => {
                let path = base.join(k);
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("output.sign_key", format!("{}: {e}", path.display())))?;
                crate::store::source::signature::signing_key(&pem)
                    .map_err(|e| invalid("output.sign_key", e.to_string()))?;
                Some(path)
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "output.sign_key",
                    "signs what output.upload uploads: set output.upload too",
                ))
            }
            (_, None) => None,
        };
        let output = match (raw.output.path, &upload) {
            (Some(p), _) => base.join(p),
            // the working copy an upload is made from
            (None, Some(_)) => base.join(".keyward-sync.snapshot.db"),
            (None, None) => return Err(invalid("output", "names neither path nor upload")),
        };
        let mode = match raw.follow.mode.as_str() {
            "outbox" => Mode::Outbox,
            "poll" => Mode::Poll,
            "off" => Mode::Off,
            m => {
                return Err(invalid(
                    "follow.mode",
                    format!("`{m}`: use outbox, poll or off"),
                ))
            }
        };
        if raw.follow.interval_ms == 0 {
            return Err(invalid("follow.interval_ms", "must be at least 1"));
        }
        let admin_listen = raw
            .sync
            .admin_listen
            .parse()
            .map_err(|e| invalid("sync.admin_listen", format!("{e}")))?;
        Ok(SyncConfig {
            url,
            ca_file,
            tables: tables.into_values().collect(),
            output,
            upload,
            sign_key,
            mode,
            interval: Duration::from_millis(raw.follow.interval_ms),
            full_rebuild_interval: Duration::from_secs(raw.follow.full_rebuild_interval_s.max(1)),
            admin_listen,
            max_staleness: Duration::from_secs(raw.sync.max_staleness_s),
            usage,
        })
    }

    /// Every source table some mapping watches.
    pub fn watched(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .tables
            .iter()
            .flat_map(|t| t.watch.iter().chain(&t.watch_all).cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
