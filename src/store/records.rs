//! The persisted shapes of the store's own records and their codec (postcard).
//!
//! Domain values (organisations, signals, notices) are stored as their domain types; the
//! records here exist only because of how the store indexes them. Changing any of these
//! shapes changes the on-disk layout: bump [`super::SCHEMA_VERSION`] with a migration.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::StoreError;
use crate::domain::{ChildKey, OrgId, Party, SignalId};
use crate::pseudonym::{Blinded, Handle};

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain structs infallibly")
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt { what })
}

/// The queue time of an encoded [`Queued`] value, without decoding its item.
pub(super) fn queued_at(bytes: &[u8]) -> Result<i64, StoreError> {
    postcard::take_from_bytes::<i64>(bytes).map(|(at, _)| at).map_err(|_| StoreError::Corrupt { what: "outbox item" })
}

/// Everything the node knows about one child, under its local pseudonym: the
/// one-active-signal-per-organisation index (D2) and the D6 markers in one record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub active: Vec<(SignalId, OrgId)>,
    pub archived: Vec<(SignalId, OrgId)>,
    /// Organisations that already had their one history notice (D6).
    pub history_sent: Vec<OrgId>,
}

impl ChildRecord {
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.archived.is_empty()
    }
}

/// A peer's child in my index of that peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub handle: Handle,
    pub active: bool,
    /// The point the peer sent (`P·b`), kept so a re-key can recompute `D`.
    pub point: Blinded,
}

/// Where a pair of my child and a peer's child stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairState {
    /// Both sides active: a match (D5).
    Matched,
    /// Not (or no longer) a match; kept for history markers and early contacts.
    Idle,
}

/// A pair of my child with a peer's child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossPair {
    pub state: PairState,
    pub peer_handle: Handle,
    /// The peer's parties known here (their contact details), region set.
    pub remote_parties: Vec<Party>,
    /// Contacts that arrived before this side saw the match; applied when it does.
    pub pending: Vec<Party>,
    /// Local organisations that already had their cross-region history notice (D6).
    pub history_notified: Vec<OrgId>,
}

impl CrossPair {
    /// A pair not (yet) matched with the peer's child under `peer_handle`.
    pub fn idle(peer_handle: Handle) -> CrossPair {
        CrossPair {
            state: PairState::Idle,
            peer_handle,
            remote_parties: vec![],
            pending: vec![],
            history_notified: vec![],
        }
    }

    pub fn is_matched(&self) -> bool {
        self.state == PairState::Matched
    }
}

/// Idempotency state per peer: items up to `last_seq` of `epoch` are applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    pub epoch: u64,
    pub last_seq: u64,
    /// Earlier epochs of the peer's store: requests from them are refused.
    pub retired: Vec<u64>,
}

/// A BRP parent lookup waiting in the durable queue (family matches, D11). The child's BSN
/// is needed to ask the BRP, so it is kept here sealed (AEAD under a key derived from the
/// local key, which lives in `keys_dir`, never in the data directory or a backup) and only
/// until the lookup completes; `child` is its pseudonym.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub child: ChildKey,
    /// Nonce ‖ ciphertext ‖ tag of the 9 BSN digits.
    pub sealed: Vec<u8>,
    pub attempts: u32,
    /// Unix ms of the next attempt.
    pub next_at_ms: i64,
    pub queued_at_ms: i64,
}

/// An outbox value: an item of the peer protocol and when it was queued (for the
/// outbox-age health figure). The store does not look inside `item`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued<T> {
    pub at_ms: i64,
    pub item: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_reported_as_corrupt_with_its_kind() {
        let record = ChildRecord {
            active: vec![(SignalId([1; 16]), OrgId::parse("ggd").unwrap())],
            archived: vec![],
            history_sent: vec![OrgId::parse("school").unwrap()],
        };
        assert_eq!(decode::<ChildRecord>(&encode(&record), "child record").unwrap(), record);
        let pair = CrossPair::idle([4; 16]);
        assert_eq!(decode::<CrossPair>(&encode(&pair), "cross pair").unwrap(), pair);
        assert!(!pair.is_matched());
        match decode::<CrossPair>(&[0xff, 0xff, 0xff], "cross pair") {
            Err(StoreError::Corrupt { what }) => assert_eq!(what, "cross pair"),
            other => panic!("garbage decoded: {other:?}"),
        }
    }

    #[test]
    fn a_queued_item_is_its_queue_time_followed_by_the_item_bytes() {
        // The v1 → v2 migration relies on this layout: it prefixes each v1 item with its
        // queue time instead of decoding the item.
        let queued = Queued { at_ms: 1_700_000_000_123, item: (7u8, true) };
        let mut expected = encode(&queued.at_ms);
        expected.extend(encode(&queued.item));
        assert_eq!(encode(&queued), expected);
        assert_eq!(queued_at(&expected).unwrap(), queued.at_ms);
    }
}
