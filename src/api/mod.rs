//! The node's gRPC services and who may call them.
//!
//! - [`SignalsService`] (`virfed.client.v1.Signals`): organisations, identified by the
//!   `urn:virfed:org:<id>` SAN of their client certificate and registered with the region.
//! - [`OrganisationsService`] (`virfed.admin.v1.Organisations`): operators
//!   (`urn:virfed:operator:<name>`).
//!
//! Identity always comes from the TLS connection ([`crate::pki::peer_of`]), never from a
//! message. Requests are validated completely before the store is touched, so a refused
//! request changes nothing (invariant 7).

mod convert;
mod error;
pub mod pages;

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

pub use error::ApiError;

use crate::domain::retention::removal_date_for_registration;
use crate::domain::{
    parse_date, Bsn, Clock, Contact, OrgDomain, OrgId, Organisation, SignalId, WithdrawReason, Withdrawer,
};
use crate::pb::admin as admin_pb;
use crate::pb::client as pb;
use crate::pki::{peer_of, Identity};
use crate::pseudonym::LocalKey;
use crate::registry::{NewSignal, Registry, Withdrawn};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Largest request the client API accepts; real requests are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What the services share.
pub struct ApiState {
    /// The region's signals (the rules) and, through it, the store.
    pub registry: Registry,
    pub local_key: LocalKey,
    /// The blinding key, when the node federates.
    pub blind_key: Option<crate::pseudonym::BlindKey>,
    pub clock: Arc<dyn Clock>,
    pub match_officer: Option<OrgId>,
    /// Flips to true when the node shuts down, ending watch streams.
    pub shutdown: Shutdown,
}

impl ApiState {
    pub fn store(&self) -> &Store {
        self.registry.store()
    }
}

/// The client API.
#[derive(Clone)]
pub struct SignalsService {
    state: Arc<ApiState>,
}

impl SignalsService {
    pub fn new(state: Arc<ApiState>) -> SignalsService {
        SignalsService { state }
    }

    /// The calling organisation: from the certificate, and registered with this region.
    fn caller<T>(&self, req: &Request<T>) -> Result<Organisation, ApiError> {
        let peer = peer_of(req).map_err(|s| ApiError::Unauthenticated(s.message().to_string()))?;
        let Identity::Organisation(name) = &peer.identity else {
            return Err(ApiError::PermissionDenied(format!(
                "this API is for organisations; the certificate names {} — use an organisation certificate (virfed ca issue client --org ID)",
                peer.identity
            )));
        };
        let id = OrgId::parse(name)?;
        self.state.store().org(&id)?.ok_or_else(|| {
            ApiError::PermissionDenied(format!(
                "organisation {id} is not registered with this region; ask the regional VIR operator to add it (virfed org add)"
            ))
        })
    }

    fn signal_id(raw: &str) -> Result<SignalId, ApiError> {
        SignalId::parse(raw).map_err(|_| {
            ApiError::InvalidArgument(format!(
                "signal_id {raw:?} is not a signal id (a UUID as returned by RegisterSignal)"
            ))
        })
    }
}

