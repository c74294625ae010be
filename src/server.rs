//! `Node::bind` then `Node::run(shutdown)`: opens the store, loads keys and certificates,
//! binds the API ports and the HTTP health port, and serves until `shutdown` resolves,
//! with the background tasks (expiry sweeper, webhook delivery, health probe) beside it.
//! Both gRPC ports also serve `grpc.health.v1` and reflection, and count and time every
//! request for `/metrics`; the peer port serves the coordinators' status API. Start-up reads like a script, one log
//! line a step.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Server;
use tracing::{info, warn};

use crate::api::{ApiState, OrganisationsService, RegistrationLimiter, SignalsService, MAX_REQUEST_BYTES};
use crate::config::Config;
use crate::domain::Clock;
use crate::federation::delivery::{self, PeerLink};
use crate::federation::rekey::RekeyError;
use crate::federation::{Counters, PeerCounters, PeerService};
use crate::federation::{Federation, Pairs};
use crate::health::metrics::RpcMetricsLayer;
use crate::health::probe::Reporters;
use crate::health::status::StatusService;
use crate::health::{NodeHealth, PeerAddr};
use crate::pb::admin::organisations_server::OrganisationsServer;
use crate::pb::admin::status_server::StatusServer;
use crate::pb::client::signals_server::SignalsServer;
use crate::pb::federation::peer_client::PeerClient;
use crate::pb::federation::peer_server::PeerServer;
use crate::pki::{client_config_expecting, connect_lazy, server_config, tls_incoming, Identity, PkiError, TlsFiles};
use crate::pseudonym::{BlindKey, KeyError, LocalKey};
use crate::registry::{Registry, RegistryError, SweepReport};
use crate::shutdown::{Shutdown, Trigger};
use crate::store::{Store, StoreError, StoreOptions};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Rekey(#[from] RekeyError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}. Is another process using the port?")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the API server failed: {0}")]
    Serve(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "the local key {path} is not the key this store was written with, so no child already stored could be found by BSN; restore local.key from your key backup (if it was just created because the file was missing, remove it first)"
    )]
    WrongLocalKey { path: PathBuf },
}

type SweepRequest = oneshot::Sender<Result<SweepReport, String>>;

/// A bound, not yet running node.
pub struct Node {
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    http_listener: TcpListener,
    peer: Option<PeerSide>,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<ApiState>,
    federation: Federation,
    shutdown_tx: Trigger,
    sweep_rx: mpsc::Receiver<SweepRequest>,
    handle: NodeHandle,
}

/// The bound peer API of a federating node.
struct PeerSide {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    files: TlsFiles,
    blind_key: BlindKey,
    counters: Counters,
}

/// Control of a running node from the same process (tests, demo).
#[derive(Clone)]
pub struct NodeHandle {
    sweep_tx: mpsc::Sender<SweepRequest>,
    store: Store,
    counters: Counters,
    health: Arc<NodeHealth>,
    http_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
}

