//! Who is told what (D5–D7), as pure functions, and how a notice is recorded.
//!
//! The builders take [`Reporter`]s (a signal's id, organisation and party, and whether its
//! organisation has a coordinator) and return the notices in delivery order; they need no
//! store, so the recipient rules are tested here directly. [`Notify`] loads reporters in a
//! transaction and records each notice with its audit entry (D8).

use chrono::{DateTime, Utc};

use crate::domain::{
    Addressee, AuditAction, Notice, NoticeKind, OrgDomain, OrgId, Organisation, Party, Signal, SignalId,
};
use crate::store::{ChildRecord, Tx, TxResult};

/// A local signal as the notice rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    pub signal: SignalId,
    pub org: OrgId,
    /// What counterparts learn about this signal's reporter.
    pub party: Party,
    /// Whether the organisation has a coordinator (who is notified beside the professional).
    pub has_coordinator: bool,
}

/// The party of a local signal: its organisation's identification and contact details.
pub fn party_of(signal: &Signal, org: Option<&Organisation>) -> Party {
    Party {
        region: None,
        org_id: signal.org.clone(),
        org_name: org.map(|o| o.name.clone()).unwrap_or_else(|| signal.org.to_string()),
        org_domain: org.map(|o| o.domain).unwrap_or(OrgDomain::Other),
        professional: signal.professional.clone(),
        coordinator: org.and_then(|o| o.coordinator.clone()).or_else(|| signal.coordinator.clone()),
    }
}

/// The notices for one reporter: its professional, and its coordinator if it has one.
pub fn to_reporter(kind: NoticeKind, reporter: &Reporter, counterparts: &[Party]) -> Vec<Notice> {
    let mut addressees = vec![Addressee::Professional];
    if reporter.has_coordinator {
        addressees.push(Addressee::Coordinator);
    }
    addressees
        .into_iter()
        .map(|addressee| Notice {
            kind,
            addressee,
            recipient: reporter.org.clone(),
            own_signal: Some(reporter.signal),
            signals: vec![],
            counterparts: counterparts.to_vec(),
        })
        .collect()
}

/// The match officer's notice: every local party involved plus any remote ones (D5).
pub fn to_officer(kind: NoticeKind, officer: &OrgId, involved: &[&Reporter], remote: &[Party]) -> Notice {
    Notice {
        kind,
        addressee: Addressee::MatchOfficer,
        recipient: officer.clone(),
        own_signal: None,
        signals: involved.iter().map(|r| r.signal).collect(),
        counterparts: involved.iter().map(|r| r.party.clone()).chain(remote.iter().cloned()).collect(),
    }
}

/// D6: the one history notice for a new reporter, naming the earlier ones.
pub fn history(reporter: &Reporter, earlier: Vec<Party>) -> Notice {
    Notice {
        kind: NoticeKind::History,
        addressee: Addressee::Professional,
        recipient: reporter.org.clone(),
        own_signal: Some(reporter.signal),
        signals: vec![],
        counterparts: earlier,
    }
}

/// D5: a new signal on a child with other active signals (here or, as `remote`, in other
/// regions). The new reporter learns everyone else; each other local reporter learns the
/// new one; the officer learns everyone.
pub fn match_created(new: &Reporter, others: &[Reporter], remote: &[Party], officer: Option<&OrgId>) -> Vec<Notice> {
    let counterparts: Vec<Party> = others.iter().map(|r| r.party.clone()).chain(remote.iter().cloned()).collect();
    let mut out = to_reporter(NoticeKind::MatchCreated, new, &counterparts);
    for other in others {
        out.extend(to_reporter(NoticeKind::MatchCreated, other, std::slice::from_ref(&new.party)));
    }
    if let Some(officer) = officer {
        let involved: Vec<&Reporter> = others.iter().chain(std::iter::once(new)).collect();
        out.push(to_officer(NoticeKind::MatchCreated, officer, &involved, remote));
    }
    out
}

/// D7: `gone` stopped matching (withdrawn, expired, purged); every remaining active local
/// reporter learns it, and the officer gets the whole local picture.
pub fn match_ended_locally(gone: &Reporter, remaining: &[Reporter], officer: Option<&OrgId>) -> Vec<Notice> {
    let mut out = Vec::new();
    for other in remaining {
        out.extend(to_reporter(NoticeKind::MatchEnded, other, std::slice::from_ref(&gone.party)));
    }
    if let Some(officer) = officer {
        let involved: Vec<&Reporter> = remaining.iter().chain(std::iter::once(gone)).collect();
        out.push(to_officer(NoticeKind::MatchEnded, officer, &involved, &[]));
    }
    out
}

