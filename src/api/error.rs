//! The one mapping from errors to gRPC statuses. Every message says what was wrong and
//! what to do, and none contains a BSN (the domain errors never echo one).

use tonic::{Code, Status};

use crate::domain::retention::RetentionError;
use crate::domain::{BsnError, FieldError};
use crate::registry::RegistryError;
use crate::store::StoreError;

/// Errors of the client and admin APIs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Over a rate limit (the organisation's registration limit): nothing was changed.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("the node could not complete the request: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(e: FieldError) -> ApiError {
        ApiError::InvalidArgument(e.to_string())
    }
}

impl From<BsnError> for ApiError {
    fn from(e: BsnError) -> Self {
        ApiError::InvalidArgument(format!("bsn: {e}"))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::field(e)
    }
}

impl From<RetentionError> for ApiError {
    fn from(e: RetentionError) -> Self {
        ApiError::InvalidArgument(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError::Internal(e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownOrg(_) => ApiError::PermissionDenied(e.to_string()),
            RegistryError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RegistryError::NotOwner(_) => ApiError::PermissionDenied(e.to_string()),
            RegistryError::NotActive(_) => ApiError::FailedPrecondition(e.to_string()),
            RegistryError::Store(s) => s.into(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match e {
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