impl NodeHandle {
    /// Runs the expiry sweeper now and returns what it did.
    pub async fn sweep_now(&self) -> Result<SweepReport, String> {
        let (tx, rx) = oneshot::channel();
        self.sweep_tx.send(tx).await.map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Per-peer federation counters (empty for a stand-alone node).
    pub fn peer_counters(&self) -> &Counters {
        &self.counters
    }

    /// The node's health: status, probes, metrics.
    pub fn health(&self) -> &Arc<NodeHealth> {
        &self.health
    }

    /// The address of the HTTP health port (`/healthz`, `/readyz`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the peer API (and the status API), when the node federates.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }
}

impl Node {
    /// Opens the store, loads key and certificates, binds the API port.
    pub async fn bind(config: Config, clock: Arc<dyn Clock>) -> Result<Node, NodeError> {
        info!(region = %config.region, data_dir = %config.data_dir.display(), "starting virfed node");
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| NodeError::DataDir { path: config.data_dir.clone(), source })?;
        create_private_dir(config.keys_dir())
            .map_err(|source| NodeError::DataDir { path: config.keys_dir().to_owned(), source })?;
        if config.keys_beside_data() {
            warn!(
                keys_dir = %config.keys_dir().display(),
                "the key files are inside the data directory: one snapshot of it holds the pseudonyms and the keys \
                 that make them enumerable; set keys_dir to a separate mount"
            );
        }
        let local_key = LocalKey::load_or_create(&config.local_key_path())?;
        info!(path = %config.local_key_path().display(), "local pseudonym key loaded");
        let store = Store::open(&config.store_path(), &StoreOptions::of(&config.store))?;
        info!(path = %config.store_path().display(), "store opened");
        match store.local_fingerprint()? {
            None => store.set_local_fingerprint(local_key.fingerprint()).await?,
            Some(fp) if fp == local_key.fingerprint() => {}
            Some(_) => return Err(NodeError::WrongLocalKey { path: config.local_key_path() }),
        }
        let match_officer = config.match_officer.org.clone();
        // The pair rules run on every node (with no peers on a stand-alone one), so every
        // child has its point from the start and a later federation publishes all of them.
        let peers: Vec<String> =
            config.federation.iter().flat_map(|f| f.peers.iter()).map(|p| p.region.to_string()).collect();
        // The blinding key exists even on a stand-alone node, so every child has its point
        // from the start and a later federation publishes all of them.
        let blind_key = crate::federation::rekey::load_blind_key(&config, &store).await?;
        info!(path = %config.blind_key_path().display(), "blinding key loaded");
        let federation = Federation::new(store.clone(), Pairs::new(peers, local_key.clone(), Some(&blind_key)));
        let registry = Registry::with_federation(store.clone(), Arc::new(federation.pairs().clone()));
        registry.set_match_officer(match_officer.as_ref()).await?;
        let peer = match &config.federation {
            None => None,
            Some(fed) => {
                let blind_key = blind_key.clone();
                let files = TlsFiles {
                    ca: fed.ca.clone(),
                    cert: fed.cert.clone(),
                    key: fed.key.clone(),
                    crls: fed.crls.clone(),
                };
                let tls = server_config(&files)?;
                let listener = TcpListener::bind(fed.listen)
                    .await
                    .map_err(|source| NodeError::Bind { addr: fed.listen, source })?;
                let addr = listener.local_addr().map_err(|source| NodeError::Bind { addr: fed.listen, source })?;
                let peers: Vec<String> = fed.peers.iter().map(|p| p.region.to_string()).collect();
                let counters: Counters = Arc::new(
                    peers
                        .iter()
                        .map(|p| {
                            let c = PeerCounters::default();
                            let own = crate::dleq::public_key(blind_key.towards(p).key());
                            c.info.lock().unwrap_or_else(|e| e.into_inner()).own_key_fingerprint =
                                Some(crate::federation::pairs::key_fingerprint(&own));
                            (p.clone(), Arc::new(c))
                        })
                        .collect(),
                );
                info!(%addr, peers = ?peers, "peer API bound; federation CA and revocation lists are re-read when they change");
                Some(PeerSide { listener, addr, tls, files, blind_key, counters })
            }
        };
        let tls = server_config(&TlsFiles {
            ca: config.tls.ca.clone(),
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            crls: config.tls.crls.clone(),
        })?;
        info!(
            cert = %config.tls.cert.display(),
            ca = %config.tls.ca.display(),
            "TLS configured; client certificates required; certificate, key, CA and CRLs re-read when they change"
        );
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| NodeError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Bind { addr: config.listen, source })?;
        info!(%addr, "client and admin API bound");
        let http_listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| NodeError::Bind { addr: config.http_listen, source })?;
        let http_addr =
            http_listener.local_addr().map_err(|source| NodeError::Bind { addr: config.http_listen, source })?;
        info!(addr = %http_addr, "HTTP health port bound: /healthz, /readyz, /metrics");
        let (shutdown_tx, shutdown_rx) = Trigger::new();
        let (sweep_tx, sweep_rx) = mpsc::channel(4);
        let counters = peer.as_ref().map(|p| p.counters.clone()).unwrap_or_default();
        let health = Arc::new(NodeHealth::new(
            config.region.to_string(),
            store.clone(),
            counters.clone(),
            config
                .federation
                .iter()
                .flat_map(|f| f.peers.iter())
                .map(|p| PeerAddr { region: p.region.to_string(), address: p.address.clone() })
                .collect(),
            config.tls.cert.clone(),
            config.federation.as_ref().map(|f| f.cert.clone()),
        ));
        let rpc = health.rpc.clone();
        let registration_limits = RegistrationLimiter::new(
            config.registration_limits.clone(),
            Box::new(move |org| rpc.registration_rate_limited(org.as_str())),
        );
        info!(
            burst = config.registration_limits.burst,
            per_hour = config.registration_limits.per_hour,
            overrides = config.registration_limits.overrides.len(),
            max_connection_age_secs = config.client_max_connection_age_secs,
            "client API limits: registrations per organisation, connection age"
        );
        let state = Arc::new(ApiState {
            registry,
            local_key,
            blind_key: Some(blind_key),
            clock,
            match_officer,
            shutdown: shutdown_rx,
            registration_limits,
            watch_max_age: Duration::from_secs(config.client_max_connection_age_secs),
            family: config.family.source,
        });
        let peer_addr = peer.as_ref().map(|p| p.addr);
        Ok(Node {
            config,
            listener,
            addr,
            http_listener,
            tls,
            state,
            federation,
            shutdown_tx,
            sweep_rx,
            peer,
            handle: NodeHandle { sweep_tx, store, counters, health, http_addr, peer_addr },
        })
    }

    /// The address the API listens on (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the peer API, when the node federates.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().map(|p| p.addr)
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The address of the HTTP health port.
    pub fn http_addr(&self) -> SocketAddr {
        self.handle.http_addr
    }

    /// Serves until `shutdown` resolves, then drains: open watch streams end with
    /// UNAVAILABLE, in-flight requests finish, the store is flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NodeError> {
        let Node {
            config, listener, http_listener, tls, state, federation, shutdown_tx, sweep_rx, peer, handle, ..
        } = self;
        let health = handle.health.clone();
        let mut cert_files = vec![config.tls.cert.clone()];
        cert_files.extend(config.federation.as_ref().map(|f| f.cert.clone()));
        let expiry = tokio::spawn(watch_cert_expiry(cert_files, state.shutdown.clone()));
        let sweeper = tokio::spawn(sweeper(
            state.registry.clone(),
            state.clock.clone(),
            Duration::from_secs(config.sweeper.interval_secs),
            sweep_rx,
            state.shutdown.clone(),
        ));
        let webhooks = crate::notify::spawn_webhooks_with_clock(
            &config,
            state.store().clone(),
            state.clock.clone(),
            state.shutdown.clone(),
        )
        .map_err(NodeError::Config)?;
        let lookups = match (&config.brp, config.family.source) {
            (Some(brp), crate::config::FamilySource::Brp) => {
                let brp = crate::brp::BrpClient::new(brp).map_err(|e| NodeError::Config(e.to_string()))?;
                let worker = crate::lookups::LookupWorker {
                    registry: state.registry.clone(),
                    brp,
                    local_key: state.local_key.clone(),
                    blind_key: state.blind_key.clone(),
                    clock: state.clock.clone(),
                };
                Some(tokio::spawn(worker.run(state.shutdown.clone())))
            }
            _ => None,
        };
        let signals =
            SignalsServer::new(SignalsService::new(state.clone())).max_decoding_message_size(MAX_REQUEST_BYTES);
        let orgs = OrganisationsServer::new(OrganisationsService::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let client_services = vec![SIGNALS_SERVICE, ORGANISATIONS_SERVICE];
        let mut reporters = Reporters::default();
        let client_health = reporters.add_port(client_services.clone());
        let (client_reflection, client_reflection_alpha) = reflection(&client_services)?;
        let mut federation_tasks = Vec::new();
        if let (Some(side), Some(fed)) = (peer, &config.federation) {
            federation_tasks = start_federation(&config, fed, side, &state, &federation, &health, &mut reporters)?;
        }
        // The first probe before serving, so the ports never report a store that is not there.
        let writable = crate::health::probe::probe_once(&health).await;
        crate::health::probe::apply(&health, &reporters, writable).await;
        let probe = tokio::spawn(crate::health::probe::run(health.clone(), reporters, state.shutdown.clone()));
        let http = tokio::spawn(crate::health::http::serve(http_listener, health.clone(), state.shutdown.clone()));
        health.set_api_bound(true);
        info!(region = %config.region, "node running");
        let incoming = tls_incoming(listener, tls);
        let stop = async {
            shutdown.await;
            info!("shutting down: draining requests");
            shutdown_tx.trigger();
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut draining = state.shutdown.clone();
        let deadline = async move {
            draining.recv().await;
            tokio::time::sleep(grace).await;
        };
        // A certificate revoked by a CRL update keeps no connection: at this age the client
        // is told to reconnect (a new handshake); open Watch streams end at the same age
        // (UNAVAILABLE, resumable by cursor), and what is left is closed a little after.
        let age = Duration::from_secs(config.client_max_connection_age_secs);
        let server = Server::builder()
            .timeout(Duration::from_secs(30))
            .max_connection_age(age)
            .max_connection_age_grace(age + Duration::from_secs(10))
            .layer(RpcMetricsLayer::new(health.rpc.clone(), "client"))
            .add_routes(tonic::service::Routes::from(crate::api::pages::routes(state.clone())))
            .add_service(signals)
            .add_service(orgs)
            .add_service(client_health)
            .add_service(client_reflection)
            .add_service(client_reflection_alpha)
            .serve_with_incoming_shutdown(incoming, stop);
        // In-flight requests get the grace period; then the remaining connections are cut.
        let served = tokio::select! {
            served = server => served,
            _ = deadline => {
                warn!(grace_secs = grace.as_secs(), "grace period over: closing the connections still open");
                Ok(())
            }
        };
        health.set_api_bound(false);
        shutdown_tx.trigger();
        let _ = sweeper.await;
        if let Some(lookups) = lookups {
            let _ = lookups.await;
        }
        let _ = probe.await;
        let _ = http.await;
        let _ = expiry.await;
        for task in webhooks.into_iter().chain(federation_tasks) {
            let _ = task.await;
        }
        state.store().flush_now()?;
        info!("node stopped");
        served.map_err(|e| NodeError::Serve(e.to_string()))
    }
}

