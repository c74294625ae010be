//! Every rustls configuration of the crate is built here, and only here.
//!
//! Keeping them in one file (as linkerd2-proxy does) means one place to review what we
//! accept: the server always requires a client certificate chaining to the federation
//! CA (and not on a CRL, when CRLs are given); the client trusts that CA alone, never the
//! system roots, and always presents its own certificate. Both sides pick the ring
//! provider explicitly rather than relying on a process-wide default provider, and speak
//! ALPN `h2` because gRPC runs over HTTP/2.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::ca::{check_secret_file_mode, IssuedCert};
use super::PkiError;

/// The ALPN protocol both sides offer: gRPC is HTTP/2.
pub(super) const ALPN_H2: &[u8] = b"h2";

/// The PEM inputs of a TLS configuration: the CA to trust, our certificate and key, and
/// optional CRLs (server side).
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA certificate(s) to trust, PEM.
    pub ca_pem: Vec<u8>,
    /// Our certificate (optionally followed by intermediates), PEM.
    pub cert_pem: Vec<u8>,
    /// Our private key, PEM. Secret.
    pub key_pem: Vec<u8>,
    /// Certificate revocation lists, PEM each; honoured by [`server_config`].
    pub crl_pems: Vec<Vec<u8>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &String::from_utf8_lossy(&self.ca_pem))
            .field("cert_pem", &String::from_utf8_lossy(&self.cert_pem))
            .field("key_pem", &"<redacted>")
            .field("crl_pems", &self.crl_pems.len())
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the material from files. The key file is refused when group or others can
    /// read it; every file is parsed here so an error names the file at fault.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, crls: &[PathBuf]) -> Result<TlsMaterial, PkiError> {
        check_secret_file_mode(key)?;
        let read = |path: &Path, action| std::fs::read(path).map_err(|e| PkiError::io(path, action, e));
        let material = TlsMaterial {
            ca_pem: read(ca, "read the CA certificate")?,
            cert_pem: read(cert, "read the certificate")?,
            key_pem: read(key, "read the private key")?,
            crl_pems: crls.iter().map(|p| read(p, "read the certificate revocation list")).collect::<Result<_, _>>()?,
        };
        let what = |p: &Path| p.display().to_string();
        parse_certs(&material.ca_pem, &what(ca))?;
        parse_certs(&material.cert_pem, &what(cert))?;
        parse_key(&material.key_pem, &what(key))?;
        for (pem, path) in material.crl_pems.iter().zip(crls) {
            parse_crls(pem, &what(path))?;
        }
        Ok(material)
    }

    /// Material from an in-memory CA and issued certificate (tests, demo).
    pub fn from_issued(ca_pem: &str, issued: &IssuedCert) -> TlsMaterial {
        TlsMaterial {
            ca_pem: ca_pem.as_bytes().to_vec(),
            cert_pem: issued.cert_pem.as_bytes().to_vec(),
            key_pem: issued.key_pem.as_bytes().to_vec(),
            crl_pems: Vec::new(),
        }
    }
}

