//! `output.upload` (SPEC §9): each new version of the snapshot put to an
//! object store (the stores of `snapshot.source`: s3, gs, az, http(s)),
//! object first, then its `.sig` when `output.sign_key` is set — a keyward
//! reading the pair refuses the new object until its signature lands, and
//! never serves an unsigned one.

use std::path::Path;

use base64::Engine as _;
use object_store::{ObjectStoreExt, PutPayload};

use super::config::SyncConfig;

/// Put the file at `cfg.output` to `cfg.upload` (and its signature).
pub async fn upload(cfg: &SyncConfig) -> Result<u64, String> {
    let Some(url) = &cfg.upload else {
        return Ok(0);
    };
    let (store, object) = crate::store::source::object_store_for(url)?;
    let bytes = read(&cfg.output)?;
    let len = bytes.len() as u64;
    let signature = match &cfg.sign_key {
        Some(key) => {
            let pem =
                std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
            let pair =
                crate::store::source::signature::signing_key(&pem).map_err(|e| e.to_string())?;
            Some(base64::engine::general_purpose::STANDARD.encode(pair.sign(&bytes).as_ref()))
        }
        None => None,
    };
    let where_ = crate::store::source::redacted(url);
    store
        .put(&object, PutPayload::from(bytes))
        .await
        .map_err(|e| format!("upload to {where_}: {e}"))?;
    if let Some(sig) = signature {
        let sig_path = object_store::path::Path::from(format!("{object}.sig"));
        store
            .put(&sig_path, PutPayload::from(format!("{sig}\n").into_bytes()))
            .await
            .map_err(|e| format!("upload of the signature to {where_}.sig: {e}"))?;
    }
    tracing::info!(to = %where_, bytes = len, signed = cfg.sign_key.is_some(), "snapshot uploaded");
    Ok(len)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}
