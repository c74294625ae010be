//! Resync tickets: the federation CA's permission for one region to publish in bulk.
//!
//! A join, a re-key or a restore makes a node publish every child it holds to a peer at
//! once: far more blind operations than the peer's hourly oracle budget allows, and each
//! one is a guess a rogue could make. So bulk publishing needs a ticket, issued by the
//! federation's CA operators (`virfed ca issue resync-ticket --region R --children N
//! --valid-days D`), which the sender presents with every resync exchange. Every peer
//! checks it ([`verify`]) and counts what the sender publishes under it against `N`.
//!
//! A ticket is an X.509 certificate signed by the federation CA, so it needs no new
//! signature format and the CA key stays the only trust anchor. Its one SAN URI is
//! `urn:virfed:resync-ticket:<region>:<children>`; it has no extended key usage for TLS
//! and its private key is discarded at issue, and [`super::identity_from_cert`] parses no
//! such identity, so a ticket can never authenticate a connection. Its random serial
//! number names it in each peer's use count and audit entries.

use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The SAN URI prefix of a resync ticket.
pub const TICKET_URI_PREFIX: &str = "urn:virfed:resync-ticket:";

/// The largest ticket accepted on the wire (a P-256 certificate is ~600 bytes).
pub const MAX_TICKET_BYTES: usize = 4096;

/// A verified ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The region allowed to publish in bulk.
    pub region: String,
    /// How many children it may publish under this ticket, at each peer.
    pub children: u64,
    /// The certificate's serial number, hex: the ticket's name.
    pub serial: String,
    /// Unix seconds after which the ticket is no longer valid.
    pub not_after: i64,
}

/// Why a ticket was refused; every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("a resync (bulk publish) needs a resync ticket, and none was sent: the sending region's operators ask the federation CA for one (virfed ca issue resync-ticket --region REGION --children N --valid-days D) and set [federation] resync_ticket to its file")]
    Missing,
    #[error("the resync ticket is not a certificate: {0}")]
    Malformed(String),
    #[error("the resync ticket is not signed by this federation's CA; issue it with the federation CA (virfed ca issue resync-ticket)")]
    WrongCa,
    #[error("the resync ticket expired at {0} (or is not yet valid); issue a new one")]
    Expired(String),
    #[error("the resync ticket is for region {ticket}, not for {caller}")]
    OtherRegion { ticket: String, caller: String },
    #[error("the resync ticket {serial} allows {children} children and {used} are used; {asked} more refused: issue a new ticket for the rest")]
    UsedUp { serial: String, children: u64, used: u64, asked: u64 },
}

/// The SAN URI of a ticket for `region` and `children`.
pub fn ticket_uri(region: &str, children: u64) -> String {
    format!("{TICKET_URI_PREFIX}{region}:{children}")
}

/// Reads a ticket file (PEM) into the DER bytes sent with resync exchanges.
pub fn read_ticket_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| format!("resync ticket {}: not a PEM certificate: {e}", path.display()))?;
    Ok(der.as_ref().to_vec())
}

/// The CA certificates of a PEM bundle (the federation CA file).
pub fn ca_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.as_ref().to_vec()).collect()
}

/// Verifies a ticket sent by `caller`: signed by one of `cas` (DER), valid at `now`, for
/// `caller`. Use is counted by the caller of this function.
pub fn verify(der: &[u8], cas: &[Vec<u8>], caller: &str, now: DateTime<Utc>) -> Result<Ticket, TicketError> {
    if der.is_empty() {
        return Err(TicketError::Missing);
    }
    if der.len() > MAX_TICKET_BYTES {
        return Err(TicketError::Malformed(format!("larger than {MAX_TICKET_BYTES} bytes")));
    }
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TicketError::Malformed(e.to_string()))?;
    let signed_by_ca = cas.iter().any(|ca| {
        X509Certificate::from_der(ca)
            .is_ok_and(|(_, ca)| ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok())
    });
    if !signed_by_ca {
        return Err(TicketError::WrongCa);
    }
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let now_s = now.timestamp();
    if now_s < validity.not_before.timestamp() || now_s > not_after {
        return Err(TicketError::Expired(validity.not_after.to_string()));
    }
    let uris: Vec<&str> = cert
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(TicketError::Malformed("a ticket carries exactly one SAN URI".into()));
    };
    let rest = uri
        .strip_prefix(TICKET_URI_PREFIX)
        .ok_or_else(|| TicketError::Malformed(format!("{uri:?} is not a resync ticket URI")))?;
    let (region, children) =
        rest.rsplit_once(':').ok_or_else(|| TicketError::Malformed(format!("{uri:?}: no child count")))?;
    let children: u64 =
        children.parse().map_err(|_| TicketError::Malformed(format!("{uri:?}: the child count is not a number")))?;
    if region != caller {
        return Err(TicketError::OtherRegion { ticket: region.to_owned(), caller: caller.to_owned() });
    }
    Ok(Ticket { region: region.to_owned(), children, serial: hex::encode(cert.raw_serial()), not_after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
    }

    #[test]
    fn a_ticket_verifies_for_its_region_under_its_ca_only() {
        let ca = Ca::generate("fed", 365).unwrap();
        let other = Ca::generate("other", 365).unwrap();
        let ticket = der(&ca.issue_resync_ticket("utrecht", 5000, 7).unwrap());
        let cas = ca_certs(ca.cert_pem().as_bytes());
        let t = verify(&ticket, &cas, "utrecht", Utc::now()).unwrap();
        assert_eq!((t.region.as_str(), t.children), ("utrecht", 5000));
        assert_eq!(t.serial.len(), 32, "16 random serial bytes");
        assert!(matches!(verify(&ticket, &cas, "zwolle", Utc::now()), Err(TicketError::OtherRegion { .. })));
        let other_cas = ca_certs(other.cert_pem().as_bytes());
        assert_eq!(verify(&ticket, &other_cas, "utrecht", Utc::now()), Err(TicketError::WrongCa));
        let later = Utc::now() + chrono::Duration::days(8);
        assert!(matches!(verify(&ticket, &cas, "utrecht", later), Err(TicketError::Expired(_))));
        assert_eq!(verify(&[], &cas, "utrecht", Utc::now()), Err(TicketError::Missing));
        assert!(matches!(verify(b"junk", &cas, "utrecht", Utc::now()), Err(TicketError::Malformed(_))));
    }

    #[test]
    fn a_node_certificate_is_not_a_ticket_and_a_ticket_is_no_identity() {
        let ca = Ca::generate("fed", 365).unwrap();
        let cas = ca_certs(ca.cert_pem().as_bytes());
        let node = ca.issue(&crate::pki::CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap();
        assert!(matches!(verify(&der(&node.cert_pem), &cas, "utrecht", Utc::now()), Err(TicketError::Malformed(_))));
        let ticket = CertificateDer::from(der(&ca.issue_resync_ticket("utrecht", 10, 1).unwrap()));
        assert!(crate::pki::identity_from_cert(&ticket).is_err(), "a ticket cannot authenticate a connection");
    }

    #[test]
    fn tickets_are_refused_at_issue_when_they_make_no_sense() {
        let ca = Ca::generate("fed", 30).unwrap();
        assert!(ca.issue_resync_ticket("utrecht", 0, 7).is_err());
        assert!(ca.issue_resync_ticket("utrecht", 10, 0).is_err());
        assert!(ca.issue_resync_ticket("Not A Region", 10, 7).is_err());
        assert!(ca.issue_resync_ticket("utrecht", 10, 400).is_err(), "cannot outlive the CA");
    }
}
