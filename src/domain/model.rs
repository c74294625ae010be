//! The records of the VIR: organisations, contacts, signals (D1), match notices (D5, D6).
//!
//! Every string that enters from outside is validated here (required, length, no control
//! characters), so the API and the CLI share one set of rules and messages.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A field of a request that was refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{field} is required")]
    Missing { field: String },
    #[error("{field} is {len} characters long; at most {max} are allowed")]
    TooLong { field: String, len: usize, max: usize },
    #[error("{field} contains control characters (such as newlines or tabs); remove them")]
    ControlChars { field: String },
    #[error("{field} is not an e-mail address of the form name@domain")]
    BadEmail { field: String },
    #[error("{field} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit")]
    BadId { field: String },
    #[error("{field} is not one of: {allowed}")]
    NotOneOf { field: String, allowed: &'static str },
    #[error("{field} is not a date of the form YYYY-MM-DD")]
    BadDate { field: String },
}

/// Checks a free-text field: required, bounded, single line.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::Missing { field: field.into() });
    }
    let len = value.chars().count();
    if len > max {
        return Err(FieldError::TooLong { field: field.into(), len, max });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::ControlChars { field: field.into() });
    }
    Ok(())
}

/// Identifier syntax shared by organisations and regions (and the certificates naming them).
pub fn check_id(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && matches!(b, b'.' | b'_' | b'-')));
    if ok {
        Ok(())
    } else {
        Err(FieldError::BadId { field: field.into() })
    }
}

/// Parses an ISO date (`YYYY-MM-DD`).
pub fn parse_date(field: &str, value: &str) -> Result<NaiveDate, FieldError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| FieldError::BadDate { field: field.into() })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<$name, FieldError> {
                check_id($field, value)?;
                Ok($name(value.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An organisation registered with the region (D2); named by its client certificate.
    OrgId,
    "organisation id"
);
id_type!(
    /// A region of the federation; named by its node certificate.
    RegionId,
    "region id"
);

/// The sector an organisation works in (D2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrgDomain {
    YouthCare,
    Education,
    Health,
    PoliceJustice,
    SocialSupport,
    Other,
}

impl OrgDomain {
    pub const ALL: [OrgDomain; 6] = [
        OrgDomain::YouthCare,
        OrgDomain::Education,
        OrgDomain::Health,
        OrgDomain::PoliceJustice,
        OrgDomain::SocialSupport,
        OrgDomain::Other,
    ];
    pub const NAMES: &'static str = "youth-care, education, health, police-justice, social-support, other";

    pub fn as_str(self) -> &'static str {
        match self {
            OrgDomain::YouthCare => "youth-care",
            OrgDomain::Education => "education",
            OrgDomain::Health => "health",
            OrgDomain::PoliceJustice => "police-justice",
            OrgDomain::SocialSupport => "social-support",
            OrgDomain::Other => "other",
        }
    }
}

impl FromStr for OrgDomain {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrgDomain::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or(FieldError::NotOneOf { field: "domain".into(), allowed: OrgDomain::NAMES })
    }
}

impl fmt::Display for OrgDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const MAX_NAME: usize = 200;
pub const MAX_ROLE: usize = 100;
pub const MAX_PHONE: usize = 32;
pub const MAX_EMAIL: usize = 254;

/// Identification and contact details of a person (professional or coordinator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    pub role: String,
    pub phone: String,
    pub email: String,
}

impl Contact {
    /// Validates every field; `who` prefixes field names in messages ("professional.phone").
    pub fn validate(&self, who: &str) -> Result<(), FieldError> {
        check_text(&format!("{who}.name"), &self.name, MAX_NAME)?;
        check_text(&format!("{who}.role"), &self.role, MAX_ROLE)?;
        check_text(&format!("{who}.phone"), &self.phone, MAX_PHONE)?;
        check_text(&format!("{who}.email"), &self.email, MAX_EMAIL)?;
        let field = format!("{who}.email");
        match self.email.split_once('@') {
            Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') => {}
            _ => return Err(FieldError::BadEmail { field }),
        }
        if !self.phone.chars().all(|c| c.is_ascii_digit() || " +-()".contains(c)) {
            return Err(FieldError::NotOneOf { field: format!("{who}.phone"), allowed: "digits, spaces and + - ( )" });
        }
        Ok(())
    }
}