/// Every local active reporter learns about `remote` parties (a cross-region match made
/// or ended), and so does the officer.
pub fn to_locals(kind: NoticeKind, locals: &[Reporter], remote: &[Party], officer: Option<&OrgId>) -> Vec<Notice> {
    let mut out = Vec::new();
    for local in locals {
        out.extend(to_reporter(kind, local, remote));
    }
    if let Some(officer) = officer {
        let involved: Vec<&Reporter> = locals.iter().collect();
        out.push(to_officer(kind, officer, &involved, remote));
    }
    out
}

/// The audit record of a notice: action, subject and detail (never contact details).
pub fn audit_line(notice: &Notice, cursor: u64) -> (AuditAction, String, String) {
    let action = match notice.kind {
        NoticeKind::MatchCreated => AuditAction::NoticeMatchCreated,
        NoticeKind::MatchEnded => AuditAction::NoticeMatchEnded,
        NoticeKind::History => AuditAction::NoticeHistory,
        NoticeKind::FamilyMatchCreated => AuditAction::NoticeFamilyMatchCreated,
        NoticeKind::FamilyMatchEnded => AuditAction::NoticeFamilyMatchEnded,
    };
    let addressee = match notice.addressee {
        Addressee::Professional => "professional",
        Addressee::Coordinator => "coordinator",
        Addressee::MatchOfficer => "match officer",
    };
    let subject = notice.own_signal.map(|s| s.to_string()).unwrap_or_default();
    (action, subject, format!("to {addressee} of org:{} (cursor {cursor})", notice.recipient))
}

/// The notice rules applied inside a transaction.
pub struct Notify<'t, 'a> {
    tx: &'t Tx<'a>,
    at: DateTime<Utc>,
}

impl<'t, 'a> Notify<'t, 'a> {
    pub fn new(tx: &'t Tx<'a>, at: DateTime<Utc>) -> Self {
        Notify { tx, at }
    }

    /// The reporter of a stored signal, with its organisation as stored now.
    pub fn reporter(&self, signal: &Signal) -> TxResult<Reporter> {
        let org = self.tx.org(&signal.org)?;
        Ok(Reporter {
            signal: signal.id,
            org: signal.org.clone(),
            party: party_of(signal, org.as_ref()),
            has_coordinator: org.and_then(|o| o.coordinator).is_some(),
        })
    }

    pub fn reporters(&self, signals: &[Signal]) -> TxResult<Vec<Reporter>> {
        signals.iter().map(|s| self.reporter(s)).collect()
    }

    /// The active reporters of a child record.
    pub fn active_reporters(&self, record: &ChildRecord) -> TxResult<Vec<Reporter>> {
        self.reporters(&self.tx.signals_of(&record.active)?)
    }

    pub fn officer(&self) -> TxResult<Option<OrgId>> {
        self.tx.match_officer()
    }

    /// Stores each notice for its recipient and logs it (D8).
    pub fn send(&self, notices: Vec<Notice>) -> TxResult<()> {
        for notice in notices {
            let cursor = self.tx.push_notice(&notice)?;
            let (action, subject, detail) = audit_line(&notice, cursor);
            self.tx.log(self.at, "system:matcher", action, &subject, &detail)?;
        }
        Ok(())
    }

    /// Every active local reporter of the child, and the officer, learn about `remote`.
    pub fn locals(&self, kind: NoticeKind, record: &ChildRecord, remote: &[Party]) -> TxResult<()> {
        let locals = self.active_reporters(record)?;
        self.send(to_locals(kind, &locals, remote, self.officer()?.as_ref()))
    }

