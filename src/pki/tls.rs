//! Every rustls configuration of the crate is built here, and only here: one policy for
//! production and tests alike.
//!
//! Keeping it in one file (as linkerd2-proxy does) means one place to review what we
//! accept. [`server_config`] always requires a client certificate chaining to the CA
//! (and not on a CRL, when CRLs are given). [`client_config`] trusts that CA alone, never
//! the system roots, honours the same CRLs, and always presents its own certificate;
//! [`client_config_expecting`] also pins the identity the server's certificate must name.
//! Both sides pick the ring provider explicitly rather than relying on a process-wide
//! default provider, speak ALPN `h2` because gRPC runs over HTTP/2, and switch session
//! resumption off: a resumed TLS 1.3 session skips certificate verification, which
//! would let a revoked peer back in on an old ticket.
//!
//! Calls out of the federation (webhook receivers, the BRP) are HTTP/1.1 over TLS to
//! servers that hold no virfed identity: [`https_client_config`] trusts only the CA the
//! operator configured for that service (no system roots: a notice or a BSN must not go
//! to whoever a public CA vouches for), checks the server's name the WebPKI way, and
//! presents no certificate; [`https_client_config_with_cert`] also presents one (mutual
//! TLS, as the BRP's gateway asks). Same provider, no resumption, ALPN `http/1.1`.
//!
//! What a config is built from is a [`TlsSource`]: a node's [`TlsFiles`], re-read when
//! they change (see [`super::reload`]), or [`TlsMaterial`] held in memory (the CLI, which
//! reads its files once per run; tests, which mint their certificates). Either way the
//! config gets the same verifiers and certificate resolver below; only where their
//! inputs come from differs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::ca::{check_secret_file_mode, IssuedCert};
use super::identity::{identity_from_cert, Identity};
use super::reload::{load_certified_key, load_trust, Held, TlsFiles};
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
    /// Certificate revocation lists, PEM each; honoured on both sides.
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

    /// The trust anchors and CRLs of this material.
    fn trust(&self) -> Result<Trust, PkiError> {
        let roots = root_store_from(&self.ca_pem, "CA certificate")?;
        let mut crls = Vec::new();
        for (i, pem) in self.crl_pems.iter().enumerate() {
            crls.extend(parse_crls(pem, &format!("certificate revocation list #{}", i + 1))?);
        }
        Ok((Arc::new(roots), crls))
    }
}

/// What a TLS configuration is built from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// A node's files, re-read on the next handshake after they change.
    Files(TlsFiles),
    /// PEM read once or minted in memory.
    Material(TlsMaterial),
}

impl From<&TlsFiles> for TlsSource {
    fn from(files: &TlsFiles) -> TlsSource {
        TlsSource::Files(files.clone())
    }
}

impl From<&TlsMaterial> for TlsSource {
    fn from(material: &TlsMaterial) -> TlsSource {
        TlsSource::Material(material.clone())
    }
}

/// Which end of a connection we are, for naming our certificate in errors.
#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn certificate(self) -> &'static str {
        match self {
            Side::Server => "server certificate",
            Side::Client => "client certificate",
        }
    }

    fn private_key(self) -> &'static str {
        match self {
            Side::Server => "server private key",
            Side::Client => "client private key",
        }
    }
}

impl TlsSource {
    /// A verifier built by `build` from the source's CA and CRLs.
    fn verifier<V: Clone + 'static>(
        &self,
        what: &'static str,
        build: fn(Trust) -> Result<V, PkiError>,
    ) -> Result<Held<V>, PkiError> {
        match self {
            TlsSource::Files(files) => Held::watch(what, files.trust_files(), move |paths| build(load_trust(paths)?)),
            TlsSource::Material(m) => Ok(Held::Fixed(build(m.trust()?)?)),
        }
    }

    /// Our certificate chain and key.
    fn certified_key(&self, side: Side) -> Result<Held<Arc<CertifiedKey>>, PkiError> {
        match self {
            TlsSource::Files(files) => Held::watch(side.certificate(), files.key_files(), load_certified_key),
            TlsSource::Material(m) => {
                let chain = parse_certs(&m.cert_pem, side.certificate())?;
                let key = parse_key(&m.key_pem, side.private_key())?;
                let certified = certified_key(chain, key).map_err(|e| {
                    PkiError::Tls(format!(
                        "{} and key cannot be used together ({e}); check that the key file belongs to the certificate",
                        side.certificate()
                    ))
                })?;
                Ok(Held::Fixed(certified))
            }
        }
    }
}

