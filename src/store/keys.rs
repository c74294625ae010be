//! Key codecs: how every table's keys are laid out, in one place.
//!
//! Keys that are scanned by owner share a prefix `owner ‖ 0` (organisation and region ids
//! are `[a-z0-9-]`, so they never contain a 0 byte and never prefix one another across the
//! separator); sequence numbers are big-endian so byte order is numeric order. The `fed`
//! table holds several kinds of entry under a one-byte tag (see [`Fed`]).

use crate::domain::{ChildKey, OrgId, ParentKey, SignalId};
use crate::pseudonym::{Blinded, Handle};

/// Meta keys (the `meta` table), one per typed accessor of the store.
pub mod meta {
    pub const SCHEMA: &[u8] = b"schema_version";
    pub const AUDIT_HEAD: &[u8] = b"audit_head";
    pub const NOTICE_SEQ: &[u8] = b"notice_seq";
    pub const OUTBOX_SEQ: &[u8] = b"outbox_seq";
    pub const EPOCH: &[u8] = b"epoch";
    pub const BLIND_FP: &[u8] = b"blind_key_fingerprint";
    /// A fingerprint of the local key the store's child keys were made with.
    pub const LOCAL_FP: &[u8] = b"local_key_fingerprint";
    pub const MATCH_OFFICER: &[u8] = b"match_officer";
    /// Set by a restore: on the next start, ask every peer for a resync.
    pub const RESYNC_AFTER_RESTORE: &[u8] = b"resync_after_restore";
    /// The health probe's last write (proves the writer and the disk work).
    pub const PROBE: &[u8] = b"health_probe";
    /// Prefix of `joined/<peer>`: every child has been published to that peer.
    pub const JOINED: &str = "joined/";
    /// Prefix of `webhook_cursor/<org>`: the last notice delivered to the org's webhook.
    pub const WEBHOOK_CURSOR: &str = "webhook_cursor/";
    /// Prefix of `budget/<peer>/<kind>`: a peer's blind budget (tokens, time), kept across
    /// restarts and in backups (`federation::budget`).
    pub const BUDGET: &str = "budget/";
    /// Prefix of `peer_key/<peer>`: the public blinding key `Y` the peer uses towards this
    /// node, pinned on first sight and changed only by the peer's re-key announcement.
    pub const PEER_KEY: &str = "peer_key/";
    /// Prefix of `ticket/<peer>/<serial hex>`: children the peer published here under that
    /// resync ticket.
    pub const TICKET: &str = "ticket/";

    pub fn joined(peer: &str) -> Vec<u8> {
        format!("{JOINED}{peer}").into_bytes()
    }

    pub fn webhook_cursor(org: &str) -> Vec<u8> {
        format!("{WEBHOOK_CURSOR}{org}").into_bytes()
    }

    pub fn ticket(peer: &str, serial: &str) -> Vec<u8> {
        format!("{TICKET}{peer}/{serial}").into_bytes()
    }

    pub fn peer_key(peer: &str) -> Vec<u8> {
        format!("{PEER_KEY}{peer}").into_bytes()
    }

    /// Region ids are `[a-z0-9-]` and kinds are fixed words, so `/` separates them.
    pub fn budget(peer: &str, kind: &str) -> Vec<u8> {
        format!("{BUDGET}{peer}/{kind}").into_bytes()
    }
}

/// `owner ‖ 0 ‖ rest`.
pub fn owned(owner: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + 1 + rest.len());
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key.extend_from_slice(rest);
    key
}

/// The sequence number at the end of an `owner ‖ 0 ‖ seq` key.
pub fn trailing_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// `org_signals`: the organisation's active signal ids.
pub fn org_signal(org: &OrgId, id: &SignalId) -> Vec<u8> {
    owned(org.as_str(), &id.0)
}

pub fn signal_id_of_org_key(key: &[u8]) -> Option<SignalId> {
    Some(SignalId(key.get(key.len().checked_sub(16)?..)?.try_into().ok()?))
}

/// `notices`: one queue per recipient organisation.
pub fn notice(org: &OrgId, seq: u64) -> Vec<u8> {
    owned(org.as_str(), &seq.to_be_bytes())
}

/// `outbox`: one ordered queue per peer region.
pub fn outbox(peer: &str, seq: u64) -> Vec<u8> {
    owned(peer, &seq.to_be_bytes())
}

