//! Downstream certificate rotation (SPEC §8.3): the pair named by
//! `[server.tls] cert, key` is served through a rustls resolver that holds
//! the current pair; it is re-read on SIGHUP and when either file changes
//! on disk (checked every [`CHECK_EVERY`]; a rename over them counts). New
//! handshakes get the new pair, open connections keep theirs. A pair that
//! does not load, or whose key does not match the certificate, is refused
//! with a log line and the old one kept (`tls_reloads_total{result}`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are checked for a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The served pair, swapped whole.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// unix seconds of the served certificate's notAfter
    not_after: AtomicI64,
    /// (dev, inode, size, mtime) of both files when last read
    seen: Mutex<[(u64, u64, u64, i64); 2]>,
    reloads: IntCounterVec,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .finish()
    }
}

fn stamp(path: &Path) -> (u64, u64, u64, i64) {
    std::fs::metadata(path)
        .map(|m| {
            (
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
            )
        })
        .unwrap_or_default()
}

/// Read and check a pair: the chain, the key, that they belong together,
/// and the leaf's notAfter.
pub fn load(cert: &Path, key: &Path) -> Result<(CertifiedKey, i64), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no PEM certificate", cert.display()));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .1
        .validity()
        .not_after
        .timestamp();
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok((certified, not_after))
}

impl CertStore {
    /// Load the pair at start (an error here is a startup error).
    pub fn open(cert: &Path, key: &Path, reloads: IntCounterVec) -> Result<Arc<CertStore>, String> {
        let (pair, not_after) = load(cert, key)?;
        Ok(Arc::new(CertStore {
            seen: Mutex::new([stamp(cert), stamp(key)]),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            not_after: AtomicI64::new(not_after),
            reloads,
        }))
    }

    /// Re-read the pair; keep the served one if the new one is refused.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        match load(&self.cert, &self.key) {
            Ok((pair, not_after)) => {
                self.current.store(Arc::new(pair));
                self.not_after.store(not_after, Ordering::Release);
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
                self.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.cert.display(), not_after, "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                // remembered, so a broken file is reported once, not every check
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
                self.reloads.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "TLS certificate reload refused; keeping the served pair");
                Err(e)
            }
        }
    }

    /// Reload when either file changed since it was last read.
    pub fn check(&self) {
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        let changed = *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamps;
        if changed {
            let _ = self.reload();
        }
    }

    /// Check the files every [`CHECK_EVERY`] on a thread of its own.
    pub fn watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("keyward-tls".into())
            .spawn(move || loop {
                std::thread::sleep(CHECK_EVERY);
                match me.upgrade() {
                    Some(s) => s.check(),
                    None => return,
                }
            });
    }

    /// Seconds until the served certificate's notAfter (negative: expired).
    pub fn expires_in(&self, now: i64) -> i64 {
        self.not_after.load(Ordering::Acquire) - now
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
