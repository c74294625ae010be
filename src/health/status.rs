//! `virfed.admin.v1.Status` on the peer port: this node's health for coordinators and
//! peer nodes. The caller's certificate decides, nothing in the request: coordinator
//! certificates (`urn:virfed:coordinator:`) and node certificates (`urn:virfed:region:`)
//! of this node's configured peers are served. A node certificate of any other region is
//! refused with PERMISSION_DENIED, audited (`federation.refused`) and logged: a valid
//! federation certificate alone does not let a region watch this node's figures and
//! links (invariants 6, 9). Organisation and operator certificates get PERMISSION_DENIED.

use std::sync::Arc;

use tonic::{Request, Response};
use tracing::warn;

use super::NodeHealth;
use crate::domain::AuditAction;
use crate::pb::admin as pb;
use crate::pki::{peer_of, Identity};

/// The status service.
#[derive(Clone)]
pub struct StatusService {
    health: Arc<NodeHealth>,
}

impl StatusService {
    pub fn new(health: Arc<NodeHealth>) -> StatusService {
        StatusService { health }
    }

    /// Coordinators and the configured peers may read health; nobody else.
    async fn authorise<T>(&self, req: &Request<T>) -> Result<(), tonic::Status> {
        match &peer_of(req)?.identity {
            Identity::Coordinator(_) => Ok(()),
            Identity::Region(region) if self.health.peers.iter().any(|p| p.region == *region) => Ok(()),
            Identity::Region(region) => {
                let own = &self.health.region;
                warn!(peer = %region, "status read by a node certificate of an unconfigured region refused");
                let audited = self
                    .health
                    .store
                    .audit_event(
                        &format!("region:{region}"),
                        AuditAction::FederationRefused,
                        &format!("region {region}"),
                        "status read: not a configured peer",
                    )
                    .await;
                if let Err(e) = audited {
                    warn!(error = %e, "auditing a refused status read failed");
                }
                Err(tonic::Status::permission_denied(format!(
                    "federation status is for coordinators and configured peers only: region {region} is not a configured peer of region {own}; ask its operator to add it to [federation.peers], or use a coordinator certificate"
                )))
            }
            other => Err(tonic::Status::permission_denied(format!(
                "federation status is for node and coordinator certificates only, and the certificate names {other}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl pb::status_server::Status for StatusService {
    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::NodeStatus>, tonic::Status> {
        self.authorise(&req).await?;
        Ok(Response::new(self.health.status().await))
    }
}
