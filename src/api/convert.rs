//! Conversions between protobuf messages and domain types, validating on the way in.

use chrono::{NaiveDate, SecondsFormat};

use crate::config::FamilySource;
use crate::domain::retention::removal_date_for_registration;
use crate::domain::{
    parse_date, Addressee, Bsn, Contact, Notice, NoticeKind, OrgDomain, OrgId, Organisation, Party, Signal, SignalId,
    SignalState, WithdrawReason, Withdrawer,
};
use crate::pb::admin as admin_pb;
use crate::pb::client as pb;

use super::ApiError;

/// A `RegisterSignal` request, validated: what the service checks before it touches the
/// rate limit or the store (invariant 7: a refused request changes nothing).
#[derive(Debug)]
pub struct Registration {
    /// The child (D9: a valid BSN).
    pub bsn: Bsn,
    pub date_of_birth: NaiveDate,
    pub professional: Contact,
    /// The requested removal date, or the latest allowed (D4); the child is under 23 (D3).
    pub removal_date: NaiveDate,
    /// The child's parents from the request (D11), when this region takes them from it.
    pub parents: Vec<Bsn>,
}

/// Validates a registration on a node whose parents come from `family`, on `today`.
/// Messages name the field, never the number in it.
pub fn registration_in(
    r: pb::RegisterSignalRequest,
    family: FamilySource,
    today: NaiveDate,
) -> Result<Registration, ApiError> {
    let bsn = Bsn::parse(&r.bsn)?;
    let date_of_birth = parse_date("date_of_birth", &r.date_of_birth)?;
    let professional = contact_in(r.professional, "professional")?;
    let removal = match r.removal_date.as_str() {
        "" => None,
        s => Some(parse_date("removal_date", s)?),
    };
    let removal_date = removal_date_for_registration(date_of_birth, removal, today)?;
    let parents = parents_in(&r.parent_bsns, &bsn, family)?;
    Ok(Registration { bsn, date_of_birth, professional, removal_date, parents })
}

/// The request's parents (D11): at most 2, each a valid BSN (D9), none the child's own,
/// none twice; only on a node whose parents come from the request. Messages name the
/// field by position, never the number.
fn parents_in(raw: &[String], child: &Bsn, family: FamilySource) -> Result<Vec<Bsn>, ApiError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let refuse = ApiError::InvalidArgument;
    match family {
        FamilySource::Request => {}
        FamilySource::Brp => {
            return Err(refuse(
                "parent_bsns is not accepted here: this region looks a child's parents up in the BRP itself; \
                 send the registration without parent_bsns"
                    .into(),
            ))
        }
        FamilySource::Off => {
            return Err(refuse(
                "parent_bsns is not accepted here: this region does not make family matches \
                 (family.source = \"off\"); send the registration without parent_bsns"
                    .into(),
            ))
        }
    }
    if raw.len() > 2 {
        return Err(refuse(format!(
            "parent_bsns lists {} BSNs; give at most 2 (the parents as the BRP lists them); nothing was registered",
            raw.len()
        )));
    }
    let mut out: Vec<Bsn> = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let bsn = Bsn::parse(text).map_err(|e| refuse(format!("parent_bsns[{i}]: {e}; nothing was registered")))?;
        if bsn == *child {
            return Err(refuse(format!("parent_bsns[{i}] is the child's own BSN; give the parents' BSNs")));
        }
        if out.contains(&bsn) {
            return Err(refuse(format!("parent_bsns[{i}] repeats an earlier parent; give each parent once")));
        }
        out.push(bsn);
    }
    Ok(out)
}

/// A signal id as a client sends it.
pub fn signal_id_in(raw: &str) -> Result<SignalId, ApiError> {
    SignalId::parse(raw).map_err(|_| {
        ApiError::InvalidArgument(format!(
            "signal_id is not a signal id (a UUID as returned by RegisterSignal, {} characters sent)",
            raw.chars().count()
        ))
    })
}

/// A `WithdrawSignal` request, validated: the signal, the reason and who withdraws (D7).
pub fn withdrawal_in(r: &pb::WithdrawSignalRequest) -> Result<(SignalId, WithdrawReason, Withdrawer), ApiError> {
    let id = signal_id_in(&r.signal_id)?;
    let reason = match pb::WithdrawReason::try_from(r.reason) {
        Ok(pb::WithdrawReason::MadeInError) => WithdrawReason::MadeInError,
        Ok(pb::WithdrawReason::ConcernResolved) => WithdrawReason::ConcernResolved,
        _ => {
            return Err(ApiError::InvalidArgument(
                "reason is required: MADE_IN_ERROR (delete) or CONCERN_RESOLVED (archive)".into(),
            ))
        }
    };
    let by = match pb::Withdrawer::try_from(r.withdrawn_by) {
        Ok(pb::Withdrawer::Professional) => Withdrawer::Professional,
        Ok(pb::Withdrawer::Coordinator) => Withdrawer::Coordinator,
        _ => {
            return Err(ApiError::InvalidArgument(
                "withdrawn_by is required: PROFESSIONAL (the reporter) or COORDINATOR (D7)".into(),
            ))
        }
    };
    Ok((id, reason, by))
}

/// An operator's `AddOrganisation` request, validated.
pub fn organisation_in(r: admin_pb::Organisation) -> Result<Organisation, ApiError> {
    let id = OrgId::parse(&r.id)?;
    let domain = r.domain.parse::<OrgDomain>()?;
    let coordinator = match r.coordinator {
        None => None,
        Some(c) => {
            let contact = Contact { name: c.name, role: c.role, phone: c.phone, email: c.email };
            contact.validate("coordinator")?;
            Some(contact)
        }
    };
    let org = Organisation { id, name: r.name, domain, coordinator };
    org.validate()?;
    Ok(org)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariant1_a_bsn_sent_as_signal_id_is_not_quoted_back() {
        let refusal = signal_id_in("111222333").unwrap_err().to_string();
        assert!(!refusal.contains("111222333"), "{refusal}");
        assert!(refusal.contains("signal_id") && refusal.contains("9 characters sent"), "{refusal}");
    }
}
