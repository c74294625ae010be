//! Proof under faults: the crash-cycle harness (issue 11, part 1).
//!
//! Three regions run as real `virfed node` processes with their own sled (or redb) files
//! and mTLS on loopback. Each region has two organisations, each driven by a client that
//! registers children and withdraws its signals (made in error or concern resolved) at a
//! steady pace, so cross-region exchanges are always in flight; a watcher per organisation
//! (and per match officer) follows its notices, resuming by cursor whenever its node goes
//! away. Every cycle kills one node, chosen at random, with SIGKILL at a random moment,
//! verifies the audit chain of its store while it is down, starts it again, lets the load
//! run on, then quiets the federation and checks it against a model of what the clients
//! were told:
//!
//! - **lost**: every registration and withdrawal a client got OK for is in the store
//!   (`GetSignal`: active, archived, or gone as the answer said);
//! - **doubled**: no notice was delivered twice on a stream resumed by cursor, no pair
//!   announced twice (same recipient, signal, kind and counterpart), and no pair listed
//!   twice in `ListMatches`;
//! - **wrong**: every pair the model says exists is listed at both sides and nothing
//!   else is, every listed pair had its `MATCH_CREATED` notice, the outboxes drained
//!   (every node's `GetStatus` shows 0 queued for every peer), and every audit chain
//!   verifies, after each kill and at the end.
//!
//! A request that failed because its node died is not counted either way: its client
//! retries it until it has a definite answer (a repeat registration answers with the
//! existing signal, a repeat withdrawal with "not found" or "not active"), exactly as a
//! client of a real node must. `cargo test` runs a few cycles (`tests/faults.rs`);
//! `virfed bench crash --cycles 50` runs the long form.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

use crate::config::Config;
use crate::pb::admin as admin_pb;
use crate::pb::admin::organisations_client::OrganisationsClient;
use crate::pb::admin::status_client::StatusClient;
use crate::pb::client as pb;
use crate::pb::client::signals_client::SignalsClient;
use crate::pki::{client_config, connect, CertSpec, Identity, TlsMaterial};
use crate::store::Engine;

use super::fixture::{register_request, valid_bsns, FederationFiles, RegionFiles, MATCH_OFFICER_ORG};
use super::netns::{NetFault, Netns};
use super::process::{audit_verify, NodeProcess};
use super::{fail, KitError, KitResult};

/// The federation the harness runs.
pub const REGIONS: [&str; 3] = ["rotterdam", "utrecht", "zwolle"];
/// The organisations that register in every region (each a client of its own).
const ORGS: [&str; 2] = ["jeugdzorg", "school"];
/// New children that come into play each cycle, and how many recent ones are in play.
const NEW_PER_CYCLE: usize = 24;
const IN_PLAY: usize = 48;
/// Longest a client retries one request before the harness gives up on the node.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);
/// Longest the federation may take to drain its outboxes and converge after a cycle.
const QUIET_DEADLINE: Duration = Duration::from_secs(120);
/// One RPC's deadline: past it the request counts as unanswered and is retried.
const RPC_DEADLINE: Duration = Duration::from_secs(10);
/// Longest both ends of a partitioned link may take to show it down in their status: an
/// idle link pings every 15 s (10 s to answer); a busy one notices when HTTP/2 keepalive
/// (30 s + 20 s) gives up on the stalled connection.
const PARTITION_DEADLINE: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Debug)]
pub struct CrashOptions {
    /// The `virfed` binary the nodes run.
    pub binary: PathBuf,
    pub cycles: u32,
    /// Seeds every random choice (the victim, the moment, the load); printed with the run.
    pub seed: u64,
    pub engine: Engine,
    /// Where the federation's files go; a temp dir when `None`.
    pub dir: Option<PathBuf>,
    /// What each cycle does to the federation.
    pub faults: Faults,
}

/// What a cycle does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// Kills one node with SIGKILL at a random moment and restarts it (part 1). The nodes
    /// run on loopback.
    Crash,
    /// Puts a network fault on one link, at random, for a while, then heals it (part 2),
    /// cycling through [`NetFault::ALL`]. Every node runs in a network namespace of its
    /// own ([`super::netns`]); needs root.
    Network,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct CrashReport {
    /// Cycles that ran to their end (kill, restart, quiet, checks).
    pub cycles: u32,
    pub acked_registrations: u64,
    pub acked_withdrawals: u64,
    /// Requests whose first answer a crash took away, settled by the client's retry.
    pub retried: u64,
    /// Notices the watchers received.
    pub notices: u64,
    /// Cross-region pairs (unordered) alive at the end, each checked at both sides.
    pub cross_region_pairs: u64,
    /// Audit chains verified (one per kill, one per node at the end).
    pub audit_checks: u32,
    /// Partitions whose both ends showed the link down in their status (network runs).
    pub partitions_seen: u32,
    pub lost: BTreeSet<String>,
    pub doubled: BTreeSet<String>,
    pub wrong: BTreeSet<String>,
    pub elapsed: Duration,
    /// Where the federation's files were left when something was found.
    pub kept: Option<PathBuf>,
}