    /// Only the officer learns about `remote` (no local reporter is left to tell).
    pub fn officer_only(&self, kind: NoticeKind, remote: &[Party]) -> TxResult<()> {
        match self.officer()? {
            Some(officer) => self.send(vec![to_officer(kind, &officer, &[], remote)]),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Contact;

    fn reporter(n: u8, org: &str, has_coordinator: bool) -> Reporter {
        let org = OrgId::parse(org).unwrap();
        Reporter {
            signal: SignalId([n; 16]),
            org: org.clone(),
            party: Party {
                region: None,
                org_id: org,
                org_name: format!("org {n}"),
                org_domain: OrgDomain::Education,
                professional: Contact {
                    name: format!("professional {n}"),
                    role: "mentor".into(),
                    phone: "+31 10 000 0000".into(),
                    email: "p@example.nl".into(),
                },
                coordinator: None,
            },
            has_coordinator,
        }
    }

    fn recipients(notices: &[Notice]) -> Vec<(String, Addressee)> {
        notices.iter().map(|n| (n.recipient.to_string(), n.addressee)).collect()
    }

    #[test]
    fn d5_every_reporter_its_coordinator_and_the_officer_learn_only_the_others() {
        let new = reporter(1, "school", true);
        let others = [reporter(2, "ggd", false), reporter(3, "police", true)];
        let officer = OrgId::parse("municipality").unwrap();
        let notices = match_created(&new, &others, &[], Some(&officer));
        assert_eq!(
            recipients(&notices),
            vec![
                ("school".into(), Addressee::Professional),
                ("school".into(), Addressee::Coordinator),
                ("ggd".into(), Addressee::Professional),
                ("police".into(), Addressee::Professional),
                ("police".into(), Addressee::Coordinator),
                ("municipality".into(), Addressee::MatchOfficer),
            ]
        );
        for notice in &notices {
            assert_eq!(notice.kind, NoticeKind::MatchCreated);
            if notice.addressee != Addressee::MatchOfficer {
                // Nobody is told about their own organisation's signal.
                assert!(notice.counterparts.iter().all(|p| p.org_id != notice.recipient), "{notice:?}");
            }
        }
        assert_eq!(notices[0].counterparts, vec![others[0].party.clone(), others[1].party.clone()]);
        assert_eq!(notices[2].counterparts, vec![new.party.clone()]);
        let to_officer = notices.last().unwrap();
        assert_eq!(to_officer.signals, vec![SignalId([2; 16]), SignalId([3; 16]), SignalId([1; 16])]);
        assert_eq!(to_officer.counterparts.len(), 3);
        assert_eq!(to_officer.own_signal, None);
    }

    #[test]
    fn d5_remote_parties_reach_the_new_reporter_and_the_officer_not_the_other_locals() {
        let new = reporter(1, "school", false);
        let other = reporter(2, "ggd", false);
        let mut remote = reporter(9, "jeugdzorg", false).party;
        remote.region = Some(crate::domain::RegionId::parse("utrecht").unwrap());
        let notices = match_created(&new, std::slice::from_ref(&other), std::slice::from_ref(&remote), None);
        assert_eq!(notices.len(), 2, "no officer configured: no officer notice");
        assert!(notices[0].counterparts.contains(&remote));
        assert!(!notices[1].counterparts.contains(&remote));
    }

    #[test]
    fn d7_the_remaining_reporters_learn_who_left_and_the_officer_sees_all() {
        let gone = reporter(1, "school", false);
        let remaining = [reporter(2, "ggd", true)];
        let officer = OrgId::parse("municipality").unwrap();
        let notices = match_ended_locally(&gone, &remaining, Some(&officer));
        assert_eq!(notices.len(), 3);
        assert!(notices.iter().all(|n| n.kind == NoticeKind::MatchEnded));
        assert_eq!(notices[0].counterparts, vec![gone.party.clone()]);
        assert_eq!(notices[2].signals, vec![SignalId([2; 16]), SignalId([1; 16])]);
        assert!(match_ended_locally(&gone, &[], None).is_empty(), "nobody left, no officer: no notice");
    }

    #[test]
    fn d6_the_history_notice_goes_to_the_new_professional_only() {
        let new = reporter(1, "school", true);
        let notice = history(&new, vec![reporter(2, "ggd", false).party]);
        assert_eq!((notice.kind, notice.addressee), (NoticeKind::History, Addressee::Professional));
        assert_eq!(notice.own_signal, Some(new.signal));
    }

    #[test]
    fn d8_a_notice_is_audited_by_kind_recipient_and_cursor_without_contact_details() {
        let new = reporter(1, "school", false);
        let notice = &match_created(&new, &[reporter(2, "ggd", false)], &[], None)[0];
        let (action, subject, detail) = audit_line(notice, 42);
        assert_eq!(action, AuditAction::NoticeMatchCreated);
        assert_eq!(subject, SignalId([1; 16]).to_string());
        assert_eq!(detail, "to professional of org:school (cursor 42)");
        assert!(!detail.contains("professional 2"), "no contact details in the log");
    }
}
