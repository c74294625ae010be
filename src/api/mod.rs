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
//!
//! A stolen organisation certificate is contained twice over: [`RegistrationLimiter`] caps
//! how many signals one organisation may register (a token bucket each), and the server
//! gives every client connection a maximum age, so a certificate revoked by a CRL update
//! must handshake again soon; [`SignalsService`]'s `Watch` streams end with UNAVAILABLE at
//! that age, and the client resumes from its last cursor.

pub(crate) mod convert;
mod error;
pub mod pages;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

pub use error::ApiError;

use crate::config::FamilySource;
use crate::config::RegistrationLimits;
use crate::domain::bucket::{Bucket, Limit};
use crate::domain::{AuditAction, Bsn, Clock, OrgId, Organisation};
use crate::pb::admin as admin_pb;
use crate::pb::client as pb;
use crate::pki::{peer_of, Identity};
use crate::pseudonym::LocalKey;
use crate::registry::family::NewParent;
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
    /// Each organisation's registration rate limit.
    pub registration_limits: RegistrationLimiter,
    /// How long one `Watch` stream lives before it ends with UNAVAILABLE (the client API's
    /// maximum connection age, so that the stream does not hold a revoked certificate's
    /// connection open).
    pub watch_max_age: Duration,
    /// Where a child's parents come from (family matches, D11).
    pub family: FamilySource,
}

impl ApiState {
    pub fn store(&self) -> &Store {
        self.registry.store()
    }
}

/// Called once for every registration refused over the limit (the server counts it in
/// `virfed_registrations_rate_limited_total`); the API itself knows no metrics.
pub type RefusalHook = Box<dyn Fn(&OrgId) + Send + Sync>;

/// At most one audit entry per organisation per this many milliseconds while it stays over
/// its limit: a flood of refusals must not become a flood of audit writes. The first
/// refusal is logged at once; later ones are counted into the next entry's detail.
const RATE_LIMIT_AUDIT_EVERY_MS: i64 = 60_000;

/// The registration rate limit: a token bucket per organisation ([`crate::domain::bucket`]),
/// with the figures of `[registration_limits]` in the config. Every `RegisterSignal` that
/// passes validation takes a token, a repeat registration (D2) too: telling a repeat from
/// a new signal needs the store, and the point is to cap requests from a stolen certificate
/// before they reach it; an honest client's retries fit in the burst.
///
/// In memory: a restart refills every bucket. That is acceptable because this limit caps a
/// flood, it does not meter honest use, and the refusals before the restart are audited.
/// Buckets exist only for registered organisations (the caller is checked first), so the
/// map is as small as the region's organisation list.
pub struct RegistrationLimiter {
    limits: RegistrationLimits,
    orgs: Mutex<HashMap<OrgId, OrgBucket>>,
    on_refusal: RefusalHook,
}

#[derive(Default)]
struct OrgBucket {
    bucket: Option<Bucket>,
    /// Refusals not yet in an audit entry.
    unaudited: u64,
    last_audit_ms: Option<i64>,
}

/// A registration over the limit: nothing was taken.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub limit: Limit,
    /// Some(n): write an audit entry now, for n refusals (this one included).
    pub audit: Option<u64>,
}

impl RegistrationLimiter {
    pub fn new(limits: RegistrationLimits, on_refusal: RefusalHook) -> RegistrationLimiter {
        RegistrationLimiter { limits, orgs: Mutex::new(HashMap::new()), on_refusal }
    }

    /// The limit that applies to `org`: its override, or the default.
    pub fn limit(&self, org: &OrgId) -> Limit {
        let (burst, per_hour) = self.limits.for_org(org);
        Limit::per_hour(burst, per_hour)
    }