impl CrashReport {
    /// Nothing lost, doubled or wrong.
    pub fn clean(&self) -> bool {
        self.lost.is_empty() && self.doubled.is_empty() && self.wrong.is_empty()
    }

    /// The figures, one per line, and then every finding.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "cycles survived:            {}\nacknowledged registrations: {}\nacknowledged withdrawals:   {}\nretried after a crash:      {}\nnotices received:           {}\ncross-region pairs at end:  {}\naudit chains verified:      {}\nlost: {}   doubled: {}   wrong: {}\nelapsed: {:.1} s",
            self.cycles,
            self.acked_registrations,
            self.acked_withdrawals,
            self.retried,
            self.notices,
            self.cross_region_pairs,
            self.audit_checks,
            self.lost.len(),
            self.doubled.len(),
            self.wrong.len(),
            self.elapsed.as_secs_f64()
        );
        if self.partitions_seen > 0 {
            s.push_str(&format!("\npartitions seen down at both ends, then healed: {}", self.partitions_seen));
        }
        if let Some(dir) = &self.kept {
            s.push_str(&format!("\nthe stores and node logs are kept in {}", dir.display()));
        }
        for (what, items) in [("LOST", &self.lost), ("DOUBLED", &self.doubled), ("WRONG", &self.wrong)] {
            for item in items {
                s.push_str(&format!("\n{what}: {item}"));
            }
        }
        s
    }
}

// ---- the model: what the clients were told --------------------------------------------

/// Region index × organisation index: who registers.
type Slot = usize;

fn slot_region(slot: Slot) -> usize {
    slot / ORGS.len()
}

fn slot_org(slot: Slot) -> &'static str {
    ORGS[slot % ORGS.len()]
}

/// The professional of `slot` on `child`: a name of its own per signal, so that every
/// party a notice names tells which signal it is.
fn professional(slot: Slot, child: usize) -> String {
    format!("{} {} {child}", slot_org(slot), REGIONS[slot_region(slot)])
}

/// How a party is named from `viewer`'s region: `region/org/professional`.
fn party_key(viewer: usize, p: &pb::Party) -> String {
    let region = if p.region_id.is_empty() { REGIONS[viewer] } else { p.region_id.as_str() };
    format!("{region}/{}/{}", p.organisation_id, p.professional.as_ref().map(|c| c.name.as_str()).unwrap_or(""))
}

fn slot_key(slot: Slot, child: usize) -> String {
    format!("{}/{}/{}", REGIONS[slot_region(slot)], slot_org(slot), professional(slot, child))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A request is out; its outcome is not known yet.
    Pending,
    Active,
    Deleted,
    Archived,
}

#[derive(Clone, Debug)]
struct Sig {
    slot: Slot,
    child: usize,
    id: String,
    state: State,
}

#[derive(Default)]
struct Model {
    sigs: Vec<Sig>,
    /// (slot, child) pairs ever registered: a slot signals a child at most once, so every
    /// pair of signals is told apart by its signal ids.
    used: HashSet<(Slot, usize)>,
    acked_registrations: u64,
    acked_withdrawals: u64,
    retried: u64,
    lost: BTreeSet<String>,
    wrong: BTreeSet<String>,
}

enum Op {
    Register(usize),
    Withdraw(usize, pb::WithdrawReason),
}

// ---- the federation of processes ------------------------------------------------------

struct Region {
    files: RegionFiles,
    process: Option<NodeProcess>,
    log: PathBuf,
    /// Client TLS per organisation (and the operator), issued once.
    tls: HashMap<String, Arc<rustls::ClientConfig>>,
}

struct Cluster {
    binary: PathBuf,
    regions: Vec<Region>,
    coordinator: Arc<rustls::ClientConfig>,
    /// The nodes' namespaces when they run in their own (node `i` is region `i`).
    net: Option<Netns>,
}

