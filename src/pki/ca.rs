//! The federation CA tooling, on rcgen.
//!
//! This file owns the CA ([`Ca`]: a certificate and its ECDSA P-256 key), what a
//! certificate request looks like ([`CertSpec`]), issuing certificates and revocation
//! lists, and the file helpers for secrets ([`write_secret_file`],
//! [`check_secret_file_mode`]) that other modules reuse for their own key files.
//!
//! A CA on disk is a directory with `ca.pem` (certificate, 0644) and `ca.key` (private
//! key, 0600, in a 0700 directory). Key files are created with mode 0600 from the first
//! byte (never chmod-ed afterwards, which would leave a window), fsynced, and a key file
//! readable by group or others is refused on load, as Garage does for its secrets.
//!
//! Serial numbers are random (not rcgen's default, a hash of the public key), so a
//! revocation list can name one certificate even if a key were ever reused.
//!
//! Node certificates (server + client auth with a region identity) and coordinator
//! certificates are plain [`CertSpec`] values: start from [`CertSpec::server`] or
//! [`CertSpec::client`] and set the other fields.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::identity::{validate_id, Identity};
use super::PkiError;

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// How far back `not_before` is set, so a peer whose clock is a little behind accepts a
/// certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// A certificate authority: its certificate and the key that signs with it.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Ca").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM). Secret: store with [`write_cert_pair`].
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// What to put in a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// The virfed identity, written as the certificate's single `urn:virfed:` SAN URI.
    pub identity: Option<Identity>,
    /// SAN DNS names (server certificates), e.g. `localhost`, `vir.rijnmond.example`.
    pub dns_names: Vec<String>,
    /// SAN IP addresses (server certificates).
    pub ip_addresses: Vec<IpAddr>,
    /// Extended key usage serverAuth.
    pub server: bool,
    /// Extended key usage clientAuth.
    pub client: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertSpec {
    /// A client certificate for `identity`, valid from five minutes ago for
    /// `validity_days` days, clientAuth only.
    pub fn client(identity: Identity, validity_days: u32) -> CertSpec {
        let (not_before, not_after) = validity(validity_days);
        CertSpec {
            identity: Some(identity),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            server: false,
            client: true,
            not_before,
            not_after,
        }
    }

    /// A server certificate for the given names, serverAuth only. A name that parses as
    /// an IP address becomes an IP SAN, the rest DNS SANs.
    pub fn server(dns_names: Vec<String>, validity_days: u32) -> CertSpec {
        let (not_before, not_after) = validity(validity_days);
        let (ips, dns): (Vec<String>, Vec<String>) = dns_names.into_iter().partition(|n| n.parse::<IpAddr>().is_ok());
        CertSpec {
            identity: None,
            dns_names: dns,
            ip_addresses: ips.iter().filter_map(|n| n.parse().ok()).collect(),
            server: true,
            client: false,
            not_before,
            not_after,
        }
    }

    /// A federation node certificate of `region`: identity `urn:virfed:region:<region>`,
    /// the given DNS names (a name that parses as an IP address becomes an IP SAN), and
    /// both serverAuth and clientAuth, since nodes dial each other with the same
    /// certificate they serve.
    pub fn node(region: &str, dns_names: Vec<String>, validity_days: u32) -> CertSpec {
        let mut spec = CertSpec::server(dns_names, validity_days);
        spec.identity = Some(Identity::Region(region.to_owned()));
        spec.client = true;
        spec
    }

    /// A certificate of the national coordinator `name` (read-only federation health):
    /// identity `urn:virfed:coordinator:<name>`, clientAuth only.
    pub fn coordinator(name: &str, validity_days: u32) -> CertSpec {
        CertSpec::client(Identity::Coordinator(name.to_owned()), validity_days)
    }

    fn check(&self) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::InvalidSpec(format!(
                "not_after ({}) must be later than not_before ({})",
                self.not_after, self.not_before
            )));
        }
        if !self.server && !self.client {
            return Err(PkiError::InvalidSpec("a certificate must allow server use, client use, or both".into()));
        }
        if self.server && self.dns_names.is_empty() && self.ip_addresses.is_empty() {
            return Err(PkiError::InvalidSpec(
                "a server certificate needs at least one DNS name or IP address that clients will connect to".into(),
            ));
        }
        if let Some(id) = &self.identity {
            validate_id(id.name())?;
        }
        Ok(())
    }
}

/// `(now - CLOCK_SKEW, now + days)`.
fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - CLOCK_SKEW, now + Duration::days(i64::from(days)))
}