    /// Takes one registration's token for `org` at `now_ms` (Unix milliseconds).
    pub fn take(&self, org: &OrgId, now_ms: i64) -> Result<(), Refused> {
        let limit = self.limit(org);
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let state = orgs.entry(org.clone()).or_default();
        match limit.take(state.bucket, now_ms, 1) {
            Ok(bucket) => {
                state.bucket = Some(bucket);
                Ok(())
            }
            Err(_) => {
                state.bucket = Some(limit.refilled(state.bucket, now_ms));
                state.unaudited += 1;
                let due = state.last_audit_ms.is_none_or(|at| now_ms.saturating_sub(at) >= RATE_LIMIT_AUDIT_EVERY_MS);
                let audit = due.then(|| {
                    state.last_audit_ms = Some(now_ms);
                    std::mem::take(&mut state.unaudited)
                });
                drop(orgs);
                (self.on_refusal)(org);
                Err(Refused { limit, audit })
            }
        }
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

    /// A registration refused over the organisation's limit: audited (coalesced, see
    /// [`RATE_LIMIT_AUDIT_EVERY_MS`]) and answered with RESOURCE_EXHAUSTED.
    async fn rate_limited(&self, org: &OrgId, refused: Refused) -> ApiError {
        let Limit { capacity, refill, .. } = refused.limit;
        if let Some(n) = refused.audit {
            let detail = format!("{n} registration(s) refused; limit burst {capacity}, {refill} per hour");
            let logged = self
                .state
                .store()
                .audit_event(&format!("org:{org}"), AuditAction::SignalRegisterRateLimited, org.as_str(), &detail)
                .await;
            if let Err(e) = logged {
                warn!(org = %org, error = %e, "writing the audit entry of a rate-limited registration failed");
            }
            warn!(org = %org, refused = n, burst = capacity, per_hour = refill, "registrations refused over the organisation's rate limit");
        }
        let every = (3600.0 / refill.max(1) as f64).ceil();
        ApiError::ResourceExhausted(format!(
            "organisation {org} is over its registration limit ({capacity} at once, {refill} more per hour); nothing was registered. \
             Wait and retry (one more registration is allowed about every {every} s), or, if this volume is expected, ask the \
             regional VIR operator to raise registration_limits for {org}. If your organisation did not send these, report \
             the certificate as possibly stolen."
        ))
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
        let now = self.state.clock.now();
        let today = crate::domain::clock::dutch_date(now);
        let convert::Registration { bsn, date_of_birth: dob, professional, removal_date, parents } =
            convert::registration_in(r, self.state.family, today)?;
        if let Err(refused) = self.state.registration_limits.take(&org.id, now.timestamp_millis()) {
            return Err(self.rate_limited(&org.id, refused).await.into());
        }
        let child = self.state.local_key.child_key(&bsn);
        let blind = self.state.blind_key.as_ref();
        let new = NewSignal {
            child,
            org: org.id.clone(),
            professional,
            date_of_birth: dob,
            removal_date,
            now,
            point: blind.map(|k| k.blind_bsn(&bsn)),
            parents: parents
                .iter()
                .map(|p| NewParent { key: self.state.local_key.parent_key(p), point: blind.map(|k| k.blind_parent(p)) })
                .collect(),
            lookup: (self.state.family == FamilySource::Brp).then(|| self.state.local_key.seal_bsn(&bsn, &child)),
        };
        let done = self.state.registry.register(&new, &format!("org:{}", org.id)).await.map_err(ApiError::from)?;
        info!(signal = %done.signal.id, org = %org.id, created = done.created, matches = done.matched_with, "signal registered");
        let family_lookup = match self.state.family {
            FamilySource::Off => "off",
            FamilySource::Request => "request",
            FamilySource::Brp if done.lookup_pending => "pending",
            FamilySource::Brp => "known",
        };
        Ok(Response::new(pb::RegisterSignalResponse {
            signal: Some(convert::signal_out(&done.signal)),
            created: done.created,
            family_lookup: family_lookup.into(),
        }))
    }

    async fn withdraw_signal(
        &self,
        req: Request<pb::WithdrawSignalRequest>,
    ) -> Result<Response<pb::WithdrawSignalResponse>, Status> {
        let org = self.caller(&req)?;
        let r = req.into_inner();
        let (id, reason, by) = convert::withdrawal_in(&r)?;
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
        let id = convert::signal_id_in(&req.get_ref().signal_id)?;
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
                family_counterparts: m.family.iter().map(convert::party_out).collect(),
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
        // Ends before the connection's maximum age closes it, with a status to resume from.
        let aged = tokio::time::sleep(self.state.watch_max_age);
        tokio::spawn(async move {
            tokio::pin!(aged);
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
                        _ = &mut aged => {
                            let _ = tx.send(Err(Status::unavailable(
                                "the stream reached the connection's maximum age; reconnect with your last cursor (watch --after)",
                            ))).await;
                            return;
                        }
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
        let org = convert::organisation_in(r)?;
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
                    family_matches: o.family_matches,
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
