//! TLS over TCP for tonic, both directions.
//!
//! Server side: [`tls_incoming`] turns a `TcpListener` into a stream of verified
//! connections for `Server::serve_with_incoming_shutdown`. Each [`TlsConn`] carries a
//! [`PeerInfo`] (identity from the client certificate, remote address); tonic copies it
//! into every request's extensions through [`Connected`], so a handler calls
//! [`peer_of`] and never trusts an identity in a request body.
//!
//! The accept loop never waits on one client: each handshake runs in its own task with a
//! timeout, and only successes reach the stream. Failures (no client certificate, a
//! foreign CA, expired or revoked certificate, plain TCP, a certificate without a virfed
//! identity) are logged and dropped, never yielded: an `Err` item could stop tonic's
//! serving loop, and one bad client must not take the node down.
//!
//! Client side: [`connect`] and [`connect_lazy`] build tonic channels whose connector
//! dials TCP and runs the rustls handshake with the config from [`super::tls`]. tonic's
//! own TLS feature is not used, so one rustls set-up serves both sides.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use super::identity::{identity_from_cert, Identity};
use super::{error_chain, PkiError};

/// How long a client may take to complete the TLS handshake before we drop it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Verified connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// Client side: how long dialling plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Client side: HTTP/2 pings keep idle peer links alive through NAT and detect dead peers.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Who is on the other end of a server-side connection, proven by its certificate.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The identity from the client certificate's `urn:virfed:` SAN URI.
    pub identity: Identity,
    /// The TCP peer address (for logs; never for authorisation).
    pub remote_addr: SocketAddr,
}

/// A server-side TLS connection whose client certificate has been verified and carries a
/// virfed identity.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl TlsConn {
    /// The verified peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