/// A random positive serial number of 16 bytes, from the ring provider's CSPRNG.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::InvalidSpec("the system random generator failed".into()))?;
    // Positive and always 16 bytes long once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

impl Ca {
    /// Creates a new CA in memory (tests, demo). The CA may only sign end-entity
    /// certificates (path length 0) and CRLs.
    pub fn generate(common_name: &str, validity_days: u32) -> Result<Ca, PkiError> {
        if common_name.trim().is_empty() {
            return Err(PkiError::InvalidSpec("the CA needs a non-empty common name".into()));
        }
        if validity_days == 0 {
            return Err(PkiError::InvalidSpec("the CA validity must be at least one day".into()));
        }
        let key = KeyPair::generate()?;
        let (not_before, not_after) = validity(validity_days);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "virfed");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key), not_after })
    }

    /// Creates a CA in `dir` (made with mode 0700 if missing): writes `ca.pem` and
    /// `ca.key` (0600). Refuses if either file already exists.
    pub fn init(dir: &Path, common_name: &str, validity_days: u32) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&key_path, &cert_path] {
            if path.exists() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        let ca = Ca::generate(common_name, validity_days)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| PkiError::io(dir, "create the CA directory", e))?;
        write_secret_file(&key_path, ca.issuer.key().serialize_pem().as_bytes())?;
        write_public_file(&cert_path, ca.cert_pem.as_bytes())?;
        Ok(ca)
    }

    /// Loads the CA from `dir`. Refuses a `ca.key` readable by group or others, and a key
    /// that does not belong to `ca.pem`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        check_secret_file_mode(&key_path)?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| PkiError::io(&key_path, "read the CA key", e))?;
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|e| PkiError::io(&cert_path, "read the CA certificate", e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Pem {
            what: key_path.display().to_string(),
            reason: format!("not a usable private key ({e})"),
        })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Pem {
            what: cert_path.display().to_string(),
            reason: format!("no certificate found ({e})"),
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der.as_ref()).map_err(|e| PkiError::Pem {
            what: cert_path.display().to_string(),
            reason: format!("cannot parse the certificate ({e})"),
        })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                key: key_path.display().to_string(),
                cert: cert_path.display().to_string(),
            });
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| PkiError::Pem {
            what: cert_path.display().to_string(),
            reason: format!("not usable as a CA certificate ({e})"),
        })?;
        Ok(Ca { issuer, cert_pem, not_after })
    }

    /// The CA certificate, PEM: what every node and client trusts.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a certificate with a fresh ECDSA P-256 key and a random serial number.
    /// A fresh certificate (new key) with the same identity, names and key usages as
    /// `cert_pem`, valid for `validity_days` from now: certificate renewal. Refuses a
    /// certificate this CA did not issue.
    pub fn renew(&self, cert_pem: &str, validity_days: u32) -> Result<IssuedCert, PkiError> {
        use x509_parser::extensions::GeneralName;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Pem { what: "certificate".into(), reason: format!("no certificate found ({e})") })?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| PkiError::BadCertificate(format!("cannot parse certificate: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(self.cert_pem().as_bytes())
            .map_err(|e| PkiError::Pem { what: "CA certificate".into(), reason: e.to_string() })?;
        let ca = x509_parser::parse_x509_certificate(ca_der.as_ref())
            .map(|(_, c)| c.subject().to_string())
            .map_err(|e| PkiError::BadCertificate(format!("cannot parse the CA certificate: {e}")))?;
        if cert.issuer().to_string() != ca {
            return Err(PkiError::InvalidSpec(format!(
                "this certificate was issued by {}, not by this CA ({ca}); renew it with its own CA",
                cert.issuer()
            )));
        }
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => ip_addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                        16 => {
                            ip_addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()))
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let (server, client) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (eku.value.server_auth, eku.value.client_auth),
            _ => (false, false),
        };
        let identity = crate::pki::identity_from_cert(&der).ok();
        let (not_before, not_after) = validity(validity_days);
        self.issue(&CertSpec { identity, dns_names, ip_addresses, server, client, not_before, not_after })
    }

    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, PkiError> {
        spec.check()?;
        if spec.not_after > self.not_after {
            return Err(PkiError::InvalidSpec(format!(
                "the certificate would outlive the CA (CA valid until {}); choose fewer days or renew the CA",
                self.not_after
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let common_name = match (&spec.identity, spec.dns_names.first()) {
            (Some(id), _) => id.to_string(),
            (None, Some(dns)) => dns.clone(),
            (None, None) => spec.ip_addresses.first().map(ToString::to_string).unwrap_or_default(),
        };
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "virfed");
        params.distinguished_name = dn;
        if let Some(id) = &spec.identity {
            params.subject_alt_names.push(SanType::URI(
                id.san_uri().try_into().map_err(|e| PkiError::InvalidSpec(format!("identity URI: {e}")))?,
            ));
        }
        for name in &spec.dns_names {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|e| PkiError::InvalidSpec(format!("DNS name {name:?} is not ASCII: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &spec.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A resync ticket (see [`super::ticket`]) for `region` to publish up to `children`
    /// children in bulk at each peer, valid for `valid_days` days. Returns the PEM
    /// certificate; its key pair is generated and dropped, so it can never be used to
    /// authenticate.
    pub fn issue_resync_ticket(&self, region: &str, children: u64, valid_days: u32) -> Result<String, PkiError> {
        validate_id(region)?;
        if children == 0 {
            return Err(PkiError::InvalidSpec("a resync ticket allows at least one child (--children)".into()));
        }
        if valid_days == 0 {
            return Err(PkiError::InvalidSpec("a resync ticket is valid at least one day (--valid-days)".into()));
        }
        let (not_before, not_after) = validity(valid_days);
        if not_after > self.not_after {
            return Err(PkiError::InvalidSpec(format!(
                "the ticket would outlive the CA (CA valid until {}); choose fewer days",
                self.not_after
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("resync ticket for {region}"));
        dn.push(DnType::OrganizationName, "virfed");
        params.distinguished_name = dn;
        let uri = super::ticket::ticket_uri(region, children);
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().map_err(|e| PkiError::InvalidSpec(format!("ticket URI: {e}")))?));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        Ok(params.signed_by(&key, &self.issuer)?.pem())
    }

    /// A PEM certificate revocation list naming `revoked_serials` (big-endian serial
    /// bytes, as returned by [`cert_serial`]), valid for `next_update_days` days.
    ///
    /// The CRL number is the current Unix time in seconds, so successive lists from one
    /// CA increase without keeping a counter on disk.
    pub fn revocation_list(&self, revoked_serials: &[Vec<u8>], next_update_days: u32) -> Result<String, PkiError> {
        if next_update_days == 0 {
            return Err(PkiError::InvalidSpec("next_update_days must be at least 1".into()));
        }
        let now = OffsetDateTime::now_utc();
        let crl_number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + Duration::days(i64::from(next_update_days)),
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - CLOCK_SKEW,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

impl Ca {
    /// Revokes the certificate `cert_pem`, which must have been issued by the CA in `dir`:
    /// adds its serial to `dir/revoked.txt` (lowercase hex, one per line; revoking twice
    /// is harmless) and rewrites `dir/crl.pem` with every revoked serial, valid for
    /// `next_update_days` days. Both files are replaced atomically (temporary file,
    /// fsync, rename), so a node reading them never sees half a file. Returns the CRL
    /// path.
    pub fn revoke(dir: &Path, cert_pem: &str, next_update_days: u32) -> Result<PathBuf, PkiError> {
        let ca = Ca::load(dir)?;
        ca.check_issued_by_me(cert_pem)?;
        let serial = cert_serial(cert_pem)?;
        let registry = dir.join(REVOKED_FILE);
        let mut serials = read_revoked(&registry)?;
        if !serials.contains(&serial) {
            serials.push(serial);
            let mut text = String::new();
            for s in &serials {
                text.push_str(&hex::encode(s));
                text.push('\n');
            }
            replace_file(&registry, text.as_bytes(), 0o644)?;
        }
        ca.write_crl(dir, &serials, next_update_days)
    }

    /// (Re)writes `dir/crl.pem` from `dir/revoked.txt` (an empty list when nobody was
    /// revoked yet), valid for `next_update_days` days, atomically. Run it at set-up so
    /// nodes configured with the CRL have a file to read, and before the list's next
    /// update is due. Returns the CRL path.
    pub fn publish_crl(dir: &Path, next_update_days: u32) -> Result<PathBuf, PkiError> {
        let ca = Ca::load(dir)?;
        let serials = read_revoked(&dir.join(REVOKED_FILE))?;
        ca.write_crl(dir, &serials, next_update_days)
    }

    /// The serials listed in `dir/revoked.txt` (big-endian bytes), oldest first.
    pub fn revoked_serials(dir: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
        read_revoked(&dir.join(REVOKED_FILE))
    }

    fn write_crl(&self, dir: &Path, serials: &[Vec<u8>], next_update_days: u32) -> Result<PathBuf, PkiError> {
        let crl = self.revocation_list(serials, next_update_days)?;
        let path = dir.join(CRL_FILE);
        replace_file(&path, crl.as_bytes(), 0o644)?;
        Ok(path)
    }

    /// Refuses a certificate whose issuer is not this CA (by name, and by key identifier
    /// when both carry one): revoking it here would do nothing.
    fn check_issued_by_me(&self, cert_pem: &str) -> Result<(), PkiError> {
        let parse = |pem: &str, what: &str| -> Result<CertificateDer<'static>, PkiError> {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| PkiError::Pem { what: what.into(), reason: format!("no certificate found ({e})") })
        };
        let ca_der = parse(&self.cert_pem, "CA certificate")?;
        let cert_der = parse(cert_pem, "certificate to revoke")?;
        let bad = |e: x509_parser::nom::Err<x509_parser::error::X509Error>| {
            PkiError::BadCertificate(format!("cannot parse certificate: {e}"))
        };
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref()).map_err(bad)?;
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der.as_ref()).map_err(bad)?;
        let mut same = cert.issuer().as_raw() == ca.subject().as_raw();
        let ski = ca.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
        let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        });
        if let (Some(ski), Some(aki)) = (ski, aki) {
            same &= ski == aki;
        }
        if !same {
            return Err(PkiError::BadCertificate(format!(
                "the certificate (subject {}, issuer {}) was not issued by this CA ({}); revoke it with the CA that issued it",
                cert.subject(),
                cert.issuer(),
                ca.subject()
            )));
        }
        Ok(())
    }
}

/// File name of the revocation registry inside a CA directory: revoked serials, hex.
pub const REVOKED_FILE: &str = "revoked.txt";
/// File name of the current certificate revocation list inside a CA directory.
pub const CRL_FILE: &str = "crl.pem";

/// Reads a revocation registry; a missing file is an empty registry. Blank lines and
/// lines starting with `#` are skipped.
fn read_revoked(path: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PkiError::io(path, "read the revocation registry", e)),
    };
    let mut serials: Vec<Vec<u8>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let serial = hex::decode(line).map_err(|e| PkiError::Pem {
            what: format!("{}, line {}", path.display(), i + 1),
            reason: format!("not a hexadecimal serial number ({e}); fix or remove the line"),
        })?;
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    Ok(serials)
}

/// The serial number (big-endian bytes) of the first certificate in `cert_pem`, for
/// [`Ca::revocation_list`].
pub fn cert_serial(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Pem { what: "certificate".into(), reason: format!("no certificate found ({e})") })?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse certificate: {e}")))?;
    Ok(cert.serial.to_bytes_be())
}

/// Writes `<dir>/<stem>.pem` (certificate, 0644) and `<dir>/<stem>.key` (key, 0600 from
/// creation). Without `overwrite`, refuses if either file exists; with it, replaces both
/// atomically (write to a temporary file, fsync, rename). Returns (cert path, key path).
pub fn write_cert_pair(
    dir: &Path,
    stem: &str,
    issued: &IssuedCert,
    overwrite: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    validate_id(stem)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    if overwrite {
        replace_file(&key_path, issued.key_pem.as_bytes(), 0o600)?;
        replace_file(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    } else {
        for path in [&key_path, &cert_path] {
            if path.exists() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        write_secret_file(&key_path, issued.key_pem.as_bytes())?;
        write_public_file(&cert_path, issued.cert_pem.as_bytes())?;
    }
    Ok((cert_path, key_path))
}

/// Creates `path` (it must not exist) with mode 0600, writes `bytes` and fsyncs it.
/// Use for every private key the crate writes.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_new_file(path, bytes, 0o600)
}

/// Refuses a secret file that group or others may read or write.
pub fn check_secret_file_mode(path: &Path) -> Result<(), PkiError> {
    let meta = std::fs::metadata(path).map_err(|e| PkiError::io(path, "read the key file", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions { path: path.to_path_buf(), mode });
    }
    Ok(())
}

fn write_public_file(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_new_file(path, bytes, 0o644)
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::AlreadyExists { path: path.to_path_buf() }
        } else {
            PkiError::io(path, "create the file", e)
        }
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| PkiError::io(path, "write the file", e))?;
    sync_parent(path)
}

