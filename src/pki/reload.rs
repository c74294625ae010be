//! TLS configurations that follow their files: revoke a certificate or renew one, and
//! the running node uses the new files on its next handshake, without a restart.
//!
//! This file owns [`TlsFiles`] (the paths of a node's CA, certificate, key and CRLs) and
//! the two builders [`reloading_server_config`] and [`reloading_client_config`]. Each
//! config gets a verifier (client certificates on the server side, the server
//! certificate on the client side) and a certificate resolver that wrap a rustls
//! [`WebPkiClientVerifier`] / [`WebPkiServerVerifier`] / [`CertifiedKey`] held in a
//! `RwLock<Arc<_>>`.
//!
//! On every handshake each of them calls `metadata()` on its files (a few microseconds,
//! no read) and compares device, inode, size, modification and change times with what
//! it last loaded. Only when something changed are the files read and parsed again. A
//! reload that fails (a half-written file, a key that does not match its certificate,
//! a key readable by others) logs a warning and keeps the last good configuration, so a
//! bad edit never locks the federation out; the files are tried again as soon as they
//! change again (a `chmod` counts, through the change time).
//!
//! Session resumption is switched off on both sides: a resumed TLS 1.3 session skips
//! certificate verification, which would let a revoked peer back in on an old ticket.
//! What is not covered here: an already established connection is not closed when its
//! peer's certificate is revoked; revocation applies from the peer's next handshake.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme,
};
use tracing::{info, warn};

use super::ca::check_secret_file_mode;
use super::identity::{identity_from_cert, Identity};
use super::tls::{parse_certs, parse_crls, parse_key, provider, root_store_from, ALPN_H2};
use super::PkiError;

/// Where a node's TLS material lives. Every file is re-read when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The federation CA certificate(s) to trust, PEM.
    pub ca: PathBuf,
    /// Our certificate (optionally followed by intermediates), PEM.
    pub cert: PathBuf,
    /// Our private key, PEM; refused when group or others can read it.
    pub key: PathBuf,
    /// Certificate revocation lists, PEM, honoured on both sides (each file must hold
    /// at least one list; publish an empty one with `Ca::publish_crl`).
    pub crls: Vec<PathBuf>,
}

/// A server config whose client-certificate verifier (client certificate REQUIRED,
/// chained to `files.ca`, not revoked by `files.crls`) and server certificate follow
/// the files. Ring provider, ALPN `h2`, no session resumption.
///
/// Fails when the files cannot be loaded now; later failures keep the last good state.
pub fn reloading_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = Arc::new(ReloadingClientVerifier {
        inner: Watched::new("client certificate verifier", trust_files(files), load_client_verifier)?,
    });
    let resolver =
        Arc::new(ReloadingCertKey { inner: Watched::new("server certificate", key_files(files), load_certified_key)? });
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

/// A client config whose server verifier (chained to `files.ca`, valid for the name we
/// dial, serverAuth, not revoked by `files.crls`) and client certificate follow the
/// files. Ring provider, ALPN `h2`, no session resumption.
pub fn reloading_client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(files, None)
}

/// Like [`reloading_client_config`], and the server's certificate must also name
/// `expected` (e.g. `Identity::Region("rijnmond")` when dialling the rijnmond node),
/// so a node cannot answer for another region even if it listens at that address.
pub fn reloading_client_config_expecting(files: &TlsFiles, expected: Identity) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(files, Some(expected))
}

fn client_config_with(files: &TlsFiles, expected: Option<Identity>) -> Result<Arc<ClientConfig>, PkiError> {
    let verifier = Arc::new(ReloadingServerVerifier {
        inner: Watched::new("server certificate verifier", trust_files(files), load_server_verifier)?,
        expected,
    });
    let resolver =
        Arc::new(ReloadingCertKey { inner: Watched::new("client certificate", key_files(files), load_certified_key)? });
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

/// `[ca, crls...]`: what a verifier is built from.
fn trust_files(files: &TlsFiles) -> Vec<PathBuf> {
    std::iter::once(files.ca.clone()).chain(files.crls.iter().cloned()).collect()
}

/// `[cert, key]`: what a certificate resolver is built from.
fn key_files(files: &TlsFiles) -> Vec<PathBuf> {
    vec![files.cert.clone(), files.key.clone()]
}

fn read(path: &Path, action: &'static str) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|e| PkiError::io(path, action, e))
}

/// Roots from `paths[0]`, CRLs from `paths[1..]`.
fn load_trust(
    paths: &[PathBuf],
) -> Result<(Arc<rustls::RootCertStore>, Vec<rustls::pki_types::CertificateRevocationListDer<'static>>), PkiError> {
    let (ca, crl_paths) =
        paths.split_first().ok_or_else(|| PkiError::InvalidSpec("no CA certificate file given".into()))?;
    let roots = root_store_from(&read(ca, "read the CA certificate")?, &ca.display().to_string())?;
    let mut crls = Vec::new();
    for path in crl_paths {
        let pem = read(path, "read the certificate revocation list")?;
        crls.extend(parse_crls(&pem, &path.display().to_string())?);
    }
    Ok((Arc::new(roots), crls))
}

fn load_client_verifier(paths: &[PathBuf]) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let (roots, crls) = load_trust(paths)?;
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))
}