/// Starts the peer API server, one delivery task per peer, and the join of new peers.
fn start_federation(
    config: &Config,
    fed: &crate::config::Federation,
    side: PeerSide,
    state: &Arc<ApiState>,
    federation: &Federation,
    health: &Arc<NodeHealth>,
    reporters: &mut Reporters,
) -> Result<Vec<tokio::task::JoinHandle<()>>, NodeError> {
    let PeerSide { listener, tls, files, blind_key, counters, .. } = side;
    let peers = fed.peers.iter().map(|p| p.region.to_string()).collect();
    let (oracle, resync) = PeerService::limits(fed);
    let service = PeerService::new(
        federation.clone(),
        config.region.to_string(),
        fed.cert.clone(),
        fed.ca.clone(),
        blind_key.clone(),
        peers,
        oracle,
        resync,
        counters.clone(),
        state.clock.clone(),
    );
    let peer_services = vec![PEER_SERVICE, STATUS_SERVICE];
    let peer_health = reporters.add_port(peer_services.clone());
    let (peer_reflection, peer_reflection_alpha) = reflection(&peer_services)?;
    let mut tasks = Vec::new();
    let mut stop = state.shutdown.clone();
    let server = Server::builder()
        .timeout(Duration::from_secs(60))
        // A revoked peer keeps no long-lived connection: it must handshake again.
        .max_connection_age(Duration::from_secs(600))
        .layer(RpcMetricsLayer::new(health.rpc.clone(), "peer"))
        .add_service(PeerServer::new(service).max_decoding_message_size(4 * 1024 * 1024))
        .add_service(StatusServer::new(StatusService::new(health.clone())))
        .add_service(peer_health)
        .add_service(peer_reflection)
        .add_service(peer_reflection_alpha)
        .serve_with_incoming_shutdown(tls_incoming(listener, tls), async move { stop.recv().await });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "peer API server failed");
        }
    }));
    for peer in &fed.peers {
        let client_tls = client_config_expecting(&files, Identity::Region(peer.region.to_string()))?;
        let channel = connect_lazy(&peer.address, &peer.server_name(), client_tls)?;
        let link = PeerLink {
            region: peer.region.to_string(),
            own_region: config.region.to_string(),
            client: PeerClient::new(channel).max_decoding_message_size(4 * 1024 * 1024),
            counters: counters.get(peer.region.as_str()).cloned().unwrap_or_default(),
            blind: blind_key.towards(peer.region.as_str()),
            resync_ticket: fed.resync_ticket.clone(),
        };
        tasks.push(tokio::spawn(delivery::run(federation.clone(), link, state.shutdown.clone())));
    }
    // New peers get every child; a new or restored store asks every peer to resync to it.
    let (federation, regions): (Federation, Vec<String>) =
        (federation.clone(), fed.peers.iter().map(|p| p.region.to_string()).collect());
    tasks.push(tokio::spawn(async move {
        match federation.resync_after_restore().await {
            Ok(true) => info!("new or restored store: every peer is asked to publish its children here again"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "asking the peers for a resync after a restore failed"),
        }
        for region in regions {
            match federation.join_peer(&region).await {
                Ok(0) => {}
                Ok(n) => info!(peer = %region, children = n, "joined peer: every child queued for it"),
                Err(e) => warn!(peer = %region, error = %e, "queueing the resync for a new peer failed"),
            }
        }
    }));
    Ok(tasks)
}