/// The server side: presents our certificate and REQUIRES a client certificate that
/// chains to the CA in `m.ca_pem` and is not revoked by any CRL in `m.crl_pems`.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let roots = Arc::new(root_store(&m.ca_pem)?);
    let mut crls = Vec::new();
    for (i, pem) in m.crl_pems.iter().enumerate() {
        crls.extend(parse_crls(pem, &format!("certificate revocation list #{}", i + 1))?);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_certs(&m.cert_pem, "server certificate")?,
            parse_key(&m.key_pem, "server private key")?,
        )
        .map_err(|e| {
            PkiError::Tls(format!(
                "server certificate and key cannot be used together ({e}); check that the key file belongs to the certificate"
            ))
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: trusts only the CA in `m.ca_pem` and authenticates with our
/// certificate and key.
pub fn client_config(m: &TlsMaterial) -> Result<Arc<ClientConfig>, PkiError> {
    let roots = root_store(&m.ca_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            parse_certs(&m.cert_pem, "client certificate")?,
            parse_key(&m.key_pem, "client private key")?,
        )
        .map_err(|e| {
            PkiError::Tls(format!(
                "client certificate and key cannot be used together ({e}); check that the key file belongs to the certificate"
            ))
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The crypto provider of every config: ring, chosen explicitly.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore, PkiError> {
    root_store_from(ca_pem, "CA certificate")
}

/// A trust store of every certificate in `ca_pem`; `what` names the input in errors.
pub(super) fn root_store_from(ca_pem: &[u8], what: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, what)? {
        roots.add(cert).map_err(|e| PkiError::Pem {
            what: what.to_owned(),
            reason: format!("not usable as a trust anchor ({e})"),
        })?;
    }
    Ok(roots)
}

/// All certificates in a PEM; at least one.
pub(super) fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem { what: what.to_owned(), reason: format!("malformed PEM ({e})") })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_owned(),
            reason: "contains no certificate (expected a '-----BEGIN CERTIFICATE-----' block)".into(),
        });
    }
    Ok(certs)
}

pub(super) fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| PkiError::Pem { what: what.to_owned(), reason: format!("contains no usable private key ({e})") })
}

/// All CRLs in a PEM; at least one.
pub(super) fn parse_crls(pem: &[u8], what: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem { what: what.to_owned(), reason: format!("malformed PEM ({e})") })?;
    if crls.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_owned(),
            reason: "contains no revocation list (expected a '-----BEGIN X509 CRL-----' block)".into(),
        });
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::pki::ca::{write_cert_pair, Ca, CertSpec};
    use crate::pki::identity::Identity;

    fn org_material(ca: &Ca) -> TlsMaterial {
        let issued = ca.issue(&CertSpec::client(Identity::Organisation("ggd".into()), 1)).expect("issue");
        TlsMaterial::from_issued(&ca.cert_pem(), &issued)
    }

    #[test]
    fn configs_build_from_issued_material_with_h2() {
        let ca = Ca::generate("root", 30).expect("CA");
        let m = org_material(&ca);
        assert_eq!(client_config(&m).expect("client").alpn_protocols, [b"h2"]);
        assert_eq!(server_config(&m).expect("server").alpn_protocols, [b"h2"]);
    }

    #[test]
    fn pem_without_certificate_is_a_clear_error() {
        let ca = Ca::generate("root", 30).expect("CA");
        let mut m = org_material(&ca);
        m.ca_pem = b"not a pem at all".to_vec();
        let err = client_config(&m).expect_err("accepted");
        assert!(err.to_string().contains("contains no certificate"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let ca = Ca::generate("root", 30).expect("CA");
        let mut m = org_material(&ca);
        m.key_pem = org_material(&ca).key_pem;
        assert!(matches!(client_config(&m), Err(PkiError::Tls(_))));
    }

    #[test]
    fn from_files_refuses_key_with_mode_0644() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(tmp.path(), "root", 30).expect("CA");
        let issued = ca.issue(&CertSpec::client(Identity::Organisation("ggd".into()), 1)).expect("issue");
        let (cert, key) = write_cert_pair(tmp.path(), "ggd", &issued, false).expect("write");
        let ca_pem = tmp.path().join("ca.pem");
        TlsMaterial::from_files(&ca_pem, &cert, &key, &[]).expect("0600 key loads");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = TlsMaterial::from_files(&ca_pem, &cert, &key, &[]).expect_err("0644 key loaded");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600") && msg.contains("ggd.key"), "{msg}");
    }

    #[test]
    fn from_files_names_the_file_that_holds_no_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(tmp.path(), "root", 30).expect("CA");
        let issued = ca.issue(&CertSpec::client(Identity::Organisation("ggd".into()), 1)).expect("issue");
        let (_cert, key) = write_cert_pair(tmp.path(), "ggd", &issued, false).expect("write");
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err =
            TlsMaterial::from_files(&tmp.path().join("ca.pem"), &empty, &key, &[]).expect_err("empty cert accepted");
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }
}
