//! The audit vocabulary (D8): every action the audit log records, as one enum.
//!
//! The log stores an action as its dotted name (the hash chain covers that text, so the
//! names never change once written); the enum is how the code writes and reads them, so
//! the writer and the readers (participation report, tests) cannot drift apart.

use std::fmt;

macro_rules! actions {
    ($($variant:ident => $name:literal, $doc:literal;)+) => {
        /// One kind of logged event.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AuditAction {
            $(#[doc = $doc] $variant,)+
        }

        impl AuditAction {
            /// Every action, in declaration order.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant,)+];

            /// The dotted name stored in the log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $name,)+
                }
            }

            /// The action a stored name stands for (None: not an action of this version).
            pub fn parse(name: &str) -> Option<AuditAction> {
                match name {
                    $($name => Some(AuditAction::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

actions! {
    OrgAdd => "org.add", "An organisation registered with the region (D2).";
    OrgUpdate => "org.update", "An organisation's details changed.";
    SignalRegister => "signal.register", "A new signal (D1).";
    SignalRegisterRepeat => "signal.register.repeat", "A repeat registration, answered with the existing signal (D2).";
    SignalRegisterRateLimited => "signal.register.rate-limited", "Registrations refused over the organisation's rate limit.";
    SignalWithdrawMadeInError => "signal.withdraw.made-in-error", "Withdrawn as made in error: deleted (D4).";
    SignalWithdrawConcernResolved => "signal.withdraw.concern-resolved", "Withdrawn as the concern is resolved: archived (D4).";
    SignalExpire => "signal.expire", "The removal date was reached: archived (D4).";
    ArchivePurge => "archive.purge", "Five years in the archive ended: deleted (D4).";
    ChildErase => "child.erase", "An erasure decision deleted a child's signals (D4).";
    ChildAgeLimit => "child.age-limit", "The 23rd birthday deleted a child's signals (D3).";
    NoticeMatchCreated => "notice.match-created", "A match notice (D5).";
    NoticeMatchEnded => "notice.match-ended", "A match-ended notice (D7).";
    NoticeHistory => "notice.history", "A history notice (D6).";
    NoticeFamilyMatchCreated => "notice.family-match-created", "A family match notice (D11).";
    NoticeFamilyMatchEnded => "notice.family-match-ended", "A family match-ended notice (D11, D7).";
    FamilyParentLinked => "family.parent-linked", "A child's parents were recorded (as pseudonyms) for family matches (D11).";
    FamilyLookupQueued => "family.lookup-queued", "A BRP parent lookup was queued for a new child (D11).";
    FamilyLookupDone => "family.lookup-done", "A queued BRP parent lookup completed (D11).";
    FederationMatch => "federation.match", "A cross-region pair matched.";
    FederationMatchEnded => "federation.match-ended", "A cross-region pair ended.";
    FederationExchange => "federation.exchange", "Items applied from a peer.";
    FederationJoin => "federation.join", "Every child published to a new peer.";
    FederationResync => "federation.resync", "A peer's resync or re-key was blinded.";
    FederationResyncAfterRestore => "federation.resync-after-restore", "After a restore: every peer asked for a resync.";
    FederationRekey => "federation.rekey", "The blinding key was replaced.";
    FederationRefused => "federation.refused", "A peer request was refused (identity).";
    FederationBudgetExceeded => "federation.budget-exceeded", "A peer went over its blind budget.";
    FederationContactsRefused => "federation.contacts-refused", "Contact details from a peer for a pair this node did not detect.";
    FederationReplay => "federation.replay", "A peer replayed an already applied publish.";
    FederationProofRefused => "federation.proof-refused", "A peer's blinded answers or re-key failed their proof.";
    FederationTicketRefused => "federation.ticket-refused", "A peer's bulk publish (resync) was refused for its resync ticket: missing, invalid, expired, another region's or used up.";
    FederationPeerKey => "federation.peer-key", "A peer's public blinding key was pinned, or replaced by its re-key announcement.";
    FederationPeerEpoch => "federation.peer-epoch", "A peer's store started a new epoch (restored from a backup): its earlier one is retired.";
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_name_is_unique_and_parses_back() {
        let names: std::collections::HashSet<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), AuditAction::ALL.len());
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(*action));
        }
        assert_eq!(AuditAction::parse("signal.unknown"), None);
    }
}
