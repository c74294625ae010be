//! TLS inputs that follow their files: revoke a certificate or renew one, and the running
//! node uses the new files on its next handshake, without a restart.
//!
//! This file owns [`TlsFiles`] (the paths of a node's CA, certificate, key and CRLs),
//! how they are loaded, and [`Held`]: a verifier or certificate that is either fixed
//! (in-memory material) or watched (`Watched`: rebuilt from its files when they change).
//! The configs themselves, and the verifiers and resolver that read a `Held`, are built
//! in [`super::tls`], the same for both kinds of source.
//!
//! On every handshake each watched value calls `metadata()` on its files (a few
//! microseconds, no read) and compares device, inode, size, modification and change times
//! with what it last loaded. Only when something changed are the files read and parsed
//! again. A reload that fails (a half-written file, a key that does not match its
//! certificate, a key readable by others) logs a warning and keeps the last good
//! configuration, so a bad edit never locks the federation out; the files are tried
//! again as soon as they change again (a `chmod` counts, through the change time).
//!
//! Session resumption is off on both sides (see [`super::tls`]), so a revoked peer cannot
//! come back on an old ticket. What is not covered here: an already established
//! connection is not closed when its peer's certificate is revoked; revocation applies
//! from the peer's next handshake.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::ca::check_secret_file_mode;
use super::tls::{certified_key, parse_certs, parse_crls, parse_key, root_store_from, Trust};
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

impl TlsFiles {
    /// `[ca, crls...]`: what a verifier is built from (see [`load_trust`]).
    pub(super) fn trust_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.ca.clone()).chain(self.crls.iter().cloned()).collect()
    }

    /// `[cert, key]`: what a certificate resolver is built from (see [`load_certified_key`]).
    pub(super) fn key_files(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }
}

fn read(path: &Path, action: &'static str) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|e| PkiError::io(path, action, e))
}

/// Roots from `paths[0]`, CRLs from `paths[1..]`.
pub(super) fn load_trust(paths: &[PathBuf]) -> Result<Trust, PkiError> {
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

/// `paths` is `[cert, key]`; the key file is refused when group or others can read it.
pub(super) fn load_certified_key(paths: &[PathBuf]) -> Result<Arc<CertifiedKey>, PkiError> {
    let [cert, key] = paths else {
        return Err(PkiError::InvalidSpec("need a certificate and a key file".into()));
    };
    check_secret_file_mode(key)?;
    let chain = parse_certs(&read(cert, "read the certificate")?, &cert.display().to_string())?;
    let der = parse_key(&read(key, "read the private key")?, &key.display().to_string())?;
    certified_key(chain, der).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            PkiError::KeyMismatch { key: key.display().to_string(), cert: cert.display().to_string() }
        }
        other => {
            PkiError::Pem { what: key.display().to_string(), reason: format!("not a usable private key ({other})") }
        }
    })
}

/// A verifier or certificate as a config's verifiers and resolver hold it.
#[derive(Debug)]
pub(super) enum Held<T> {
    /// Built once from in-memory material.
    Fixed(T),
    /// Rebuilt from its files when they change.
    Watched(Watched<T>),
}

impl<T: Clone> Held<T> {
    /// Loads `load(paths)` now (failing if it cannot) and watches `paths`.
    pub(super) fn watch(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn(&[PathBuf]) -> Result<T, PkiError> + Send + Sync + 'static,
    ) -> Result<Held<T>, PkiError> {
        Ok(Held::Watched(Watched::new(what, paths, Box::new(load))?))
    }

    /// The current value, reloaded first if any watched file changed (once per handshake).
    pub(super) fn get(&self) -> T {
        match self {
            Held::Fixed(value) => value.clone(),
            Held::Watched(watched) => watched.get(),
        }
    }
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

/// Builds a value from its files.
type Loader<T> = Box<dyn Fn(&[PathBuf]) -> Result<T, PkiError> + Send + Sync>;

/// A value built from files, rebuilt when their stamps change; the last good value is
/// kept when a rebuild fails.
pub(super) struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<T>,
    /// The stamps of the last load attempt, good or bad. Held during a reload, so
    /// concurrent handshakes reload once and then all see the new value.
    seen: Mutex<Vec<Option<FileStamp>>>,
}

