//! Conversions between protobuf messages and domain types, validating on the way in.

use chrono::SecondsFormat;

use crate::domain::{Addressee, Contact, Notice, NoticeKind, Party, Signal, SignalState};
use crate::pb::client as pb;

use super::ApiError;

/// A required contact: every field present and well-formed.
pub fn contact_in(c: Option<pb::Contact>, who: &str) -> Result<Contact, ApiError> {
    let c = c.ok_or_else(|| ApiError::InvalidArgument(format!("{who} is required (name, role, phone, email)")))?;
    let contact = Contact { name: c.name, role: c.role, phone: c.phone, email: c.email };
    contact.validate(who)?;
    Ok(contact)
}

pub fn contact_out(c: &Contact) -> pb::Contact {
    pb::Contact { name: c.name.clone(), role: c.role.clone(), phone: c.phone.clone(), email: c.email.clone() }
}

pub fn signal_out(s: &Signal) -> pb::SignalView {
    let (state, archived_on) = match s.state {
        SignalState::Active => ("active", String::new()),
        SignalState::Archived { on, .. } => ("archived", on.to_string()),
    };
    pb::SignalView {
        signal_id: s.id.to_string(),
        organisation_id: s.org.to_string(),
        professional: Some(contact_out(&s.professional)),
        registered_at: s.registered_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        removal_date: s.removal_date.to_string(),
        state: state.into(),
        archived_on,
    }
}

pub fn party_out(p: &Party) -> pb::Party {
    pb::Party {
        region_id: p.region.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        organisation_id: p.org_id.to_string(),
        organisation_name: p.org_name.clone(),
        organisation_domain: p.org_domain.to_string(),
        professional: Some(contact_out(&p.professional)),
        coordinator: p.coordinator.as_ref().map(contact_out),
    }
}

pub fn notice_out(cursor: u64, n: &Notice) -> pb::Notice {
    let kind = match n.kind {
        NoticeKind::MatchCreated | NoticeKind::FamilyMatchCreated => pb::NoticeKind::MatchCreated,
        NoticeKind::MatchEnded | NoticeKind::FamilyMatchEnded => pb::NoticeKind::MatchEnded,
        NoticeKind::History => pb::NoticeKind::History,
    };
    let addressee = match n.addressee {
        Addressee::Professional => pb::Addressee::Professional,
        Addressee::Coordinator => pb::Addressee::Coordinator,
        Addressee::MatchOfficer => pb::Addressee::MatchOfficer,
    };
    pb::Notice {
        cursor,
        kind: kind as i32,
        addressee: addressee as i32,
        signal_id: n.own_signal.map(|s| s.to_string()).unwrap_or_default(),
        signal_ids: n.signals.iter().map(|s| s.to_string()).collect(),
        counterparts: n.counterparts.iter().map(party_out).collect(),
        family: n.kind.is_family(),
    }
}