/// `audit`: the chain in sequence order.
pub fn audit(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn u64_value(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// The kinds of entry in the `fed` table, each under its tag byte.
///
/// | tag | key                | value | meaning |
/// |-----|--------------------|-------|---------|
/// | `P` | child              | `P·a` | my child's blinded point (for new peers and re-key) |
/// | `H` | peer 0 handle      | child | my handle for a child towards `peer` |
/// | `B` | peer 0 D           | child | my child blinded for `peer`: `D = P·a·b` |
/// | `L` | child peer         | D     | link from my child to its `B` entry |
/// | `I` | peer 0 D           | `RemoteEntry` | `peer`'s child blinded by me (my index of the peer) |
/// | `J` | peer 0 handle      | D     | link from the peer's handle to its `I` entry |
/// | `X` | child 0 peer       | `CrossPair` | the pair of my child with the peer's child |
/// | `S` | peer               | `PeerSeen` | highest item applied from the peer (idempotency) |
/// | `Q` | peer 0 handle      | seq   | the last outbox item about my child queued for `peer` (until acknowledged) |
pub struct Fed;

impl Fed {
    const P: u8 = b'P';
    const H: u8 = b'H';
    const B: u8 = b'B';
    const L: u8 = b'L';
    const I: u8 = b'I';
    const J: u8 = b'J';
    const X: u8 = b'X';
    const S: u8 = b'S';
    const Q: u8 = b'Q';

    fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = vec![tag];
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    fn peer_key(tag: u8, peer: &str, rest: &[u8]) -> Vec<u8> {
        Self::key(tag, &[peer.as_bytes(), &[0], rest])
    }

    pub fn point(child: &ChildKey) -> Vec<u8> {
        Self::key(Self::P, &[&child.0])
    }
    pub fn all_points() -> Vec<u8> {
        vec![Self::P]
    }
    pub fn child_of_point_key(key: &[u8]) -> Option<ChildKey> {
        Some(ChildKey(key.get(1..)?.try_into().ok()?))
    }
    pub fn own_handle(peer: &str, handle: &Handle) -> Vec<u8> {
        Self::peer_key(Self::H, peer, handle)
    }
    pub fn own_blinded(peer: &str, d: &Blinded) -> Vec<u8> {
        Self::peer_key(Self::B, peer, d)
    }
    pub fn link(child: &ChildKey, peer: &str) -> Vec<u8> {
        Self::key(Self::L, &[&child.0, peer.as_bytes()])
    }
    pub fn remote(peer: &str, d: &Blinded) -> Vec<u8> {
        Self::peer_key(Self::I, peer, d)
    }
    pub fn remotes_of(peer: &str) -> Vec<u8> {
        Self::peer_key(Self::I, peer, &[])
    }
    pub fn all_remotes() -> Vec<u8> {
        vec![Self::I]
    }
    /// `(peer, D)` of an `I` key.
    pub fn split_remote_key(key: &[u8]) -> Option<(String, Blinded)> {
        let rest = key.strip_prefix(&[Self::I])?;
        let split = rest.iter().position(|b| *b == 0)?;
        let peer = std::str::from_utf8(&rest[..split]).ok()?.to_owned();
        Some((peer, rest[split + 1..].try_into().ok()?))
    }
    pub fn remote_handle(peer: &str, handle: &Handle) -> Vec<u8> {
        Self::peer_key(Self::J, peer, handle)
    }
    pub fn pair(child: &ChildKey, peer: &str) -> Vec<u8> {
        Self::key(Self::X, &[&child.0, &[0], peer.as_bytes()])
    }
    pub fn pairs_of(child: &ChildKey) -> Vec<u8> {
        Self::key(Self::X, &[&child.0, &[0]])
    }
    pub fn all_pairs() -> Vec<u8> {
        vec![Self::X]
    }
    /// Whether `key` is a (child, peer) entry: a peer's child indexed here (`I`) or my
    /// child blinded for a peer (`B`).
    pub fn is_entry(key: &[u8]) -> bool {
        matches!(key.first(), Some(&Self::I) | Some(&Self::B))
    }
    pub fn seen(peer: &str) -> Vec<u8> {
        Self::key(Self::S, &[peer.as_bytes()])
    }
    pub fn queued_about(peer: &str, handle: &Handle) -> Vec<u8> {
        Self::peer_key(Self::Q, peer, handle)
    }
}

/// The `family` table: which parents a child has and which children a parent has here,
/// both as local pseudonyms (no BSN). A transaction cannot scan, so each side is one
/// record.
///
/// | tag | key    | value |
/// |-----|--------|-------|
/// | `c` | child  | `Vec<ParentKey>` (0-2 as the source listed them) |
/// | `p` | parent | `Vec<ChildKey>` (its children with a signal here) |
/// | `q` | seq    | a queued BRP lookup (`records::Lookup`) |
/// | `w` | child  | the seq of the child's queued lookup |
pub struct Family;

impl Family {
    pub fn parents_of(child: &ChildKey) -> Vec<u8> {
        Fed::key(b'c', &[&child.0])
    }
    pub fn children_of(parent: &ParentKey) -> Vec<u8> {
        Fed::key(b'p', &[&parent.0])
    }
    pub fn all_parents() -> Vec<u8> {
        vec![b'p']
    }
    pub fn lookup(seq: u64) -> Vec<u8> {
        Fed::key(b'q', &[&seq.to_be_bytes()])
    }
    pub fn all_lookups() -> Vec<u8> {
        vec![b'q']
    }
    pub fn waiting(child: &ChildKey) -> Vec<u8> {
        Fed::key(b'w', &[&child.0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(id: &str) -> OrgId {
        OrgId::parse(id).unwrap()
    }

    #[test]
    fn sequence_keys_sort_numerically_within_their_owner_and_decode_back() {
        let mut keys: Vec<Vec<u8>> = [256u64, 1, 255, 65536].iter().map(|s| notice(&org("ggd"), *s)).collect();
        keys.sort();
        let seqs: Vec<u64> = keys.iter().map(|k| trailing_seq(k).unwrap()).collect();
        assert_eq!(seqs, vec![1, 255, 256, 65536]);
        assert_eq!(trailing_seq(&outbox("utrecht", 7)), Some(7));
        assert_eq!(trailing_seq(b"short"), None);
    }

    #[test]
    fn one_owner_is_never_a_prefix_of_another_owners_keys() {
        // "ggd" and "ggd-west": the separator keeps their queues apart.
        let short = owned("ggd", &[]);
        assert!(!notice(&org("ggd-west"), 1).starts_with(&short));
        assert!(notice(&org("ggd"), 1).starts_with(&short));
        assert!(!outbox("utrecht-2", 1).starts_with(&owned("utrecht", &[])));
    }

    #[test]
    fn org_signal_keys_carry_the_signal_id() {
        let id = SignalId([9; 16]);
        let key = org_signal(&org("school-1"), &id);
        assert!(key.starts_with(b"school-1\0"));
        assert_eq!(signal_id_of_org_key(&key), Some(id));
    }

    #[test]
    fn fed_keys_are_tagged_and_split_back() {
        let child = ChildKey([3; 32]);
        let d: Blinded = [5; 32];
        assert_eq!(Fed::child_of_point_key(&Fed::point(&child)), Some(child));
        assert!(Fed::point(&child).starts_with(&Fed::all_points()));
        let remote = Fed::remote("zwolle", &d);
        assert!(remote.starts_with(&Fed::remotes_of("zwolle")));
        assert!(!remote.starts_with(&Fed::remotes_of("zwoll")));
        assert_eq!(Fed::split_remote_key(&remote), Some(("zwolle".to_owned(), d)));
        assert_eq!(Fed::split_remote_key(&Fed::own_blinded("zwolle", &d)), None, "a B key is not an I key");
        assert!(Fed::pair(&child, "utrecht").starts_with(&Fed::pairs_of(&child)));
        assert!(Fed::pairs_of(&child).starts_with(&Fed::all_pairs()));
        // Every kind has its own tag: no two kinds' keys collide for the same parts.
        let h: Handle = [5; 16];
        let tags: std::collections::HashSet<u8> = [
            Fed::point(&child)[0],
            Fed::own_handle("p", &h)[0],
            Fed::own_blinded("p", &d)[0],
            Fed::link(&child, "p")[0],
            Fed::remote("p", &d)[0],
            Fed::remote_handle("p", &h)[0],
            Fed::pair(&child, "p")[0],
            Fed::seen("p")[0],
        ]
        .into_iter()
        .collect();
        assert_eq!(tags.len(), 8);
    }

    #[test]
    fn meta_keys_per_owner() {
        assert_eq!(meta::joined("utrecht"), b"joined/utrecht");
        assert_eq!(meta::webhook_cursor("ggd"), b"webhook_cursor/ggd");
        assert_eq!(meta::budget("utrecht", "oracle"), b"budget/utrecht/oracle");
        assert_ne!(meta::budget("utrecht", "oracle"), meta::budget("utrecht", "resync"));
        assert_eq!(u64_value(Some(&42u64.to_be_bytes())), 42);
        assert_eq!(u64_value(None), 0);
        assert_eq!(u64_value(Some(b"bad")), 0);
    }
}
