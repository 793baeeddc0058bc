//! The connection to Redis for each `rate_limit.redis_mode`, behind one
//! call: [`Link::incr`] adds to a set of keys (`INCRBY` + `PEXPIRE` each)
//! and returns their totals. Everything here is the redis crate's: its
//! connection manager (single), its async cluster client and slot function
//! (cluster), its sentinel client (sentinel), its rustls TLS (`rediss://`).
//!
//! * **single** — one `ConnectionManager` (reconnects by itself); the whole
//!   flush is one pipeline.
//! * **cluster** — one `ClusterConnection` (multiplexed, follows `MOVED` and
//!   refreshes its slot map). A flush is split by hash slot
//!   ([`redis::cluster_routing::Slot::for_key`]): one pipeline per slot,
//!   which the client routes to the slot's master, all sent at once. An
//!   organization's `INCRBY` and `PEXPIRE` name the same key, so they always
//!   travel together. Each key's result is its own: a node that fails costs
//!   only the keys it holds.
//! * **sentinel** — the sentinels are asked for the master of
//!   `redis_sentinel_master`, and one multiplexed connection is opened to
//!   it. Any error (the master died, or was demoted and answers `READONLY`)
//!   drops that connection, so the next round asks the sentinels again and
//!   reaches the new master.
//!
//! TLS: a `rediss://` URL connects over rustls with the `ring` provider (the
//! only one compiled in: no process-level default is needed). The roots are
//! `redis_ca_file` when set, else the bundled webpki (Mozilla) roots.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates, TlsMode,
};

use crate::config::{RedisConfig, RedisTopology};

/// One key's share of a flush: its name and how much to add.
pub(super) type Incr = (String, u64);

pub(super) struct Link {
    kind: Kind,
    /// Budget for one round trip (`redis_timeout_ms`).
    timeout: Duration,
    /// Budget for connecting (at least 100 ms: a TLS handshake, or a
    /// sentinel query then a connection, takes more than a round trip).
    connect: Duration,
}

enum Kind {
    Single {
        client: Client,
        conn: Option<ConnectionManager>,
    },
    Cluster {
        client: Box<ClusterClient>,
        conn: Option<ClusterConnection>,
    },
    Sentinel {
        sentinel: Box<SentinelClient>,
        conn: Option<(MultiplexedConnection, ConnectionAddr)>,
        /// Last time the sentinels were asked who the master is.
        checked: Instant,
    },
}

/// How often a connected replica asks the sentinels whether the master
/// changed. A forced failover (`SENTINEL FAILOVER`, or a master cut off but
/// alive) leaves the old master accepting writes until the sentinels demote
/// it, seconds later; writes it takes then are lost when it resyncs.
const RECHECK: Duration = Duration::from_secs(1);