type NoticeStream = Pin<Box<dyn Stream<Item = Result<pb::Notice, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::signals_server::Signals for SignalsService {
    async fn register_signal(
        &self,
        req: Request<pb::RegisterSignalRequest>,
    ) -> Result<Response<pb::RegisterSignalResponse>, Status> {
        let org = self.caller(&req)?;
        let r = req.into_inner();
        let bsn = Bsn::parse(&r.bsn).map_err(ApiError::from)?;
        let dob = parse_date("date_of_birth", &r.date_of_birth).map_err(ApiError::from)?;
        let professional = convert::contact_in(r.professional, "professional")?;
        let removal = match r.removal_date.as_str() {
            "" => None,
            s => Some(parse_date("removal_date", s).map_err(ApiError::from)?),
        };
        let now = self.state.clock.now();
        let today = self.state.clock.today();
        let removal_date = removal_date_for_registration(dob, removal, today).map_err(ApiError::from)?;
        let new = NewSignal {
            child: self.state.local_key.child_key(&bsn),
            org: org.id.clone(),
            professional,
            date_of_birth: dob,
            removal_date,
            now,
            point: self.state.blind_key.as_ref().map(|k| k.blind_bsn(&bsn)),
        };
        let done = self.state.registry.register(&new, &format!("org:{}", org.id)).await.map_err(ApiError::from)?;
        info!(signal = %done.signal.id, org = %org.id, created = done.created, matches = done.matched_with, "signal registered");
        Ok(Response::new(pb::RegisterSignalResponse {
            signal: Some(convert::signal_out(&done.signal)),
            created: done.created,
        }))
    }

    async fn withdraw_signal(
        &self,
        req: Request<pb::WithdrawSignalRequest>,
    ) -> Result<Response<pb::WithdrawSignalResponse>, Status> {
        let org = self.caller(&req)?;
        let r = req.into_inner();
        let id = Self::signal_id(&r.signal_id)?;
        let reason = match pb::WithdrawReason::try_from(r.reason) {
            Ok(pb::WithdrawReason::MadeInError) => WithdrawReason::MadeInError,
            Ok(pb::WithdrawReason::ConcernResolved) => WithdrawReason::ConcernResolved,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "reason is required: MADE_IN_ERROR (delete) or CONCERN_RESOLVED (archive)".into(),
                )
                .into())
            }
        };
        let by = match pb::Withdrawer::try_from(r.withdrawn_by) {
            Ok(pb::Withdrawer::Professional) => Withdrawer::Professional,
            Ok(pb::Withdrawer::Coordinator) => Withdrawer::Coordinator,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "withdrawn_by is required: PROFESSIONAL (the reporter) or COORDINATOR (D7)".into(),
                )
                .into())
            }
        };
        let (now, today) = (self.state.clock.now(), self.state.clock.today());
        let outcome =
            self.state.registry.withdraw(&id, &org.id, reason, by, now, today).await.map_err(ApiError::from)?;
        let outcome = match outcome {
            Withdrawn::Deleted => "deleted",
            Withdrawn::Archived => "archived",
        };
        info!(signal = %id, org = %org.id, outcome, "signal withdrawn");
        Ok(Response::new(pb::WithdrawSignalResponse { outcome: outcome.into() }))
    }

    async fn get_signal(&self, req: Request<pb::GetSignalRequest>) -> Result<Response<pb::SignalView>, Status> {
        let org = self.caller(&req)?;
        let id = Self::signal_id(&req.get_ref().signal_id)?;
        match self.state.store().signal(&id).map_err(ApiError::from)? {
            Some(s) if s.org == org.id => Ok(Response::new(convert::signal_out(&s))),
            // Another organisation's signal is reported as absent: its existence is not ours to tell.
            _ => Err(ApiError::NotFound(format!("no signal {id} of organisation {}", org.id)).into()),
        }
    }

    async fn list_matches(
        &self,
        req: Request<pb::ListMatchesRequest>,
    ) -> Result<Response<pb::ListMatchesResponse>, Status> {
        let org = self.caller(&req)?;
        let matches = self.state.registry.matches_for(&org.id).map_err(ApiError::from)?;
        let matches = matches
            .iter()
            .map(|m| pb::MatchView {
                signal_id: m.own.id.to_string(),
                counterparts: m.counterparts.iter().map(convert::party_out).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListMatchesResponse { matches }))
    }

    type WatchStream = NoticeStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let org = self.caller(&req)?;
        let mut cursor = req.get_ref().after_cursor;
        let store = self.state.store().clone();
        let mut durable = store.subscribe_notices();
        let mut shutdown = self.state.shutdown.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                durable.borrow_and_update();
                let batch = match store.notices_after(&org.id, cursor, 256) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        changed = durable.changed() => if changed.is_err() { return },
                        _ = shutdown.recv() => {
                            let _ = tx.send(Err(Status::unavailable("the node is shutting down; reconnect with your last cursor"))).await;
                            return;
                        }
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for (seq, notice) in batch {
                    if tx.send(Ok(convert::notice_out(seq, &notice))).await.is_err() {
                        return;
                    }
                    cursor = seq;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn erase_child(
        &self,
        req: Request<pb::EraseChildRequest>,
    ) -> Result<Response<pb::EraseChildResponse>, Status> {
        let org = self.caller(&req)?;
        if self.state.match_officer.as_ref() != Some(&org.id) {
            return Err(ApiError::PermissionDenied(format!(
                "only the region's match officer organisation may carry out an erasure decision; {} is not it",
                org.id
            ))
            .into());
        }
        let bsn = Bsn::parse(&req.get_ref().bsn).map_err(ApiError::from)?;
        let child = self.state.local_key.child_key(&bsn);
        let deleted = self
            .state
            .registry
            .erase_child(&child, &format!("org:{}", org.id), self.state.clock.now())
            .await
            .map_err(ApiError::from)?;
        info!(org = %org.id, deleted, "erasure decision carried out");
        Ok(Response::new(pb::EraseChildResponse { signals_deleted: deleted }))
    }
}

/// The admin API for the region's operators.
#[derive(Clone)]
pub struct OrganisationsService {
    state: Arc<ApiState>,
}

impl OrganisationsService {
    pub fn new(state: Arc<ApiState>) -> OrganisationsService {
        OrganisationsService { state }
    }

    /// Operators, and the region's municipal (match officer) organisation, may read the
    /// participation report.
    fn participation_reader<T>(&self, req: &Request<T>) -> Result<String, ApiError> {
        let peer = peer_of(req).map_err(|s| ApiError::Unauthenticated(s.message().to_string()))?;
        match &peer.identity {
            Identity::Operator(name) => Ok(format!("operator:{name}")),
            Identity::Organisation(org) if self.state.match_officer.as_ref().map(|o| o.as_str()) == Some(org.as_str()) => {
                Ok(format!("org:{org}"))
            }
            other => Err(ApiError::PermissionDenied(format!(
                "the participation report is for the region's operators and its municipality (the match officer organisation); this certificate names {other}"
            ))),
        }
    }