/// The server side: presents our certificate and REQUIRES a client certificate that
/// chains to the source's CA and is not revoked by any of its CRLs. Ring provider, ALPN
/// `h2`, no session resumption.
///
/// Fails when the source cannot be loaded now; with [`TlsFiles`], later failures keep the
/// last good state.
pub fn server_config(source: impl Into<TlsSource>) -> Result<Arc<ServerConfig>, PkiError> {
    let source = source.into();
    let verifier = Arc::new(ClientVerifier {
        inner: source.verifier("client certificate verifier", client_verifier)?,
        algs: signature_algorithms(),
    });
    let resolver = Arc::new(CertKey { inner: source.certified_key(Side::Server)? });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side: trusts only the source's CA, refuses a server certificate on its
/// CRLs, not valid for the name we dial or without serverAuth, and authenticates with
/// our certificate and key. Ring provider, ALPN `h2`, no session resumption.
pub fn client_config(source: impl Into<TlsSource>) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(source.into(), None)
}

/// Like [`client_config`], and the server's certificate must also name `expected` (e.g.
/// `Identity::Region("rijnmond")` when dialling the rijnmond node), so a node cannot
/// answer for another region even if it listens at that address.
pub fn client_config_expecting(
    source: impl Into<TlsSource>,
    expected: Identity,
) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(source.into(), Some(expected))
}

fn client_config_with(source: TlsSource, expected: Option<Identity>) -> Result<Arc<ClientConfig>, PkiError> {
    let verifier = Arc::new(ServerVerifier {
        inner: source.verifier("server certificate verifier", server_verifier)?,
        expected,
        algs: signature_algorithms(),
    });
    let resolver = Arc::new(CertKey { inner: source.certified_key(Side::Client)? });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The ALPN protocol of outbound HTTPS calls (webhooks, BRP).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The client side of an outbound HTTPS call to a service outside the federation (a
/// webhook receiver): trusts only the certificates in `ca_pem` (`what` names that input in
/// errors, e.g. the config field and file), verifies the server's certificate for the
/// name dialled, presents no certificate. Ring provider, ALPN `http/1.1`, no session
/// resumption.
pub fn https_client_config(ca_pem: &[u8], what: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let roots = root_store_from(ca_pem, what)?;
    let config = https_builder(roots)?.with_no_client_auth();
    Ok(https_finish(config))
}

/// Like [`https_client_config`], and authenticates with the certificate chain in
/// `cert_pem` and its key in `key_pem` (mutual TLS: the BRP's gateway). `cert_what` and
/// `key_what` name those inputs in errors. Fails when the key does not belong to the
/// certificate.
pub fn https_client_config_with_cert(
    ca_pem: &[u8],
    what: &str,
    cert_pem: &[u8],
    cert_what: &str,
    key_pem: &[u8],
    key_what: &str,
) -> Result<Arc<ClientConfig>, PkiError> {
    let roots = root_store_from(ca_pem, what)?;
    let chain = parse_certs(cert_pem, cert_what)?;
    let key = parse_key(key_pem, key_what)?;
    // Checked here so that the error names both files (rustls would say "inconsistent keys").
    certified_key(chain.clone(), key.clone_key())
        .map_err(|_| PkiError::KeyMismatch { key: key_what.to_owned(), cert: cert_what.to_owned() })?;
    let config = https_builder(roots)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("{cert_what} and {key_what}: {e}")))?;
    Ok(https_finish(config))
}

fn https_builder(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, PkiError> {
    let verifier = server_verifier((Arc::new(roots), Vec::new()))?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_webpki_verifier(verifier))
}

fn https_finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Trust anchors and the CRLs to check against.
pub(super) type Trust = (Arc<RootCertStore>, Vec<CertificateRevocationListDer<'static>>);

fn client_verifier((roots, crls): Trust) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))
}

fn server_verifier((roots, crls): Trust) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| PkiError::Tls(format!("server certificate verifier: {e}")))
}

