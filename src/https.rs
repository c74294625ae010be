//! The client side of the node's outbound HTTP/1.1 calls to services outside the
//! federation (webhook receivers, the BRP and its OAuth token endpoint): a hyper-util
//! connector that dials TCP and, for `https://`, runs a tokio-rustls handshake with a
//! config from [`crate::pki::tls`], the crate's one TLS policy.
//!
//! The connector enforces the transport rule of every such call once more, per request
//! and not only when a config loads: `https://` needs the TLS config it was built with,
//! and plain `http://` goes only to a loopback host ([`is_loopback_host`]: a
//! TLS-terminating proxy on the same host), since what these calls carry (contact
//! details, BSNs) must not cross a network in the clear. A leaf: it knows neither the
//! config nor the services that use it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// `localhost` or a loopback IP literal (`Uri::host` keeps an IPv6 literal's brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A hyper-util connector: TCP, then TLS for `https://` URIs. Cheap to clone.
#[derive(Clone)]
pub struct HttpsConnector {
    /// Present when `https://` URIs may be dialled.
    tls: Option<TlsConnector>,
}

impl HttpsConnector {
    /// A connector for `https://` with `tls` (build it with
    /// [`crate::pki::https_client_config`] or [`crate::pki::https_client_config_with_cert`])
    /// and for plain `http://` to loopback hosts.
    pub fn new(tls: Arc<ClientConfig>) -> HttpsConnector {
        HttpsConnector { tls: Some(TlsConnector::from(tls)) }
    }

    /// A connector for plain `http://` to loopback hosts only; `https://` is refused.
    pub fn loopback_plain() -> HttpsConnector {
        HttpsConnector { tls: None }
    }
}

impl tower::Service<http::Uri> for HttpsConnector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") if is_loopback_host(host) => false,
                Some("http") => return Err(invalid(format!("{uri}: plain http:// only to a loopback address"))),
                _ => return Err(invalid(format!("{uri}: not an http:// or https:// URL"))),
            };
            // `Uri::host` keeps the brackets of an IPv6 literal; sockets and SNI want it bare.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tls = match (https, tls) {
                (true, Some(tls)) => Some(tls),
                (true, None) => return Err(invalid(format!("{uri}: https:// without a TLS configuration"))),
                (false, _) => None,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else { return Ok(TokioIo::new(Stream::Plain(tcp))) };
            let name = ServerName::try_from(host).map_err(|e| invalid(format!("{uri}: {e}")))?;
            Ok(TokioIo::new(Stream::Tls(Box::new(tls.connect(name, tcp).await?))))
        })
    }
}

/// A connection: plain TCP (loopback only) or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Service;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.nl", "10.0.0.1", "[::2]", "localhost.example.nl", "0.0.0.0"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn plain_http_is_refused_beyond_loopback_and_https_needs_tls() {
        let mut plain = HttpsConnector::loopback_plain();
        for uri in ["http://example.nl/x", "https://127.0.0.1:1/x", "ftp://127.0.0.1/x"] {
            let err = plain.call(uri.parse().unwrap()).await.err().expect(uri);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{uri}: {err}");
        }
    }
}
