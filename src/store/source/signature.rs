//! Signed snapshots (SPEC §8.2): Ed25519 over the file's bytes, detached.
//!
//! * `keyward snapshot sign --key PRIVATE.pem PATH` writes `PATH.sig`: the
//!   base64 of the 64-byte signature. The key is PKCS#8 PEM as `openssl
//!   genpkey -algorithm ed25519` writes it, so a control plane in any
//!   language (or `openssl pkeyutl -sign -rawin`) produces the same file.
//! * `snapshot.verify_key`: the base64 (standard or URL-safe alphabet,
//!   padding optional) of the raw 32-byte public key, or the
//!   path of a PEM public key (`openssl pkey -pubout`). With it, a version
//!   from the source is served only when its `.sig` verifies — a writable
//!   bucket is then not a way to mint keys.

use std::path::Path;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use crate::config::source::pem_der;
pub use crate::config::source::{SignatureError, VerifyKey};

impl VerifyKey {
    /// Whether `signature` is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, self.bytes())
            .verify(message, signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// A `.sig` file's content: base64 of 64 bytes (surrounding whitespace ok).
pub fn decode_signature(text: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let text = std::str::from_utf8(text).map_err(|_| SignatureError::Malformed)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| SignatureError::Malformed)?;
    if sig.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    Ok(sig)
}

/// A signing key read from PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn signing_key(pem: &str) -> Result<Ed25519KeyPair, SignatureError> {
    let der = pem_der(pem, "PRIVATE KEY")?;
    // openssl writes PKCS#8 v1 (no public key inside): ring's "maybe
    // unchecked" reader accepts it and derives the public key.
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| SignatureError::Key(format!("not an Ed25519 PKCS#8 private key: {e}")))
}

/// `keyward snapshot sign`: write `PATH.sig` for the file at `path`; returns
/// the public key (base64) for `snapshot.verify_key`.
pub fn sign_file(key_pem: &Path, path: &Path) -> Result<String, String> {
    use ring::signature::KeyPair;
    let pem = std::fs::read_to_string(key_pem)
        .map_err(|e| format!("cannot read {}: {e}", key_pem.display()))?;
    let key = signing_key(&pem).map_err(|e| format!("{}: {e}", key_pem.display()))?;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // SAFETY: read-only mapping of a file the control plane has finished
    // writing; it must not change while it is signed (a snapshot published
    // by rename never does).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
    let sig = key.sign(&map);
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".sig");
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    );
    let tmp = std::path::PathBuf::from(format!("{}.tmp", Path::new(&sig_path).display()));
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &sig_path)
        .map_err(|e| format!("cannot write {}: {e}", Path::new(&sig_path).display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test 1's key in the PEM openssl writes (PKCS#8 v1).
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn sign_then_verify_with_a_pem_or_raw_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, PRIVATE).unwrap();
        std::fs::write(dir.path().join("pub.pem"), PUBLIC).unwrap();
        let file = dir.path().join("snapshot.db");
        std::fs::write(&file, b"the snapshot's bytes").unwrap();
        let public = sign_file(&key, &file).unwrap();
        assert_eq!(public, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
        let sig =
            decode_signature(&std::fs::read(dir.path().join("snapshot.db.sig")).unwrap()).unwrap();
        for v in [public.as_str(), "pub.pem"] {
            let k = VerifyKey::parse(v, dir.path()).unwrap();
            k.verify(b"the snapshot's bytes", &sig).unwrap();
            assert!(k.verify(b"the snapshot's bytes!", &sig).is_err());
        }
        // RFC 8032 test 1: the empty message
        let empty = signing_key(PRIVATE).unwrap().sign(b"");
        assert_eq!(
            hex::encode(empty.as_ref()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn verify_key_in_either_base64_alphabet_with_or_without_padding() {
        let dir = tempfile::tempdir().unwrap();
        let standard = VerifyKey::parse("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", dir.path());
        let standard = standard.unwrap();
        // as a JWK's `x` carries it: URL-safe, no padding
        for v in [
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
        ] {
            assert_eq!(VerifyKey::parse(v, dir.path()).unwrap(), standard, "{v}");
        }
        // both alphabets in one value is neither encoding (and no such file)
        assert!(
            VerifyKey::parse("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR+", dir.path()).is_err()
        );
        // 31 bytes
        assert!(
            VerifyKey::parse("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUQ", dir.path()).is_err()
        );
    }

    #[test]
    fn malformed_keys_and_signatures_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(VerifyKey::parse("AAAA", dir.path()).is_err());
        assert!(VerifyKey::parse("missing.pem", dir.path()).is_err());
        assert!(decode_signature(b"AAAA").is_err());
        assert!(decode_signature(&[0xff, 0xfe]).is_err());
        assert!(signing_key(PUBLIC).is_err());
    }
}
