//! The peer oracle budget (invariants 2 and 9 of DESIGN.md) and who may read the status
//! API (invariant 6), from the outside: a rogue peer with a valid node certificate of the
//! federation CA sends crafted `Exchange` requests over real mutual TLS to a victim node
//! started from the same fixture an operator's config would come from. The victim runs on
//! a `ManualClock`, so refills happen exactly when the test moves time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use common::{node_material, peer_listen};
use tonic::transport::Channel;
use tonic::Code;
use virfed::config::Config;
use virfed::domain::{Bsn, Clock, ManualClock};
use virfed::federation::sync::RETIRED_EPOCHS_KEPT;
use virfed::federation::{PROTOCOL_MINOR, PROTOCOL_VERSION};
use virfed::kit::fixture::{valid_bsns, FederationFiles, RegionFiles, RunningRegion};
use virfed::pb::admin as admin_pb;
use virfed::pb::admin::status_client::StatusClient;
use virfed::pb::federation as fpb;
use virfed::pb::federation::item::Body;
use virfed::pb::federation::peer_client::PeerClient;
use virfed::pki::{client_config, connect, Ca, CertSpec, Identity, TlsMaterial};
use virfed::pseudonym::BlindKey;

// ---- fixture -------------------------------------------------------------------------------

fn clock() -> ManualClock {
    ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap())
}

/// A federation of rotterdam (the victim) and utrecht (played by the test), with
/// rotterdam's oracle bucket set to `capacity` and `refill_per_hour`.
fn victim_files(dir: &Path, capacity: u64, refill_per_hour: u64) -> (FederationFiles, RegionFiles) {
    let mut files = FederationFiles::create(dir, &["rotterdam", "utrecht"]).unwrap();
    let mut rdam = files.regions.remove(0);
    let text = std::fs::read_to_string(&rdam.config_path).unwrap();
    assert!(text.contains("\n[federation]\n"));
    let budget =
        format!("\n[federation]\noracle_budget_per_hour = {capacity}\noracle_refill_per_hour = {refill_per_hour}\n");
    let text = text.replacen("\n[federation]\n", &budget, 1);
    std::fs::write(&rdam.config_path, text).unwrap();
    rdam.config = Config::load(&rdam.config_path).unwrap();
    let fed = rdam.config.federation.as_ref().unwrap();
    assert_eq!((fed.oracle_budget_per_hour, fed.oracle_refill_per_hour), (capacity, refill_per_hour));
    (files, rdam)
}

async fn channel(addr: SocketAddr, material: &TlsMaterial) -> Channel {
    let config = client_config(material).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connect(&addr.to_string(), "localhost", config))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// The rogue: utrecht's genuine node certificate, guessing BSNs one publish at a time.
struct Rogue {
    client: PeerClient<Channel>,
    key: BlindKey,
    guesses: Vec<String>,
    seq: u64,
    epoch: u64,
}

impl Rogue {
    async fn connect(addr: SocketAddr, ca_dir: &Path) -> Rogue {
        Rogue {
            client: PeerClient::new(channel(addr, &node_material(ca_dir, "utrecht")).await),
            key: BlindKey::random(),
            guesses: valid_bsns(123_000_000, 64),
            seq: 0,
            epoch: 42,
        }
    }

    /// One exchange of `n` publishes of fresh guesses: the blinded values it got back.
    async fn guess(&mut self, n: usize) -> Result<Vec<Vec<u8>>, tonic::Status> {
        self.exchange(n, None).await
    }

    /// The same as a bulk publish (the resync flag), with `ticket` (DER; empty: none).
    async fn bulk(&mut self, n: usize, ticket: &[u8]) -> Result<Vec<Vec<u8>>, tonic::Status> {
        self.exchange(n, Some(ticket.to_vec())).await
    }

    async fn exchange(&mut self, n: usize, ticket: Option<Vec<u8>>) -> Result<Vec<Vec<u8>>, tonic::Status> {
        let items = (0..n)
            .map(|_| {
                self.seq += 1;
                let bsn = Bsn::parse(&self.guesses[self.seq as usize]).unwrap();
                let point = self.key.blind_bsn(&bsn).to_vec();
                let handle = vec![self.seq as u8; 16];
                fpb::Item { seq: self.seq, body: Some(Body::Publish(fpb::Publish { handle, point, active: true })) }
            })
            .collect();
        let request = fpb::ExchangeRequest {
            protocol_version: PROTOCOL_VERSION,
            protocol_minor: PROTOCOL_MINOR,
            from_region: "utrecht".into(),
            epoch: self.epoch,
            resync: ticket.is_some(),
            items,
            resync_ticket: ticket.unwrap_or_default(),
        };
        let answer = self.client.exchange(request).await?.into_inner();
        Ok(answer.results.into_iter().map(|r| r.blinded).filter(|b| !b.is_empty()).collect())
    }
}