impl<T: Clone> Watched<T> {
    fn new(what: &'static str, paths: Vec<PathBuf>, load: Loader<T>) -> Result<Self, PkiError> {
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
    use crate::pki::identity::{identity_from_cert, Identity};
    use crate::pki::tls::{client_config, client_config_expecting, server_config};
    use crate::pki::transport::{require_region, tls_incoming, PeerInfo};
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ServerConfig};

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
        let (addr_a, mut peers_a) = echo_server(server_config(&a).expect("server a")).await;
        let (addr_b, mut peers_b) = echo_server(server_config(&b).expect("server b")).await;
        try_echo(addr_a, client_config(&b).expect("client b")).await.expect("b dials a");
        try_echo(addr_b, client_config(&a).expect("client a")).await.expect("a dials b");
        assert_eq!(peers_a.recv().await.expect("peer").identity, Identity::Region("haaglanden".into()));
        assert_eq!(peers_b.recv().await.expect("peer").identity, Identity::Region("rijnmond".into()));
        // Identity pinning on the client side.
        let pinned = client_config_expecting(&b, Identity::Region("rijnmond".into())).expect("cfg");
        try_echo(addr_a, pinned).await.expect("a is rijnmond");
        let wrong = client_config_expecting(&b, Identity::Region("utrecht".into())).expect("cfg");
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
        let (addr, _peers) = echo_server(server_config(&coord).expect("server")).await;
        let err = try_echo(addr, client_config(&b).expect("client")).await.expect_err("coordinator served as a node");
        assert!(err.contains("extended key usage for server authentication"), "{err}");
        // As a client it is accepted, and it is a coordinator, not a region.
        let (addr_b, mut peers) = echo_server(server_config(&b).expect("server b")).await;
        try_echo(addr_b, client_config(&coord).expect("client")).await.expect("coordinator as client");
        assert_eq!(peers.recv().await.expect("peer").identity, Identity::Coordinator("nji".into()));
    }

    #[tokio::test]
    async fn cert_revoked_while_running_is_refused_on_next_handshake() {
        let fed = Fed::new();
        let (a, _) = fed.node("rijnmond");
        let (b, b_pem) = fed.node("haaglanden");
        let (c, _) = fed.node("utrecht");
        let (addr, _peers) = echo_server(server_config(&a).expect("server")).await;
        let client_b = client_config(&b).expect("b");
        let client_c = client_config(&c).expect("c");
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
        let (addr_b, _pb) = echo_server(server_config(&b).expect("server b")).await;
        let err = try_echo(addr_b, client_c).await.expect_err("c accepted revoked server b");
        assert!(err.contains("invalid peer certificate: Revoked"), "{err}");
    }

    #[tokio::test]
    async fn replaced_server_cert_is_served_without_restart() {
        let fed = Fed::new();
        let (a, a_pem) = fed.node("rijnmond");
        let (b, _) = fed.node("haaglanden");
        let (addr, _peers) = echo_server(server_config(&a).expect("server")).await;
        let client = client_config(&b).expect("client");
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
        let (addr, mut peers) = echo_server(server_config(&a).expect("server")).await;
        let err = try_echo(addr, client_config(&x_trusting_us).expect("x")).await.expect_err("foreign client served");
        // Both test CAs have the same name: found by name, refused by signature.
        assert!(err.contains("DecryptError"), "{err}");
        // A foreign server is refused by our client.
        let (addr_x, _px) = echo_server(server_config(&x).expect("server x")).await;
        let err = try_echo(addr_x, client_config(&b).expect("b")).await.expect_err("foreign server accepted");
        assert!(err.contains("BadSignature"), "{err}");
        try_echo(addr, client_config(&b).expect("b")).await.expect("b served");
        assert_eq!(peers.recv().await.expect("peer").identity, Identity::Region("haaglanden".into()));
        assert!(peers.try_recv().is_err(), "the foreign client was reported");
    }

    #[test]
    fn unloadable_files_at_start_are_a_clear_error() {
        let fed = Fed::new();
        let (mut a, _) = fed.node("rijnmond");
        std::fs::write(&a.crls[0], b"not a crl").expect("write");
        let err = server_config(&a).expect_err("bad CRL accepted");
        assert!(err.to_string().contains("crl.pem"), "{err}");
        a.crls = vec![fed.tmp.path().join("missing.pem")];
        let err = client_config(&a).expect_err("missing CRL accepted");
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
