//! The test and demo kit, behind the cargo feature `kit` (on by default, off in a
//! production build: `cargo build --release --no-default-features`).
//!
//! - [`fixture`]: a real region on loopback (CA, certificates, config, node in this
//!   process) for the demo, the benchmark and the integration tests, so all three exercise
//!   the TLS, sockets and sled files an operator runs.
//! - [`demo`]: `virfed demo`, a federation of three regions walking through
//!   cross-border matches.
//! - [`bench`]: `virfed bench`, figures printed next to the floors they are measured
//!   against.
//! - [`process`]: nodes as real `virfed node` processes (start, wait serving, SIGKILL,
//!   SIGTERM, offline audit check).
//! - [`faults`]: proof under faults: the crash-cycle harness (`virfed bench crash`), and
//!   the same load and checks under real network faults (`virfed bench network`).
//! - [`netns`]: nodes in network namespaces of their own, and loss, duplication,
//!   reordering, a bottleneck and partitions put on the links between them.
//! - [`fuzzing`]: the body of every `fuzz/` target (one function per place bytes from
//!   outside enter, and a node on a real store for the peer exchange), shared with the
//!   stable seed test so both run the same code.
//! - [`brp`]: a local BRP Personen API (and OAuth token endpoint) in the shapes of the
//!   public specification, with switches for outages, slowness and malformed answers, for
//!   the BRP client's tests and the demo.
//!
//! The kit is not part of a node: it mints throwaway CAs in temp dirs. Keeping it behind a
//! feature keeps it (and `tempfile`) out of a production binary and out of the library's
//! surface a node is built from. Its errors are one [`KitError`]: the library never
//! uses anyhow, and the binary's `anyhow` takes a `KitError` with `?` like any other.

pub mod bench;
pub mod brp;
pub mod demo;
pub mod faults;
pub mod fixture;
pub mod fuzzing;
pub mod netns;
pub mod process;

use std::error::Error as StdError;

/// Everything the kit can fail on: the library's own errors, passed through, and the
/// kit's own findings as messages.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The kit found something wrong (a node that did not answer, a missing notice).
    #[error("{0}")]
    Failed(String),
    /// What the kit was doing when `source` failed.
    #[error("{what}")]
    Context {
        /// The step, e.g. "adding organisation org-a".
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Node(#[from] crate::server::NodeError),
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Field(#[from] crate::domain::FieldError),
    #[error(transparent)]
    Bsn(#[from] crate::domain::BsnError),
    #[error(transparent)]
    Key(#[from] crate::pseudonym::KeyError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl KitError {
    /// `source` failed while the kit was doing `what`.
    pub fn context(what: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> KitError {
        KitError::Context { what: what.into(), source: Box::new(source) }
    }
}

/// The kit's result.
pub type KitResult<T> = Result<T, KitError>;

/// Returns early with [`KitError::Failed`], formatted like `format!`.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::kit::KitError::Failed(format!($($arg)*)))
    };
}
pub(crate) use fail;