fn assert_over_budget(result: Result<Vec<Vec<u8>>, tonic::Status>) {
    let status = result.expect_err("the guess should have been refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("utrecht") && status.message().contains("reported to the coordinators"),
        "{}",
        status.message()
    );
}

fn exceeded(region: &RunningRegion) -> Vec<virfed::store::AuditEntry> {
    let entries = region.handle.store().audit_entries().unwrap();
    entries.into_iter().filter(|e| e.action == "federation.budget-exceeded").collect()
}

fn tokens(region: &RunningRegion) -> f64 {
    region.handle.store().budget("utrecht", "oracle").unwrap().expect("a stored bucket").0
}

fn counter(region: &RunningRegion, pick: impl Fn(&virfed::federation::PeerCounters) -> u64) -> u64 {
    pick(&region.handle.peer_counters()["utrecht"])
}

// ---- invariant 2: the budget ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_budget_exhausted_stays_exhausted_across_a_victim_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 3, 60);
    let clock = clock();
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let addr = peer_listen(&rdam.files);
    let mut rogue = Rogue::connect(addr, &files.ca_dir).await;
    for _ in 0..3 {
        assert_eq!(rogue.guess(1).await.unwrap().len(), 1);
    }
    assert_over_budget(rogue.guess(1).await);
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 3);
    assert_eq!(exceeded(&rdam).len(), 1);

    // The victim restarts from the same data directory, 10 s later (1/6 of a token at 60
    // an hour): the bucket is where it was, not full again.
    let rdam_files = rdam.stop().await.unwrap();
    clock.advance(chrono::Duration::seconds(10));
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let mut rogue =
        Rogue { client: PeerClient::new(channel(addr, &node_material(&files.ca_dir, "utrecht")).await), ..rogue };
    for _ in 0..3 {
        assert_over_budget(rogue.guess(1).await);
    }
    // Nothing blinded: no index entry, no blind granted, the bucket untouched.
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 3);
    assert_eq!(counter(&rdam, |c| c.oracle_blinds.load(Ordering::Relaxed)), 0);
    assert_eq!(counter(&rdam, |c| c.budget_rejections.load(Ordering::Relaxed)), 3);
    assert!(tokens(&rdam) < 1.0, "{}", tokens(&rdam));
    // Audited, before and after the restart, with the peer named by its certificate.
    let entries = exceeded(&rdam);
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert!(entries.iter().all(|e| e.actor == "region:utrecht" && e.detail.contains("oracle budget")), "{entries:?}");
    assert!(rdam.handle.store().verify_audit().unwrap().is_ok());
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_the_budget_is_checked_before_blinding() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 4, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    assert_eq!(rogue.guess(2).await.unwrap().len(), 2, "control: within budget, the answers are blinded");
    assert_eq!(tokens(&rdam), 2.0);
    // Three guesses against two tokens: refused whole. No blinded value comes back, none
    // is granted or applied, and the refusal takes nothing from the bucket.
    assert_over_budget(rogue.guess(3).await);
    assert_eq!(counter(&rdam, |c| c.oracle_blinds.load(Ordering::Relaxed)), 2);
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 2);
    assert_eq!(tokens(&rdam), 2.0);
    assert_eq!(exceeded(&rdam).len(), 1);
    // So what fits still passes, in full.
    assert_eq!(rogue.guess(2).await.unwrap().len(), 2);
    assert_eq!(counter(&rdam, |c| c.oracle_blinds.load(Ordering::Relaxed)), 4);
    assert_over_budget(rogue.guess(1).await);
    // Budget use is exported, not only refusals.
    let (code, metrics) = virfed::health::http::get_text(rdam.handle.http_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("virfed_peer_blinds_total{peer=\"utrecht\",kind=\"oracle\"} 4"), "{metrics}");
    assert!(metrics.contains("virfed_peer_budget_rejections_total{peer=\"utrecht\"} 2"), "{metrics}");
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_concurrent_exchanges_never_spend_a_token_twice() {
    // Each exchange fits the bucket alone, not both together. Sent at once on two
    // connections: a peer's exchanges take turns from the budget check to the answer, and
    // each one's tokens are taken in the transaction that applies it, so only one gets
    // through and the other is refused before anything is blinded for it.
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 5, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock())).await.unwrap();
    let addr = peer_listen(&rdam.files);
    for round in 0..3u64 {
        let mut a = Rogue::connect(addr, &files.ca_dir).await;
        let mut b = Rogue::connect(addr, &files.ca_dir).await;
        // Distinct sequence numbers and guesses, so neither is a replay of the other.
        a.seq = 20 * round;
        b.seq = 20 * round + 10;
        let (ra, rb) = tokio::join!(a.guess(3), b.guess(3));
        let answered: Vec<usize> = [&ra, &rb].iter().filter_map(|r| r.as_ref().ok().map(Vec::len)).collect();
        if round == 0 {
            assert_eq!(answered, vec![3], "exactly one exchange is blinded: {ra:?} {rb:?}");
            assert_over_budget(if ra.is_ok() { rb } else { ra });
            assert_eq!(tokens(&rdam), 2.0);
            assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 3);
        } else {
            // Two tokens left: neither fits any more.
            assert!(answered.is_empty(), "{answered:?}");
        }
    }
    assert_eq!(counter(&rdam, |c| c.oracle_blinds.load(Ordering::Relaxed)), 3);
    assert_eq!(counter(&rdam, |c| c.budget_rejections.load(Ordering::Relaxed)), 5);
    assert_eq!(exceeded(&rdam).len(), 5);
    assert!(rdam.handle.store().verify_audit().unwrap().is_ok());
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_publishes_under_a_retired_epoch_are_charged_not_free() {
    // A peer retires an epoch itself (epoch 1, then 2) and keeps sending under the old one:
    // each such exchange is refused as superseded and still pays its tokens, so the
    // blinding work it causes stays bounded by the budget.
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 6, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    rogue.epoch = 1;
    assert_eq!(rogue.guess(1).await.unwrap().len(), 1);
    rogue.epoch = 2;
    assert_eq!(rogue.guess(1).await.unwrap().len(), 1);
    assert_eq!(tokens(&rdam), 4.0);
    rogue.epoch = 1;
    let status = rogue.guess(2).await.expect_err("a retired epoch is refused");
    assert!(status.message().contains("epoch") || status.message().contains("restore"), "{status:?}");
    assert_eq!(tokens(&rdam), 2.0, "the superseded exchange paid for what it had blinded");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 2, "and applied nothing");
    rogue.guess(2).await.expect_err("refused again");
    assert_over_budget(rogue.guess(1).await);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_switching_epochs_without_end_cannot_grow_its_record() {
    // Every new epoch retires the one before; only the newest RETIRED_EPOCHS_KEPT are
    // remembered (and audited), so the record and the audit entries a peer can make this
    // node keep stay bounded, and the newest retired epochs are still refused. Epoch 0 is
    // not an epoch.
    let switches = RETIRED_EPOCHS_KEPT as u64 + 8;
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 2 * switches, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    for epoch in 1..=switches {
        rogue.epoch = epoch;
        assert_eq!(rogue.guess(1).await.unwrap().len(), 1, "epoch {epoch}");
    }
    let seen = rdam.handle.store().peer_seen("utrecht").unwrap();
    assert_eq!(seen.epoch, switches);
    let kept: Vec<u64> = (switches - RETIRED_EPOCHS_KEPT as u64..switches).collect();
    assert_eq!(seen.retired, kept, "the newest retired epochs, oldest first");
    let audited = rdam.handle.store().audit_entries().unwrap();
    let switched = audited.iter().filter(|e| e.action == "federation.peer-epoch").count() as u64;
    assert_eq!(switched, RETIRED_EPOCHS_KEPT as u64, "switches are audited, as many as are remembered");
    rogue.epoch = switches - 1;
    let status = rogue.guess(1).await.expect_err("the newest retired epoch is refused");
    assert!(status.message().contains("epoch") || status.message().contains("restore"), "{status:?}");
    rogue.epoch = 0;
    let status = rogue.guess(1).await.expect_err("epoch 0 is refused");
    assert!(status.message().contains("epoch 0"), "{status:?}");
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_refills_at_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 3, 60);
    let clock = clock();
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    rogue.guess(3).await.unwrap();
    assert_over_budget(rogue.guess(1).await);
    // 60 an hour is one a minute: not yet after 59 s, one after 60 s.
    clock.advance(chrono::Duration::seconds(59));
    assert_over_budget(rogue.guess(1).await);
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(rogue.guess(1).await.unwrap().len(), 1);
    assert_over_budget(rogue.guess(1).await);
    // An hour is 60 tokens of refill, but the bucket holds 3: no burst beyond the capacity.
    clock.advance(chrono::Duration::hours(1));
    assert_over_budget(rogue.guess(4).await);
    assert_eq!(rogue.guess(3).await.unwrap().len(), 3);
    assert_over_budget(rogue.guess(1).await);
    let stored = rdam.handle.store().budget("utrecht", "oracle").unwrap().unwrap();
    assert_eq!(stored, (0.0, clock.now().timestamp_millis()));
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 7);
    rdam.stop().await.unwrap();
}

