//! The source: Postgres through tokio-postgres, TLS over rustls (ring) per
//! the URL's `sslmode`, and result rows as the few values a snapshot holds.
//!
//! `sslmode`: `disable` → plain TCP; `prefer` → TLS when the server offers
//! it; absent → `require` (stricter than libpq's `prefer` default); `require`, `verify-ca`, `verify-full` → TLS or no
//! connection. Whenever TLS is used the certificate is verified (against
//! `source.ca_file`, else the webpki roots) and so is the host name:
//! stricter than libpq's `require`, on purpose (an auth proxy's source of
//! truth is not a place for an unverified peer).

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

/// One value of a snapshot row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("source.url: {0}")]
    Url(String),
    #[error("source.ca_file: {0}")]
    Ca(String),
    #[error("column `{column}` has type {ty}: cast it in the query (::text, ::bigint)")]
    Type { column: String, ty: String },
}

/// The messages a connection yields (notifications among them); polling
/// it drives the connection.
pub type Messages = std::pin::Pin<
    Box<
        dyn futures_core::Stream<Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>
            + Send,
    >,
>;

/// Connect and hand back the connection's message stream (which must be
/// polled for the client to make progress).
pub async fn connect_raw(
    config: &tokio_postgres::Config,
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<(Client, Messages), PgError> {
    if sslmode(url) == "disable" {
        let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
        let messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        return Ok((client, Box::pin(messages)));
    }
    let (client, mut conn) = config.connect(tls(ca_file)?).await?;
    let messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    Ok((client, Box::pin(messages)))
}

impl From<tokio_postgres::Error> for PgError {
    /// The server's own message (`db error` alone says nothing), or the
    /// client's error with its cause (a refused connection, TLS).
    fn from(e: tokio_postgres::Error) -> PgError {
        if let Some(db) = e.as_db_error() {
            let mut m = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            return PgError::Postgres(m);
        }
        let mut m = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            m.push_str(&format!(": {s}"));
            source = s.source();
        }
        PgError::Postgres(m)
    }
}

/// Connect; the connection's driver runs on the current runtime. The URL
/// is never logged (it may hold a password).
pub async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<Client, PgError> {
    use futures_util::StreamExt;
    let config: tokio_postgres::Config = normalize_url(url)
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    let (client, mut messages) = connect_raw(&config, url, ca_file).await?;
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            if let Err(e) = m {
                tracing::warn!(error = %e, "postgres connection ended");
                return;
            }
        }
    });
    Ok(client)
}

/// The URL's `sslmode`; absent: `require` (not libpq's `prefer`, which an
/// active attacker turns into plain text by refusing TLS). tokio-postgres reads
/// disable/prefer/require itself; verify-ca and verify-full are require
/// here, since every TLS connection verifies.
fn sslmode(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "sslmode")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| "require".into())
}

/// A URL tokio-postgres accepts: `verify-ca`/`verify-full` become `require`.
pub fn normalize_url(url: &str) -> String {
    let u = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    if u.contains("sslmode=") {
        u
    } else if u.contains('?') {
        format!("{u}&sslmode=require")
    } else {
        format!("{u}?sslmode=require")
    }
}

fn tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| PgError::Ca(format!("{}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| PgError::Ca(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(PgError::Ca(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| PgError::Ca(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PgError::Ca(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A row's columns as snapshot values: integers, booleans (0/1), text,
/// timestamps (unix seconds), JSON (its text). Anything else must be cast
/// in the query: the error names the column.
pub fn values(row: &Row) -> Result<Vec<Value>, PgError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP) {
            row.try_get::<_, Option<SystemTime>>(i)?.map(|t| {
                Value::Int(match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => d.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
                })
            })
        } else if matches!(*ty, Type::JSON | Type::JSONB) {
            row.try_get::<_, Option<serde_json::Value>>(i)?
                .map(|v| Value::Text(v.to_string()))
        } else {
            return Err(PgError::Type {
                column: col.name().to_string(),
                ty: ty.name().to_string(),
            });
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}
