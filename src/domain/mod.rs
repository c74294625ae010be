//! The VIR's rules in plain types: no tonic, sled or rustls in here.
//!
//! - [`bsn`]: the child's BSN, valid by construction, never printed (D9, invariant 1).
//! - [`model`]: organisations, contacts, signals (D1, D2), notices (D5, D6).
//! - [`retention`]: age limit (D3) and retention (D4) as pure date functions.
//! - [`clock`]: injected time.
//! - [`audit`]: the audit log's vocabulary (D8).
//! - [`bucket`]: token-bucket arithmetic over explicit times (oracle budget, registration limit).

pub mod audit;
pub mod bsn;
pub mod bucket;
pub mod clock;
pub mod model;
pub mod retention;

pub use audit::AuditAction;
pub use bsn::{Bsn, BsnError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use model::*;