fn load_server_verifier(paths: &[PathBuf]) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    let (roots, crls) = load_trust(paths)?;
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| PkiError::Tls(format!("server certificate verifier: {e}")))
}

/// `paths` is `[cert, key]`.
fn load_certified_key(paths: &[PathBuf]) -> Result<Arc<CertifiedKey>, PkiError> {
    let [cert, key] = paths else {
        return Err(PkiError::InvalidSpec("need a certificate and a key file".into()));
    };
    check_secret_file_mode(key)?;
    let chain = parse_certs(&read(cert, "read the certificate")?, &cert.display().to_string())?;
    let der = parse_key(&read(key, "read the private key")?, &key.display().to_string())?;
    let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            PkiError::KeyMismatch { key: key.display().to_string(), cert: cert.display().to_string() }
        }
        other => {
            PkiError::Pem { what: key.display().to_string(), reason: format!("not a usable private key ({other})") }
        }
    })?;
    Ok(Arc::new(certified))
}

/// What `metadata()` tells about a file, enough to notice any replacement or edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// One stamp per file; `None` for a file we cannot stat (missing, no permission).
fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| FileStamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        })
        .collect()
}

/// A value built from files, rebuilt when their stamps change; the last good value is
/// kept when a rebuild fails.
struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: fn(&[PathBuf]) -> Result<T, PkiError>,
    current: RwLock<T>,
    /// The stamps of the last load attempt, good or bad. Held during a reload, so
    /// concurrent handshakes reload once and then all see the new value.
    seen: Mutex<Vec<Option<FileStamp>>>,
}

impl<T: Clone> Watched<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: fn(&[PathBuf]) -> Result<T, PkiError>,
    ) -> Result<Self, PkiError> {
        // Stamp before reading: a change during the read is seen as a change next time.
        let seen = stamps(&paths);
        let value = load(&paths)?;
        Ok(Watched { what, paths, load, current: RwLock::new(value), seen: Mutex::new(seen) })
    }

    /// The current value, reloaded first if any file changed since the last attempt.
    fn get(&self) -> T {
        let now = stamps(&self.paths);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen != now {
                *seen = now;
                match (self.load)(&self.paths) {
                    Ok(value) => {
                        *self.current.write().unwrap_or_else(PoisonError::into_inner) = value;
                        info!(what = self.what, files = ?self.paths, "TLS files changed: reloaded");
                    }
                    Err(e) => {
                        warn!(
                            what = self.what,
                            error = %e,
                            "TLS files changed but cannot be loaded; keeping the last good configuration until they change again"
                        );
                    }
                }
            }
        }
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched").field("what", &self.what).field("paths", &self.paths).finish_non_exhaustive()
    }
}

