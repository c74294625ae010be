//! What the peer API refuses, and the one mapping to `tonic::Status`.
//!
//! Every message says what was wrong and what the caller (the peer's operator) can do;
//! none carries personal data: only region names, field names and counts.

use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The certificate check refused the caller (already a status from `pki`).
    #[error("{}", .0.message())]
    Identity(Status),
    #[error(
        "region {region} is not a configured peer of region {own}; ask its operator to add it to [federation.peers]"
    )]
    NotAPeer { region: String, own: String },
    #[error("from_region {claimed:?} does not match the region in your certificate ({region})")]
    ClaimMismatch { claimed: String, region: String },
    #[error(
        "protocol major version {got} is not supported here (this node speaks {major}.{minor}); upgrade the older node"
    )]
    Version { got: u32, major: u32, minor: u32 },
    #[error("{0}")]
    BadRequest(String),
    #[error("region {region} is over its {per} {kind} budget of blind requests; this is reported to the coordinators")]
    OverBudget { region: String, kind: &'static str, per: &'static str },
    #[error("region {region}: {error}")]
    Ticket { region: String, error: crate::pki::ticket::TicketError },
    #[error("epoch {0:x} of this peer's store was replaced (a restore); its messages are no longer applied")]
    Superseded(u64),
    #[error("the node could not apply the exchange: {0}")]
    Store(#[from] StoreError),
}

impl FederationError {
    pub fn bad(message: impl Into<String>) -> FederationError {
        FederationError::BadRequest(message.into())
    }
}

impl From<FederationError> for Status {
    fn from(e: FederationError) -> Status {
        match e {
            FederationError::Identity(status) => status,
            FederationError::NotAPeer { .. } | FederationError::ClaimMismatch { .. } => {
                Status::permission_denied(e.to_string())
            }
            FederationError::Version { .. } | FederationError::Superseded(_) => {
                Status::failed_precondition(e.to_string())
            }
            FederationError::BadRequest(_) => Status::invalid_argument(e.to_string()),
            FederationError::OverBudget { .. } => Status::resource_exhausted(e.to_string()),
            FederationError::Ticket { error: crate::pki::ticket::TicketError::UsedUp { .. }, .. } => {
                Status::resource_exhausted(e.to_string())
            }
            FederationError::Ticket { .. } => Status::permission_denied(e.to_string()),
            FederationError::Store(_) => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_refusal_has_its_status_code_and_says_what_to_do() {
        let cases = [
            (
                FederationError::NotAPeer { region: "a".into(), own: "b".into() },
                Code::PermissionDenied,
                "[federation.peers]",
            ),
            (
                FederationError::ClaimMismatch { claimed: "a".into(), region: "b".into() },
                Code::PermissionDenied,
                "certificate",
            ),
            (FederationError::Version { got: 9, major: 1, minor: 0 }, Code::FailedPrecondition, "upgrade"),
            (FederationError::bad("publish.point must be 32 bytes"), Code::InvalidArgument, "32 bytes"),
            (
                FederationError::OverBudget { region: "a".into(), kind: "oracle", per: "hourly" },
                Code::ResourceExhausted,
                "coordinators",
            ),
            (
                FederationError::Ticket { region: "a".into(), error: crate::pki::ticket::TicketError::Missing },
                Code::PermissionDenied,
                "virfed ca issue resync-ticket",
            ),
            (
                FederationError::Ticket {
                    region: "a".into(),
                    error: crate::pki::ticket::TicketError::UsedUp {
                        serial: "ab".into(),
                        children: 5,
                        used: 5,
                        asked: 1,
                    },
                },
                Code::ResourceExhausted,
                "new ticket",
            ),
            (FederationError::Superseded(0xab), Code::FailedPrecondition, "restore"),
            (FederationError::Store(StoreError::Failed("disk".into())), Code::Internal, "could not apply"),
        ];
        for (error, code, hint) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert!(status.message().contains(hint), "{}", status.message());
        }
        let passed = Status::from(FederationError::Identity(Status::unauthenticated("no certificate")));
        assert_eq!((passed.code(), passed.message()), (Code::Unauthenticated, "no certificate"));
    }
}