const SIGNALS_SERVICE: &str = "virfed.client.v1.Signals";
const ORGANISATIONS_SERVICE: &str = "virfed.admin.v1.Organisations";
const PEER_SERVICE: &str = "virfed.federation.v1.Peer";
const STATUS_SERVICE: &str = "virfed.admin.v1.Status";

/// Reflection services for a port, with an error a person can act on.
fn reflection(
    services: &[&'static str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    NodeError,
> {
    crate::health::probe::reflection(services)
        .map_err(|e| NodeError::Config(format!("gRPC reflection: the built-in descriptor set is unusable: {e}")))
}

/// Warns in the log (and the `virfed_cert_expiry_days` metric shows it) when this node's
/// certificates near their end: a warning from 30 days, an error from 7.
async fn watch_cert_expiry(files: Vec<PathBuf>, mut shutdown: Shutdown) {
    loop {
        for file in &files {
            let Some(not_after) = crate::federation::cert_not_after(file) else { continue };
            let days = (not_after - chrono::Utc::now().timestamp()).div_euclid(86_400);
            if days < 7 {
                tracing::error!(cert = %file.display(), days, "certificate expires within 7 days: renew it now (virfed ca renew)");
            } else if days < 30 {
                warn!(cert = %file.display(), days, "certificate expires within 30 days: renew it (virfed ca renew)");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(6 * 3600)) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// The expiry sweeper (D3, D4): runs at start, every `interval`, and on request.
async fn sweeper(
    registry: Registry,
    clock: Arc<dyn Clock>,
    interval: Duration,
    mut requests: mpsc::Receiver<SweepRequest>,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reply = tokio::select! {
            _ = ticker.tick() => None,
            Some(reply) = requests.recv() => Some(reply),
            _ = shutdown.recv() => return,
        };
        let result = registry.sweep(clock.today(), clock.now()).await;
        match &result {
            Ok(r) if *r != SweepReport::default() => info!(
                archived = r.archived,
                deleted_age_limit = r.deleted_age_limit,
                purged_archive = r.purged_archive,
                "expiry sweep done"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "expiry sweep failed; retrying at the next interval"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result.map_err(|e: RegistryError| e.to_string()));
        }
    }
}

/// Creates `dir` (and its parents) if missing; a directory this call creates is 0700.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