/// Replaces `path` atomically: `<path>.tmp` is created with `mode`, written, fsynced and
/// renamed over `path`.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from an interrupted earlier run is ours to discard.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PkiError::io(&tmp, "remove the stale temporary file", e)),
    }
    write_new_file(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| PkiError::io(path, "replace the file", e))?;
    sync_parent(path)
}

/// Makes a file creation or rename durable by fsyncing the directory holding it.
fn sync_parent(path: &Path) -> Result<(), PkiError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| PkiError::io(parent, "sync the directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_keeps_identity_names_and_usages_with_a_new_key() {
        let ca = Ca::generate("renew test CA", 3650).unwrap();
        let spec = CertSpec::node("rotterdam", vec!["vir.rotterdam.example".into(), "127.0.0.1".into()], 10);
        let old = ca.issue(&spec).unwrap();
        let new = ca.renew(&old.cert_pem, 365).unwrap();
        assert_ne!(new.key_pem, old.key_pem, "renewal makes a new key");
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (new_der, old_der) = (der(&new.cert_pem), der(&old.cert_pem));
        let (_, n) = x509_parser::parse_x509_certificate(new_der.as_ref()).unwrap();
        let (_, o) = x509_parser::parse_x509_certificate(old_der.as_ref()).unwrap();
        assert_eq!(crate::pki::identity_from_cert(&new_der).unwrap(), Identity::Region("rotterdam".into()));
        assert_eq!(
            n.subject_alternative_name().unwrap().unwrap().value,
            o.subject_alternative_name().unwrap().unwrap().value
        );
        let eku = n.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(n.validity().not_after > o.validity().not_after);
        // Another CA's certificate is refused.
        let other = Ca::generate("other CA", 3650).unwrap().issue(&spec).unwrap();
        assert!(ca.renew(&other.cert_pem, 30).is_err());
    }
    use crate::pki::identity::identity_from_cert;

    fn org(name: &str) -> Identity {
        Identity::Organisation(name.into())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn issued_client_cert_carries_identity_in_san_uri() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let issued = ca.issue(&CertSpec::client(org("jeugdzorg-rotterdam"), 10)).expect("issue");
        let id = identity_from_cert(&der(&issued.cert_pem)).expect("identity");
        assert_eq!(id, org("jeugdzorg-rotterdam"));
    }

    #[test]
    fn cert_without_virfed_uri_has_no_identity() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let issued = ca.issue(&CertSpec::server(vec!["localhost".into()], 10)).expect("issue");
        assert!(matches!(identity_from_cert(&der(&issued.cert_pem)), Err(PkiError::BadCertificate(_))));
    }

    #[test]
    fn cert_with_two_virfed_uris_is_refused() {
        // Built by hand: CertSpec cannot express two identities, which is the point.
        let ca = Ca::generate("test CA", 30).expect("CA");
        let mut params = CertificateParams::default();
        for uri in ["urn:virfed:org:a", "urn:virfed:org:b"] {
            params.subject_alt_names.push(SanType::URI(uri.try_into().expect("ia5")));
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        let err = identity_from_cert(cert.der()).expect_err("two identities");
        assert!(err.to_string().contains("more than one"), "{err}");
    }

    #[test]
    fn server_spec_puts_ip_names_in_ip_sans() {
        let spec = CertSpec::server(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()], 1);
        assert_eq!(spec.dns_names, vec!["localhost".to_string()]);
        assert_eq!(spec.ip_addresses.len(), 2);
        assert!(spec.server && !spec.client);
        let client = CertSpec::client(org("x"), 1);
        assert!(client.client && !client.server);
        assert!(client.not_before < OffsetDateTime::now_utc());
    }

    #[test]
    fn serial_numbers_are_random_and_distinct() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let spec = CertSpec::client(org("x"), 1);
        let a = cert_serial(&ca.issue(&spec).expect("a").cert_pem).expect("serial a");
        let b = cert_serial(&ca.issue(&spec).expect("b").cert_pem).expect("serial b");
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn issue_refuses_inconsistent_specs() {
        let ca = Ca::generate("test CA", 30).expect("CA");
        let mut neither = CertSpec::client(org("x"), 1);
        neither.client = false;
        assert!(matches!(ca.issue(&neither), Err(PkiError::InvalidSpec(_))));
        let mut backwards = CertSpec::client(org("x"), 1);
        backwards.not_after = backwards.not_before - Duration::days(1);
        assert!(matches!(ca.issue(&backwards), Err(PkiError::InvalidSpec(_))));
        let nameless_server = CertSpec::server(Vec::new(), 1);
        assert!(matches!(ca.issue(&nameless_server), Err(PkiError::InvalidSpec(_))));
        let outlives_ca = CertSpec::client(org("x"), 31);
        assert!(matches!(ca.issue(&outlives_ca), Err(PkiError::InvalidSpec(_))));
    }

    #[test]
    fn ca_init_writes_private_key_0600_and_load_round_trips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let ca = Ca::init(&dir, "Federation root", 365).expect("init");
        assert_eq!(mode_of(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir), 0o700);
        let loaded = Ca::load(&dir).expect("load");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // The loaded CA issues certificates that identify correctly.
        let issued = loaded.issue(&CertSpec::client(org("ggd"), 30)).expect("issue from loaded CA");
        assert_eq!(identity_from_cert(&der(&issued.cert_pem)).expect("identity"), org("ggd"));
    }

    #[test]
    fn ca_init_refuses_existing_ca_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Ca::init(tmp.path(), "first", 365).expect("first init");
        let before = std::fs::read(tmp.path().join(CA_KEY_FILE)).expect("key");
        let err = Ca::init(tmp.path(), "second", 365).expect_err("second init");
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        let after = std::fs::read(tmp.path().join(CA_KEY_FILE)).expect("key");
        assert_eq!(before, after, "the existing key must be untouched");
    }

    #[test]
    fn ca_load_refuses_group_readable_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Ca::init(tmp.path(), "root", 365).expect("init");
        let key = tmp.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Ca::load(tmp.path()).expect_err("insecure key accepted");
        assert!(matches!(err, PkiError::InsecurePermissions { mode: 0o644, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600") && msg.contains("ca.key"), "{msg}");
    }

    #[test]
    fn ca_load_refuses_key_of_another_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        Ca::init(&a, "a", 365).expect("init a");
        Ca::init(&b, "b", 365).expect("init b");
        std::fs::remove_file(a.join(CA_KEY_FILE)).expect("rm");
        std::fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).expect("copy");
        let err = Ca::load(&a).expect_err("mismatched key accepted");
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn ca_load_of_missing_directory_names_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = Ca::load(&tmp.path().join("nope")).expect_err("missing CA");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn write_cert_pair_creates_0600_key_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("root", 30).expect("CA");
        let first = ca.issue(&CertSpec::client(org("ggd"), 10)).expect("issue");
        let (cert, key) = write_cert_pair(tmp.path(), "ggd", &first, false).expect("write");
        assert_eq!(cert, tmp.path().join("ggd.pem"));
        assert_eq!(key, tmp.path().join("ggd.key"));
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).expect("key"), first.key_pem);

        let second = ca.issue(&CertSpec::client(org("ggd"), 10)).expect("issue");
        let err = write_cert_pair(tmp.path(), "ggd", &second, false).expect_err("overwrote");
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&key).expect("key"), first.key_pem);

        write_cert_pair(tmp.path(), "ggd", &second, true).expect("overwrite");
        assert_eq!(std::fs::read_to_string(&key).expect("key"), second.key_pem);
        assert_eq!(std::fs::read_to_string(&cert).expect("cert"), second.cert_pem);
        assert_eq!(mode_of(&key), 0o600);
    }

    #[test]
    fn write_cert_pair_refuses_path_like_stems() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("root", 30).expect("CA");
        let issued = ca.issue(&CertSpec::client(org("ggd"), 10)).expect("issue");
        assert!(write_cert_pair(tmp.path(), "../escape", &issued, false).is_err());
    }

    #[test]
    fn write_secret_file_is_0600_and_never_replaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("secret");
        write_secret_file(&path, b"k").expect("write");
        assert_eq!(mode_of(&path), 0o600);
        check_secret_file_mode(&path).expect("0600 is fine");
        assert!(matches!(write_secret_file(&path, b"other"), Err(PkiError::AlreadyExists { .. })));
        assert_eq!(std::fs::read(&path).expect("read"), b"k");
    }

    #[test]
    fn check_secret_file_mode_refuses_world_readable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("secret");
        write_secret_file(&path, b"k").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        let err = check_secret_file_mode(&path).expect_err("accepted");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn revocation_list_is_a_pem_crl() {
        let ca = Ca::generate("root", 30).expect("CA");
        let issued = ca.issue(&CertSpec::client(org("x"), 1)).expect("issue");
        let serial = cert_serial(&issued.cert_pem).expect("serial");
        let crl = ca.revocation_list(&[serial], 7).expect("crl");
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    }
}
