//! The peer protocol's items, once for both directions: [`Item<P>`] is an outbox item
//! (`P` = [`OutPublish`], which keeps the local child key beside what goes on the wire)
//! or a received item (`P` = [`InPublish`], with the receiver's blinded answer), plus
//! the protocol's version numbers and limits. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::domain::{ChildKey, OrgId, Party};
use crate::pseudonym::{Blinded, Handle};

/// Major version of the peer protocol: nodes of different majors do not talk. Version 2:
/// every blinded answer carries a DLEQ proof, and a re-key's `Reblind` too.
pub const PROTOCOL_VERSION: u32 = 2;

/// Minor version: nodes one minor apart interoperate (unknown item kinds are
/// acknowledged, not applied).
pub const PROTOCOL_MINOR: u32 = 1;

/// Most items in one exchange.
pub const MAX_ITEMS: usize = 256;

/// One protocol item. The variant order is part of the outbox's on-disk format (postcard
/// encodes the variant index): append new kinds at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item<P> {
    /// A child's blinded point for the peer to blind with its key.
    Publish(P),
    State {
        handle: Handle,
        active: bool,
    },
    Remove {
        handle: Handle,
    },
    Contacts {
        from: Handle,
        to: Handle,
        archived: bool,
        parties: Vec<Party>,
    },
    PartyGone {
        from: Handle,
        to: Handle,
        org: OrgId,
    },
    /// Protocol 1's unproven re-key item: still decoded (old outboxes), never applied.
    Reblind {
        to: Handle,
        blinded: Blinded,
    },
    /// After a restore from backup: the peer should publish every child to me again.
    ResyncRequest,
    /// An item kind from a newer protocol minor version: acknowledged, not applied.
    /// Never queued.
    Unknown,
    /// After a re-key: the peer's child under its handle `to` now blinds to `blinded`, with
    /// the sender's new public key and a DLEQ proof that `blinded` is the peer's own point
    /// times the new key. (`Reblind` above is the unproven form of protocol 1: refused.)
    ProvenReblind {
        to: Handle,
        blinded: Blinded,
        public_key: Blinded,
        proof: Vec<u8>,
    },
    /// The sender re-keyed: its answers to me are proven under `public_key` from now on
    /// (minor 1). Queued first by a re-key, before its `ProvenReblind`s and re-publishes.
    KeyAnnounce {
        public_key: Blinded,
    },
}

/// A publish as queued at the sender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutPublish {
    /// Stays local: it is how the answer is applied.
    pub child: ChildKey,
    pub handle: Handle,
    pub point: Blinded,
    pub active: bool,
    /// Part of a join, resync or re-key (counted against the peer's resync budget).
    pub resync: bool,
}

/// A publish as received, with the receiver's answer `blinded = point·k` computed.
#[derive(Clone, Debug, PartialEq)]
pub struct InPublish {
    pub handle: Handle,
    pub point: Blinded,
    pub active: bool,
    pub blinded: Blinded,
}

/// An item in a peer's outbox.
pub type OutItem = Item<OutPublish>;

/// An item received from a peer.
pub type InItem = Item<InPublish>;

impl<P> Item<P> {
    pub fn publish(&self) -> Option<&P> {
        match self {
            Item::Publish(p) => Some(p),
            _ => None,
        }
    }
}

/// A publish, queued or received: the sender's handle of its child.
pub trait PublishOf {
    fn handle(&self) -> &Handle;
}

impl PublishOf for OutPublish {
    fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl PublishOf for InPublish {
    fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl<P: PublishOf> Item<P> {
    /// The sender's handle of the child this item is about, for the kinds that change
    /// what the peer knows of one of the sender's children (its entry, its state, its
    /// parties): the items an answer from the sender's current state must not overtake.
    pub fn about(&self) -> Option<&Handle> {
        match self {
            Item::Publish(p) => Some(p.handle()),
            Item::State { handle, .. } | Item::Remove { handle } => Some(handle),
            Item::Contacts { from, .. } | Item::PartyGone { from, .. } => Some(from),
            _ => None,
        }
    }
}

/// The receiver's answer to one item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemAnswer {
    pub seq: u64,
    pub blinded: Option<Blinded>,
    pub gone: bool,
    /// The receiver's contacts for a pair it detected itself: for a publish that completed
    /// a match (D5) or met an archived-only child (D6, `contacts_archived`), or for a
    /// contacts item it applied (its own, in reply).
    pub contacts: Vec<Party>,
    pub contacts_archived: bool,
    /// The sender asked for a resync (local only: the receiver then re-joins it).
    pub resync_requested: bool,
    /// The answering node's outbox sequence number when it answered (the exchange's
    /// `as_of_seq`; 0: not stated).
    pub as_of: u64,
}

/// What applying one incoming item produced.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    pub gone: bool,
    pub contacts: Vec<Party>,
    pub contacts_archived: bool,
    pub resync_requested: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outbox layout written by earlier versions (a struct variant per kind), kept
    /// here to prove the generic item reads and writes the very same bytes.
    #[derive(Serialize)]
    enum V1Item {
        Publish {
            child: ChildKey,
            handle: Handle,
            point: Blinded,
            active: bool,
            resync: bool,
        },
        State {
            handle: Handle,
            active: bool,
        },
        #[allow(dead_code)]
        Remove {
            handle: Handle,
        },
        #[allow(dead_code)]
        Contacts {
            from: Handle,
            to: Handle,
            archived: bool,
            parties: Vec<Party>,
        },
        #[allow(dead_code)]
        PartyGone {
            from: Handle,
            to: Handle,
            org: OrgId,
        },
        #[allow(dead_code)]
        Reblind {
            to: Handle,
            blinded: Blinded,
        },
        ResyncRequest,
    }

    #[test]
    fn the_generic_item_keeps_the_outbox_byte_layout() {
        let (child, handle, point) = (ChildKey([1; 32]), [2; 16], [3; 32]);
        let old = postcard::to_stdvec(&V1Item::Publish { child, handle, point, active: true, resync: false }).unwrap();
        let new: OutItem = Item::Publish(OutPublish { child, handle, point, active: true, resync: false });
        assert_eq!(postcard::to_stdvec(&new).unwrap(), old);
        assert_eq!(postcard::from_bytes::<OutItem>(&old).unwrap(), new);
        let old = postcard::to_stdvec(&V1Item::State { handle, active: false }).unwrap();
        assert_eq!(postcard::from_bytes::<OutItem>(&old).unwrap(), Item::State { handle, active: false });
        let old = postcard::to_stdvec(&V1Item::ResyncRequest).unwrap();
        assert_eq!(postcard::from_bytes::<OutItem>(&old).unwrap(), Item::ResyncRequest);
    }
}