/// Our chain and key as rustls signs with them; fails when the key does not belong to
/// the certificate (`rustls::Error::InconsistentKeys`).
pub(super) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    CertifiedKey::from_der(chain, key, &provider()).map(Arc::new)
}

/// The crypto provider of every config: ring, chosen explicitly.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake signature algorithms of [`provider`].
fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
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

/// The signature checks both verifier traits require, the same on both sides and the same
/// as rustls' WebPKI verifiers do them: with the provider's algorithms, which do not
/// depend on the trust files, so they need no file check.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Server side: verifies client certificates with the current WebPKI verifier.
#[derive(Debug)]
struct ClientVerifier {
    inner: Held<Arc<dyn ClientCertVerifier>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the slice would have to outlive a reload. Hints are optional in TLS,
    /// and our clients hold exactly one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.get().verify_client_cert(end_entity, intermediates, now)
    }

    signature_checks!();
}

/// Client side: verifies the server certificate with the current WebPKI verifier and,
/// optionally, that it names the expected identity.
#[derive(Debug)]
struct ServerVerifier {
    inner: Held<Arc<WebPkiServerVerifier>>,
    expected: Option<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner.get().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Some(expected) = &self.expected {
            let other =
                |e: PkiError| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))));
            let actual = identity_from_cert(end_entity).map_err(other)?;
            if &actual != expected {
                return Err(other(PkiError::BadCertificate(format!(
                    "the server's certificate names {actual}, but we dialled {expected}"
                ))));
            }
        }
        Ok(verified)
    }

    signature_checks!();
}

/// Our own certificate and key, for either side.
#[derive(Debug)]
struct CertKey {
    inner: Held<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.get())
    }
}

impl ResolvesClientCert for CertKey {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
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
    fn files_and_material_get_the_same_policy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(tmp.path(), "root", 30).expect("CA");
        let issued = ca.issue(&CertSpec::node("rijnmond", vec!["localhost".into()], 1)).expect("issue");
        let (cert, key) = write_cert_pair(tmp.path(), "node", &issued, false).expect("write");
        let files = TlsFiles { ca: tmp.path().join("ca.pem"), cert, key, crls: Vec::new() };
        let material = TlsMaterial::from_issued(&ca.cert_pem(), &issued);
        for server in [server_config(&files).expect("files"), server_config(&material).expect("material")] {
            assert_eq!(server.alpn_protocols, [b"h2"]);
            assert_eq!(server.send_tls13_tickets, 0, "session tickets would skip certificate checks");
            assert!(!server.session_storage.can_cache(), "session ids would skip certificate checks");
        }
        for client in [client_config(&files).expect("files"), client_config(&material).expect("material")] {
            assert_eq!(client.alpn_protocols, [b"h2"]);
            assert!(client.client_auth_cert_resolver.has_certs());
        }
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
    fn https_configs_speak_http1_trust_the_given_ca_and_present_a_certificate_only_when_given() {
        let ca = Ca::generate("service CA", 30).expect("CA");
        let plain = https_client_config(ca.cert_pem().as_bytes(), "ca").expect("https");
        assert_eq!(plain.alpn_protocols, [b"http/1.1"]);
        assert!(!plain.client_auth_cert_resolver.has_certs());
        let m = org_material(&ca);
        let mtls = https_client_config_with_cert(&m.ca_pem, "ca", &m.cert_pem, "brp.pem", &m.key_pem, "brp.key")
            .expect("mtls");
        assert_eq!(mtls.alpn_protocols, [b"http/1.1"]);
        assert!(mtls.client_auth_cert_resolver.has_certs());
        let err = https_client_config(b"", "brp.ca /etc/virfed/brp-ca.pem").expect_err("empty CA accepted");
        assert!(err.to_string().contains("brp.ca /etc/virfed/brp-ca.pem: contains no certificate"), "{err}");
    }

    #[test]
    fn an_https_client_key_of_another_certificate_names_both_files() {
        let ca = Ca::generate("service CA", 30).expect("CA");
        let (m, other) = (org_material(&ca), org_material(&ca));
        let err = https_client_config_with_cert(&m.ca_pem, "ca", &m.cert_pem, "brp.pem", &other.key_pem, "brp.key")
            .expect_err("mismatched key accepted");
        assert!(matches!(&err, PkiError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("brp.key does not belong to brp.pem"), "{err}");
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
