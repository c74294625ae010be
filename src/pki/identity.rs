//! Who a peer is, as proven by its certificate.
//!
//! This file owns the [`Identity`] type, the syntax of ids and names ([`validate_id`]),
//! and the one function that reads an identity out of a verified certificate
//! ([`identity_from_cert`]).
//!
//! An identity is carried in exactly one SAN URI of the form `urn:virfed:<kind>:<name>`.
//! We use a URI SAN rather than the subject common name because SANs are structured,
//! covered by the same signature, and are what the TLS stack already looks at; a
//! dedicated `urn:virfed:` prefix keeps our identities apart from any DNS or IP SANs a
//! certificate also carries. A certificate with zero or several virfed URIs is refused:
//! "which one is it?" must never be a question.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::PkiError;

/// Prefix of every virfed identity URI.
pub const URI_PREFIX: &str = "urn:virfed:";

/// Longest allowed id or name (a DNS label's limit, so ids fit in host names too).
pub const MAX_ID_LEN: usize = 63;

/// A party in the federation, as named by its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A regional organisation using the client API: `urn:virfed:org:<id>`.
    Organisation(String),
    /// A regional operator (administration: organisations add/list):
    /// `urn:virfed:operator:<name>`.
    Operator(String),
    /// A federation node of one region: `urn:virfed:region:<id>`.
    Region(String),
    /// The national coordinator, read-only federation health:
    /// `urn:virfed:coordinator:<name>`.
    Coordinator(String),
}

impl Identity {
    /// The SAN URI that carries this identity, e.g. `urn:virfed:org:jeugdzorg-rotterdam`.
    pub fn san_uri(&self) -> String {
        format!("{URI_PREFIX}{}:{}", self.uri_kind(), self.name())
    }

    /// Parses a SAN URI of the form `urn:virfed:<kind>:<name>`; the name must pass
    /// [`validate_id`].
    pub fn parse_uri(uri: &str) -> Result<Identity, PkiError> {
        let bad = |reason: String| PkiError::InvalidIdentityUri { uri: uri.to_owned(), reason };
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(|| {
            bad(format!(
                "does not start with {URI_PREFIX:?}; expected urn:virfed:<org|operator|region|coordinator>:<name>"
            ))
        })?;
        let (kind, name) = rest
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between kind and name; expected urn:virfed:<kind>:<name>".into()))?;
        validate_id(name).map_err(|e| bad(e.to_string()))?;
        let name = name.to_owned();
        match kind {
            "org" => Ok(Identity::Organisation(name)),
            "operator" => Ok(Identity::Operator(name)),
            "region" => Ok(Identity::Region(name)),
            "coordinator" => Ok(Identity::Coordinator(name)),
            other => Err(bad(format!("unknown kind {other:?}; expected org, operator, region or coordinator"))),
        }
    }

    /// A human word for the kind: `organisation`, `operator`, `region` or `coordinator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Organisation(_) => "organisation",
            Identity::Operator(_) => "operator",
            Identity::Region(_) => "region",
            Identity::Coordinator(_) => "coordinator",
        }
    }

    /// The id or name inside the identity (without the kind).
    pub fn name(&self) -> &str {
        match self {
            Identity::Organisation(n) | Identity::Operator(n) | Identity::Region(n) | Identity::Coordinator(n) => n,
        }
    }

    /// The kind as spelled in the URI (`org` is shorter than the human word).
    fn uri_kind(&self) -> &'static str {
        match self {
            Identity::Organisation(_) => "org",
            Identity::Operator(_) => "operator",
            Identity::Region(_) => "region",
            Identity::Coordinator(_) => "coordinator",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// Checks the syntax shared by all ids and names: 1 to 63 characters, lowercase ASCII
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn validate_id(s: &str) -> Result<(), PkiError> {
    let bad = |reason: &'static str| PkiError::InvalidId { id: s.to_owned(), reason };
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(bad("it is longer than 63 characters"));
    }
    let mut bytes = s.bytes();
    if let Some(first) = bytes.next() {
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(bad("it must start with a lowercase letter or a digit"));
        }
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(bad("only lowercase letters a-z, digits 0-9, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

/// Reads the virfed identity from a (DER) certificate: exactly one SAN URI starting with
/// `urn:virfed:` must be present, and it must parse.
///
/// This does not verify the certificate; call it only on a certificate the TLS stack has
/// already verified against the federation CA.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse subjectAltName extension: {e}")))?;
    let mut uris = san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Identity::parse_uri(uri),
        (None, _) => Err(PkiError::BadCertificate(format!(
            "certificate (subject {}) has no {URI_PREFIX}… SAN URI; issue it with an identity",
            cert.subject()
        ))),
        (Some(_), Some(_)) => Err(PkiError::BadCertificate(format!(
            "certificate (subject {}) has more than one {URI_PREFIX}… SAN URI; it must name exactly one identity",
            cert.subject()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uri_round_trips_for_every_kind() {
        for id in [
            Identity::Organisation("jeugdzorg-rotterdam".into()),
            Identity::Operator("ops.rijnmond".into()),
            Identity::Region("rijnmond".into()),
            Identity::Coordinator("nji_1".into()),
        ] {
            let uri = id.san_uri();
            assert!(uri.starts_with(URI_PREFIX), "{uri}");
            assert_eq!(Identity::parse_uri(&uri).expect("parses"), id);
        }
        assert_eq!(Identity::Organisation("x".into()).san_uri(), "urn:virfed:org:x");
    }

    #[test]
    fn identity_display_names_kind_and_name() {
        let id = Identity::Organisation("jeugdzorg-rotterdam".into());
        assert_eq!(id.to_string(), "organisation jeugdzorg-rotterdam");
        assert_eq!(id.kind(), "organisation");
        assert_eq!(id.name(), "jeugdzorg-rotterdam");
    }

    #[test]
    fn validate_id_accepts_lowercase_digits_and_punctuation() {
        for ok in ["a", "0", "ggd-hollands-midden", "r.1_x", &"a".repeat(63)] {
            validate_id(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
    }

    #[test]
    fn validate_id_rejects_uppercase_empty_too_long_and_bad_chars() {
        for bad in [
            "",
            "Rotterdam",
            "rotterDam",
            &"a".repeat(64),
            "-leading-dash",
            ".dot",
            "has space",
            "slash/no",
            "colon:no",
            "é",
        ] {
            assert!(matches!(validate_id(bad), Err(PkiError::InvalidId { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn parse_uri_rejects_wrong_prefix_unknown_kind_and_bad_names() {
        for bad in [
            "urn:other:org:x",
            "https://virfed/org/x",
            "urn:virfed:org",
            "urn:virfed:org:",
            "urn:virfed:org:Upper",
            "urn:virfed:admin:x",
            "URN:VIRFED:org:x",
            "urn:virfed:org:a:b",
        ] {
            assert!(matches!(Identity::parse_uri(bad), Err(PkiError::InvalidIdentityUri { .. })), "{bad:?} accepted");
        }
    }
}