// `TlsStream<TcpStream>` is `Unpin`, so delegating needs no pin projection.
impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener`, runs the TLS handshake of each in its own task
/// (at most [`HANDSHAKE_TIMEOUT`]), and yields the connections whose client certificate
/// verified and names a virfed identity. Never yields an error; the accept loop ends
/// when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<Result<TlsConn, io::Error>>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, remote_addr)) => {
                tokio::spawn(handshake(tcp, remote_addr, acceptor.clone(), tx.clone()));
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%remote_addr, error = %e, "cannot set TCP_NODELAY");
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if is_certificate_problem(&e) {
                warn!(%remote_addr, reason = %e, "TLS handshake refused: client certificate not accepted");
            } else {
                debug!(%remote_addr, reason = %e, "TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            debug!(%remote_addr, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    let identity = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => identity_from_cert(leaf),
        _ => Err(PkiError::BadCertificate("the client presented no certificate".into())),
    };
    match identity {
        Ok(identity) => {
            debug!(%remote_addr, peer = %identity, "TLS connection accepted");
            let conn = TlsConn { stream, peer: PeerInfo { identity, remote_addr } };
            // A send error means the server stopped; the connection is simply dropped.
            let _ = tx.send(Ok(conn)).await;
        }
        Err(e) => {
            warn!(%remote_addr, reason = %e, "TLS connection dropped: client certificate has no valid virfed identity");
        }
    }
}

/// Whether a handshake failed on the client's certificate (worth a warning), rather than
/// on noise such as a port scan or a plain-HTTP request.
fn is_certificate_problem(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// The verified peer of a request, as put there by [`TlsConn`]; `Unauthenticated` if the
/// request did not arrive over [`tls_incoming`].
pub fn peer_of<T>(req: &tonic::Request<T>) -> Result<&PeerInfo, tonic::Status> {
    req.extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified client certificate on this connection"))
}

/// For the node-to-node API: the region id of the verified peer, which must present a
/// region node certificate. Any other certificate gets `PermissionDenied` naming what it
/// is; no certificate at all gets `Unauthenticated` (see [`peer_of`]).
pub fn require_region<T>(req: &tonic::Request<T>) -> Result<String, tonic::Status> {
    match &peer_of(req)?.identity {
        Identity::Region(region) => Ok(region.clone()),
        other => Err(tonic::Status::permission_denied(format!(
            "this is the node-to-node API; only region node certificates may call it, and the certificate names {other}"
        ))),
    }
}

/// Connects now to `addr` (`host:port`), verifying that the server's certificate is valid
/// for `server_name` and chains to the CA of `config`. Fails if TCP or the handshake
/// fails; afterwards the channel reconnects on demand.
pub async fn connect(addr: &str, server_name: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, PkiError> {
    let endpoint = endpoint(addr)?;
    let connector = connector(addr, server_name, config)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| PkiError::Connect { addr: addr.to_owned(), reason: error_chain(&e) })
}

/// Like [`connect`], but dials on first use (and again after a failure), so a peer that is
/// down now does not stop start-up.
pub fn connect_lazy(addr: &str, server_name: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, PkiError> {
    let endpoint = endpoint(addr)?;
    let connector = connector(addr, server_name, config)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

fn endpoint(addr: &str) -> Result<Endpoint, PkiError> {
    // The scheme is "http" because TLS is done by our connector, not by tonic.
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PkiError::Connect {
            addr: addr.to_owned(),
            reason: format!("not a valid host:port ({})", error_chain(&e)),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A tower service that dials `addr` and runs the TLS handshake; the URI tonic passes
/// is ignored (it is `http://addr` anyway).
fn connector(
    addr: &str,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<
    impl tower::Service<
            http::Uri,
            Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
            Error = io::Error,
            Future = impl Send,
        > + Send
        + 'static,
    PkiError,
> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| PkiError::Connect {
        addr: addr.to_owned(),
        reason: format!("{server_name:?} is not a valid DNS name or IP address ({e})"),
    })?;
    let addr = addr.to_owned();
    let tls = TlsConnector::from(config);
    Ok(tower::service_fn(move |_uri: http::Uri| {
        let (addr, name, tls) = (addr.clone(), name.clone(), tls.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use time::OffsetDateTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::pki::ca::{cert_serial, Ca, CertSpec, IssuedCert};
    use crate::pki::tls::{client_config, server_config, TlsMaterial};

    const SERVER_NAME: &str = "localhost";
    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    fn org(name: &str) -> Identity {
        Identity::Organisation(name.into())
    }

    fn server_material(ca: &Ca) -> TlsMaterial {
        let issued = ca.issue(&CertSpec::server(vec![SERVER_NAME.into(), "127.0.0.1".into()], 1)).expect("server cert");
        TlsMaterial::from_issued(&ca.cert_pem(), &issued)
    }

    fn issue_client(ca: &Ca, name: &str) -> IssuedCert {
        ca.issue(&CertSpec::client(org(name), 1)).expect("client cert")
    }

    /// A client trusting `trusted` and presenting `issued` (which may come from another CA).
    fn client_cfg(trusted: &Ca, issued: &IssuedCert) -> Arc<ClientConfig> {
        client_config(&TlsMaterial::from_issued(&trusted.cert_pem(), issued)).expect("client config")
    }

    fn client_cfg_without_cert(trusted: &Ca) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(trusted.cert_pem().as_bytes()).expect("pem")).expect("root");
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// An echo server behind `tls_incoming`; every accepted peer is reported on the
    /// returned channel before its connection is served.
    async fn echo_server(config: Arc<ServerConfig>) -> (SocketAddr, mpsc::UnboundedReceiver<PeerInfo>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(tls_incoming(listener, config));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(conn) = incoming.next().await {
                let mut conn = conn.expect("tls_incoming never yields errors");
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

    /// Handshake, send "ping", expect "ping" back. Err says where it failed. With TLS 1.3
    /// the client finishes its handshake before the server has judged the client
    /// certificate, so a refusal often shows up only at the read.
    async fn try_echo(addr: SocketAddr, config: Arc<ClientConfig>, server_name: &str) -> Result<(), String> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
        let attempt = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| format!("tcp: {e}"))?;
            let mut tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if &buf == b"ping" {
                Ok(())
            } else {
                Err(format!("echo returned {buf:?}"))
            }
        };
        tokio::time::timeout(TEST_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err("timed out (the server neither served nor refused)".into()))
    }

    /// After a refused attempt, a valid client is still served, and it is the only peer
    /// the server ever reported: the refused one never reached the stream.
    async fn assert_server_still_serves_only_valid(
        addr: SocketAddr,
        peers: &mut mpsc::UnboundedReceiver<PeerInfo>,
        ca: &Ca,
    ) {
        let good = issue_client(ca, "valid-after");
        try_echo(addr, client_cfg(ca, &good), SERVER_NAME).await.expect("a valid client after a refused one is served");
        let peer = peers.recv().await.expect("peer reported");
        assert_eq!(peer.identity, org("valid-after"));
        assert!(peers.try_recv().is_err(), "a refused client was reported");
    }

    #[tokio::test]
    async fn valid_org_cert_is_accepted_with_its_identity() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let client = issue_client(&ca, "jeugdzorg-rotterdam");
        try_echo(addr, client_cfg(&ca, &client), SERVER_NAME).await.expect("served");
        let peer = peers.recv().await.expect("peer");
        assert_eq!(peer.identity, org("jeugdzorg-rotterdam"));
        assert!(peer.remote_addr.ip().is_loopback());
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let err = try_echo(addr, client_cfg_without_cert(&ca), SERVER_NAME)
            .await
            .expect_err("served without a client certificate");
        assert!(!err.contains("timed out"), "{err}");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn client_cert_from_another_ca_is_refused() {
        let ca = Ca::generate("root", 30).expect("CA");
        let foreign = Ca::generate("foreign root", 30).expect("foreign CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        // Same identity, but minted by a CA the server does not trust.
        let impostor = issue_client(&foreign, "jeugdzorg-rotterdam");
        try_echo(addr, client_cfg(&ca, &impostor), SERVER_NAME).await.expect_err("served a foreign-CA certificate");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn expired_client_cert_is_refused() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let now = OffsetDateTime::now_utc();
        let mut spec = CertSpec::client(org("expired"), 1);
        spec.not_before = now - time::Duration::days(10);
        spec.not_after = now - time::Duration::days(1);
        let expired = ca.issue(&spec).expect("issue");
        try_echo(addr, client_cfg(&ca, &expired), SERVER_NAME).await.expect_err("served an expired certificate");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn revoked_client_cert_is_refused_when_crl_lists_it() {
        let ca = Ca::generate("root", 30).expect("CA");
        let revoked = issue_client(&ca, "revoked");
        let crl = ca.revocation_list(&[cert_serial(&revoked.cert_pem).expect("serial")], 7).expect("crl");
        let mut material = server_material(&ca);
        material.crl_pems = vec![crl.into_bytes()];
        let (addr, mut peers) = echo_server(server_config(&material).expect("cfg")).await;
        try_echo(addr, client_cfg(&ca, &revoked), SERVER_NAME).await.expect_err("served a revoked certificate");
        // Certificates not on the list still work with the CRL in force.
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn server_cert_for_wrong_dns_name_is_refused_by_client() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let client = issue_client(&ca, "ggd");
        let err = try_echo(addr, client_cfg(&ca, &client), "vir.other-region.example")
            .await
            .expect_err("client accepted a certificate for another name");
        assert!(err.starts_with("handshake:"), "{err}");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn cert_without_virfed_uri_san_is_dropped() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let mut spec = CertSpec::client(org("placeholder"), 1);
        spec.identity = None;
        spec.dns_names = vec!["anonymous.example".into()];
        let anonymous = ca.issue(&spec).expect("issue");
        try_echo(addr, client_cfg(&ca, &anonymous), SERVER_NAME)
            .await
            .expect_err("served a certificate without identity");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn plain_tcp_client_does_not_stop_accepting() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let mut plain = TcpStream::connect(addr).await.expect("tcp");
        plain.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
        // The server answers with at most a TLS alert and closes.
        let mut reply = Vec::new();
        tokio::time::timeout(TEST_TIMEOUT, plain.read_to_end(&mut reply))
            .await
            .expect("server closed the plain connection")
            .ok();
        assert!(!reply.starts_with(b"HTTP/"), "plain HTTP got an HTTP answer");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[tokio::test]
    async fn silent_client_does_not_block_other_handshakes() {
        let ca = Ca::generate("root", 30).expect("CA");
        let (addr, mut peers) = echo_server(server_config(&server_material(&ca)).expect("cfg")).await;
        // Connects and never says a word; held open for the whole test.
        let _silent = TcpStream::connect(addr).await.expect("tcp");
        assert_server_still_serves_only_valid(addr, &mut peers, &ca).await;
    }

    #[test]
    fn peer_of_request_without_peer_info_is_unauthenticated() {
        let req = tonic::Request::new(());
        let status = peer_of(&req).expect_err("peer invented");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    // --- through tonic ------------------------------------------------------------------

    /// A hand-written gRPC service (no codegen needed) answering the caller's identity as
    /// `peer_of` sees it.
    #[derive(Clone)]
    struct WhoAmI;

    const WHOAMI_PATH: &str = "/virfed.test.WhoAmI/Get";

    impl tonic::server::NamedService for WhoAmI {
        const NAME: &'static str = "virfed.test.WhoAmI";
    }

    impl tonic::server::UnaryService<()> for WhoAmI {
        type Response = String;
        type Future = std::future::Ready<Result<tonic::Response<String>, tonic::Status>>;

        fn call(&mut self, req: tonic::Request<()>) -> Self::Future {
            std::future::ready(peer_of(&req).map(|p| tonic::Response::new(p.identity.to_string())))
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for WhoAmI {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, ()>::default());
                Ok(grpc.unary(WhoAmI, req).await)
            })
        }
    }

    struct GrpcServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        done: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    async fn grpc_server(config: Arc<ServerConfig>) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(tonic::transport::Server::builder().add_service(WhoAmI).serve_with_incoming_shutdown(
            tls_incoming(listener, config),
            async {
                let _ = stopped.await;
            },
        ));
        GrpcServer { addr, stop, done }
    }

    async fn who_am_i(channel: Channel) -> Result<String, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let reply = grpc
            .unary(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(WHOAMI_PATH),
                tonic_prost::ProstCodec::<(), String>::default(),
            )
            .await?;
        Ok(reply.into_inner())
    }

    #[tokio::test]
    async fn connect_returns_channel_and_handler_sees_certificate_identity() {
        let ca = Ca::generate("root", 30).expect("CA");
        let server = grpc_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let client = issue_client(&ca, "jeugdzorg-rotterdam");
        let channel = connect(&server.addr.to_string(), SERVER_NAME, client_cfg(&ca, &client)).await.expect("connect");
        assert_eq!(who_am_i(channel).await.expect("call"), "organisation jeugdzorg-rotterdam");

        // Shutting down ends serving cleanly, and the listener is closed.
        let _ = server.stop.send(());
        server.done.await.expect("join").expect("serve");
        let mut closed = false;
        for _ in 0..100 {
            if TcpStream::connect(server.addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "listener still accepting after shutdown");
    }

    #[tokio::test]
    async fn connect_fails_eagerly_when_server_name_does_not_match() {
        let ca = Ca::generate("root", 30).expect("CA");
        let server = grpc_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let client = issue_client(&ca, "ggd");
        let err = connect(&server.addr.to_string(), "vir.other-region.example", client_cfg(&ca, &client))
            .await
            .expect_err("connected to a server with the wrong name");
        assert!(matches!(&err, PkiError::Connect { reason, .. } if reason.contains("certificate")), "{err}");
    }

    #[tokio::test]
    async fn connect_fails_eagerly_when_nobody_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let ca = Ca::generate("root", 30).expect("CA");
        let client = issue_client(&ca, "ggd");
        let err =
            connect(&addr.to_string(), SERVER_NAME, client_cfg(&ca, &client)).await.expect_err("connected to nobody");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn grpc_server_keeps_serving_after_refused_clients_and_lazy_channel_works() {
        let ca = Ca::generate("root", 30).expect("CA");
        let foreign = Ca::generate("foreign", 30).expect("foreign CA");
        let server = grpc_server(server_config(&server_material(&ca)).expect("cfg")).await;
        let addr = server.addr.to_string();

        let mut plain = TcpStream::connect(server.addr).await.expect("tcp");
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");

        let impostor = issue_client(&foreign, "ggd");
        let refused = match connect(&addr, SERVER_NAME, client_cfg(&ca, &impostor)).await {
            Ok(channel) => who_am_i(channel).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(refused.is_err(), "foreign-CA client was served");

        let client = issue_client(&ca, "ggd");
        let lazy = connect_lazy(&addr, SERVER_NAME, client_cfg(&ca, &client)).expect("lazy");
        assert_eq!(who_am_i(lazy).await.expect("call"), "organisation ggd");
        let _ = server.stop.send(());
    }

    #[test]
    fn connect_lazy_rejects_invalid_server_name() {
        let ca = Ca::generate("root", 30).expect("CA");
        let client = issue_client(&ca, "ggd");
        let err = connect_lazy("127.0.0.1:1", "not a name!", client_cfg(&ca, &client)).expect_err("accepted");
        assert!(err.to_string().contains("not a name!"), "{err}");
    }
}