/// An organisation registered with the region (D2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: OrgId,
    pub name: String,
    pub domain: OrgDomain,
    /// The organisation's VIR coordinator, if it has one (D1, D5).
    pub coordinator: Option<Contact>,
}

impl Organisation {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("organisation name", &self.name, MAX_NAME)?;
        if let Some(c) = &self.coordinator {
            c.validate("coordinator")?;
        }
        Ok(())
    }
}

/// Opaque 128-bit signal id, random, shown as a UUID. Logs name signals by this id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SignalId(pub [u8; 16]);

impl SignalId {
    pub fn random() -> SignalId {
        SignalId(*uuid::Uuid::new_v4().as_bytes())
    }
    pub fn parse(s: &str) -> Result<SignalId, FieldError> {
        uuid::Uuid::parse_str(s)
            .map(|u| SignalId(*u.as_bytes()))
            .map_err(|_| FieldError::BadId { field: "signal id".into() })
    }
}

impl fmt::Display for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0), f)
    }
}

/// The local pseudonym of a child: a keyed hash of the BSN under the node's local key.
/// The store keys everything about a child by this; the BSN itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChildKey(pub [u8; 32]);

impl fmt::Debug for ChildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChildKey(..)")
    }
}

/// The local pseudonym of a parent of a child (family matches, D11): a keyed hash of the
/// parent's BSN under the node's local key with its own domain string. In the federation's
/// tables a parent is a *subject* like a child, under [`ParentKey::subject`]; the two key
/// spaces never meet (different domain strings).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParentKey(pub [u8; 32]);

impl ParentKey {
    /// The parent as a subject of the federation's tables (which are keyed by 32 bytes).
    pub fn subject(&self) -> ChildKey {
        ChildKey(self.0)
    }
}

impl fmt::Debug for ParentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ParentKey(..)")
    }
}

/// Why a signal is in the archive (D4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveReason {
    /// The removal date was reached.
    Expired,
    /// Withdrawn by the reporter because the concern has gone.
    ConcernResolved,
}

/// Where a signal is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalState {
    Active,
    Archived { on: NaiveDate, reason: ArchiveReason },
}

/// A signal (D1): the child (by local pseudonym), who reported, when, until when.
/// No reason, no category, no free text. The date of birth stays on this node (D3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub id: SignalId,
    pub child: ChildKey,
    pub org: OrgId,
    pub professional: Contact,
    /// The organisation's coordinator at the time of registration.
    pub coordinator: Option<Contact>,
    pub registered_at: DateTime<Utc>,
    pub removal_date: NaiveDate,
    pub date_of_birth: NaiveDate,
    pub state: SignalState,
}

impl Signal {
    pub fn is_active(&self) -> bool {
        self.state == SignalState::Active
    }
}

/// Why a signal is withdrawn (D4, D7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WithdrawReason {
    /// The signal should never have been made: deleted outright.
    MadeInError,
    /// The concern has gone: archived for 5 years, never matches again.
    ConcernResolved,
}

/// Who at the organisation withdrew (D7): the reporter or the organisation's coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Withdrawer {
    Professional,
    Coordinator,
}

/// One party of a match as its counterparts see it (D5): identification and contact
/// details only, never a BSN, a date or a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// `None` for this node's own region.
    pub region: Option<RegionId>,
    pub org_id: OrgId,
    pub org_name: String,
    pub org_domain: OrgDomain,
    pub professional: Contact,
    pub coordinator: Option<Contact>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeKind {
    /// Two or more active signals on the same child (D5).
    MatchCreated,
    /// A counterpart's signal was withdrawn, expired or erased (D7).
    MatchEnded,
    /// Only archived signals existed when this signal was made (D6).
    History,
    /// Active signals on two different children with a parent in common (family match,
    /// D11). Appended: the variant index is part of the stored notice.
    FamilyMatchCreated,
    /// A counterpart of a family match was withdrawn, expired or erased (D7).
    FamilyMatchEnded,
}

