//! Reads of the federation state (`keys::Fed`): pairs, child points, the indexes of the
//! peers. Writes go through [`super::Tx`].

use super::keys::Fed;
use super::records::decode;
use super::{CrossPair, PeerSeen, RawEntry, RemoteEntry, Store, StoreError, Table, Tree};
use crate::domain::ChildKey;
use crate::pseudonym::Blinded;

impl Store {
    // ---- federation state -------------------------------------------------------------------

    /// Every pair of my child with a peer's child.
    pub fn pairs_of(&self, child: &ChildKey) -> Result<Vec<CrossPair>, StoreError> {
        self.values(Table::Fed, &Fed::pairs_of(child), "cross pair").collect()
    }

    /// Every stored child point `P·a` (for a join, a resync and a re-key).
    pub fn points(&self) -> Result<Vec<(ChildKey, Blinded)>, StoreError> {
        self.t(Table::Fed)
            .scan_prefix(Fed::all_points())
            .map(|item| {
                let (k, v) = item?;
                let bad = || StoreError::Corrupt { what: "child point" };
                Ok((Fed::child_of_point_key(&k).ok_or_else(bad)?, v.as_ref().try_into().map_err(|_| bad())?))
            })
            .collect()
    }

    /// Every entry of my indexes of the peers: (peer, D, entry), for a re-key.
    pub fn remote_entries(&self) -> Result<Vec<(String, Blinded, RemoteEntry)>, StoreError> {
        self.t(Table::Fed)
            .scan_prefix(Fed::all_remotes())
            .map(|item| {
                let (k, v) = item?;
                let (peer, d) = Fed::split_remote_key(&k).ok_or(StoreError::Corrupt { what: "peer index key" })?;
                Ok((peer, d, decode(&v, "peer index")?))
            })
            .collect()
    }

    /// How many of the peer's children this node holds in its index of the peer.
    pub fn peer_index_len(&self, peer: &str) -> usize {
        self.t(Table::Fed).scan_prefix(Fed::remotes_of(peer)).count()
    }

    /// What has been applied from `peer` so far: its store's epoch, the last sequence
    /// number, the epochs it retired.
    pub fn peer_seen(&self, peer: &str) -> Result<PeerSeen, StoreError> {
        Ok(self.get(Table::Fed, &Fed::seen(peer), "peer seen")?.unwrap_or_default())
    }

    /// Every value stored about peers, raw (for tests that check what crosses a border).
    pub fn federation_raw(&self) -> Result<Vec<RawEntry>, StoreError> {
        let raw = |t: &Tree| t.iter().map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Vec<_>>();
        raw(self.t(Table::Fed)).into_iter().chain(raw(self.t(Table::Outbox))).collect()
    }
}