impl Cluster {
    fn create(binary: &Path, dir: &Path, engine: Engine, net: Option<Netns>) -> KitResult<Cluster> {
        let files = FederationFiles::create(dir, &REGIONS)?;
        // In namespaces, every address a config names moves from loopback to its node's
        // own address (the certificates name "localhost", which every dial still asks for).
        let mut moves = Vec::new();
        if let Some(net) = &net {
            for (i, f) in files.regions.iter().enumerate() {
                let ip = net.address(i);
                moves.push((
                    format!("\"127.0.0.1:{}\"", f.config.listen.port()),
                    format!("\"{ip}:{}\"", f.config.listen.port()),
                ));
                if let Some(fed) = &f.config.federation {
                    moves.push((
                        format!("\"127.0.0.1:{}\"", fed.listen.port()),
                        format!("\"{ip}:{}\"", fed.listen.port()),
                    ));
                }
            }
        }
        let coordinator = files.ca.issue(&CertSpec::coordinator("crash-harness", 30))?;
        let coordinator = client_config(&TlsMaterial::from_issued(&files.ca.cert_pem(), &coordinator))?;
        let mut regions = Vec::new();
        for mut f in files.regions {
            // The harness registers far faster than any organisation may and brings a new
            // child to every peer many times an hour: lift the limits that exist to stop
            // exactly that from a stolen certificate.
            let mut text = std::fs::read_to_string(&f.config_path)?;
            text = text.replace(
                "[federation]\n",
                "[federation]\noracle_budget_per_hour = 10000000\noracle_refill_per_hour = 10000000\n",
            );
            text.push_str("\n[registration_limits]\nburst = 10000000\nper_hour = 10000000\n");
            text.push_str(&format!("\n[store]\nengine = \"{}\"\n", engine.name()));
            for (from, to) in &moves {
                text = text.replace(from, to);
            }
            std::fs::write(&f.config_path, &text)?;
            f.config = Config::parse(&text).map_err(KitError::Failed)?;
            let mut tls = HashMap::new();
            for org in ORGS.iter().chain([&MATCH_OFFICER_ORG]) {
                tls.insert(
                    (*org).to_owned(),
                    client_config(&f.client_material(Identity::Organisation((*org).into()))?)?,
                );
            }
            tls.insert("ops".to_owned(), client_config(&f.client_material(Identity::Operator("ops".into()))?)?);
            let log = f.dir.join("node.log");
            regions.push(Region { files: f, process: None, log, tls });
        }
        Ok(Cluster { binary: binary.to_owned(), regions, coordinator, net })
    }

    /// Starts region `r`'s node (in its namespace, if any).
    fn spawn(&self, r: usize) -> KitResult<NodeProcess> {
        let region = &self.regions[r];
        NodeProcess::spawn(&self.binary, &region.files.config_path, &region.log, self.net.as_ref().map(|n| n.name(r)))
    }

    async fn start(&mut self, r: usize) -> KitResult<()> {
        let mut process = self.spawn(r)?;
        let region = &mut self.regions[r];
        process.wait_serving(&region.files).await?;
        region.process = Some(process);
        Ok(())
    }

    async fn channel(&self, r: usize, who: &str) -> KitResult<Channel> {
        let region = &self.regions[r];
        let tls = region.tls[who].clone();
        let addr = region.files.config.listen.to_string();
        match tokio::time::timeout(RPC_DEADLINE, connect(&addr, "localhost", tls)).await {
            Ok(channel) => Ok(channel?),
            Err(_) => fail!("connecting to {} timed out", REGIONS[r]),
        }
    }

    async fn add_orgs(&self, r: usize) -> KitResult<()> {
        let mut ops = OrganisationsClient::new(self.channel(r, "ops").await?);
        for org in ORGS.iter().chain([&MATCH_OFFICER_ORG]) {
            ops.add_organisation(admin_pb::Organisation {
                id: (*org).into(),
                name: format!("{org} {}", REGIONS[r]),
                domain: "youth-care".into(),
                coordinator: None,
            })
            .await
            .map_err(|e| KitError::context(format!("adding {org} in {}", REGIONS[r]), e))?;
        }
        Ok(())
    }

    /// Region `r`'s peers, from `GetStatus` on its peer port as a national coordinator
    /// sees them.
    async fn peer_status(&self, r: usize) -> KitResult<Vec<admin_pb::PeerStatus>> {
        let region = &self.regions[r];
        let addr = region.files.config.federation.as_ref().map(|f| f.listen.to_string()).unwrap_or_default();
        let status = tokio::time::timeout(RPC_DEADLINE, async {
            let channel = connect(&addr, "localhost", self.coordinator.clone()).await?;
            Ok::<_, KitError>(StatusClient::new(channel).get_status(admin_pb::GetStatusRequest {}).await?)
        })
        .await
        .map_err(|_| KitError::Failed(format!("GetStatus on {} timed out", REGIONS[r])))??;
        Ok(status.into_inner().peers)
    }

    /// Messages queued in every node's outboxes, per region.
    async fn outbox_depths(&self) -> KitResult<Vec<u64>> {
        let mut depths = Vec::new();
        for r in 0..self.regions.len() {
            depths.push(self.peer_status(r).await?.iter().map(|p| p.outbox_depth).sum());
        }
        Ok(depths)
    }

    /// Whether `a` reports its link to `b` as connected (`GetStatus`).
    async fn link_up(&self, a: usize, b: usize) -> KitResult<bool> {
        let peers = self.peer_status(a).await?;
        match peers.iter().find(|p| p.region == REGIONS[b]) {
            Some(p) => Ok(p.connected),
            None => fail!("{} does not list {} among its peers", REGIONS[a], REGIONS[b]),
        }
    }

