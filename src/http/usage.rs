//! Usage reported back (SPEC §8.4): per API key and MCP token (by id, never
//! a hash), the requests keyward forwarded and refused and the time of the
//! last one, pushed to `usage.push_url` every `push_interval_ms`.
//!
//! * Counting ([`Usage::record`]) happens when a request's line is logged,
//!   after the answer: it never delays one. Counts live in [`SHARDS`] maps,
//!   each behind its own mutex (no global lock; two requests wait on each
//!   other only when their key ids hash to the same shard), holding at most
//!   `max_keys` keys together (a new key past that is dropped and counted in
//!   `usage_dropped_total`).
//! * The pusher ([`Usage::run`]) drains the shards into its own pending map
//!   every interval and POSTs the keys used since the previous successful
//!   push. A failed push keeps them pending: the next interval's counts are
//!   merged in and the push is retried with backoff (1 s doubling, at most
//!   the interval), so nothing is lost while the receiver is down unless
//!   more than `max_keys` distinct keys wait — then the ones used longest
//!   ago are dropped and counted.
//! * Delivery is at least once: a push whose answer is lost is sent again
//!   with the next one's counts.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::Serialize;

use crate::config::UsageConfig;

/// Independent maps the counts are spread over by key id.
pub const SHARDS: usize = 16;

/// Most keys in one POST (about 150 bytes each: ~3 MB, under the 8 MiB a
/// `keyward sync` receiver takes); more pending keys go in several POSTs.
pub const MAX_PUSH_KEYS: usize = 20_000;

/// Longest one push may take before it counts as failed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which table a key is from (`"kind"` in a push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    ApiKey,
    McpToken,
}

/// One key's counts since the last successful push.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    organization_id: Arc<str>,
    forwarded: u64,
    denied: u64,
    last_used: i64,
}

impl Counts {
    fn merge(&mut self, other: Counts) {
        self.forwarded += other.forwarded;
        self.denied += other.denied;
        if other.last_used >= self.last_used {
            self.last_used = other.last_used;
            self.organization_id = other.organization_id;
        }
    }
}

type Map = HashMap<(KeyKind, Arc<str>), Counts>;

/// One key in a push.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PushedKey {
    pub id: String,
    pub kind: KeyKind,
    pub organization_id: String,
    pub forwarded: u64,
    pub denied: u64,
    pub last_used: i64,
}

/// Everything pending, to be sent in one or more POSTs.
#[derive(Debug)]
pub struct Push {
    pub replica: String,
    pub interval: [i64; 2],
    pub keys: Vec<PushedKey>,
}

/// The body of one POST (SPEC §8.4).
#[derive(Debug, Serialize)]
struct Body<'a> {
    replica: &'a str,
    interval: [i64; 2],
    keys: &'a [PushedKey],
}

/// `usage_pushes_total{result}`, `usage_dropped_total`, `usage_keys_pending`.
#[derive(Clone)]
pub struct UsageMetrics {
    pub pushes: IntCounterVec,
    pub dropped: IntCounter,
    pub pending: IntGauge,
}