#[tokio::test]
async fn budget_state_is_kept_in_a_backup() {
    // A restore must not hand a probing peer a full bucket: the state travels with the
    // data (its time is wall-clock time, valid in any copy; refills since then still count).
    let dir = tempfile::tempdir().unwrap();
    let store = virfed::store::Store::open(&dir.path().join("store"), &Default::default()).unwrap();
    store.write(|tx| tx.put_budget("utrecht", "oracle", 1.5, 1_700_000_000_000)).await.unwrap();
    let backup = dir.path().join("backup");
    store.backup_to(&backup).await.unwrap();
    drop(store);
    let restored = dir.path().join("restored");
    virfed::store::backup::restore(&restored, &backup, false).unwrap();
    // sled's flusher thread may hold the restored store's lock for a moment after restore.
    let mut opened = virfed::store::Store::open(&restored, &Default::default());
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened = virfed::store::Store::open(&restored, &Default::default());
    }
    let store = opened.unwrap();
    assert_eq!(store.budget("utrecht", "oracle").unwrap(), Some((1.5, 1_700_000_000_000)));
    assert_eq!(store.budget("utrecht", "resync").unwrap(), None);
}

// ---- invariant 6: status only for configured peers and coordinators ------------------------

async fn get_status(addr: SocketAddr, material: &TlsMaterial) -> Result<admin_pb::NodeStatus, tonic::Status> {
    StatusClient::new(channel(addr, material).await)
        .get_status(admin_pb::GetStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_6_status_refuses_an_unconfigured_region() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 3, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock())).await.unwrap();
    let addr = peer_listen(&rdam.files);
    // Served: the configured peer's node certificate and a coordinator's.
    assert_eq!(get_status(addr, &node_material(&files.ca_dir, "utrecht")).await.unwrap().region, "rotterdam");
    let ca = Ca::load(&files.ca_dir).unwrap();
    let coordinator = ca.issue(&CertSpec::coordinator("landelijk", 30)).unwrap();
    let coordinator = TlsMaterial::from_issued(&ca.cert_pem(), &coordinator);
    assert_eq!(get_status(addr, &coordinator).await.unwrap().region, "rotterdam");
    // Refused: a perfectly valid node certificate of a region rotterdam does not peer with.
    let err = get_status(addr, &node_material(&files.ca_dir, "zwolle")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("zwolle") && err.message().contains("not a configured peer"), "{}", err.message());
    let refused: Vec<_> =
        rdam.handle.store().audit_entries().unwrap().into_iter().filter(|e| e.action == "federation.refused").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "region:zwolle");
    // Organisation certificates stay refused.
    let org = ca.issue(&CertSpec::client(Identity::Organisation("jz".into()), 30)).unwrap();
    let err = get_status(addr, &TlsMaterial::from_issued(&ca.cert_pem(), &org)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    rdam.stop().await.unwrap();
}

