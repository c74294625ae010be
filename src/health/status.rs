//! `virfed.admin.v1.Status` on the peer port: this node's health for coordinators and
//! peer nodes. The caller's certificate decides, nothing in the request: federation node
//! certificates (`urn:virfed:region:`) and coordinator certificates
//! (`urn:virfed:coordinator:`) are served; organisation and operator certificates get
//! PERMISSION_DENIED.

use std::sync::Arc;

use tonic::{Request, Response};

use super::NodeHealth;
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
}

/// Node and coordinator certificates may read health; nobody else.
pub fn require_node_or_coordinator<T>(req: &Request<T>) -> Result<(), tonic::Status> {
    match &peer_of(req)?.identity {
        Identity::Region(_) | Identity::Coordinator(_) => Ok(()),
        other => Err(tonic::Status::permission_denied(format!(
            "federation status is for node and coordinator certificates only, and the certificate names {other}"
        ))),
    }
}

#[tonic::async_trait]
impl pb::status_server::Status for StatusService {
    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::NodeStatus>, tonic::Status> {
        require_node_or_coordinator(&req)?;
        Ok(Response::new(self.health.status().await))
    }
}