/// Per-key usage, counted on the request path and pushed in the background.
pub struct Usage {
    enabled: bool,
    cfg: UsageConfig,
    /// `replica` in every push
    replica: String,
    shards: [Mutex<Map>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    /// keys in the shards (bounded by `max_keys`)
    live: AtomicUsize,
    max_keys: usize,
    metrics: UsageMetrics,
    /// what failed pushes left, merged into the next one (the pusher's)
    pending: Mutex<Map>,
    /// start of the interval the pending counts cover
    since: Mutex<i64>,
    stopping: AtomicBool,
}

impl Usage {
    pub fn new(cfg: &UsageConfig, replica: &str, metrics: UsageMetrics, now: i64) -> Arc<Usage> {
        let max_keys = usize::try_from(cfg.max_keys).unwrap_or(usize::MAX).max(1);
        Arc::new(Usage {
            enabled: cfg.push_url.is_some(),
            cfg: cfg.clone(),
            replica: replica.to_string(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
            live: AtomicUsize::new(0),
            max_keys,
            metrics,
            pending: Mutex::new(HashMap::new()),
            since: Mutex::new(now),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Count one request of key `id` (forwarded or refused by keyward) at
    /// `now`. A no-op without `usage.push_url`.
    pub fn record(&self, kind: KeyKind, id: &Arc<str>, org: &Arc<str>, forwarded: bool, now: i64) {
        if !self.enabled {
            return;
        }
        let shard = &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind, id.clone());
        let counts = match map.get_mut(&key) {
            Some(c) => c,
            None if self.live.fetch_add(1, Ordering::Relaxed) >= self.max_keys => {
                self.live.fetch_sub(1, Ordering::Relaxed);
                drop(map);
                self.metrics.dropped.inc();
                return;
            }
            None => map.entry(key).or_insert(Counts {
                organization_id: org.clone(),
                forwarded: 0,
                denied: 0,
                last_used: now,
            }),
        };
        if forwarded {
            counts.forwarded += 1;
        } else {
            counts.denied += 1;
        }
        if now >= counts.last_used {
            counts.last_used = now;
            if counts.organization_id != *org {
                counts.organization_id = org.clone();
            }
        }
    }

    /// Move every shard's counts into the pending map (bounded by
    /// `max_keys`: the keys used longest ago are dropped and counted), and
    /// build the push of everything pending, or None when nothing is.
    pub fn prepare(&self, replica: &str, now: i64) -> Option<Push> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for shard in &self.shards {
            let drained = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            self.live.fetch_sub(drained.len(), Ordering::Relaxed);
            for (k, c) in drained {
                match pending.get_mut(&k) {
                    Some(p) => p.merge(c),
                    None => {
                        pending.insert(k, c);
                    }
                }
            }
        }
        if pending.len() > self.max_keys {
            let over = pending.len() - self.max_keys;
            let mut by_age: Vec<(i64, (KeyKind, Arc<str>))> = pending
                .iter()
                .map(|(k, c)| (c.last_used, k.clone()))
                .collect();
            by_age.select_nth_unstable_by_key(over - 1, |(t, _)| *t);
            for (_, k) in by_age.into_iter().take(over) {
                pending.remove(&k);
            }
            self.metrics.dropped.inc_by(over as u64);
        }
        self.metrics.pending.set(pending.len() as i64);
        if pending.is_empty() {
            return None;
        }
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<PushedKey> = pending
            .iter()
            .map(|((kind, id), c)| PushedKey {
                id: id.to_string(),
                kind: *kind,
                organization_id: c.organization_id.to_string(),
                forwarded: c.forwarded,
                denied: c.denied,
                last_used: c.last_used,
            })
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Some(Push {
            replica: replica.to_string(),
            interval: [since, now.max(since)],
            keys,
        })
    }

    /// The push built by [`prepare`](Self::prepare) was accepted: what it
    /// carried is no longer pending (counts recorded since stay).
    pub fn delivered(&self, push: &Push) {
        self.delivered_keys(&push.keys);
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = push.interval[1];
    }

    /// Some keys of a push were accepted (one POST of several).
    fn delivered_keys(&self, keys: &[PushedKey]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            let key = (k.kind, Arc::<str>::from(k.id.as_str()));
            if let Some(c) = pending.get_mut(&key) {
                c.forwarded -= k.forwarded.min(c.forwarded);
                c.denied -= k.denied.min(c.denied);
                if c.forwarded == 0 && c.denied == 0 {
                    pending.remove(&key);
                }
            }
        }
        self.metrics.pending.set(pending.len() as i64);
    }

    /// Push every interval until [`stop`](Self::stop); retry failures with
    /// backoff. Runs on a background runtime, never a request's.
    pub async fn run(self: Arc<Self>) {
        let Some(client) = self.client() else {
            return;
        };
        let cfg = &self.cfg;
        let mut wait = cfg.push_interval;
        let mut backoff = Duration::from_secs(1);
        while !self.stopping.load(Ordering::Acquire) {
            tokio::time::sleep(wait).await;
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            match self.push_once(&client).await {
                Ok(()) => {
                    wait = cfg.push_interval;
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "usage: push failed; counts kept for the next one");
                    wait = backoff.min(cfg.push_interval);
                    backoff = (backoff * 2).min(cfg.push_interval.max(Duration::from_secs(1)));
                }
            }
        }
    }

