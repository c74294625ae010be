//! Protobuf ↔ protocol items, validated on the way in: a bad field refuses the whole
//! request with a message naming the field, before anything is applied.

use super::error::FederationError;
use super::item::{InItem, InPublish, Item, OutItem};
use crate::domain::{check_text, Contact, FieldError, OrgDomain, OrgId, Party, RegionId, MAX_NAME};
use crate::pb::federation as pb;
use crate::pseudonym::{Blinded, Handle};

fn handle_in(bytes: &[u8], what: &str) -> Result<Handle, FederationError> {
    bytes.try_into().map_err(|_| FederationError::bad(format!("{what} must be 16 bytes")))
}

fn point_in(bytes: &[u8], what: &str) -> Result<Blinded, FederationError> {
    bytes.try_into().map_err(|_| FederationError::bad(format!("{what} must be 32 bytes")))
}

fn contact_in(c: Option<pb::Contact>, who: &str) -> Result<Option<Contact>, FederationError> {
    let Some(c) = c else { return Ok(None) };
    let contact = Contact { name: c.name, role: c.role, phone: c.phone, email: c.email };
    contact.validate(who).map_err(|e| FederationError::bad(e.to_string()))?;
    Ok(Some(contact))
}

/// A party from `region`, validated like a local contact.
pub fn party_in(p: pb::Party, region: &RegionId) -> Result<Party, FederationError> {
    let bad = |e: FieldError| FederationError::bad(format!("party: {e}"));
    check_text("organisation_name", &p.organisation_name, MAX_NAME).map_err(bad)?;
    Ok(Party {
        region: Some(region.clone()),
        org_id: OrgId::parse(&p.organisation_id).map_err(bad)?,
        org_name: p.organisation_name,
        org_domain: p.organisation_domain.parse::<OrgDomain>().map_err(bad)?,
        professional: contact_in(p.professional, "professional")?
            .ok_or_else(|| FederationError::bad("party: professional is required"))?,
        coordinator: contact_in(p.coordinator, "coordinator")?,
    })
}

pub fn contact_out(c: &Contact) -> pb::Contact {
    pb::Contact { name: c.name.clone(), role: c.role.clone(), phone: c.phone.clone(), email: c.email.clone() }
}

pub fn party_out(p: &Party) -> pb::Party {
    pb::Party {
        organisation_id: p.org_id.to_string(),
        organisation_name: p.org_name.clone(),
        organisation_domain: p.org_domain.to_string(),
        professional: Some(contact_out(&p.professional)),
        coordinator: p.coordinator.as_ref().map(contact_out),
    }
}

/// An outbox item as it goes on the wire (the local child key stays behind).
pub fn item_out(seq: u64, item: &OutItem) -> pb::Item {
    use pb::item::Body;
    let body = match item {
        Item::Publish(p) => {
            Body::Publish(pb::Publish { handle: p.handle.to_vec(), point: p.point.to_vec(), active: p.active })
        }
        Item::State { handle, active } => Body::State(pb::State { handle: handle.to_vec(), active: *active }),
        Item::Remove { handle } => Body::Remove(pb::Remove { handle: handle.to_vec() }),
        Item::Contacts { from, to, archived, parties } => Body::Contacts(pb::Contacts {
            from_handle: from.to_vec(),
            to_handle: to.to_vec(),
            archived: *archived,
            parties: parties.iter().map(party_out).collect(),
        }),
        Item::PartyGone { from, to, org } => Body::PartyGone(pb::PartyGone {
            from_handle: from.to_vec(),
            to_handle: to.to_vec(),
            organisation_id: org.to_string(),
        }),
        Item::Reblind { to, blinded } => Body::Reblind(pb::Reblind {
            to_handle: to.to_vec(),
            blinded: blinded.to_vec(),
            public_key: Vec::new(),
            proof: Vec::new(),
        }),
        Item::ProvenReblind { to, blinded, public_key, proof } => Body::Reblind(pb::Reblind {
            to_handle: to.to_vec(),
            blinded: blinded.to_vec(),
            public_key: public_key.to_vec(),
            proof: proof.clone(),
        }),
        Item::ResyncRequest => Body::ResyncRequest(pb::ResyncRequest {}),
        Item::KeyAnnounce { public_key } => Body::KeyAnnounce(pb::KeyAnnounce { public_key: public_key.to_vec() }),
        // Never queued; an empty body is what a newer minor's unknown kind looks like.
        Item::Unknown => return pb::Item { seq, body: None },
    };
    pb::Item { seq, body: Some(body) }
}