impl NoticeKind {
    /// Whether the notice is about a family match (signals on different children who share
    /// a parent); the notice says nothing else about how.
    pub fn is_family(self) -> bool {
        matches!(self, NoticeKind::FamilyMatchCreated | NoticeKind::FamilyMatchEnded)
    }

    /// The family form of a match kind.
    pub fn family(self) -> NoticeKind {
        match self {
            NoticeKind::MatchCreated => NoticeKind::FamilyMatchCreated,
            NoticeKind::MatchEnded => NoticeKind::FamilyMatchEnded,
            other => other,
        }
    }

    /// The kind without the family flag (as the watch stream and webhooks show it, with
    /// `family` beside it).
    pub fn base(self) -> NoticeKind {
        match self {
            NoticeKind::FamilyMatchCreated => NoticeKind::MatchCreated,
            NoticeKind::FamilyMatchEnded => NoticeKind::MatchEnded,
            other => other,
        }
    }

    /// Whether a match was made (child or family).
    pub fn is_created(self) -> bool {
        matches!(self, NoticeKind::MatchCreated | NoticeKind::FamilyMatchCreated)
    }
}

/// The person within the receiving organisation a notice is for (D5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Addressee {
    Professional,
    Coordinator,
    MatchOfficer,
}

/// A notice stored for one recipient organisation and delivered on its watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub addressee: Addressee,
    pub recipient: OrgId,
    /// The recipient's own signal the notice is about (its professional knows the child by
    /// it); `None` for the match officer, who gets the local signal ids in `signals`.
    pub own_signal: Option<SignalId>,
    /// For the match officer: the local signals taking part.
    pub signals: Vec<SignalId>,
    pub counterparts: Vec<Party>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn contact() -> Contact {
        Contact {
            name: "A. de Vries".into(),
            role: "jeugdconsulent".into(),
            phone: "+31 10 123 4567".into(),
            email: "a.devries@example.nl".into(),
        }
    }

    #[test]
    fn d1_contact_fields_are_required_bounded_and_single_line() {
        assert!(contact().validate("professional").is_ok());
        let mut c = contact();
        c.phone = " ".into();
        assert_eq!(c.validate("professional"), Err(FieldError::Missing { field: "professional.phone".into() }));
        let mut c = contact();
        c.name = "x".repeat(MAX_NAME + 1);
        assert!(matches!(c.validate("p"), Err(FieldError::TooLong { len: 201, max: 200, .. })));
        let mut c = contact();
        c.role = "a\nb".into();
        assert!(matches!(c.validate("p"), Err(FieldError::ControlChars { .. })));
        let mut c = contact();
        c.email = "nobody".into();
        assert!(matches!(c.validate("p"), Err(FieldError::BadEmail { .. })));
        let mut c = contact();
        c.phone = "call me".into();
        assert!(c.validate("p").is_err());
    }

    #[test]
    fn d2_ids_and_domains_parse_strictly() {
        assert!(OrgId::parse("jeugdzorg-rotterdam").is_ok());
        for bad in ["", "Upper", "-lead", "sp ace", &"x".repeat(64)] {
            assert!(OrgId::parse(bad).is_err(), "{bad}");
        }
        for d in OrgDomain::ALL {
            assert_eq!(d.as_str().parse::<OrgDomain>(), Ok(d));
        }
        assert!("police".parse::<OrgDomain>().is_err());
    }

    #[test]
    fn signal_id_round_trips() {
        let id = SignalId::random();
        assert_eq!(SignalId::parse(&id.to_string()), Ok(id));
        assert!(SignalId::parse("not-an-id").is_err());
    }
}
