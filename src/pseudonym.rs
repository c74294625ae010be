//! Pseudonyms of a child's BSN.
//!
//! Locally the node keys everything about a child by a [`ChildKey`]:
//! `HMAC-SHA256(local_key, "virfed/local-child/v1" ‖ 9 normalised digits)`. The local key
//! lives in its own file (32 random bytes, hex, mode 0600), never in the store, so the sled
//! files alone reveal nothing: without the key a guessed BSN cannot be tested against them.
//! The federation's commutative blinding (ristretto255) builds on the same normalised BSN.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::domain::{Bsn, ChildKey};

/// Domain separation for the local child pseudonym; bump the version to re-key the format.
pub const LOCAL_CHILD_DOMAIN: &[u8] = b"virfed/local-child/v1";

/// Errors loading or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("key file {path} does not hold 64 hex digits; restore it from backup (a new key would orphan every stored pseudonym)")]
    Malformed { path: String },
}

/// The node's secret for local pseudonyms.
#[derive(Clone)]
pub struct LocalKey([u8; 32]);

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKey(..)")
    }
}

impl LocalKey {
    pub fn from_bytes(bytes: [u8; 32]) -> LocalKey {
        LocalKey(bytes)
    }

    /// Loads the key file, creating it (mode 0600) on first start. Refuses a key file that
    /// group or others can read.
    pub fn load_or_create(path: &Path) -> Result<LocalKey, KeyError> {
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(meta) => {
                check_mode(path, &meta)?;
                let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed {
                    path: shown.clone(),
                })?;
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| KeyError::Malformed { path: shown })?;
                Ok(LocalKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_new_secret(path, format!("{}\n", hex::encode(key)).as_bytes()).map_err(
                    |source| KeyError::Create {
                        path: shown,
                        source,
                    },
                )?;
                Ok(LocalKey(key))
            }
            Err(source) => Err(KeyError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// The child's local pseudonym.
    pub fn child_key(&self, bsn: &Bsn) -> ChildKey {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(LOCAL_CHILD_DOMAIN);
        mac.update(bsn.normalised_digits());
        ChildKey(mac.finalize().into_bytes().into())
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// Creates a new file readable only by its owner, writes `bytes` and syncs it.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_child_key_known_answer() {
        // HMAC-SHA256(key = 32 x 0x07, "virfed/local-child/v1" || "123456782").
        let key = LocalKey::from_bytes([7u8; 32]);
        let got = key.child_key(&Bsn::parse("123456782").unwrap());
        assert_eq!(hex::encode(got.0), KNOWN_ANSWER);
        // Eight digits normalise first, so both spellings share one pseudonym.
        assert_eq!(
            key.child_key(&Bsn::parse("42473342").unwrap()),
            key.child_key(&Bsn::parse("042473342").unwrap())
        );
        // A different key gives an unrelated pseudonym.
        assert_ne!(
            LocalKey::from_bytes([8u8; 32]).child_key(&Bsn::parse("123456782").unwrap()),
            got
        );
    }

    const KNOWN_ANSWER: &str = "dd2a9312faf5a0d34358215d9331a5da8f9f477e1f8330eba8da35342e1e942b";

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        let a = LocalKey::load_or_create(&path).unwrap();
        let b = LocalKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        LocalKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        write_new_secret(&path, b"short").unwrap();
        assert!(matches!(
            LocalKey::load_or_create(&path),
            Err(KeyError::Malformed { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }
}