/// Server side: verifies client certificates with the current WebPKI verifier.
#[derive(Debug)]
struct ReloadingClientVerifier {
    inner: Watched<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for ReloadingClientVerifier {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

impl ReloadingClientVerifier {
    /// The current verifier without a file check (signature checks do not depend on
    /// the files).
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Client side: verifies the server certificate with the current WebPKI verifier and,
/// optionally, that it names the expected identity.
#[derive(Debug)]
struct ReloadingServerVerifier {
    inner: Watched<Arc<WebPkiServerVerifier>>,
    expected: Option<Identity>,
}

impl ReloadingServerVerifier {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.inner.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Our own certificate and key, for either side.
#[derive(Debug)]
struct ReloadingCertKey {
    inner: Watched<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCertKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.get())
    }
}

impl ResolvesClientCert for ReloadingCertKey {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::TlsConnector;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::pki::ca::{cert_serial, write_cert_pair, Ca, CertSpec, CRL_FILE};
    use crate::pki::transport::{require_region, tls_incoming, PeerInfo};

    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// A CA directory with an (empty) published CRL, in a temp dir.
    struct Fed {
        tmp: tempfile::TempDir,
        ca: Ca,
    }

    impl Fed {
        fn new() -> Fed {
            let tmp = tempfile::tempdir().expect("tempdir");
            let ca = Ca::init(&tmp.path().join("ca"), "federation root", 30).expect("CA");
            Ca::publish_crl(&tmp.path().join("ca"), 7).expect("empty CRL");
            Fed { tmp, ca }
        }

        fn ca_dir(&self) -> PathBuf {
            self.tmp.path().join("ca")
        }

        /// Writes `spec` as `<stem>.pem/.key` (replacing) and returns the files of a
        /// party trusting this CA and its CRL.
        fn files(&self, stem: &str, spec: &CertSpec) -> (TlsFiles, String) {
            let issued = self.ca.issue(spec).expect("issue");
            let (cert, key) = write_cert_pair(self.tmp.path(), stem, &issued, true).expect("write");
            let files =
                TlsFiles { ca: self.ca_dir().join("ca.pem"), cert, key, crls: vec![self.ca_dir().join(CRL_FILE)] };
            (files, issued.cert_pem)
        }

        fn node(&self, region: &str) -> (TlsFiles, String) {
            self.files(region, &CertSpec::node(region, vec!["localhost".into(), "127.0.0.1".into()], 2))
        }
    }

    /// An echo server behind `tls_incoming` with `config`; reports every accepted peer.
    async fn echo_server(config: Arc<ServerConfig>) -> (SocketAddr, mpsc::UnboundedReceiver<PeerInfo>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(tls_incoming(listener, config));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(mut conn)) = incoming.next().await {
                let _ = tx.send(conn.peer().clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// Handshake to `addr` as "localhost", echo "ping"; on success the serial of the
    /// server's certificate. With TLS 1.3 a refused client certificate shows at the read.
    async fn try_echo(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
        let attempt = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| format!("tcp: {e}"))?;
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
            let server_cert = tls.get_ref().1.peer_certificates().expect("server cert")[0].clone();
            tls.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            assert_eq!(&buf, b"ping");
            let (_, parsed) = x509_parser::parse_x509_certificate(server_cert.as_ref()).expect("parse");
            Ok(parsed.serial.to_bytes_be())
        };
        tokio::time::timeout(TEST_TIMEOUT, attempt).await.unwrap_or_else(|_| Err("timed out".into()))
    }

    /// Retries `try_echo` until `want_ok(result)` holds or five seconds pass.
    async fn eventually(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        want: impl Fn(&Result<Vec<u8>, String>) -> bool,
    ) -> Result<Vec<u8>, String> {
        let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
        loop {
            let result = try_echo(addr, config.clone()).await;
            if want(&result) || tokio::time::Instant::now() > deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn serial(pem: &str) -> Vec<u8> {
        cert_serial(pem).expect("serial")
    }

    #[test]
    fn node_and_coordinator_specs_have_the_right_identity_and_usages() {
        let fed = Fed::new();
        let node = CertSpec::node("rijnmond", vec!["localhost".into(), "::1".into()], 1);
        assert!(node.server && node.client);
        assert_eq!(node.identity, Some(Identity::Region("rijnmond".into())));
        assert_eq!(node.dns_names, vec!["localhost".to_string()]);
        assert_eq!(node.ip_addresses.len(), 1);
        let coord = CertSpec::coordinator("nji", 1);
        assert!(coord.client && !coord.server);
        for (spec, id) in [(node, Identity::Region("rijnmond".into())), (coord, Identity::Coordinator("nji".into()))] {
            let issued = fed.ca.issue(&spec).expect("issue");
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
            assert_eq!(identity_from_cert(&der).expect("identity"), id);
        }
    }

    #[tokio::test]
    async fn node_cert_works_as_server_and_as_client_between_two_nodes() {
        let fed = Fed::new();
        let (a, _) = fed.node("rijnmond");
        let (b, _) = fed.node("haaglanden");
        let (addr_a, mut peers_a) = echo_server(reloading_server_config(&a).expect("server a")).await;
        let (addr_b, mut peers_b) = echo_server(reloading_server_config(&b).expect("server b")).await;
        try_echo(addr_a, reloading_client_config(&b).expect("client b")).await.expect("b dials a");
        try_echo(addr_b, reloading_client_config(&a).expect("client a")).await.expect("a dials b");
        assert_eq!(peers_a.recv().await.expect("peer").identity, Identity::Region("haaglanden".into()));
        assert_eq!(peers_b.recv().await.expect("peer").identity, Identity::Region("rijnmond".into()));
        // Identity pinning on the client side.
        let pinned = reloading_client_config_expecting(&b, Identity::Region("rijnmond".into())).expect("cfg");
        try_echo(addr_a, pinned).await.expect("a is rijnmond");
        let wrong = reloading_client_config_expecting(&b, Identity::Region("utrecht".into())).expect("cfg");
        let err = try_echo(addr_a, wrong).await.expect_err("a answered for utrecht");
        assert!(err.contains("we dialled region utrecht"), "{err}");
    }

    #[tokio::test]
    async fn coordinator_cert_is_refused_as_a_server_cert() {
        let fed = Fed::new();
        // Give it a DNS name, so the only thing wrong is the missing serverAuth usage.
        let mut spec = CertSpec::coordinator("nji", 2);
        spec.dns_names = vec!["localhost".into()];
        let (coord, _) = fed.files("nji", &spec);
        let (b, _) = fed.node("haaglanden");
        let (addr, _peers) = echo_server(reloading_server_config(&coord).expect("server")).await;
        let err = try_echo(addr, reloading_client_config(&b).expect("client"))
            .await
            .expect_err("coordinator served as a node");
        assert!(err.contains("extended key usage for server authentication"), "{err}");
        // As a client it is accepted, and it is a coordinator, not a region.
        let (addr_b, mut peers) = echo_server(reloading_server_config(&b).expect("server b")).await;
        try_echo(addr_b, reloading_client_config(&coord).expect("client")).await.expect("coordinator as client");
        assert_eq!(peers.recv().await.expect("peer").identity, Identity::Coordinator("nji".into()));
    }

    #[tokio::test]
    async fn cert_revoked_while_running_is_refused_on_next_handshake() {
        let fed = Fed::new();
        let (a, _) = fed.node("rijnmond");
        let (b, b_pem) = fed.node("haaglanden");
        let (c, _) = fed.node("utrecht");
        let (addr, _peers) = echo_server(reloading_server_config(&a).expect("server")).await;
        let client_b = reloading_client_config(&b).expect("b");
        let client_c = reloading_client_config(&c).expect("c");
        try_echo(addr, client_b.clone()).await.expect("b before revocation");
        try_echo(addr, client_c.clone()).await.expect("c before revocation");

        let crl = Ca::revoke(&fed.ca_dir(), &b_pem, 7).expect("revoke");
        assert_eq!(crl, fed.ca_dir().join(CRL_FILE));
        // Revoking twice is harmless.
        Ca::revoke(&fed.ca_dir(), &b_pem, 7).expect("revoke again");
        assert_eq!(Ca::revoked_serials(&fed.ca_dir()).expect("registry"), vec![serial(&b_pem)]);

        let err = eventually(addr, &client_b, Result::is_err).await.expect_err("revoked b served");
        assert!(err.contains("CertificateRevoked"), "{err}");
        try_echo(addr, client_c.clone()).await.expect("c still served");

        // A corrupt CRL keeps the last good configuration: b stays refused, c served.
        std::fs::write(&crl, b"-----BEGIN X509 CRL-----\ngarbage").expect("corrupt");
        let err = try_echo(addr, client_b.clone()).await.expect_err("corrupt CRL let b back in");
        assert!(err.contains("CertificateRevoked"), "{err}");
        try_echo(addr, client_c.clone()).await.expect("c served despite a corrupt CRL");
        // The client side honours the CRL too: a client refuses a revoked server.
        Ca::publish_crl(&fed.ca_dir(), 7).expect("republish");
        let (addr_b, _pb) = echo_server(reloading_server_config(&b).expect("server b")).await;
        let err = try_echo(addr_b, client_c).await.expect_err("c accepted revoked server b");
        assert!(err.contains("invalid peer certificate: Revoked"), "{err}");
    }

    #[tokio::test]
    async fn replaced_server_cert_is_served_without_restart() {
        let fed = Fed::new();
        let (a, a_pem) = fed.node("rijnmond");
        let (b, _) = fed.node("haaglanden");
        let (addr, _peers) = echo_server(reloading_server_config(&a).expect("server")).await;
        let client = reloading_client_config(&b).expect("client");
        assert_eq!(try_echo(addr, client.clone()).await.expect("old"), serial(&a_pem));
        let (_, new_pem) = fed.node("rijnmond");
        assert_ne!(serial(&new_pem), serial(&a_pem));
        let got = eventually(addr, &client, |r| r.as_ref().is_ok_and(|s| *s == serial(&new_pem))).await;
        assert_eq!(got.expect("new cert served"), serial(&new_pem));

        // A key that does not match the certificate keeps the last good pair.
        let other = fed.ca.issue(&CertSpec::node("rijnmond", vec!["localhost".into()], 2)).expect("issue");
        std::fs::write(&a.cert, other.cert_pem).expect("write cert only");
        assert_eq!(try_echo(addr, client.clone()).await.expect("still served"), serial(&new_pem));
    }

    #[tokio::test]
    async fn certs_of_another_ca_are_refused_both_ways() {
        let fed = Fed::new();
        let foreign = Fed::new();
        let (a, _) = fed.node("rijnmond");
        let (b, _) = fed.node("haaglanden");
        let (x, _) = foreign.node("haaglanden");
        // x presents a foreign certificate but trusts our CA: the server refuses it.
        let x_trusting_us = TlsFiles { ca: a.ca.clone(), crls: a.crls.clone(), ..x.clone() };
        let (addr, mut peers) = echo_server(reloading_server_config(&a).expect("server")).await;
        let err = try_echo(addr, reloading_client_config(&x_trusting_us).expect("x"))
            .await
            .expect_err("foreign client served");
        // Both test CAs have the same name: found by name, refused by signature.
        assert!(err.contains("DecryptError"), "{err}");
        // A foreign server is refused by our client.
        let (addr_x, _px) = echo_server(reloading_server_config(&x).expect("server x")).await;
        let err = try_echo(addr_x, reloading_client_config(&b).expect("b")).await.expect_err("foreign server accepted");
        assert!(err.contains("BadSignature"), "{err}");
        try_echo(addr, reloading_client_config(&b).expect("b")).await.expect("b served");
        assert_eq!(peers.recv().await.expect("peer").identity, Identity::Region("haaglanden".into()));
        assert!(peers.try_recv().is_err(), "the foreign client was reported");
    }

    #[test]
    fn unloadable_files_at_start_are_a_clear_error() {
        let fed = Fed::new();
        let (mut a, _) = fed.node("rijnmond");
        std::fs::write(&a.crls[0], b"not a crl").expect("write");
        let err = reloading_server_config(&a).expect_err("bad CRL accepted");
        assert!(err.to_string().contains("crl.pem"), "{err}");
        a.crls = vec![fed.tmp.path().join("missing.pem")];
        let err = reloading_client_config(&a).expect_err("missing CRL accepted");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn revoke_refuses_a_cert_of_another_ca() {
        let fed = Fed::new();
        let foreign = Ca::generate("federation root", 30).expect("foreign");
        let issued = foreign.issue(&CertSpec::coordinator("nji", 1)).expect("issue");
        let err = Ca::revoke(&fed.ca_dir(), &issued.cert_pem, 7).expect_err("revoked foreign");
        assert!(err.to_string().contains("not issued by this CA"), "{err}");
        assert!(Ca::revoked_serials(&fed.ca_dir()).expect("registry").is_empty());
    }

    #[test]
    fn require_region_accepts_regions_only() {
        let with = |identity: Identity| {
            let mut req = tonic::Request::new(());
            req.extensions_mut().insert(PeerInfo { identity, remote_addr: "127.0.0.1:1".parse().expect("addr") });
            req
        };
        assert_eq!(require_region(&with(Identity::Region("rijnmond".into()))).expect("region"), "rijnmond");
        let status = require_region(&with(Identity::Coordinator("x".into()))).expect_err("coordinator");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("node-to-node API"), "{}", status.message());
        assert!(status.message().contains("the certificate names coordinator x"), "{}", status.message());
        let status = require_region(&tonic::Request::new(())).expect_err("anonymous");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
