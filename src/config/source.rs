//! `snapshot.source` and `snapshot.verify_key` as the config reads them
//! (SPEC §8.2): the URL a source may name and the Ed25519 public key
//! snapshots must be signed with. Fetching and verifying is the store's
//! (`store::source`).

use std::path::Path;

use base64::Engine as _;

/// `url` parsed, if it can name a source (for config errors and `store::source::Source::new`).
pub fn parse_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(
        parsed.scheme(),
        "http" | "https" | "s3" | "gs" | "az" | "azure" | "abfs" | "abfss"
    ) {
        return Err("scheme must be http, https, s3, gs or az".into());
    }
    if parsed.path().trim_matches('/').is_empty() {
        return Err("names no object (a path after the host or bucket)".into());
    }
    Ok(parsed)
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{0}")]
    Key(String),
    #[error("the signature is not the base64 of 64 bytes")]
    Malformed,
    #[error("the signature does not verify with snapshot.verify_key")]
    Invalid,
}

/// An Ed25519 public key snapshots must be signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey([u8; 32]);

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerifyKey({})",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

/// `value` as base64 in the standard or the URL-safe alphabet (a JWK's `x`),
/// padding optional (SPEC §8.2). A value mixing both alphabets is neither.
fn decode_key_base64(value: &str) -> Option<Vec<u8>> {
    use base64::alphabet;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [
        GeneralPurpose::new(&alphabet::STANDARD, config),
        GeneralPurpose::new(&alphabet::URL_SAFE, config),
    ]
    .iter()
    .find_map(|engine| engine.decode(value).ok())
}

/// The DER inside a PEM block with `label` (`-----BEGIN label-----`).
pub(crate) fn pem_der(text: &str, label: &str) -> Result<Vec<u8>, SignatureError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| SignatureError::Key(format!("no `{begin}` block")))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| SignatureError::Key(format!("no `{end}`")))?
        + start;
    let b64: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| SignatureError::Key(format!("PEM body: {e}")))
}

impl VerifyKey {
    /// `value`: base64 of the raw key, or a path (relative to `base`) of a
    /// PEM public key.
    pub fn parse(value: &str, base: &Path) -> Result<VerifyKey, SignatureError> {
        let value = value.trim();
        if let Some(raw) = decode_key_base64(value) {
            if let Ok(key) = <[u8; 32]>::try_from(raw.as_slice()) {
                return Ok(VerifyKey(key));
            }
        }
        let path = base.join(value);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            SignatureError::Key(format!(
                "neither the base64 of a 32-byte key nor a readable PEM file ({}: {e})",
                path.display()
            ))
        })?;
        let der = pem_der(&text, "PUBLIC KEY")?;
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => Ok(VerifyKey(key.try_into().unwrap())),
            _ => Err(SignatureError::Key(format!(
                "{} is not an Ed25519 public key",
                path.display()
            ))),
        }
    }

    pub fn from_raw(key: [u8; 32]) -> VerifyKey {
        VerifyKey(key)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