    /// Polls until both ends report the link `a`–`b` as `up` (or not), within `within`;
    /// returns how long that took.
    async fn await_link(&self, a: usize, b: usize, up: bool, within: Duration) -> KitResult<Result<Duration, String>> {
        let started = Instant::now();
        loop {
            let (ab, ba) = (self.link_up(a, b).await?, self.link_up(b, a).await?);
            if ab == up && ba == up {
                return Ok(Ok(started.elapsed()));
            }
            if started.elapsed() > within {
                let what = if up { "ok" } else { "down" };
                return Ok(Err(format!(
                    "{}–{}: status did not show the link {what} at both ends within {within:?} ({} says connected={ab}, {} says connected={ba})",
                    REGIONS[a], REGIONS[b], REGIONS[a], REGIONS[b]
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

// ---- clients --------------------------------------------------------------------------

/// A client of one region as one organisation that reconnects whenever a call fails.
struct Client {
    cluster: Arc<Cluster>,
    region: usize,
    org: &'static str,
    api: Option<SignalsClient<Channel>>,
}

/// A call's answer: definite, or lost on the way (the node went away, or it timed out).
enum Answer<T> {
    Got(Result<T, tonic::Status>),
    Unanswered,
}

impl Client {
    fn new(cluster: Arc<Cluster>, region: usize, org: &'static str) -> Client {
        Client { cluster, region, org, api: None }
    }

    async fn api(&mut self) -> Option<&mut SignalsClient<Channel>> {
        if self.api.is_none() {
            self.api = self.cluster.channel(self.region, self.org).await.ok().map(SignalsClient::new);
        }
        self.api.as_mut()
    }

    /// One attempt at `call`. Transport failures, timeouts and `UNAVAILABLE` are
    /// unanswered (the channel is dropped, to be dialled again).
    async fn attempt<T, F, Fut>(&mut self, call: F) -> Answer<T>
    where
        F: FnOnce(SignalsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Some(api) = self.api().await else { return Answer::Unanswered };
        let api = api.clone();
        match tokio::time::timeout(RPC_DEADLINE, call(api)).await {
            Ok(Ok(resp)) => Answer::Got(Ok(resp.into_inner())),
            Ok(Err(status)) if !retryable(&status) => Answer::Got(Err(status)),
            _ => {
                self.api = None;
                Answer::Unanswered
            }
        }
    }
}

/// Whether a status means "no definite answer": the node died under the call, or the
/// transport failed, or a limit asks to come back later.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// Carries out `op` until the node gives a definite answer, and writes it into the model.
async fn settle(client: &mut Client, model: &Mutex<Model>, children: &[String], op: Op) -> KitResult<()> {
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        if tries > 0 {
            if started.elapsed() > SETTLE_DEADLINE {
                fail!("{} in {} gave no definite answer for {SETTLE_DEADLINE:?}", client.org, REGIONS[client.region]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tries += 1;
        match op {
            Op::Register(i) => {
                let (slot, child) = {
                    let m = model.lock().expect("model lock");
                    (m.sigs[i].slot, m.sigs[i].child)
                };
                let who = professional(slot, child);
                let request =
                    register_request(&children[child], &who, &format!("{}@example.nl", who.replace(' ', ".")));
                match client.attempt(|mut api| async move { api.register_signal(request).await }).await {
                    Answer::Unanswered => continue,
                    Answer::Got(Err(status)) => {
                        fail!(
                            "registration by {} refused: {:?} {}",
                            slot_key(slot, child),
                            status.code(),
                            status.message()
                        )
                    }
                    Answer::Got(Ok(resp)) => {
                        let mut m = model.lock().expect("model lock");
                        let id = resp.signal.map(|s| s.signal_id).unwrap_or_default();
                        if tries == 1 && !resp.created {
                            m.wrong.insert(format!(
                                "{}'s first registration of a child was answered as a repeat",
                                slot_key(slot, child)
                            ));
                        }
                        m.sigs[i].id = id;
                        m.sigs[i].state = State::Active;
                        m.acked_registrations += 1;
                        if tries > 1 {
                            m.retried += 1;
                        }
                        return Ok(());
                    }
                }
            }
            Op::Withdraw(i, reason) => {
                let (slot, child, id) = {
                    let m = model.lock().expect("model lock");
                    (m.sigs[i].slot, m.sigs[i].child, m.sigs[i].id.clone())
                };
                let request = pb::WithdrawSignalRequest {
                    signal_id: id.clone(),
                    reason: reason as i32,
                    withdrawn_by: pb::Withdrawer::Professional as i32,
                };
                let made_in_error = reason == pb::WithdrawReason::MadeInError;
                let answer = client.attempt(|mut api| async move { api.withdraw_signal(request).await }).await;
                let mut m = model.lock().expect("model lock");
                let done = match answer {
                    Answer::Unanswered => {
                        drop(m);
                        continue;
                    }
                    Answer::Got(Ok(resp)) => {
                        let expected = if made_in_error { "deleted" } else { "archived" };
                        if resp.outcome != expected {
                            m.wrong.insert(format!("withdrawal {id} answered {:?}, not {expected:?}", resp.outcome));
                        }
                        true
                    }
                    // A repeat of a withdrawal that was carried out before the crash.
                    Answer::Got(Err(s)) if tries > 1 && made_in_error && s.code() == Code::NotFound => true,
                    Answer::Got(Err(s)) if tries > 1 && !made_in_error && s.code() == Code::FailedPrecondition => true,
                    Answer::Got(Err(s)) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                        m.lost.insert(format!(
                            "{id} of {} was acknowledged active, but withdrawing it answered {:?}: {}",
                            slot_key(slot, child),
                            s.code(),
                            s.message()
                        ));
                        true
                    }
                    Answer::Got(Err(s)) => {
                        fail!("withdrawal of {id} refused: {:?} {}", s.code(), s.message())
                    }
                };
                if done {
                    m.sigs[i].state = if made_in_error { State::Deleted } else { State::Archived };
                    m.acked_withdrawals += 1;
                    if tries > 1 {
                        m.retried += 1;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// One organisation's load until `run` turns false: a registration of a child in play it
/// has not signalled (three in four; none when it has signalled them all), or a withdrawal
/// of one of its active signals.
async fn load(
    mut client: Client,
    slot: Slot,
    model: Arc<Mutex<Model>>,
    children: Arc<Vec<String>>,
    window: (usize, usize),
    run: Arc<AtomicBool>,
    seed: u64,
) -> KitResult<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    while run.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
        let op = {
            let mut m = model.lock().expect("model lock");
            // One in four a withdrawal, so signals pile up and pairs are alive at the end.
            let register = rng.gen_bool(0.75);
            let mut op = None;
            if register {
                for _ in 0..8 {
                    let child = rng.gen_range(window.0..window.1);
                    if m.used.insert((slot, child)) {
                        m.sigs.push(Sig { slot, child, id: String::new(), state: State::Pending });
                        op = Some(Op::Register(m.sigs.len() - 1));
                        break;
                    }
                }
            } else {
                let mine: Vec<usize> =
                    (0..m.sigs.len()).filter(|&i| m.sigs[i].slot == slot && m.sigs[i].state == State::Active).collect();
                if !mine.is_empty() {
                    let i = mine[rng.gen_range(0..mine.len())];
                    m.sigs[i].state = State::Pending;
                    let reason = if rng.gen_bool(0.7) {
                        pb::WithdrawReason::MadeInError
                    } else {
                        pb::WithdrawReason::ConcernResolved
                    };
                    op = Some(Op::Withdraw(i, reason));
                }
            }
            op
        };
        if let Some(op) = op {
            settle(&mut client, &model, &children, op).await?;
        }
    }
    Ok(())
}

// ---- watchers -------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    notices: Vec<pb::Notice>,
    /// When each notice arrived, seconds into the run (for reading a finding against the
    /// kills in the progress lines and the nodes' audit logs).
    received: Vec<f64>,
    /// Notices delivered again after the cursor they were resumed from.
    redelivered: Vec<u64>,
}

/// Follows one organisation's notices for good, resuming after the last cursor seen
/// whenever the stream breaks (its node was killed).
fn watch(
    cluster: Arc<Cluster>,
    region: usize,
    org: &'static str,
    seen: Arc<Mutex<Seen>>,
    epoch: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0u64;
        loop {
            let Ok(channel) = cluster.channel(region, org).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let stream = SignalsClient::new(channel).watch(pb::WatchRequest { after_cursor: last }).await;
            let Ok(stream) = stream else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Some(Ok(notice)) = stream.next().await {
                let mut s = seen.lock().expect("seen lock");
                if notice.cursor <= last {
                    s.redelivered.push(notice.cursor);
                } else {
                    last = notice.cursor;
                }
                s.notices.push(notice);
                s.received.push(epoch.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

// ---- checks ---------------------------------------------------------------------------

#[derive(Default)]
struct Findings {
    lost: BTreeSet<String>,
    doubled: BTreeSet<String>,
    wrong: BTreeSet<String>,
    cross_region_pairs: u64,
}

/// The whole federation against the model (called only while no request is out).
async fn check(
    cluster: &Arc<Cluster>,
    model: &Mutex<Model>,
    watchers: &BTreeMap<(usize, &'static str), Arc<Mutex<Seen>>>,
) -> KitResult<Findings> {
    let sigs: Vec<Sig> = model.lock().expect("model lock").sigs.clone();
    let mut f = Findings::default();

    // Every acknowledged write is there.
    let mut apis = HashMap::new();
    for r in 0..REGIONS.len() {
        for org in ORGS {
            apis.insert((r, org), SignalsClient::new(cluster.channel(r, org).await?));
        }
    }
    let lookups = futures::stream::iter(sigs.iter().filter(|s| s.state != State::Pending).map(|s| {
        let mut api = apis[&(slot_region(s.slot), slot_org(s.slot))].clone();
        let request = pb::GetSignalRequest { signal_id: s.id.clone() };
        async move { (s, tokio::time::timeout(RPC_DEADLINE, api.get_signal(request)).await) }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    for (s, got) in lookups {
        let got = match got {
            Ok(got) => got.map(|r| r.into_inner().state),
            Err(_) => fail!("GetSignal on {} timed out", REGIONS[slot_region(s.slot)]),
        };
        let fine = match (s.state, &got) {
            (State::Active, Ok(state)) => state == "active",
            (State::Archived, Ok(state)) => state == "archived",
            (State::Deleted, Err(status)) => status.code() == Code::NotFound,
            _ => false,
        };
        if !fine {
            let now = match got {
                Ok(state) => state,
                Err(status) => format!("{:?}", status.code()),
            };
            f.lost.insert(format!(
                "{} of {}: acknowledged {:?}, the node now says {now}",
                s.id,
                slot_key(s.slot, s.child),
                s.state
            ));
        }
    }

    // Every pair the model implies, at both sides, once; nothing else.
    let mut on_child: HashMap<usize, Vec<&Sig>> = HashMap::new();
    for s in sigs.iter().filter(|s| s.state == State::Active) {
        on_child.entry(s.child).or_default().push(s);
    }
    let mut expected: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for group in on_child.values() {
        for a in group {
            for b in group.iter().filter(|b| b.slot != a.slot) {
                expected.entry(a.id.as_str()).or_default().insert(slot_key(b.slot, b.child));
                if slot_region(a.slot) < slot_region(b.slot) {
                    f.cross_region_pairs += 1;
                }
            }
        }
    }
    let by_id: HashMap<&str, &Sig> = sigs.iter().map(|s| (s.id.as_str(), s)).collect();
    for r in 0..REGIONS.len() {
        for org in ORGS {
            let listed =
                tokio::time::timeout(RPC_DEADLINE, apis[&(r, org)].clone().list_matches(pb::ListMatchesRequest {}))
                    .await
                    .map_err(|_| KitError::Failed(format!("ListMatches on {} timed out", REGIONS[r])))??
                    .into_inner();
            let mut seen_ids = HashSet::new();
            for m in listed.matches {
                let mut keys = BTreeSet::new();
                for p in &m.counterparts {
                    let key = party_key(r, p);
                    if !keys.insert(key.clone()) {
                        f.doubled.insert(format!("{org} in {} lists {key} twice for {}", REGIONS[r], m.signal_id));
                    }
                }
                if !m.family_counterparts.is_empty() {
                    f.wrong
                        .insert(format!("{} has family counterparts, but no registration named a parent", m.signal_id));
                }
                match by_id.get(m.signal_id.as_str()) {
                    Some(s) if s.state == State::Active => {}
                    _ if keys.is_empty() => continue,
                    _ => {
                        f.wrong.insert(format!(
                            "{org} in {} lists a match on {}, not an active signal",
                            REGIONS[r], m.signal_id
                        ));
                        continue;
                    }
                }
                seen_ids.insert(m.signal_id.clone());
                let want = expected.get(m.signal_id.as_str()).cloned().unwrap_or_default();
                for missing in want.difference(&keys) {
                    f.wrong.insert(format!("{} of {org} in {} lacks its pair with {missing}", m.signal_id, REGIONS[r]));
                }
                for extra in keys.difference(&want) {
                    f.wrong.insert(format!(
                        "{} of {org} in {} has a pair with {extra} that should not exist",
                        m.signal_id, REGIONS[r]
                    ));
                }
            }
            for s in
                sigs.iter().filter(|s| s.state == State::Active && slot_region(s.slot) == r && slot_org(s.slot) == org)
            {
                if let Some(want) = expected.get(s.id.as_str()).filter(|w| !w.is_empty() && !seen_ids.contains(&s.id)) {
                    f.wrong.insert(format!(
                        "{} of {org} in {} is listed with no match, but pairs with {want:?}",
                        s.id, REGIONS[r]
                    ));
                }
            }
        }
    }

    // Notices: none delivered twice, no pair announced twice, every pair announced.
    for ((r, org), seen) in watchers {
        let seen = seen.lock().expect("seen lock");
        for cursor in &seen.redelivered {
            f.doubled
                .insert(format!("{org} in {}: notice {cursor} delivered again after resuming past it", REGIONS[*r]));
        }
        let mut announced: HashMap<String, Vec<String>> = HashMap::new();
        for (n, at) in seen.notices.iter().zip(&seen.received) {
            let cursor = format!("{} at {at:.1} s", n.cursor);
            let mut ids = n.signal_ids.clone();
            ids.sort();
            let about = format!(
                "{:?} to {:?} on {}{:?} family={}",
                pb::NoticeKind::try_from(n.kind).unwrap_or(pb::NoticeKind::Unspecified),
                pb::Addressee::try_from(n.addressee).unwrap_or(pb::Addressee::Unspecified),
                n.signal_id,
                ids,
                n.family,
            );
            let parties = n.counterparts.iter().map(|p| party_key(*r, p));
            if n.addressee == pb::Addressee::MatchOfficer as i32 && n.signal_ids.is_empty() {
                // The officer's notice that a pair ended when no local reporter was left
                // names only the remote parties: a later local signal on the child that
                // matches the same parties and ends again is told in the same words, rightly.
                continue;
            }
            if n.addressee == pb::Addressee::MatchOfficer as i32 {
                // The officer's notice is the whole picture of the child here (every local
                // party and the remote one that changed): the same picture twice is a double.
                let picture: BTreeSet<String> = parties.collect();
                announced.entry(format!("{about} with {picture:?}")).or_default().push(cursor);
            } else {
                // A reporter hears of each counterpart of its signal once per kind.
                for party in parties {
                    announced.entry(format!("{about} with {party}")).or_default().push(cursor.clone());
                }
            }
        }
        for (key, cursors) in &announced {
            if cursors.len() > 1 {
                f.doubled.insert(format!(
                    "{org} in {}: {key} announced {} times (cursors {cursors:?})",
                    REGIONS[*r],
                    cursors.len()
                ));
            }
        }
        if *org == MATCH_OFFICER_ORG {
            continue;
        }
        for s in
            sigs.iter().filter(|s| s.state == State::Active && slot_region(s.slot) == *r && slot_org(s.slot) == *org)
        {
            for other in expected.get(s.id.as_str()).into_iter().flatten() {
                let told = seen.notices.iter().any(|n| {
                    n.kind == pb::NoticeKind::MatchCreated as i32
                        && n.signal_id == s.id
                        && n.counterparts.iter().any(|p| &party_key(*r, p) == other)
                });
                if !told {
                    f.wrong.insert(format!(
                        "{org} in {} was never told of the pair of {} with {other}",
                        REGIONS[*r], s.id
                    ));
                }
            }
        }
    }
    Ok(f)
}

/// Waits until every outbox is empty (twice in a row), then until [`check`] finds nothing
/// wrong, within [`QUIET_DEADLINE`]; returns the last findings either way.
async fn quiet_and_check(
    cluster: &Arc<Cluster>,
    model: &Mutex<Model>,
    watchers: &BTreeMap<(usize, &'static str), Arc<Mutex<Seen>>>,
) -> KitResult<Findings> {
    let started = Instant::now();
    let mut empty_in_a_row = 0;
    let mut last_depths = Vec::new();
    while empty_in_a_row < 2 {
        if started.elapsed() > QUIET_DEADLINE {
            let mut f = check(cluster, model, watchers).await?;
            f.wrong.insert(format!("the outboxes did not drain within {QUIET_DEADLINE:?}: {last_depths:?} queued"));
            return Ok(f);
        }
        last_depths = cluster.outbox_depths().await?;
        empty_in_a_row = if last_depths.iter().all(|d| *d == 0) { empty_in_a_row + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let f = check(cluster, model, watchers).await?;
        if (f.lost.is_empty() && f.wrong.is_empty()) || started.elapsed() > QUIET_DEADLINE {
            return Ok(f);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---- the run --------------------------------------------------------------------------

/// Runs `options.cycles` crash cycles; `progress` gets a line per cycle.
pub async fn crash_cycles(options: &CrashOptions, mut progress: impl FnMut(&str)) -> KitResult<CrashReport> {
    let started = Instant::now();
    let mut temp = None;
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => temp.insert(tempfile::tempdir()?).path().to_owned(),
    };
    let net = match options.faults {
        Faults::Crash => None,
        Faults::Network => {
            super::netns::ensure_tools(&mut progress)?;
            Some(Netns::create(REGIONS.len())?)
        }
    };
    let mut cluster = Cluster::create(&options.binary, &dir, options.engine, net)?;
    for r in 0..REGIONS.len() {
        cluster.start(r).await?;
        cluster.add_orgs(r).await?;
    }
    let children = Arc::new(valid_bsns(
        100_000_000 + (options.seed % 1000) as u32 * 100_000,
        options.cycles as usize * NEW_PER_CYCLE + IN_PLAY,
    ));
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut report = CrashReport::default();

    // The processes are owned here while the clients share the rest of the cluster.
    let mut processes: Vec<Option<NodeProcess>> = cluster.regions.iter_mut().map(|r| r.process.take()).collect();
    let cluster = Arc::new(cluster);
    let mut watchers = BTreeMap::new();
    let mut watcher_tasks = Vec::new();
    for r in 0..REGIONS.len() {
        for org in ORGS.iter().copied().chain([MATCH_OFFICER_ORG]) {
            let seen = Arc::new(Mutex::new(Seen::default()));
            watcher_tasks.push(watch(cluster.clone(), r, org, seen.clone(), started));
            watchers.insert((r, org), seen);
        }
    }

    let result = async {
        for cycle in 1..=options.cycles {
            let window = ((cycle as usize - 1) * NEW_PER_CYCLE, (cycle as usize - 1) * NEW_PER_CYCLE + IN_PLAY);
            let run = Arc::new(AtomicBool::new(true));
            let workers: Vec<JoinHandle<KitResult<()>>> = (0..REGIONS.len() * ORGS.len())
                .map(|slot| {
                    let client = Client::new(cluster.clone(), slot_region(slot), slot_org(slot));
                    let seed = rng.gen();
                    tokio::spawn(load(client, slot, model.clone(), children.clone(), window, run.clone(), seed))
                })
                .collect();
            let before = Duration::from_millis(rng.gen_range(200..1500));
            let (what, healed) = match options.faults {
                Faults::Crash => {
                    let victim = rng.gen_range(0..REGIONS.len());
                    tokio::time::sleep(before).await;
                    let process =
                        processes[victim].as_mut().ok_or_else(|| KitError::Failed("a node is not running".into()))?;
                    let killed_at = started.elapsed().as_secs_f64();
                    process.kill_9().await?;
                    let down = Instant::now();
                    let region = &cluster.regions[victim];
                    match audit_verify(&cluster.binary, &region.files.config_path).await {
                        Ok(_) => report.audit_checks += 1,
                        Err(e) => {
                            report.wrong.insert(format!("cycle {cycle}: {} after kill -9: {e}", REGIONS[victim]));
                        }
                    }
                    let down_for = Duration::from_millis(rng.gen_range(0..600));
                    tokio::time::sleep(down_for.saturating_sub(down.elapsed())).await;
                    let mut process = cluster.spawn(victim)?;
                    process.wait_serving(&region.files).await?;
                    processes[victim] = Some(process);
                    let down_for = down.elapsed();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(200..800))).await;
                    let what = format!(
                        "(t={killed_at:.1} s): killed {} after {} ms, down {} ms",
                        REGIONS[victim],
                        before.as_millis(),
                        down_for.as_millis()
                    );
                    (what, None)
                }
                Faults::Network => {
                    let net = cluster.net.as_ref().ok_or_else(|| KitError::Failed("no namespaces to fault".into()))?;
                    let fault = NetFault::ALL[(cycle as usize - 1) % NetFault::ALL.len()];
                    let a = rng.gen_range(0..REGIONS.len());
                    let b = (a + rng.gen_range(1..REGIONS.len())) % REGIONS.len();
                    tokio::time::sleep(before).await;
                    let at = started.elapsed().as_secs_f64();
                    net.apply(a, b, fault)?;
                    let on = Instant::now();
                    let mut what = format!("(t={at:.1} s): {fault} between {} and {}", REGIONS[a], REGIONS[b]);
                    // The load runs on for about as long as in a crash cycle (more would use
                    // up the cycle's children and withdraw them all), and the fault stays
                    // while its cross-region exchanges are delivered, or wait, under it.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
                    run.store(false, Ordering::SeqCst);
                    if fault == NetFault::Partition {
                        // The partition stands until both ends notice: the status must show it.
                        match cluster.await_link(a, b, false, PARTITION_DEADLINE).await? {
                            Ok(took) => {
                                report.partitions_seen += 1;
                                what.push_str(&format!(", status showed the link down at both ends after {:.1} s", took.as_secs_f64()));
                            }
                            Err(why) => {
                                report.wrong.insert(format!("cycle {cycle}: during the partition: {why}"));
                            }
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3500))).await;
                    }
                    net.heal(a, b)?;
                    what.push_str(&format!(", healed after {:.1} s", on.elapsed().as_secs_f64()));
                    (what, Some((a, b)))
                }
            };
            run.store(false, Ordering::SeqCst);
            for w in workers {
                w.await??;
            }
            let mut f = quiet_and_check(&cluster, &model, &watchers).await?;
            if let Some((a, b)) = healed {
                // Once quiet, both ends of the healed link say it is up again.
                if let Err(why) = cluster.await_link(a, b, true, QUIET_DEADLINE).await? {
                    f.wrong.insert(format!("cycle {cycle}: after the heal: {why}"));
                }
            }
            report.cycles = cycle;
            report.cross_region_pairs = f.cross_region_pairs;
            let (lost, doubled, wrong) = (f.lost.len(), f.doubled.len(), f.wrong.len());
            report.lost.extend(f.lost);
            report.doubled.extend(f.doubled);
            report.wrong.extend(f.wrong);
            let m = model.lock().expect("model lock");
            progress(&format!(
                "cycle {cycle}/{} {what}; {} writes acknowledged so far ({} retried); lost {lost}, doubled {doubled}, wrong {wrong}",
                options.cycles,
                m.acked_registrations + m.acked_withdrawals,
                m.retried,
            ));
        }
        // At the end every node stops cleanly and its audit chain verifies.
        for (r, process) in processes.iter_mut().enumerate() {
            if let Some(p) = process.as_mut() {
                p.terminate().await?;
            }
            match audit_verify(&cluster.binary, &cluster.regions[r].files.config_path).await {
                Ok(_) => report.audit_checks += 1,
                Err(e) => {
                    report.wrong.insert(format!("{} at the end: {e}", REGIONS[r]));
                }
            }
        }
        Ok::<_, KitError>(())
    }
    .await;
    for task in watcher_tasks {
        task.abort();
    }
    result?;
    let m = model.lock().expect("model lock");
    report.acked_registrations = m.acked_registrations;
    report.acked_withdrawals = m.acked_withdrawals;
    report.retried = m.retried;
    report.lost.extend(m.lost.iter().cloned());
    report.wrong.extend(m.wrong.iter().cloned());
    report.notices = watchers.values().map(|s| s.lock().expect("seen lock").notices.len() as u64).sum();
    report.elapsed = started.elapsed();
    if !report.clean() {
        // The stores, logs and audit chains of a run that found something are evidence.
        if let Some(temp) = temp {
            let _ = temp.keep();
        }
        report.kept = Some(dir);
    }
    Ok(report)
}
