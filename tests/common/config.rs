//! The typed config builder: [`Opts`] holds keyward's settings as one TOML
//! table, set by dotted name or merged from TOML fragments, and renders one
//! document in which every table appears once.

use std::net::SocketAddr;
use std::path::Path;

use super::SECRET;

/// How keyward is started: the upstream, the settings, the routes, the
/// environment.
pub struct Opts {
    pub upstream: SocketAddr,
    /// Settings beyond the ones the harness writes (listen addresses,
    /// upstream address, snapshot path); see [`Opts::set`] and [`Opts::toml`].
    pub config: toml::Table,
    /// A TOML fragment merged into [`Opts::config`] when keyward starts (for
    /// callers written before the typed builder; prefer [`Opts::toml`]).
    pub extra: String,
    /// `[[route]]` tables, as TOML.
    pub routes: String,
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` to answer 200 before [`super::Keyward::start`] returns.
    pub wait_ready: bool,
    /// `snapshot.poll_interval_ms`
    pub poll_ms: u64,
    /// `server.threads`
    pub threads: usize,
}

impl Opts {
    pub fn new(upstream: SocketAddr) -> Opts {
        Opts {
            upstream,
            config: toml::Table::new(),
            extra: String::new(),
            routes: DEFAULT_ROUTES.into(),
            env: vec![("BETTER_AUTH_SECRET".into(), SECRET.into())],
            wait_ready: true,
            poll_ms: 100,
            threads: 2,
        }
    }

    /// Set one setting by its dotted name:
    /// `set("upstream.read_timeout_ms", 300)`,
    /// `set("server.trusted_proxies", vec!["127.0.0.1/32"])`,
    /// `set("plans.tiny.requests_per_window", 2)`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Opts {
        set_key(&mut self.config, key, value);
        self
    }

    /// Merge a TOML fragment (whole tables: `"[mcp]\nallowed_origins = […]"`);
    /// a key set again replaces the earlier value.
    pub fn toml(mut self, fragment: &str) -> Opts {
        merge(&mut self.config, parse(fragment));
        self
    }

    /// Replace the `[[route]]` tables.
    pub fn routes(mut self, routes: &str) -> Opts {
        self.routes = routes.into();
        self
    }

    /// `plans.free` high enough that limits never interfere, unless the
    /// caller set that plan itself.
    pub fn generous_plan(mut self) -> Opts {
        if get_key(&self.config, "plans.free.requests_per_window").is_none() {
            set_key(
                &mut self.config,
                "plans.free.requests_per_window",
                GENEROUS_PLAN,
            );
        }
        self
    }

    /// The whole config document for keyward listening on `addr` and
    /// `admin`, serving `snapshot`.
    pub fn document(&self, snapshot: &Path, addr: SocketAddr, admin: SocketAddr) -> toml::Table {
        let mut doc = self.config.clone();
        if !self.extra.trim().is_empty() {
            merge(&mut doc, parse(&self.extra));
        }
        set_key(&mut doc, "server.listen", addr.to_string());
        set_key(&mut doc, "server.admin_listen", admin.to_string());
        set_key(&mut doc, "server.threads", self.threads as i64);
        set_key(&mut doc, "upstream.address", self.upstream.to_string());
        set_key(
            &mut doc,
            "snapshot.path",
            snapshot.to_string_lossy().into_owned(),
        );
        set_key(&mut doc, "snapshot.poll_interval_ms", self.poll_ms as i64);
        // each test's own hand-over socket: a SIGQUIT in one test must not
        // reach another test's upgrading process
        if get_key(&doc, "server.upgrade_sock").is_none() {
            let dir = snapshot.parent().unwrap_or(Path::new("."));
            set_key(
                &mut doc,
                "server.upgrade_sock",
                dir.join("upgrade.sock").to_string_lossy().into_owned(),
            );
        }
        merge(&mut doc, parse(&self.routes));
        doc
    }
}

/// `requests_per_window` of [`Opts::generous_plan`].
pub const GENEROUS_PLAN: i64 = 1_000_000;

/// One TOML document, each table once.
pub fn render(doc: &toml::Table) -> String {
    toml::to_string(doc).unwrap()
}

/// Set `dotted` (`table.sub.key`) in `doc`, creating the tables on the way.
pub fn set_key(doc: &mut toml::Table, dotted: &str, value: impl Into<toml::Value>) {
    let (tables, key) = match dotted.rsplit_once('.') {
        Some((t, k)) => (t.split('.').collect::<Vec<_>>(), k),
        None => (Vec::new(), dotted),
    };
    let mut table = doc;
    for name in tables {
        table = table
            .entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("`{name}` in `{dotted}` is not a table"));
    }
    table.insert(key.to_string(), value.into());
}

/// The value at `dotted`, if set.
pub fn get_key<'a>(doc: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = doc.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn parse(fragment: &str) -> toml::Table {
    fragment
        .parse()
        .unwrap_or_else(|e| panic!("bad TOML in a test config ({e}):\n{fragment}"))
}

/// Merge `from` into `into`: tables key by key, anything else replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The route table the tests run with (`tests/routes.toml`, shared with the
/// decision core's unit tests).
pub const DEFAULT_ROUTES: &str = include_str!("../routes.toml");