fn certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>, String> {
    let Some(path) = &cfg.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| format!("rate_limit.redis_ca_file: {}: {e}", path.display()))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl Link {
    /// Parse the URLs and read the CA file; never connects.
    pub(super) fn new(cfg: &RedisConfig) -> Result<Link, String> {
        let connect = cfg.timeout.max(Duration::from_millis(100));
        let certs = certificates(cfg)?;
        let err = |e: RedisError| e.to_string();
        let kind = match &cfg.topology {
            RedisTopology::Single { url } => {
                let client = match certs {
                    Some(certs) => Client::build_with_tls(url.as_str(), certs),
                    None => Client::open(url.as_str()),
                }
                .map_err(err)?;
                Kind::Single { client, conn: None }
            }
            RedisTopology::Cluster { nodes } => {
                let mut b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(connect)
                    .response_timeout(cfg.timeout)
                    .retries(2);
                if let Some(certs) = certs {
                    b = b.certs(certs);
                }
                Kind::Cluster {
                    client: Box::new(b.build().map_err(err)?),
                    conn: None,
                }
            }
            RedisTopology::Sentinel { sentinels, master } => {
                let infos = sentinels
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(err)?;
                let first = infos[0].redis_settings().clone();
                let tls = matches!(infos[0].addr(), ConnectionAddr::TcpTls { .. });
                let mut b = SentinelClientBuilder::new(
                    infos.iter().map(|i| i.addr().clone()),
                    master,
                    SentinelServerType::Master,
                )
                .map_err(err)?
                .set_client_to_redis_db(first.db());
                // user:password in the URLs authenticate to the sentinels and
                // to the master; /db selects the master's database.
                if let Some(user) = first.username() {
                    b = b
                        .set_client_to_redis_username(user)
                        .set_client_to_sentinel_username(user);
                }
                if let Some(password) = first.password() {
                    b = b
                        .set_client_to_redis_password(password)
                        .set_client_to_sentinel_password(password);
                }
                if tls {
                    b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                Kind::Sentinel {
                    sentinel: Box::new(b.build().map_err(err)?),
                    conn: None,
                    checked: Instant::now(),
                }
            }
        };
        Ok(Link {
            kind,
            timeout: cfg.timeout,
            connect,
        })
    }

    /// A round trip, connecting first if needed.
    pub(super) async fn ping(&mut self) -> bool {
        let budget = self.connect;
        let ping = async {
            let r: RedisResult<String> = match &mut self.kind {
                Kind::Single { client, conn } => {
                    let mut c = single(client, conn, budget, self.timeout)?;
                    redis::cmd("PING").query_async(&mut c).await
                }
                Kind::Cluster { client, conn } => {
                    let mut c = cluster(client, conn).await?;
                    redis::cmd("PING").query_async(&mut c).await
                }
                Kind::Sentinel { sentinel, conn, .. } => {
                    let mut c = master(sentinel, conn, budget, self.timeout).await?;
                    // A demoted master still answers PING: ask for its role.
                    let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await?;
                    match role {
                        redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master") => {
                            Ok("PONG".into())
                        }
                        _ => Err(RedisError::from((
                            redis::ErrorKind::Client,
                            "not the master (yet): ask the sentinels again",
                        ))),
                    }
                }
            };
            r
        };
        let ok = matches!(tokio::time::timeout(budget, ping).await, Ok(Ok(_)));
        if !ok {
            self.reset();
        }
        ok
    }

    /// Add each `(key, n)` and give the key `ttl_ms`; each key's new total,
    /// in order, or its error. The whole call fits in `redis_timeout_ms`
    /// (plus the connect budget when it must connect first).
    pub(super) async fn incr(&mut self, items: &[Incr], ttl_ms: u64) -> Vec<Result<u64, String>> {
        let timeout = self.timeout;
        let connect = self.connect;
        let failed = |e: &str| items.iter().map(|_| Err(e.to_string())).collect::<Vec<_>>();
        let out = match &mut self.kind {
            Kind::Single { client, conn } => match single(client, conn, connect, timeout) {
                Ok(mut c) => one_pipeline(&mut c, items, ttl_ms, timeout).await,
                Err(e) => failed(&e.to_string()),
            },
            Kind::Cluster { client, conn } => {
                match tokio::time::timeout(connect, cluster(client, conn)).await {
                    Ok(Ok(c)) => by_slot(c, items, ttl_ms, timeout).await,
                    Ok(Err(e)) => failed(&e.to_string()),
                    Err(_) => failed("connecting to the cluster timed out"),
                }
            }
            Kind::Sentinel { sentinel, conn, .. } => {
                match tokio::time::timeout(connect, master(sentinel, conn, connect, timeout)).await
                {
                    Ok(Ok(mut c)) => one_pipeline(&mut c, items, ttl_ms, timeout).await,
                    Ok(Err(e)) => failed(&e.to_string()),
                    Err(_) => failed("asking the sentinels for the master timed out"),
                }
            }
        };
        if out.iter().any(Result::is_err) {
            self.reset();
        }
        out
    }

    /// Sentinel mode, connected: at most every [`RECHECK`], ask the
    /// sentinels who the master is and drop the connection if it is another
    /// server. Called by the synchroniser on every round; a lookup that
    /// fails keeps the connection (the sentinels may be the ones down).
    pub(super) async fn recheck(&mut self) {
        let Kind::Sentinel {
            sentinel,
            conn,
            checked,
        } = &mut self.kind
        else {
            return;
        };
        if conn.is_none() || checked.elapsed() < RECHECK {
            return;
        }
        *checked = Instant::now();
        if let Ok(Ok(client)) =
            tokio::time::timeout(self.connect, sentinel.async_get_client()).await
        {
            let named = client.get_connection_info().addr();
            if conn.as_ref().is_some_and(|(_, addr)| addr != named) {
                tracing::warn!(master = ?named, "redis: the sentinels name another master; reconnecting");
                *conn = None;
            }
        }
    }

    /// After an error: cluster and sentinel connections are made again (the
    /// sentinels asked again for the master); the single connection manager
    /// reconnects by itself.
    fn reset(&mut self) {
        match &mut self.kind {
            Kind::Single { .. } => {}
            Kind::Cluster { conn, .. } => *conn = None,
            Kind::Sentinel { conn, .. } => *conn = None,
        }
    }
}