// ---- resync tickets: bulk publishing needs the federation CA's permission ---------------------

/// The ticket tests run the victim at the real time: tickets are issued now.
fn clock_now() -> ManualClock {
    ManualClock::new(chrono::Utc::now())
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

/// utrecht's node certificate: signed by the right CA, but no ticket.
fn node_cert(ca: &Ca) -> String {
    ca.issue(&CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap().cert_pem
}

fn ticket_refusals(region: &RunningRegion) -> Vec<virfed::store::AuditEntry> {
    let entries = region.handle.store().audit_entries().unwrap();
    entries.into_iter().filter(|e| e.action == "federation.ticket-refused").collect()
}

fn assert_refused(result: Result<Vec<Vec<u8>>, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("the bulk publish should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "{needle:?} not in {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_resync_flag_without_a_ticket_is_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 500, 60);
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock_now())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    assert_refused(rogue.bulk(3, &[]).await, Code::PermissionDenied, "virfed ca issue resync-ticket");
    // Nothing blinded, applied or taken from any bucket; audited and counted.
    let store = rdam.handle.store();
    assert_eq!(store.peer_index_len("utrecht"), 0);
    assert_eq!(store.budget("utrecht", "resync").unwrap(), None);
    assert_eq!(counter(&rdam, |c| c.resync_blinds.load(Ordering::Relaxed)), 0);
    assert_eq!(counter(&rdam, |c| c.budget_rejections.load(Ordering::Relaxed)), 1);
    let refused = ticket_refusals(&rdam);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "region:utrecht");
    // Control: the same publishes without the resync flag are ordinary (budgeted) ones.
    assert_eq!(rogue.guess(3).await.unwrap().len(), 3);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_a_ticket_is_counted_against_its_n_also_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 500, 60);
    let clock = clock_now();
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let addr = peer_listen(&rdam.files);
    let mut rogue = Rogue::connect(addr, &files.ca_dir).await;
    let ticket = der(&files.ca.issue_resync_ticket("utrecht", 5, 7).unwrap());
    assert_eq!(rogue.bulk(3, &ticket).await.unwrap().len(), 3);
    assert_refused(rogue.bulk(3, &ticket).await, Code::ResourceExhausted, "allows 5 children and 3 are used");
    assert_eq!(rogue.bulk(2, &ticket).await.unwrap().len(), 2, "what fits in N still goes");
    assert_refused(rogue.bulk(1, &ticket).await, Code::ResourceExhausted, "issue a new ticket");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 5);

    // The count is kept in the store: a restart of the victim gives nothing back.
    let rdam_files = rdam.stop().await.unwrap();
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let mut rogue =
        Rogue { client: PeerClient::new(channel(addr, &node_material(&files.ca_dir, "utrecht")).await), ..rogue };
    assert_refused(rogue.bulk(1, &ticket).await, Code::ResourceExhausted, "5 are used");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 5);
    assert_eq!(ticket_refusals(&rdam).len(), 3, "every refusal audited");
    let granted: Vec<_> =
        rdam.handle.store().audit_entries().unwrap().into_iter().filter(|e| e.action == "federation.resync").collect();
    assert_eq!(granted.len(), 2, "each granted bulk publish audited with its ticket");
    assert!(granted[1].detail.contains("5 of 5 used"), "{}", granted[1].detail);
    // A fresh ticket is a fresh allowance.
    let next = der(&files.ca.issue_resync_ticket("utrecht", 5, 7).unwrap());
    assert_eq!(rogue.bulk(1, &next).await.unwrap().len(), 1);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_expired_foreign_and_other_region_tickets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, rdam_files) = victim_files(dir.path(), 500, 60);
    let clock = clock_now();
    let rdam = RunningRegion::start_with(rdam_files, Arc::new(clock.clone())).await.unwrap();
    let mut rogue = Rogue::connect(peer_listen(&rdam.files), &files.ca_dir).await;
    let foreign = Ca::generate("virfed federation CA", 365).unwrap();
    let cases = [
        (der(&foreign.issue_resync_ticket("utrecht", 100, 7).unwrap()), "not signed by this federation's CA"),
        (der(&files.ca.issue_resync_ticket("zwolle", 100, 7).unwrap()), "for region zwolle, not for utrecht"),
        (der(&node_cert(&files.ca)), "not a resync ticket"),
        (b"not a certificate".to_vec(), "not a certificate"),
    ];
    for (ticket, needle) in &cases {
        assert_refused(rogue.bulk(2, ticket).await, Code::PermissionDenied, needle);
    }
    let expiring = der(&files.ca.issue_resync_ticket("utrecht", 100, 1).unwrap());
    assert_eq!(rogue.bulk(1, &expiring).await.unwrap().len(), 1, "valid today");
    clock.advance(chrono::Duration::days(2));
    assert_refused(rogue.bulk(1, &expiring).await, Code::PermissionDenied, "expired");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 1, "only the valid ticket's publish applied");
    assert_eq!(ticket_refusals(&rdam).len(), cases.len() + 1);
    rdam.stop().await.unwrap();
}

/// The operator's path: `virfed ca issue resync-ticket` writes a ticket that the node
/// presents and its peers accept.
#[test]
fn resync_ticket_cli_writes_a_ticket_the_federation_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    Ca::init(&ca_dir, "virfed federation CA", 365).unwrap();
    let out = dir.path().join("utrecht-ticket.pem");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_virfed"))
            .args(["ca", "issue", "resync-ticket", "--dir"])
            .arg(&ca_dir)
            .args(["--region", "utrecht", "--children", "2500", "--valid-days", "3", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("resync_ticket"));
    let ticket = virfed::pki::ticket::read_ticket_file(&out).unwrap();
    let cas = virfed::pki::ticket::ca_certs(&std::fs::read(ca_dir.join("ca.pem")).unwrap());
    let t = virfed::pki::ticket::verify(&ticket, &cas, "utrecht", chrono::Utc::now()).unwrap();
    assert_eq!(t.children, 2500);
    let again = run(&[]);
    assert!(!again.status.success(), "an existing ticket file is not overwritten without --force");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}