/// A received item, validated. A publish's answer (`blinded`) is left zero: the service
/// blinds all of an exchange's points as one batch. `newer_minor`: the sender speaks a
/// newer minor version, so an item without a known body is acknowledged, not refused.
pub fn item_in(body: Option<pb::item::Body>, from: &RegionId, newer_minor: bool) -> Result<InItem, FederationError> {
    use pb::item::Body;
    Ok(match body {
        Some(Body::Publish(p)) => Item::Publish(InPublish {
            handle: handle_in(&p.handle, "publish.handle")?,
            point: point_in(&p.point, "publish.point")?,
            active: p.active,
            blinded: [0; 32],
        }),
        Some(Body::State(s)) => Item::State { handle: handle_in(&s.handle, "state.handle")?, active: s.active },
        Some(Body::Remove(s)) => Item::Remove { handle: handle_in(&s.handle, "remove.handle")? },
        Some(Body::Contacts(c)) => Item::Contacts {
            from: handle_in(&c.from_handle, "contacts.from_handle")?,
            to: handle_in(&c.to_handle, "contacts.to_handle")?,
            archived: c.archived,
            parties: c.parties.into_iter().map(|p| party_in(p, from)).collect::<Result<_, _>>()?,
        },
        Some(Body::PartyGone(g)) => Item::PartyGone {
            from: handle_in(&g.from_handle, "party_gone.from_handle")?,
            to: handle_in(&g.to_handle, "party_gone.to_handle")?,
            org: OrgId::parse(&g.organisation_id).map_err(|e| FederationError::bad(e.to_string()))?,
        },
        Some(Body::Reblind(r)) if r.proof.is_empty() => Item::Reblind {
            to: handle_in(&r.to_handle, "reblind.to_handle")?,
            blinded: point_in(&r.blinded, "reblind.blinded")?,
        },
        Some(Body::Reblind(r)) => Item::ProvenReblind {
            to: handle_in(&r.to_handle, "reblind.to_handle")?,
            blinded: point_in(&r.blinded, "reblind.blinded")?,
            public_key: point_in(&r.public_key, "reblind.public_key")?,
            proof: r.proof,
        },
        Some(Body::ResyncRequest(_)) => Item::ResyncRequest,
        Some(Body::KeyAnnounce(k)) => {
            let public_key = point_in(&k.public_key, "key_announce.public_key")?;
            if !crate::dleq::is_public_key(&public_key) {
                return Err(FederationError::bad("key_announce.public_key is not a valid ristretto255 public key"));
            }
            Item::KeyAnnounce { public_key }
        }
        None if newer_minor => Item::Unknown,
        None => return Err(FederationError::bad("item without a body")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::item::OutPublish;

    fn region() -> RegionId {
        RegionId::parse("utrecht").unwrap()
    }

    #[test]
    fn an_item_goes_out_and_comes_back_as_the_same_item_without_the_child_key() {
        let out: OutItem = Item::Publish(OutPublish {
            child: crate::domain::ChildKey([9; 32]),
            handle: [1; 16],
            point: [2; 32],
            active: true,
            resync: false,
        });
        let wire = item_out(5, &out);
        assert_eq!(wire.seq, 5);
        let Some(pb::item::Body::Publish(p)) = &wire.body else { panic!("not a publish") };
        assert!(!p.point.is_empty() && p.handle.len() == 16, "only handle and point travel");
        let back = item_in(wire.body, &region(), false).unwrap();
        assert_eq!(back, Item::Publish(InPublish { handle: [1; 16], point: [2; 32], active: true, blinded: [0; 32] }));
        let gone: OutItem = Item::Remove { handle: [3; 16] };
        assert_eq!(item_in(item_out(6, &gone).body, &region(), false).unwrap(), Item::Remove { handle: [3; 16] });
    }

    #[test]
    fn invariant_7_malformed_fields_are_refused_by_name() {
        let short = Some(pb::item::Body::Remove(pb::Remove { handle: vec![1, 2, 3] }));
        let err = item_in(short, &region(), false).unwrap_err();
        assert_eq!(err.to_string(), "remove.handle must be 16 bytes");
        let point =
            Some(pb::item::Body::Publish(pb::Publish { handle: vec![0; 16], point: vec![0; 31], active: true }));
        assert_eq!(item_in(point, &region(), false).unwrap_err().to_string(), "publish.point must be 32 bytes");
        assert_eq!(item_in(None, &region(), false).unwrap_err().to_string(), "item without a body");
        assert_eq!(item_in(None, &region(), true).unwrap(), Item::Unknown, "a newer minor's kind is acknowledged");
    }

    #[test]
    fn contacts_from_a_peer_are_validated_and_carry_the_peers_region() {
        let party = pb::Party {
            organisation_id: "ggd".into(),
            organisation_name: "GGD".into(),
            organisation_domain: "health".into(),
            professional: Some(pb::Contact {
                name: "A".into(),
                role: "arts".into(),
                phone: "+31 30 000 0000".into(),
                email: "a@ggd.nl".into(),
            }),
            coordinator: None,
        };
        assert_eq!(party_in(party.clone(), &region()).unwrap().region, Some(region()));
        let mut nameless = party;
        nameless.professional = None;
        assert!(party_in(nameless, &region()).unwrap_err().to_string().contains("professional is required"));
    }
}
