//! The blinding key's file protocol: the one place that knows where a re-key keeps its new
//! key (`<key>.key.new`) and in which order the crash-safe steps run.
//!
//! `virfed rekey` ([`rekey`], on a stopped node) writes the new key next to the old one
//! (0600, synced), re-keys the store in one transaction, and only then renames the new key
//! into place. A crash before the store commits leaves the old key valid and a useless
//! pending file; a crash after it leaves the store on the new key and the new key pending.
//! [`load_blind_key`], which the node runs at every start, tells the two apart by the
//! key fingerprint the store records, and finishes or discards the pending key.

use std::path::{Path, PathBuf};

use tracing::info;

use super::{Federation, Pairs};
use crate::config::Config;
use crate::pseudonym::{write_new_secret, BlindKey, KeyError, LocalKey};
use crate::store::{Store, StoreError, StoreOptions};

/// Why the blinding key could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "invalid configuration: the blinding key {} is not the key this store was written with; restore the right key file from backup (a new key would break every cross-region match)",
        path.display()
    )]
    WrongKey { path: PathBuf },
    #[error("the configuration has no [federation] section: there is nothing to re-key")]
    NotFederated,
    #[error("writing {}", path.display())]
    WritePending { path: PathBuf, source: std::io::Error },
    #[error("moving the new key into {}", path.display())]
    Install { path: PathBuf, source: std::io::Error },
}

/// What a re-key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rekeyed {
    /// Children whose blinded points were recomputed.
    pub children: u64,
    /// Peer index entries re-keyed.
    pub entries: u64,
    /// Outbox items now queued for the peers (the re-run exchange).
    pub queued: usize,
    /// Configured peers.
    pub peers: usize,
}

/// Where a re-key writes the new key before the store commits to it.
pub fn pending_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("key.new")
}

/// Writes `key` to a new file, readable by its owner only, in the format the loader reads.
fn write_key(path: &Path, key: &BlindKey) -> std::io::Result<()> {
    write_new_secret(path, format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
}

/// Loads the blinding key and checks it against the store's record of it. Finishes an
/// interrupted re-key (store re-keyed, new key file not yet renamed into place) and drops
/// the pending key of one that never committed.
pub async fn load_blind_key(config: &Config, store: &Store) -> Result<BlindKey, RekeyError> {
    let path = config.blind_key_path();
    let pending = pending_path(&path);
    let key = BlindKey::load_or_create(&path)?;
    match store.blind_fingerprint()? {
        None => {
            store.set_blind_fingerprint(key.fingerprint()).await?;
            Ok(key)
        }
        Some(fp) if fp == key.fingerprint() => {
            if pending.exists() {
                // A re-key that never committed: its new key is of no use.
                let _ = std::fs::remove_file(&pending);
            }
            Ok(key)
        }
        Some(fp) => {
            if pending.exists() {
                let new = BlindKey::load_or_create(&pending)?;
                if new.fingerprint() == fp {
                    std::fs::rename(&pending, &path)
                        .map_err(|source| RekeyError::Install { path: path.clone(), source })?;
                    info!(path = %path.display(), "finished an interrupted re-key: new blinding key in place");
                    return Ok(new);
                }
            }
            Err(RekeyError::WrongKey { path })
        }
    }
}

/// Rotates a stopped node's blinding key: new key written pending, every child and peer
/// index entry re-keyed in one store transaction (queueing the exchange with every peer
/// again), new key renamed into place last.
pub async fn rekey(config: &Config) -> Result<Rekeyed, RekeyError> {
    let fed = config.federation.as_ref().ok_or(RekeyError::NotFederated)?;
    let store = Store::open(&config.store_path(), &StoreOptions::default())?;
    let old = load_blind_key(config, &store).await?;
    let local = LocalKey::load_or_create(&config.local_key_path())?;
    let peers: Vec<String> = fed.peers.iter().map(|p| p.region.to_string()).collect();
    let federation = Federation::new(store.clone(), Pairs::new(peers.clone(), local, Some(&old)));
    let key_path = config.blind_key_path();
    let pending = pending_path(&key_path);
    let new = BlindKey::random();
    write_key(&pending, &new).map_err(|source| RekeyError::WritePending { path: pending.clone(), source })?;
    let (children, entries) = federation.rekey(config.region.as_str(), &old, &new).await?;
    std::fs::rename(&pending, &key_path).map_err(|source| RekeyError::Install { path: key_path, source })?;
    let queued = peers.iter().map(|p| store.outbox_depth(p)).sum();
    Ok(Rekeyed { children, entries, queued, peers: peers.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> (Config, Store) {
        let text = format!(
            "region = \"utrecht\"\ndata_dir = {:?}\n\n[tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n",
            dir
        );
        let config = Config::parse(&text).unwrap();
        let store = Store::open(&config.store_path(), &StoreOptions::default()).unwrap();
        (config, store)
    }

    #[tokio::test]
    async fn the_first_start_records_the_key_and_later_starts_accept_it() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = node(dir.path());
        let first = load_blind_key(&config, &store).await.unwrap();
        assert_eq!(store.blind_fingerprint().unwrap(), Some(first.fingerprint()));
        let again = load_blind_key(&config, &store).await.unwrap();
        assert_eq!(again.fingerprint(), first.fingerprint());
    }

    #[tokio::test]
    async fn a_pending_key_the_store_never_committed_to_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = node(dir.path());
        let old = load_blind_key(&config, &store).await.unwrap();
        let pending = pending_path(&config.blind_key_path());
        write_key(&pending, &BlindKey::random()).unwrap();
        let loaded = load_blind_key(&config, &store).await.unwrap();
        assert_eq!(loaded.fingerprint(), old.fingerprint());
        assert!(!pending.exists(), "the useless pending key must be removed");
    }

    #[tokio::test]
    async fn a_re_key_interrupted_after_the_store_committed_is_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = node(dir.path());
        load_blind_key(&config, &store).await.unwrap();
        let new = BlindKey::random();
        let pending = pending_path(&config.blind_key_path());
        write_key(&pending, &new).unwrap();
        // The crash point: the store is on the new key, the file not yet renamed.
        store.set_blind_fingerprint(new.fingerprint()).await.unwrap();
        let loaded = load_blind_key(&config, &store).await.unwrap();
        assert_eq!(loaded.fingerprint(), new.fingerprint());
        assert!(!pending.exists());
        assert_eq!(BlindKey::load_or_create(&config.blind_key_path()).unwrap().fingerprint(), new.fingerprint());
    }

    #[tokio::test]
    async fn a_key_the_store_was_not_written_with_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = node(dir.path());
        load_blind_key(&config, &store).await.unwrap();
        std::fs::remove_file(config.blind_key_path()).unwrap();
        write_key(&config.blind_key_path(), &BlindKey::random()).unwrap();
        let err = load_blind_key(&config, &store).await.unwrap_err();
        assert!(matches!(err, RekeyError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("restore the right key file from backup"), "{err}");
    }

    #[tokio::test]
    async fn a_stand_alone_node_has_nothing_to_re_key() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = node(dir.path());
        drop(store);
        assert!(matches!(rekey(&config).await, Err(RekeyError::NotFederated)));
    }
}