fn single(
    client: &Client,
    conn: &mut Option<ConnectionManager>,
    connect: Duration,
    timeout: Duration,
) -> RedisResult<ConnectionManager> {
    if let Some(c) = conn {
        return Ok(c.clone());
    }
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    let c = ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
    *conn = Some(c.clone());
    Ok(c)
}

async fn cluster(
    client: &ClusterClient,
    conn: &mut Option<ClusterConnection>,
) -> RedisResult<ClusterConnection> {
    if let Some(c) = conn {
        return Ok(c.clone());
    }
    let c = client.get_async_connection().await?;
    *conn = Some(c.clone());
    Ok(c)
}

async fn master(
    sentinel: &mut SentinelClient,
    conn: &mut Option<(MultiplexedConnection, ConnectionAddr)>,
    connect: Duration,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    if let Some((c, _)) = conn {
        return Ok(c.clone());
    }
    let client = sentinel.async_get_client().await?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(timeout));
    let c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let addr = client.get_connection_info().addr().clone();
    tracing::info!(master = ?addr, "redis: connected to the master the sentinels name");
    *conn = Some((c.clone(), addr));
    Ok(c)
}

fn pipeline(items: &[Incr], ttl_ms: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (key, n) in items {
        pipe.cmd("INCRBY").arg(key).arg(*n);
        pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
    }
    pipe
}

async fn one_pipeline<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    items: &[Incr],
    ttl_ms: u64,
    timeout: Duration,
) -> Vec<Result<u64, String>> {
    let pipe = pipeline(items, ttl_ms);
    let e = match tokio::time::timeout(timeout, pipe.query_async::<Vec<u64>>(conn)).await {
        Ok(Ok(totals)) if totals.len() == items.len() => {
            return totals.into_iter().map(Ok).collect()
        }
        Ok(Ok(_)) => "unexpected pipeline reply".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    items.iter().map(|_| Err(e.clone())).collect()
}

/// One pipeline per hash slot, sent concurrently; each reaches the slot's
/// master through the cluster client's own routing.
async fn by_slot(
    conn: ClusterConnection,
    items: &[Incr],
    ttl_ms: u64,
    timeout: Duration,
) -> Vec<Result<u64, String>> {
    let mut groups: std::collections::HashMap<Slot, Vec<usize>> = Default::default();
    for (i, (key, _)) in items.iter().enumerate() {
        groups.entry(Slot::for_key(key)).or_default().push(i);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (_, idx) in groups {
        let part: Vec<Incr> = idx.iter().map(|&i| items[i].clone()).collect();
        let mut conn = conn.clone();
        tasks.spawn(async move {
            let totals = one_pipeline(&mut conn, &part, ttl_ms, timeout).await;
            (idx, totals)
        });
    }
    let mut out: Vec<Result<u64, String>> = items.iter().map(|_| Err("not sent".into())).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((idx, totals)) = done {
            for (i, total) in idx.into_iter().zip(totals) {
                out[i] = total;
            }
        }
    }
    out
}