    fn operator<T>(&self, req: &Request<T>) -> Result<String, ApiError> {
        let peer = peer_of(req).map_err(|s| ApiError::Unauthenticated(s.message().to_string()))?;
        match &peer.identity {
            Identity::Operator(name) => Ok(name.clone()),
            other => Err(ApiError::PermissionDenied(format!(
                "managing organisations needs an operator certificate (virfed ca issue operator --name NAME); this one names {other}"
            ))),
        }
    }
}

fn admin_contact_in(c: Option<admin_pb::Contact>) -> Result<Option<Contact>, ApiError> {
    let Some(c) = c else { return Ok(None) };
    let contact = Contact { name: c.name, role: c.role, phone: c.phone, email: c.email };
    contact.validate("coordinator")?;
    Ok(Some(contact))
}

fn admin_org_out(o: &Organisation) -> admin_pb::Organisation {
    admin_pb::Organisation {
        id: o.id.to_string(),
        name: o.name.clone(),
        domain: o.domain.to_string(),
        coordinator: o.coordinator.as_ref().map(|c| admin_pb::Contact {
            name: c.name.clone(),
            role: c.role.clone(),
            phone: c.phone.clone(),
            email: c.email.clone(),
        }),
    }
}

#[tonic::async_trait]
impl admin_pb::organisations_server::Organisations for OrganisationsService {
    async fn add_organisation(
        &self,
        req: Request<admin_pb::Organisation>,
    ) -> Result<Response<admin_pb::Organisation>, Status> {
        let operator = self.operator(&req)?;
        let r = req.into_inner();
        let org = Organisation {
            id: OrgId::parse(&r.id).map_err(ApiError::from)?,
            name: r.name,
            domain: r.domain.parse::<OrgDomain>().map_err(ApiError::from)?,
            coordinator: admin_contact_in(r.coordinator)?,
        };
        org.validate().map_err(ApiError::from)?;
        self.state
            .registry
            .put_org(&org, &format!("operator:{operator}"), self.state.clock.now())
            .await
            .map_err(ApiError::from)?;
        info!(org = %org.id, domain = %org.domain, operator, "organisation registered");
        Ok(Response::new(admin_org_out(&org)))
    }

    async fn get_participation(
        &self,
        req: Request<admin_pb::ParticipationRequest>,
    ) -> Result<Response<admin_pb::ParticipationReport>, Status> {
        let reader = self.participation_reader(&req)?;
        let days = match req.get_ref().quiet_after_days {
            0 => crate::participation::ParticipationConfig::DEFAULT_QUIET_AFTER_DAYS,
            d => d,
        };
        let store = self.state.store();
        let orgs = store.orgs().map_err(ApiError::from)?;
        let audit = store.audit_entries().map_err(ApiError::from)?;
        let config = crate::participation::ParticipationConfig { quiet_after_days: days };
        let report = crate::participation::report(&orgs, &audit, self.state.clock.today(), &config);
        info!(reader, quiet = report.quiet_orgs().count(), "participation report read");
        Ok(Response::new(admin_pb::ParticipationReport {
            generated_on: report.generated_on.to_string(),
            quiet_after_days: report.quiet_after_days,
            organisations: report
                .orgs
                .iter()
                .map(|o| admin_pb::OrgParticipation {
                    organisation_id: o.org.to_string(),
                    name: o.name.clone(),
                    domain: o.domain.to_string(),
                    signals_30d: o.signals_30d,
                    signals_90d: o.signals_90d,
                    signals_365d: o.signals_365d,
                    last_signal: o.last_signal.map(|d| d.to_string()).unwrap_or_default(),
                    matches: o.matches,
                    quiet: o.quiet,
                })
                .collect(),
            csv: report.to_csv(),
            html: report.to_html(),
            text: report.render_text(),
        }))
    }

    type BackupStream = Pin<Box<dyn Stream<Item = Result<admin_pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup(&self, req: Request<admin_pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let operator = self.operator(&req)?;
        let store = self.state.store().clone();
        let path = store.path().with_extension(format!("backup-{}", uuid::Uuid::new_v4()));
        let summary = store.backup_to(&path).await.map_err(ApiError::from)?;
        info!(operator, entries = summary.entries, "online backup taken");
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let sent = async {
                let mut file = tokio::fs::File::open(&path).await?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    if tx.send(Ok(admin_pb::BackupChunk { data: buf[..n].to_vec() })).await.is_err() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = sent {
                let _ = tx.send(Err(Status::internal(format!("reading the backup file failed: {e}")))).await;
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_organisations(
        &self,
        req: Request<admin_pb::ListOrganisationsRequest>,
    ) -> Result<Response<admin_pb::ListOrganisationsResponse>, Status> {
        self.operator(&req)?;
        let orgs = self.state.store().orgs().map_err(ApiError::from)?;
        Ok(Response::new(admin_pb::ListOrganisationsResponse {
            organisations: orgs.iter().map(admin_org_out).collect(),
        }))
    }
}
