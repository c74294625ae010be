//! Public-key infrastructure: who is who, and every TLS setting of the crate.
//!
//! - [`identity`]: an [`Identity`] (organisation, operator, region node, coordinator)
//!   lives in exactly one SAN URI `urn:virfed:<kind>:<name>` of a certificate, and is read
//!   back in one place, [`identity_from_cert`]. Nothing else in the crate decides who a
//!   peer is: request bodies never carry identities (DESIGN invariant 6).
//! - [`ca`]: the CA tooling on rcgen — a CA directory (`ca.pem`, `ca.key`), issuing
//!   client and server certificates, certificate revocation lists, and the helpers that
//!   write and check secret files (0600, refused when group/world readable).
//! - [`tls`]: all rustls configuration, as in linkerd2-proxy: one policy, one pair of
//!   builders, [`server_config`] (client certificate required, chained to the CA, CRLs
//!   honoured) and [`client_config`] / [`client_config_expecting`] (trusts only that CA,
//!   honours its CRLs, optionally pins the server's identity), for production and tests
//!   alike, always with the ring provider chosen explicitly so no process-wide default can
//!   change what we accept, and without session resumption. Each takes a [`TlsSource`]:
//!   [`TlsFiles`] or in-memory [`TlsMaterial`]. Calls out of the federation (webhooks,
//!   the BRP) get their HTTP/1.1 configs here too: [`https_client_config`] (only the
//!   service's configured CA) and [`https_client_config_with_cert`] (and mutual TLS).
//! - [`reload`]: [`TlsFiles`] and how they are loaded: the verifiers and certificates
//!   built from files are re-read when those files change, without a restart.
//! - [`ticket`]: resync tickets, certificates of the federation CA that allow one region a
//!   bulk publish of N children ([`ticket::verify`]); never an identity.
//! - [`transport`]: TLS over TCP for tonic — an accept loop that turns verified
//!   connections into [`TlsConn`]s carrying a [`PeerInfo`] (handlers read it from the
//!   request extensions), and client channels over the same client config.
//!
//! Errors from all four are one [`PkiError`] whose messages name the file or peer
//! involved and say what to do.

pub mod ca;
pub mod identity;
pub mod reload;
pub mod ticket;
pub mod tls;
pub mod transport;

use std::path::PathBuf;

pub use ca::{
    cert_serial, check_secret_file_mode, write_cert_pair, write_secret_file, Ca, CertSpec, IssuedCert, CRL_FILE,
    REVOKED_FILE,
};
pub use identity::{identity_from_cert, validate_id, Identity};
pub use reload::TlsFiles;
pub use tls::{
    client_config, client_config_expecting, https_client_config, https_client_config_with_cert, server_config,
    TlsMaterial, TlsSource,
};
pub use transport::{connect, connect_lazy, peer_of, require_region, tls_incoming, PeerInfo, TlsConn};

/// Everything that can go wrong with certificates, keys and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An id or name does not follow the id syntax.
    #[error("invalid id {id:?}: {reason} (ids are 1-63 characters: a-z, 0-9, '.', '_', '-', starting with a letter or digit)")]
    InvalidId {
        /// The offending input.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A SAN URI is not a valid virfed identity.
    #[error("invalid virfed identity URI {uri:?}: {reason}")]
    InvalidIdentityUri {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate cannot be parsed or does not carry exactly one virfed identity.
    #[error("{0}")]
    BadCertificate(String),
    /// A file or directory operation failed.
    #[error("{path}: cannot {action}: {source}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we tried to do, e.g. "read the CA key".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// We refuse to replace an existing file.
    #[error("{path} already exists; refusing to overwrite it (move it away first if you really mean to replace it)", path = path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A secret file can be read by group or others.
    #[error("{path} is readable or writable by group/others (mode {mode:03o}); a private key must be private: run `chmod 600 {path}`", path = path.display())]
    InsecurePermissions {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// PEM input holds nothing usable, or something unparsable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input: a file path or a description such as "CA certificate".
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate next to it.
    #[error("{key} does not belong to {cert}: the public keys differ; restore the matching pair")]
    KeyMismatch {
        /// The key file or description.
        key: String,
        /// The certificate file or description.
        cert: String,
    },
    /// A certificate request is inconsistent (dates, key usages, names).
    #[error("invalid certificate request: {0}")]
    InvalidSpec(String),
    /// rcgen failed to build or sign something.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A client connection could not be set up or established.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The `host:port` we tried.
        addr: String,
        /// Why it failed, with the underlying causes.
        reason: String,
    },
}

impl PkiError {
    /// Wraps an I/O error with the path and the action that failed.
    pub(crate) fn io(path: &std::path::Path, action: &'static str, source: std::io::Error) -> Self {
        PkiError::Io { path: path.to_path_buf(), action, source }
    }
}

/// Formats an error with all its sources, so a message like "transport error" also says
/// "connection refused" or "certificate expired".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