    fn client(&self) -> Option<reqwest::Client> {
        self.cfg.push_url.as_ref()?;
        // reqwest is built without a rustls provider: ring, as everywhere
        // else in keyward (a no-op when one is installed already)
        let _ = rustls::crypto::ring::default_provider().install_default();
        match reqwest::Client::builder().timeout(PUSH_TIMEOUT).build() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "usage: cannot build the push client");
                None
            }
        }
    }

    /// The last push at shutdown (the caller bounds how long it may take).
    pub async fn flush(&self) -> Result<(), String> {
        self.stop();
        match self.client() {
            Some(client) => self.push_once(&client).await,
            None => Ok(()),
        }
    }

    /// One push of everything pending (nothing sent when nothing is).
    pub async fn push_once(&self, client: &reqwest::Client) -> Result<(), String> {
        let cfg = &self.cfg;
        let Some(url) = &cfg.push_url else {
            return Ok(());
        };
        let now = crate::clock::now_unix();
        let Some(push) = self.prepare(&self.replica, now) else {
            return Ok(());
        };
        for chunk in push.keys.chunks(MAX_PUSH_KEYS) {
            let body = Body {
                replica: &push.replica,
                interval: push.interval,
                keys: chunk,
            };
            let result = self.post(client, url, &body).await;
            let label = if result.is_ok() { "ok" } else { "failed" };
            self.metrics.pushes.with_label_values(&[label]).inc();
            result?;
            self.delivered_keys(chunk);
        }
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = push.interval[1];
        Ok(())
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        url: &url::Url,
        body: &Body<'_>,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let mut req = client
            .post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.cfg.push_token {
            let mut value =
                http::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), token.expose()].concat())
                    .map_err(|_| "usage.push_token_env: not a header value".to_string())?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            // the URL may carry credentials: never printed
            Ok(resp) => Err(format!("receiver answered {}", resp.status().as_u16())),
            Err(e) => Err(describe(&e)),
        }
    }

    /// Stop the loop after its current wait.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// A send error without the URL (which may hold credentials).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(max_keys: u64) -> Arc<Usage> {
        let cfg = UsageConfig {
            push_url: Some("http://127.0.0.1:1/v1/usage".parse().unwrap()),
            push_interval: Duration::from_secs(10),
            push_token: None,
            max_keys,
        };
        let metrics = UsageMetrics {
            pushes: IntCounterVec::new(prometheus::Opts::new("p", "p"), &["result"]).unwrap(),
            dropped: IntCounter::new("d", "d").unwrap(),
            pending: IntGauge::new("g", "g").unwrap(),
        };
        Usage::new(&cfg, "r", metrics, 100)
    }

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn counts_are_merged_until_delivered() {
        let u = usage(100);
        let org = id("org_a");
        u.record(KeyKind::ApiKey, &id("k1"), &org, true, 101);
        u.record(KeyKind::ApiKey, &id("k1"), &org, false, 105);
        u.record(KeyKind::McpToken, &id("t1"), &org, true, 103);
        let first = u.prepare("r", 110).unwrap();
        assert_eq!(first.interval, [100, 110]);
        assert_eq!(first.keys.len(), 2);
        let k1 = &first.keys[0];
        assert_eq!((k1.forwarded, k1.denied, k1.last_used), (1, 1, 105));
        // the push failed: the next one carries both intervals' counts
        u.record(KeyKind::ApiKey, &id("k1"), &org, true, 111);
        let second = u.prepare("r", 120).unwrap();
        assert_eq!(second.interval, [100, 120]);
        let k1 = second.keys.iter().find(|k| k.id == "k1").unwrap();
        assert_eq!((k1.forwarded, k1.denied, k1.last_used), (2, 1, 111));
        u.delivered(&second);
        assert!(u.prepare("r", 130).is_none(), "nothing left once delivered");
        u.record(KeyKind::ApiKey, &id("k1"), &org, true, 131);
        let third = u.prepare("r", 140).unwrap();
        assert_eq!(third.interval, [120, 140]);
        assert_eq!(third.keys[0].forwarded, 1);
    }

    #[test]
    fn counts_recorded_during_a_push_are_not_lost() {
        let u = usage(100);
        let org = id("o");
        u.record(KeyKind::ApiKey, &id("k"), &org, true, 101);
        let push = u.prepare("r", 110).unwrap();
        // a request counted while the push is on the wire, then a retry
        // folds it into the pending map before the answer arrives
        u.record(KeyKind::ApiKey, &id("k"), &org, true, 112);
        let _ = u.prepare("r", 113);
        u.delivered(&push);
        let next = u.prepare("r", 120).unwrap();
        assert_eq!(next.keys[0].forwarded, 1);
    }

    #[test]
    fn past_max_keys_the_oldest_are_dropped_and_counted() {
        let u = usage(20);
        let org = id("o");
        for i in 0..20 {
            u.record(
                KeyKind::ApiKey,
                &id(&format!("k{i:02}")),
                &org,
                true,
                100 + i,
            );
        }
        let _ = u.prepare("r", 200); // failed push: all 20 wait
        for i in 20..30 {
            u.record(
                KeyKind::ApiKey,
                &id(&format!("k{i:02}")),
                &org,
                true,
                100 + i,
            );
        }
        let push = u.prepare("r", 300).unwrap();
        assert!(push.keys.len() <= 20, "{}", push.keys.len());
        let dropped = u.metrics.dropped.get();
        assert_eq!(push.keys.len() as u64 + dropped, 30);
        // the newest keys are kept
        assert!(push.keys.iter().any(|k| k.id == "k29"));
        assert!(!push.keys.iter().any(|k| k.id == "k00"));
    }

    #[test]
    fn off_without_a_push_url() {
        let cfg = UsageConfig {
            push_url: None,
            push_interval: Duration::from_secs(10),
            push_token: None,
            max_keys: 10,
        };
        let u = Usage::new(&cfg, "r", usage(1).metrics.clone(), 0);
        u.record(KeyKind::ApiKey, &id("k"), &id("o"), true, 1);
        assert!(u.prepare("r", 2).is_none());
    }
}
