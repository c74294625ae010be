//! Security of the peer protocol (invariants 1, 2, 5 and 6 of DESIGN.md), tested from the
//! outside: a fake peer speaks the real protocol over real mutual TLS, with certificates
//! from the real federation CA (or deliberately wrong ones), against a node started from
//! the same fixture an operator's config would come from.
//!
//! Where the node must deliver to a peer that the test plays, a fake peer *server* is bound
//! on that peer's configured address (with a node certificate of that region), so the node's
//! own delivery path runs unchanged and every message it sends is captured as it arrived.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use virfed::config::Config;
use virfed::domain::{Addressee, Bsn, NoticeKind, OrgId, SystemClock};
use virfed::federation::OutItem;
use virfed::federation::PROTOCOL_VERSION;
use virfed::kit::fixture::{contact, FederationFiles, RegionFiles, RunningRegion};
use virfed::pb::client as cpb;
use virfed::pb::federation as fpb;
use virfed::pb::federation::item::Body;
use virfed::pb::federation::peer_client::PeerClient;
use virfed::pki::{client_config, connect, server_config, tls_incoming, Ca, CertSpec, Identity, TlsMaterial};
use virfed::pseudonym::{bsn_point, BlindKey};

use common::{files_under, node_material, peer_listen, req_by};

// ---- fixture -------------------------------------------------------------------------------

const CHILD: &str = "111222333";

fn federation_files(regions: &[&str]) -> (tempfile::TempDir, FederationFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), regions).unwrap();
    (dir, files)
}

async fn start(files: RegionFiles) -> RunningRegion {
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.unwrap();
    region.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    region.add_org("school", "School", "education", None).await.unwrap();
    region
}

/// Why a call did not succeed: refused before any RPC ran, or answered with a status.
#[derive(Debug)]
enum Refusal {
    /// Shown by `Debug` in assertion messages.
    Connect(#[allow(dead_code)] String),
    Status(Status),
}

impl Refusal {
    fn code(&self) -> Option<Code> {
        match self {
            Refusal::Connect(_) => None,
            Refusal::Status(s) => Some(s.code()),
        }
    }

    /// Refused at the transport (TLS) level: no application status from the node.
    fn is_transport(&self) -> bool {
        match self {
            Refusal::Connect(_) => true,
            Refusal::Status(s) => {
                matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal)
                    && !s.message().contains("node-to-node")
            }
        }
    }
}

/// A fresh connection (new TLS handshake) to the peer API.
async fn peer_client(addr: SocketAddr, material: &TlsMaterial) -> Result<PeerClient<Channel>, Refusal> {
    let config = client_config(material).map_err(|e| Refusal::Connect(e.to_string()))?;
    let channel = tokio::time::timeout(Duration::from_secs(10), connect(&addr.to_string(), "localhost", config))
        .await
        .map_err(|_| Refusal::Connect("connect timed out".into()))?
        .map_err(|e| Refusal::Connect(e.to_string()))?;
    Ok(PeerClient::new(channel))
}

/// Ping over a fresh connection, claiming `from_region`.
async fn ping_as(addr: SocketAddr, material: &TlsMaterial, from_region: &str) -> Result<fpb::PingResponse, Refusal> {
    let mut client = peer_client(addr, material).await?;
    let ping = fpb::PingRequest {
        from_region: from_region.into(),
        protocol_version: PROTOCOL_VERSION,
        software_version: "fake".into(),
        protocol_minor: virfed::federation::PROTOCOL_MINOR,
    };
    match tokio::time::timeout(Duration::from_secs(10), client.ping(ping)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Refusal::Status(s)),
        Err(_) => Err(Refusal::Connect("ping timed out".into())),
    }
}

fn request(from: &str, epoch: u64, resync: bool, items: Vec<fpb::Item>) -> fpb::ExchangeRequest {
    fpb::ExchangeRequest {
        protocol_version: PROTOCOL_VERSION,
        protocol_minor: virfed::federation::PROTOCOL_MINOR,
        from_region: from.into(),
        epoch,
        resync,
        items,
        resync_ticket: Vec::new(),
    }
}

fn publish_item(seq: u64, handle: &[u8], point: &[u8], active: bool) -> fpb::Item {
    fpb::Item {
        seq,
        body: Some(Body::Publish(fpb::Publish { handle: handle.to_vec(), point: point.to_vec(), active })),
    }
}

fn remove_item(seq: u64, handle: &[u8]) -> fpb::Item {
    fpb::Item { seq, body: Some(Body::Remove(fpb::Remove { handle: handle.to_vec() })) }
}

fn contacts_item(seq: u64, from: &[u8], to: &[u8], org: &str) -> fpb::Item {
    let c = contact("U Bakker", "mentor", "u.bakker@school-utrecht.example.nl");
    fpb::Item {
        seq,
        body: Some(Body::Contacts(fpb::Contacts {
            from_handle: from.to_vec(),
            to_handle: to.to_vec(),
            archived: false,
            parties: vec![fpb::Party {
                organisation_id: org.into(),
                organisation_name: "School Utrecht".into(),
                organisation_domain: "education".into(),
                professional: Some(fpb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
                coordinator: None,
            }],
        })),
    }
}

fn party(org: &str) -> fpb::Party {
    let c = contact(&format!("{org} pro"), "mentor", &format!("pro@{org}.example.nl"));
    fpb::Party {
        organisation_id: org.into(),
        organisation_name: format!("{org} Utrecht"),
        organisation_domain: "education".into(),
        professional: Some(fpb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
        coordinator: None,
    }
}

fn point_of(bsn: &str) -> (BlindKey, Vec<u8>) {
    let key = BlindKey::random();
    let point = key.blind_bsn(&Bsn::parse(bsn).unwrap()).to_vec();
    (key, point)
}

async fn register(region: &RunningRegion, org: &str, bsn: &str) {
    region.org_client(org).await.unwrap().register_signal(req_by(bsn, &format!("{org} pro"))).await.unwrap();
}

fn audit_count(region: &RunningRegion, action: &str) -> usize {
    region.handle.store().audit_entries().unwrap().iter().filter(|e| e.action == action).count()
}

fn notices(region: &RunningRegion, org: &str, kind: NoticeKind, addressee: Addressee) -> usize {
    let org = OrgId::parse(org).unwrap();
    let all = region.handle.store().notices_after(&org, 0, 10_000).unwrap();
    all.iter().filter(|(_, n)| n.kind == kind && n.addressee == addressee).count()
}

/// Polls `check` every 50 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- a fake peer server ----------------------------------------------------------------------

/// Plays a peer region's server side: answers publishes with `point·key` like a node, and
/// keeps every request exactly as it arrived on the wire.
#[derive(Clone)]
struct FakePeer {
    region: String,
    key: BlindKey,
    received: Arc<Mutex<Vec<fpb::ExchangeRequest>>>,
    /// When set, every publish is answered with this `D` (a rogue's forged answer).
    forge: Arc<Mutex<Option<[u8; 32]>>>,
    /// When set, answers are blinded, proven and announced in pings under this key instead
    /// (a rogue switching keys without a re-key announcement).
    substitute: Arc<Mutex<Option<BlindKey>>>,
    /// When set, a delivery holding a Contacts item is kept (recorded as received) until
    /// `release` is notified, then its Contacts items are answered with these contacts,
    /// stated as of this outbox sequence number: an answer that travels slower than the
    /// peer's own later items.
    hold: Arc<Mutex<Option<HeldAnswer>>>,
    release: Arc<tokio::sync::Notify>,
    /// The software version its pings claim.
    software: Arc<Mutex<String>>,
}

/// The contacts a held answer carries, and the outbox sequence number it is stated as of.
type HeldAnswer = (Vec<fpb::Party>, u64);

impl FakePeer {
    /// The fake's answer to a published point: honest (`point·k`) unless told to forge.
    fn answer(&self, point: &[u8]) -> Vec<u8> {
        if let Some(forged) = *self.forge.lock().unwrap() {
            return forged.to_vec();
        }
        self.key().blind_point(point).map(|b| b.to_vec()).unwrap_or_default()
    }

    /// The key the fake answers under now.
    fn key(&self) -> BlindKey {
        self.substitute.lock().unwrap().clone().unwrap_or_else(|| self.key.clone())
    }

    fn received(&self) -> Vec<fpb::ExchangeRequest> {
        self.received.lock().unwrap().clone()
    }

    /// Every item received from `from`, in arrival order.
    /// Items from `from`, without the resync request a new node sends its peers first.
    fn items_from(&self, from: &str) -> Vec<fpb::Item> {
        self.received()
            .into_iter()
            .filter(|r| r.from_region == from)
            .flat_map(|r| r.items)
            .filter(|i| !matches!(i.body, Some(Body::ResyncRequest(_))))
            .collect()
    }
}

#[tonic::async_trait]
impl fpb::peer_server::Peer for FakePeer {
    async fn exchange(&self, req: Request<fpb::ExchangeRequest>) -> Result<Response<fpb::ExchangeResponse>, Status> {
        let r = req.into_inner();
        let has_contacts = r.items.iter().any(|i| matches!(i.body, Some(Body::Contacts(_))));
        let held = if has_contacts { self.hold.lock().unwrap().take() } else { None };
        if held.is_some() {
            self.received.lock().unwrap().push(r.clone());
            self.release.notified().await;
        }
        let mut results: Vec<fpb::ItemResult> = r
            .items
            .iter()
            .map(|item| fpb::ItemResult {
                seq: item.seq,
                blinded: match &item.body {
                    Some(Body::Publish(p)) => self.answer(&p.point),
                    _ => Vec::new(),
                },
                gone: false,
                contacts: Vec::new(),
                contacts_archived: false,
            })
            .collect();
        // The fake proves its answers like a node (RFC 9497 DLEQ), so whatever it answers is
        // checked by the victim exactly as a real peer's answers are.
        let (inputs, outputs): (Vec<[u8; 32]>, Vec<[u8; 32]>) = r
            .items
            .iter()
            .zip(&results)
            .filter_map(|(item, res)| match &item.body {
                Some(Body::Publish(p)) => {
                    let point: [u8; 32] = p.point.as_slice().try_into().ok()?;
                    let answer: [u8; 32] = res.blinded.as_slice().try_into().ok()?;
                    Some((point, answer))
                }
                _ => None,
            })
            .unzip();
        if let Some((contacts, _)) = &held {
            for (item, result) in r.items.iter().zip(results.iter_mut()) {
                if matches!(item.body, Some(Body::Contacts(_))) {
                    result.contacts = contacts.clone();
                }
            }
        }
        let proof = if inputs.is_empty() {
            Vec::new()
        } else {
            let context = virfed::dleq::virfed_context(&self.region, &r.from_region, r.epoch).unwrap();
            virfed::dleq::prove_blinded(&self.key(), &inputs, &outputs, &context, &mut rand::thread_rng())
                .unwrap()
                .to_bytes()
                .to_vec()
        };
        if held.is_none() {
            self.received.lock().unwrap().push(r);
        }
        let public_key = virfed::dleq::public_key(&self.key()).to_vec();
        let as_of_seq = held.map_or(0, |(_, as_of)| as_of);
        Ok(Response::new(fpb::ExchangeResponse { results, public_key, proof, as_of_seq }))
    }

    async fn ping(&self, _: Request<fpb::PingRequest>) -> Result<Response<fpb::PingResponse>, Status> {
        Ok(Response::new(fpb::PingResponse {
            region: self.region.clone(),
            protocol_version: PROTOCOL_VERSION,
            software_version: self.software.lock().unwrap().clone(),
            cert_not_after: 0,
            protocol_minor: virfed::federation::PROTOCOL_MINOR,
            public_key: virfed::dleq::public_key(&self.key()).to_vec(),
        }))
    }
}

/// Binds a fake `region` on `listen` with a node certificate from the federation CA.
async fn serve_fake(ca_dir: &Path, region: &str, listen: SocketAddr) -> (FakePeer, oneshot::Sender<()>) {
    let fake = FakePeer {
        region: region.into(),
        key: BlindKey::random(),
        received: Arc::default(),
        forge: Arc::default(),
        substitute: Arc::default(),
        hold: Arc::default(),
        release: Arc::default(),
        software: Arc::new(Mutex::new("fake".into())),
    };
    let tls = server_config(&node_material(ca_dir, region)).unwrap();
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = fpb::peer_server::PeerServer::new(fake.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(tls_incoming(listener, tls), async {
                let _ = stopped.await;
            })
            .await;
    });
    (fake, stop)
}

/// A rogue peer's ping claims a megabyte of software version holding a BSN and a terminal
/// escape: status, metrics and the dashboard show it cut, without the number and without
/// control characters (its texts are the peer's, not this node's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant9_privacy_a_rogue_peers_version_text_is_cut_and_cleaned_before_status_shows_it() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let (fake, _stop) = serve_fake(&files.ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    *fake.software.lock().unwrap() = format!("virfed {CHILD}\u{1b}[2J{}", "x".repeat(1 << 20));
    let rdam = start(files.regions.remove(0)).await;
    let counters = rdam.handle.peer_counters()["utrecht"].clone();
    eventually(20, "rotterdam pinged utrecht", || counters.info.lock().unwrap().software_version.is_some()).await;
    let shown = counters.info.lock().unwrap().software_version.clone().unwrap();
    assert!(shown.starts_with("virfed ") && !shown.contains(CHILD) && !shown.contains('\u{1b}'), "{shown:.80}");
    assert!(shown.chars().count() <= 65, "cut: {} characters", shown.chars().count());
    rdam.stop().await.unwrap();
}

// ---- invariant 6: a peer is who its certificate says -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_region_certificate_claiming_another_region_is_refused() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht", "zwolle"]);
    let ca_dir = files.ca_dir.clone();
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    let utrecht = node_material(&ca_dir, "utrecht");

    // Control: the same certificate, honest about its region, is served.
    assert_eq!(ping_as(addr, &utrecht, "utrecht").await.unwrap().region, "rotterdam");

    let mut client = peer_client(addr, &utrecht).await.unwrap();
    let (_, point) = point_of(CHILD);
    let lie = request("zwolle", 7, false, vec![publish_item(1, &[1; 16], &point, true)]);
    let status = client.exchange(lie).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("zwolle") && status.message().contains("utrecht"), "{}", status.message());
    let status = ping_as(addr, &utrecht, "zwolle").await.unwrap_err();
    assert_eq!(status.code(), Some(Code::PermissionDenied), "{status:?}");

    let store = rdam.handle.store();
    let refused: Vec<_> =
        store.audit_entries().unwrap().into_iter().filter(|e| e.action == "federation.refused").collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e.actor == "region:utrecht"), "the actor comes from the certificate: {refused:?}");
    assert_eq!(store.peer_index_len("utrecht"), 0);
    assert_eq!(store.peer_index_len("zwolle"), 0);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 0);
    assert_eq!(rdam.handle.peer_counters()["utrecht"].items_received.load(std::sync::atomic::Ordering::Relaxed), 0);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_certificate_from_another_ca_is_refused() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    // A look-alike CA issues a perfectly formed utrecht node certificate; the fake trusts
    // the real federation CA, so only the server can be the one refusing.
    let foreign = Ca::generate("virfed federation root (test)", 3650).unwrap();
    let issued = foreign.issue(&CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap();
    let material = TlsMaterial {
        ca_pem: files.ca.cert_pem().into_bytes(),
        cert_pem: issued.cert_pem.into_bytes(),
        key_pem: issued.key_pem.into_bytes(),
        crl_pems: vec![],
    };
    let refusal = ping_as(addr, &material, "utrecht").await.unwrap_err();
    assert!(refusal.is_transport(), "expected a TLS refusal, got {refusal:?}");
    // The client side of the same connection is fine: a genuine certificate gets through.
    ping_as(addr, &node_material(&files.ca_dir, "utrecht"), "utrecht").await.unwrap();
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 0);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_revoked_node_certificate_is_refused_after_crl_update_while_running() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    let ca = Ca::load(&ca_dir).unwrap();
    let kept = TlsMaterial::from_issued(
        &ca.cert_pem(),
        &ca.issue(&CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap(),
    );
    let doomed_cert = ca.issue(&CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap();
    let doomed = TlsMaterial::from_issued(&ca.cert_pem(), &doomed_cert);
    ping_as(addr, &doomed, "utrecht").await.unwrap();
    ping_as(addr, &kept, "utrecht").await.unwrap();

    Ca::revoke(&ca_dir, &doomed_cert.cert_pem, 30).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let refusal = loop {
        match ping_as(addr, &doomed, "utrecht").await {
            Err(r) => break r,
            Ok(_) => {
                assert!(Instant::now() < deadline, "revoked certificate still accepted 8 s after the CRL update");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(refusal.is_transport(), "expected a TLS refusal, got {refusal:?}");
    // Stays refused, and only that certificate is: the other utrecht certificate still works.
    assert!(ping_as(addr, &doomed, "utrecht").await.unwrap_err().is_transport());
    ping_as(addr, &kept, "utrecht").await.unwrap();
    rdam.stop().await.unwrap();
}

/// The other direction: a node delivers only to a server whose certificate names the
/// peer region it dials, even at that region's configured address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_node_delivers_only_to_the_region_named_in_the_server_certificate() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let (impostor, _stop) = serve_fake(&files.ca_dir, "zwolle", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    register(&rdam, "jeugdzorg", CHILD).await;
    let counters = rdam.handle.peer_counters()["utrecht"].clone();
    eventually(20, "a failed delivery attempt", || {
        counters.delivery_failures.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    assert!(impostor.received().is_empty(), "rotterdam delivered to a zwolle certificate: {:?}", impostor.received());
    let queued = rdam.handle.store().outbox_batch::<OutItem>("utrecht", 10).unwrap();
    assert_eq!(
        queued.iter().filter(|o| matches!(o.item, OutItem::Publish(_))).count(),
        1,
        "the publish stays queued for the real utrecht"
    );
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_coordinator_certificate_cannot_call_the_peer_api() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    let ca = Ca::load(&files.ca_dir).unwrap();
    let coordinator =
        TlsMaterial::from_issued(&ca.cert_pem(), &ca.issue(&CertSpec::coordinator("landelijk", 30)).unwrap());
    let refusal = ping_as(addr, &coordinator, "utrecht").await.unwrap_err();
    assert_eq!(refusal.code(), Some(Code::PermissionDenied), "{refusal:?}");
    let mut client = peer_client(addr, &coordinator).await.unwrap();
    let (_, point) = point_of(CHILD);
    let status = client.exchange(request("utrecht", 1, false, vec![publish_item(1, &[1; 16], &point, true)])).await;
    assert_eq!(status.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 0);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_organisation_certificate_from_region_ca_cannot_call_the_peer_api() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    // A client certificate of rotterdam's own region CA: good on the client API, not here.
    let issued = rdam.files.ca.issue(&CertSpec::client(Identity::Organisation("jeugdzorg".into()), 30)).unwrap();
    let material = TlsMaterial {
        ca_pem: files.ca.cert_pem().into_bytes(),
        cert_pem: issued.cert_pem.into_bytes(),
        key_pem: issued.key_pem.into_bytes(),
        crl_pems: vec![],
    };
    let refusal = ping_as(addr, &material, "utrecht").await.unwrap_err();
    assert!(refusal.is_transport(), "expected a TLS refusal, got {refusal:?}");
    // Even a region CA certificate naming a region identity is refused: wrong CA.
    let issued = rdam.files.ca.issue(&CertSpec::node("utrecht", vec!["localhost".into()], 30)).unwrap();
    let material =
        TlsMaterial { cert_pem: issued.cert_pem.into_bytes(), key_pem: issued.key_pem.into_bytes(), ..material };
    assert!(ping_as(addr, &material, "utrecht").await.unwrap_err().is_transport());
    // And the client API still works for that organisation (the refusal is the peer port's).
    rdam.org_client("jeugdzorg").await.unwrap().list_matches(cpb::ListMatchesRequest::default()).await.unwrap();
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_plain_tcp_to_the_peer_port_is_refused() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);

    // gRPC over plaintext HTTP/2.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let ping =
        fpb::PingRequest { from_region: "utrecht".into(), protocol_version: PROTOCOL_VERSION, ..Default::default() };
    let status = PeerClient::new(channel).ping(ping).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(!status.message().contains("rotterdam"), "{status:?}");

    // Raw bytes: an HTTP/2 preface gets nothing but (at most) a TLS alert and a close.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the node kept a plaintext connection open");
    assert!(answer.is_empty() || answer[0] == 0x15, "plaintext got an answer that is not a TLS alert: {answer:02x?}");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 0);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_unconfigured_region_is_refused() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let addr = peer_listen(&rdam.files);
    let amsterdam = node_material(&files.ca_dir, "amsterdam");
    let refusal = ping_as(addr, &amsterdam, "amsterdam").await.unwrap_err();
    assert_eq!(refusal.code(), Some(Code::PermissionDenied), "{refusal:?}");
    let mut client = peer_client(addr, &amsterdam).await.unwrap();
    let (_, point) = point_of(CHILD);
    let status = client
        .exchange(request("amsterdam", 1, false, vec![publish_item(1, &[1; 16], &point, true)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("amsterdam") && status.message().contains("not a configured peer"), "{status:?}");
    // Claiming a configured region does not help: identity is the certificate's.
    let status =
        client.exchange(request("utrecht", 1, false, vec![publish_item(1, &[1; 16], &point, true)])).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let store = rdam.handle.store();
    assert_eq!(store.peer_index_len("amsterdam"), 0);
    assert_eq!(store.peer_index_len("utrecht"), 0);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 0);
    rdam.stop().await.unwrap();
}

// ---- invariant 5: every peer message is idempotent -------------------------------------------

/// rotterdam, a real node with jeugdzorg on `CHILD`, and utrecht played by the test: a
/// fake server on its address answers rotterdam's deliveries, a peer client sends its
/// messages. Returned once rotterdam's publish reached the fake and its answer applied.
struct Victim {
    _dir: tempfile::TempDir,
    fake: FakePeer,
    _stop: oneshot::Sender<()>,
    rdam: RunningRegion,
    store: virfed::store::Store,
    utrecht: PeerClient<Channel>,
    /// rotterdam's handle for its child towards utrecht.
    rdam_handle: Vec<u8>,
}

async fn victim_with_fake_utrecht() -> Victim {
    let (dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (fake, stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    let utrecht = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    register(&rdam, "jeugdzorg", CHILD).await;
    eventually(20, "rotterdam's publish delivered to utrecht", || {
        store.outbox_depth("utrecht") == 0 && fake.items_from("rotterdam").len() == 1
    })
    .await;
    let rdam_handle = match &fake.items_from("rotterdam")[0].body {
        Some(Body::Publish(p)) => p.handle.clone(),
        other => panic!("expected a publish, got {other:?}"),
    };
    Victim { _dir: dir, fake, _stop: stop, rdam, store, utrecht, rdam_handle }
}

/// Found by the model of the pair protocol (issue 11, part 4): when the peer detected the
/// pair second, my reply to its Contacts is its only way to hear my contacts. If that
/// reply is lost and the peer sends the same item again, the replay must be answered with
/// my contacts as well (as a replayed publish is), not with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant5_a_replayed_contacts_item_is_answered_with_my_contacts_again() {
    let Victim { _dir, _stop, fake, rdam, store, mut utrecht, rdam_handle } = victim_with_fake_utrecht().await;
    let h1 = [7u8; 16];
    let point = fake.key.blind_bsn(&Bsn::parse(CHILD).unwrap()).to_vec();
    let epoch = 0x5eed;
    utrecht.exchange(request("utrecht", epoch, false, vec![publish_item(1, &h1, &point, true)])).await.unwrap();
    eventually(20, "rotterdam's contacts delivered", || store.outbox_depth("utrecht") == 0).await;

    let contacts = request("utrecht", epoch, false, vec![contacts_item(2, &h1, &rdam_handle, "school")]);
    let first = utrecht.exchange(contacts.clone()).await.unwrap().into_inner();
    let orgs = |r: &fpb::ExchangeResponse| -> Vec<String> {
        r.results[0].contacts.iter().map(|p| p.organisation_id.clone()).collect()
    };
    assert_eq!(orgs(&first), vec!["jeugdzorg".to_owned()], "the reply carries rotterdam's reporter");
    // That reply is lost; utrecht sends the same item again.
    let replay = utrecht.exchange(contacts).await.unwrap().into_inner();
    assert_eq!(orgs(&replay), orgs(&first), "the replay is answered with rotterdam's contacts again");
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 1, "applied once");
    assert_eq!(audit_count(&rdam, "federation.replay"), 1);
    rdam.stop().await.unwrap();
}

/// Found by the network-fault cycles (issue 11, part 2): the peer's answer to my delivery
/// carries its contacts as they were when the delivery reached it, and travels apart from
/// the peer's own later items. Here the peer's reply to rotterdam's Contacts is held while
/// the peer says one of its two parties is gone; the reply then arrives still naming that
/// party. It must not bring the party back (a second "match created" for a pair already
/// announced and ended): rotterdam drops the overtaken reply and asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant5_an_answer_overtaken_by_the_peers_newer_items_does_not_bring_a_gone_party_back() {
    let Victim { _dir, _stop, fake, rdam, store, mut utrecht, rdam_handle } = victim_with_fake_utrecht().await;
    // From now on the fake holds a delivery with contacts and answers it with two parties,
    // as of its item 1 (the publish below: all it had sent when the delivery reached it).
    *fake.hold.lock().unwrap() = Some((vec![party("school-a"), party("school-b")], 1));

    // utrecht's child: rotterdam detects the pair and sends its contacts; the fake holds them.
    let h1 = [7u8; 16];
    let point = fake.key.blind_bsn(&Bsn::parse(CHILD).unwrap()).to_vec();
    let epoch = 0x5eed;
    utrecht.exchange(request("utrecht", epoch, false, vec![publish_item(1, &h1, &point, true)])).await.unwrap();
    let contacts_sent =
        || fake.items_from("rotterdam").into_iter().filter(|i| matches!(i.body, Some(Body::Contacts(_)))).count();
    eventually(20, "rotterdam's contacts reach utrecht (and are held there)", || contacts_sent() == 1).await;
    assert!(fake.hold.lock().unwrap().is_none(), "the fake holds rotterdam's delivery");

    // Meanwhile utrecht's own items: both its parties, then one of them gone.
    let mut both = contacts_item(2, &h1, &rdam_handle, "school-a");
    if let Some(Body::Contacts(c)) = &mut both.body {
        c.parties = vec![party("school-a"), party("school-b")];
    }
    let gone = fpb::Item {
        seq: 3,
        body: Some(Body::PartyGone(fpb::PartyGone {
            from_handle: h1.to_vec(),
            to_handle: rdam_handle.clone(),
            organisation_id: "school-b".into(),
        })),
    };
    utrecht.exchange(request("utrecht", epoch, false, vec![both, gone])).await.unwrap();
    let created = || notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional);
    let ended = || notices(&rdam, "jeugdzorg", NoticeKind::MatchEnded, Addressee::Professional);
    assert_eq!((created(), ended()), (1, 1), "both parties announced once, then school-b ended");

    // The held reply arrives, naming school-b still. Besides the held one, rotterdam has
    // sent its contacts twice more: the copy queued when utrecht's contacts were answered
    // while the held one waited (see `invariant3_contacts_without_a_pair_…`), and the new
    // ask for the overtaken reply.
    fake.release.notify_one();
    eventually(20, "the held reply applied", || contacts_sent() >= 2 && store.outbox_depth("utrecht") == 0).await;
    let counterparts: Vec<String> = rdam
        .org_client("jeugdzorg")
        .await
        .unwrap()
        .list_matches(cpb::ListMatchesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .matches
        .iter()
        .flat_map(|m| m.counterparts.iter().map(|p| p.organisation_id.clone()))
        .collect();
    assert_eq!(counterparts, vec!["school-a".to_owned()], "the party utrecht said is gone stays gone");
    assert_eq!((created(), ended()), (1, 1), "no pair announced a second time");
    eventually(20, "rotterdam asking again", || contacts_sent() == 3 && store.outbox_depth("utrecht") == 0).await;
    // The new ask is rotterdam's contacts again, for the same pair.
    let asks: Vec<fpb::Item> =
        fake.items_from("rotterdam").into_iter().filter(|i| matches!(i.body, Some(Body::Contacts(_)))).collect();
    for ask in &asks {
        let Some(Body::Contacts(c)) = &ask.body else { unreachable!() };
        assert_eq!((&c.from_handle, &c.to_handle), (&rdam_handle, &h1.to_vec()));
        assert_eq!(c.parties.len(), 1, "rotterdam's one reporter");
    }
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant5_duplicated_and_replayed_exchange_changes_nothing() {
    let Victim { _dir, _stop, fake, rdam, store, mut utrecht, rdam_handle } = victim_with_fake_utrecht().await;

    let child = Bsn::parse(CHILD).unwrap();
    let h1 = [7u8; 16];
    let point = fake.key.blind_bsn(&child).to_vec();
    let epoch = 0x5eed;
    let first = request("utrecht", epoch, false, vec![publish_item(1, &h1, &point, true)]);
    let answer = utrecht.exchange(first.clone()).await.unwrap().into_inner();
    // The match queued rotterdam's contacts for utrecht; while they wait, an answer leaves
    // them out rather than overtake them. Once they are delivered nothing waits, so the
    // replay's answer is comparable whole.
    eventually(20, "rotterdam's contacts delivered", || store.outbox_depth("utrecht") == 0).await;
    let replay = utrecht.exchange(first.clone()).await.unwrap().into_inner();
    // The same answer; its proof is made afresh (a proof's nonce is never reused: that
    // would disclose the key), and both prove the same statement.
    assert_eq!(
        (&answer.results, &answer.public_key),
        (&replay.results, &replay.public_key),
        "a replay gets the same answer"
    );
    let context = virfed::dleq::virfed_context("rotterdam", "utrecht", epoch).unwrap();
    let d: [u8; 32] = answer.results[0].blinded.as_slice().try_into().unwrap();
    let q: [u8; 32] = point.as_slice().try_into().unwrap();
    let y: [u8; 32] = answer.public_key.as_slice().try_into().unwrap();
    for proof in [&answer.proof, &replay.proof] {
        virfed::dleq::verify_blinded(&y, &[q], &[d], proof, &context).expect("the answer is proven");
    }
    assert_eq!(answer.results.len(), 1);
    assert_eq!(answer.results[0].blinded.len(), 32);
    assert_eq!(store.peer_index_len("utrecht"), 1);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 1, "the replay applied nothing");
    assert_eq!(audit_count(&rdam, "federation.match"), 1);
    // rotterdam saw the match and sends its contacts to utrecht, once.
    eventually(20, "rotterdam's contacts delivered", || store.outbox_depth("utrecht") == 0).await;
    let contacts_sent =
        || fake.items_from("rotterdam").into_iter().filter(|i| matches!(i.body, Some(Body::Contacts(_)))).count();
    eventually(20, "rotterdam's contacts delivered", || contacts_sent() == 1).await;
    // Professionals learn of a match only with the counterpart's contacts.
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 0);

    // utrecht's contacts: once, replayed with the same seq, and again under a new seq.
    let contacts = request("utrecht", epoch, false, vec![contacts_item(2, &h1, &rdam_handle, "school")]);
    utrecht.exchange(contacts.clone()).await.unwrap();
    utrecht.exchange(contacts).await.unwrap();
    utrecht
        .exchange(request("utrecht", epoch, false, vec![contacts_item(3, &h1, &rdam_handle, "school")]))
        .await
        .unwrap();
    // The whole first request again, after later ones.
    utrecht.exchange(first.clone()).await.unwrap();
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 1);
    assert_eq!(notices(&rdam, "gemeente", NoticeKind::MatchCreated, Addressee::MatchOfficer), 1);
    assert_eq!(audit_count(&rdam, "federation.match"), 1);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 3, "seq 1, 2 and 3 applied once each");

    // Withdrawal by the peer, then the old publish arrives late (reordered): stays removed.
    utrecht.exchange(request("utrecht", epoch, false, vec![remove_item(4, &h1)])).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 0);
    let late_answer = utrecht.exchange(first.clone()).await.unwrap().into_inner();
    assert_eq!(late_answer.results[0].blinded, answer.results[0].blinded, "the same D as the first time");
    assert!(late_answer.results[0].contacts.is_empty(), "no contact details once the pair has ended (invariant 3)");
    let late = request("utrecht", epoch, false, vec![publish_item(3, &h1, &point, true)]);
    utrecht.exchange(late).await.unwrap();
    utrecht.exchange(request("utrecht", epoch, false, vec![remove_item(4, &h1)])).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 0, "a replayed publish resurrected a removed entry");
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchEnded, Addressee::Professional), 1);
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 1);
    assert_eq!(audit_count(&rdam, "federation.match-ended"), 1);

    // Expected behaviour: a new epoch is a new store at the peer (restored, re-created),
    // whose sequence numbers start again; its items are applied.
    utrecht.exchange(request("utrecht", epoch + 1, false, vec![publish_item(1, &h1, &point, true)])).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 1);
    assert_eq!(audit_count(&rdam, "federation.match"), 2);
    rdam.stop().await.unwrap();
}

/// A rogue peer with a valid certificate sends contact details for a child of the victim
/// without the pair the victim would have to detect itself: none is applied, no notice is
/// made, and every attempt is audited. The same contacts for a pair the victim detected
/// are applied (the control: the check is what refuses, not a broken path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant3_contacts_without_a_pair_the_victim_detected_are_refused_and_audited() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let fake_listen = peer_listen(&files.regions[1]);
    let (fake, stop_fake) = serve_fake(&ca_dir, "utrecht", fake_listen).await;
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    register(&rdam, "jeugdzorg", CHILD).await;
    eventually(20, "rotterdam's publish delivered", || fake.items_from("rotterdam").len() == 1).await;
    let Some(Body::Publish(p)) = &fake.items_from("rotterdam")[0].body else { panic!("expected a publish") };
    let victim_handle = p.handle.clone();
    let epoch = 0xbad;
    let archived = |mut item: fpb::Item| {
        if let Some(Body::Contacts(c)) = &mut item.body {
            c.archived = true;
        }
        item
    };
    let refused = || audit_count(&rdam, "federation.contacts-refused");
    let any_notice = |kind| {
        ["jeugdzorg", "gemeente"].iter().map(|o| notices(&rdam, o, kind, Addressee::Professional)).sum::<usize>()
            + notices(&rdam, "gemeente", kind, Addressee::MatchOfficer)
    };

    // 1. Live and archived contacts from a handle the victim never indexed.
    let h_unknown = [1u8; 16];
    let items = vec![
        contacts_item(1, &h_unknown, &victim_handle, "school"),
        archived(contacts_item(2, &h_unknown, &victim_handle, "school")),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results.iter().all(|r| r.gone && r.contacts.is_empty()), "{answer:?}");
    assert_eq!(refused(), 2);

    // 2. A published child that is another child (no pair): live and archived refused.
    let other = Bsn::parse("123456782").unwrap();
    let h_other = [2u8; 16];
    let items = vec![
        publish_item(3, &h_other, &fake.key.blind_bsn(&other), false),
        contacts_item(4, &h_other, &victim_handle, "school"),
        archived(contacts_item(5, &h_other, &victim_handle, "school")),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results[1].gone && answer.results[2].gone);
    assert_eq!(refused(), 4);

    // 3. The same child, active at the rogue: history contacts for it are refused (an active
    //    child at the sender is a match, not history); live ones are for the matched pair.
    let child = Bsn::parse(CHILD).unwrap();
    let h_child = [3u8; 16];
    let items = vec![
        publish_item(6, &h_child, &fake.key.blind_bsn(&child), true),
        archived(contacts_item(7, &h_child, &victim_handle, "school")),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results[1].gone, "history contacts for an active child are refused");
    assert_eq!(refused(), 5);
    assert_eq!(any_notice(NoticeKind::History), 0, "no history notice from a peer's say-so");
    assert_eq!(any_notice(NoticeKind::MatchCreated), 0, "no match notice without contacts for a detected pair");
    assert!(
        !store
            .notices_after(&OrgId::parse("jeugdzorg").unwrap(), 0, 100)
            .unwrap()
            .iter()
            .any(|(_, n)| n.counterparts.iter().any(|p| p.professional.email.contains("school-utrecht"))),
        "the rogue's contact details reached nobody"
    );

    // Control: contacts for the pair the victim detected (seq 6 made it) are applied, and the
    // answer carries the victim's own contacts for that pair only. An answer never overtakes
    // the victim's own items about the child still queued for the peer (they would go behind
    // them as a fresh Contacts item), so first let the victim's outbox to "utrecht" drain.
    eventually(20, "rotterdam's outbox to utrecht drained", || {
        store.outbox_batch::<OutItem>("utrecht", 100).unwrap().is_empty()
    })
    .await;
    let answer = rogue
        .exchange(request("utrecht", epoch, false, vec![contacts_item(8, &h_child, &victim_handle, "school")]))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.results[0].gone);
    assert_eq!(answer.results[0].contacts.len(), 1, "the victim's one reporter on the matched child");
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 1);
    assert_eq!(refused(), 5);

    // Held back: while the victim's own items about the child wait for the peer (its
    // server is gone now), a contacts reply carries nothing; a fresh copy of the victim's
    // own contacts for the matched pair, and only those, is queued behind them.
    let live_contacts_queued = || {
        store
            .outbox_batch::<OutItem>("utrecht", 100)
            .unwrap()
            .into_iter()
            .filter_map(|o| match o.item {
                OutItem::Contacts { to, archived: false, parties, .. } if to.as_slice() == h_child => Some(parties),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let _ = stop_fake.send(());
    eventually(20, "the fake utrecht stopped listening", || std::net::TcpStream::connect(fake_listen).is_err()).await;
    let counters = rdam.handle.peer_counters()["utrecht"].clone();
    let failures = || counters.delivery_failures.load(std::sync::atomic::Ordering::Relaxed);
    let failed_before = failures();
    register(&rdam, "school", CHILD).await;
    eventually(20, "a failed delivery of the victim's new contacts", || failures() > failed_before).await;
    assert_eq!(live_contacts_queued().len(), 1, "the victim's new reporter waits for utrecht");
    let answer = rogue
        .exchange(request("utrecht", epoch, false, vec![contacts_item(9, &h_child, &victim_handle, "school")]))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.results[0].gone);
    assert!(answer.results[0].contacts.is_empty(), "the reply does not overtake the queued items: {answer:?}");
    let queued = live_contacts_queued();
    assert_eq!(queued.len(), 2, "a fresh copy queued behind the waiting item");
    assert_eq!(queued[1].len(), 2, "the victim's two reporters on the matched child, nothing else");
    assert_eq!(refused(), 5);
    rdam.stop().await.unwrap();
}

/// Family matches (D11) under the v2 rules: a rogue peer with a valid certificate cannot
/// turn a child into a parent (the domains differ), cannot send contacts to a parent without
/// a family pair the victim detected, and cannot send history contacts for a family pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_a_rogue_peer_cannot_force_a_family_match() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (fake, _stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    let parent = "123456782";
    let mut registration = req_by(CHILD, "jeugdzorg pro");
    registration.parent_bsns = vec![parent.into()];
    rdam.org_client("jeugdzorg").await.unwrap().register_signal(registration).await.unwrap();
    eventually(20, "rotterdam's two publishes delivered", || fake.items_from("rotterdam").len() == 2).await;
    let handles: Vec<Vec<u8>> = fake
        .items_from("rotterdam")
        .iter()
        .map(|i| match &i.body {
            Some(Body::Publish(p)) => p.handle.clone(),
            other => panic!("expected publishes, got {other:?}"),
        })
        .collect();
    let (child_handle, parent_handle) = (&handles[0], &handles[1]);
    let refused = || audit_count(&rdam, "federation.contacts-refused");
    let family_notices = || {
        notices(&rdam, "jeugdzorg", NoticeKind::FamilyMatchCreated, Addressee::Professional)
            + notices(&rdam, "gemeente", NoticeKind::FamilyMatchCreated, Addressee::MatchOfficer)
    };
    let archived = |mut item: fpb::Item| {
        if let Some(Body::Contacts(c)) = &mut item.body {
            c.archived = true;
        }
        item
    };
    let epoch = 0xfa;
    let bsn = |b: &str| Bsn::parse(b).unwrap();

    // 1. The parent's BSN published as a child: another domain, another D, no pair.
    let h_as_child = [1u8; 16];
    let items = vec![
        publish_item(1, &h_as_child, &fake.key.blind_bsn(&bsn(parent)), true),
        contacts_item(2, &h_as_child, parent_handle, "school"),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results[0].contacts.is_empty(), "no family contacts for a child-domain point");
    assert!(answer.results[1].gone);
    assert_eq!(refused(), 1);

    // 2. The matched child's handle aimed at the parent's handle: not a pair.
    let h_child = [2u8; 16];
    let items = vec![
        publish_item(3, &h_child, &fake.key.blind_bsn(&bsn(CHILD)), true),
        contacts_item(4, &h_child, parent_handle, "school"),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results[1].gone);
    assert_eq!(refused(), 2);

    // 3. The parent in its own domain, archived at the rogue: no pair, and history contacts
    //    for a parent are refused (history notices are child-only).
    let h_parent = [3u8; 16];
    let items = vec![
        publish_item(5, &h_parent, &fake.key.blind_parent(&bsn(parent)), false),
        archived(contacts_item(6, &h_parent, parent_handle, "school")),
        contacts_item(7, &h_parent, parent_handle, "school"),
    ];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert!(answer.results[0].contacts.is_empty(), "an inactive parent makes no family pair");
    assert!(answer.results[1].gone && answer.results[2].gone);
    assert_eq!(refused(), 4);
    assert_eq!(family_notices(), 0, "no family notice from a peer's say-so");

    // Control: the parent active at the peer is a family pair the victim detects itself; its
    // contacts are applied and notified with the family flag, once.
    let items = vec![publish_item(8, &h_parent, &fake.key.blind_parent(&bsn(parent)), true)];
    let answer = rogue.exchange(request("utrecht", epoch, false, items)).await.unwrap().into_inner();
    assert_eq!(answer.results[0].contacts.len(), 1, "the victim's one reporter for the family pair");
    let answer = rogue
        .exchange(request("utrecht", epoch, false, vec![contacts_item(9, &h_parent, parent_handle, "school")]))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.results[0].gone);
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::FamilyMatchCreated, Addressee::Professional), 1);
    assert_eq!(refused(), 4);
    let _ = child_handle;
    rdam.stop().await.unwrap();
}

/// A replayed sequence number is no way round the applied path: a replay with another
/// point under the same handle gets no blinded answer, and replays are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_a_replayed_publish_with_another_point_is_not_answered() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (_fake, _stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    let (_, first_point) = point_of(CHILD);
    let (_, guess) = point_of("123456782");
    let h = [9u8; 16];
    let first = rogue
        .exchange(request("utrecht", 7, false, vec![publish_item(1, &h, &first_point, true)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.results[0].blinded.len(), 32);
    let same = rogue
        .exchange(request("utrecht", 7, false, vec![publish_item(1, &h, &first_point, true)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.results[0].blinded, first.results[0].blinded, "an honest replay gets the stored answer");
    let other = rogue
        .exchange(request("utrecht", 7, false, vec![publish_item(1, &h, &guess, true)]))
        .await
        .unwrap()
        .into_inner();
    assert!(other.results[0].blinded.is_empty(), "a replay with another point is not blinded");
    assert_eq!(audit_count(&rdam, "federation.replay"), 2);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 1, "only the first was applied");
    rdam.stop().await.unwrap();
}

/// The rogue ("utrecht") publishes its own point `x` under `handle` as the first item of
/// `epoch` and returns the victim's answer `x·a`.
async fn blinded_by_victim(rogue: &mut PeerClient<Channel>, epoch: u64, handle: &[u8], x: &[u8]) -> Vec<u8> {
    let answer = rogue.exchange(request("utrecht", epoch, false, vec![publish_item(1, handle, x, true)])).await;
    answer.unwrap().into_inner().results[0].blinded.clone()
}

/// The forced-match attack: a rogue peer with a valid certificate publishes a point `X`,
/// gets `X·a` back, then answers the victim's publish of its child with `X·a`, so that the
/// victim's child would "match" the rogue's `X` and the victim would send the rogue its
/// reporters' contact details. The answer cannot carry a valid proof (it is not the
/// victim's point times the rogue's key): the batch is refused whole, nothing is applied,
/// the attempt is audited and counted, and no contact detail leaves the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant9_forged_answers_are_refused_whole_and_nothing_is_applied() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (fake, _stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    let (_, x) = point_of("123456782");
    let xa = blinded_by_victim(&mut rogue, 3, &[4u8; 16], &x).await;
    *fake.forge.lock().unwrap() = Some(xa.as_slice().try_into().unwrap());
    register(&rdam, "jeugdzorg", CHILD).await;
    eventually(20, "the forged answer refused", || audit_count(&rdam, "federation.proof-refused") >= 1).await;
    assert!(store.outbox_depth("utrecht") >= 1, "the refused publish stays queued: nothing applied");
    assert_eq!(audit_count(&rdam, "federation.match"), 0, "no pair from a forged D");
    assert!(
        !fake.items_from("rotterdam").iter().any(|i| matches!(i.body, Some(Body::Contacts(_)))),
        "no contact detail left the victim"
    );
    let counters = rdam.handle.peer_counters().get("utrecht").cloned().unwrap();
    assert!(counters.proof_failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional), 0);

    // Control: once the peer answers honestly, the same publish is delivered and proven.
    *fake.forge.lock().unwrap() = None;
    eventually(30, "the honest answer accepted", || store.outbox_depth("utrecht") == 0).await;
    assert_eq!(audit_count(&rdam, "federation.match"), 0, "X is another child: still no pair");
    rdam.stop().await.unwrap();
}

/// Key pinning: the victim pins the public key a peer proves its answers under on first
/// contact. A rogue that switches to another key (with proofs that hold under it) gets
/// nothing applied until it announces the key the way a re-key does; the refusal is
/// audited and shown, and the announcement itself is audited with both fingerprints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant9_answers_under_an_unannounced_key_are_refused_until_announced() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (fake, _stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    register(&rdam, "jeugdzorg", CHILD).await;
    eventually(20, "the first publish delivered", || store.outbox_depth("utrecht") == 0).await;
    let pinned = virfed::dleq::public_key(&fake.key);
    assert_eq!(store.peer_key("utrecht").unwrap(), Some(pinned), "pinned on first contact");

    let other = BlindKey::random();
    *fake.substitute.lock().unwrap() = Some(other.clone());
    register(&rdam, "jeugdzorg", "123456782").await;
    let counters = rdam.handle.peer_counters().get("utrecht").cloned().unwrap();
    let last_error = || counters.info.lock().unwrap().last_error.clone().unwrap_or_default();
    eventually(20, "answers under another key refused", || last_error().contains("has not announced")).await;
    assert!(store.outbox_depth("utrecht") >= 1, "nothing applied: the publish stays queued");
    assert_eq!(store.peer_key("utrecht").unwrap(), Some(pinned), "the pin does not move");
    let refusals = |r: &RunningRegion| {
        r.handle.store().audit_entries().unwrap().iter().filter(|e| e.detail.contains("has not announced")).count()
    };
    assert!(refusals(&rdam) >= 1, "the refusal is audited");

    // The key announced (as a re-key does, first in its outbox): pinned, and the queued
    // publish goes through under it.
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    let announce = fpb::Item {
        seq: 1,
        body: Some(Body::KeyAnnounce(fpb::KeyAnnounce { public_key: virfed::dleq::public_key(&other).to_vec() })),
    };
    rogue.exchange(request("utrecht", 11, false, vec![announce])).await.unwrap();
    assert_eq!(store.peer_key("utrecht").unwrap(), Some(virfed::dleq::public_key(&other)));
    let announced = store.audit_entries().unwrap();
    assert!(announced.iter().any(|e| e.action == "federation.peer-key" && e.detail.contains("replaces")));
    eventually(30, "the queued publish delivered under the announced key", || store.outbox_depth("utrecht") == 0).await;
    rdam.stop().await.unwrap();
}

/// Item 6 of the v2 threat list: every peer gets its own blinding key, so two colluding
/// peers that compare what they were sent cannot tell which of their children are the
/// same child (points and handles of one child differ per peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_colluding_peers_cannot_link_children_by_point_or_handle() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht", "zwolle"]);
    let ca_dir = files.ca_dir.clone();
    let (utrecht, _stop_u) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let (zwolle, _stop_z) = serve_fake(&ca_dir, "zwolle", peer_listen(&files.regions[2])).await;
    let rdam = start(files.regions.remove(0)).await;
    let children = [CHILD, "123456782", "132650460"];
    for child in children {
        register(&rdam, "jeugdzorg", child).await;
    }
    let store = rdam.handle.store().clone();
    eventually(20, "both peers received every child", || {
        store.outbox_depth("utrecht") == 0 && store.outbox_depth("zwolle") == 0
    })
    .await;
    let sent = |fake: &FakePeer| -> (HashSet<Vec<u8>>, HashSet<Vec<u8>>) {
        fake.items_from("rotterdam")
            .into_iter()
            .filter_map(|i| match i.body {
                Some(Body::Publish(p)) => Some((p.point, p.handle)),
                _ => None,
            })
            .unzip()
    };
    let (u_points, u_handles) = sent(&utrecht);
    let (z_points, z_handles) = sent(&zwolle);
    assert_eq!((u_points.len(), z_points.len()), (children.len(), children.len()), "one publish per child each");
    assert!(u_points.is_disjoint(&z_points), "no point was sent to both peers");
    assert!(u_handles.is_disjoint(&z_handles), "no handle was sent to both peers");
    // Control: the victim keeps one base point per child; the per-peer values come from it.
    assert_eq!(rdam.handle.store().points().unwrap().len(), children.len());
    rdam.stop().await.unwrap();
}

/// A forged re-key: a rogue re-blinds the victim's child to a `D` of its choosing. Without
/// a proof (protocol 1's form) or with a proof that does not hold, it is refused and audited,
/// and no pair forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant9_forged_reblind_is_refused_and_audited() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let ca_dir = files.ca_dir.clone();
    let (fake, _stop) = serve_fake(&ca_dir, "utrecht", peer_listen(&files.regions[1])).await;
    let rdam = start(files.regions.remove(0)).await;
    let mut rogue = peer_client(peer_listen(&rdam.files), &node_material(&ca_dir, "utrecht")).await.unwrap();
    register(&rdam, "jeugdzorg", CHILD).await;
    eventually(20, "rotterdam's publish delivered", || fake.items_from("rotterdam").len() == 1).await;
    let Some(Body::Publish(p)) = &fake.items_from("rotterdam")[0].body else { panic!("expected a publish") };
    let victim_handle = p.handle.clone();
    // The rogue's own child X, indexed at the victim as X·a.
    let (_, x) = point_of("123456782");
    let xa = blinded_by_victim(&mut rogue, 5, &[6u8; 16], &x).await;
    let reblind = |seq, public_key: Vec<u8>, proof: Vec<u8>| fpb::Item {
        seq,
        body: Some(Body::Reblind(fpb::Reblind {
            to_handle: victim_handle.clone(),
            blinded: xa.clone(),
            public_key,
            proof,
        })),
    };
    // Unproven, then with a proof for another statement (the rogue's key, the wrong point).
    let rogue_key = BlindKey::random();
    let context = virfed::dleq::virfed_context("utrecht", "rotterdam", 5).unwrap();
    let wrong = virfed::dleq::prove_blinded(
        &rogue_key,
        &[x.as_slice().try_into().unwrap()],
        &[xa.as_slice().try_into().unwrap()],
        &context,
        &mut rand::thread_rng(),
    )
    .unwrap();
    let items = vec![
        reblind(2, Vec::new(), Vec::new()),
        reblind(3, virfed::dleq::public_key(&rogue_key).to_vec(), wrong.to_bytes().to_vec()),
    ];
    let answer = rogue.exchange(request("utrecht", 5, false, items)).await.unwrap().into_inner();
    assert!(answer.results.iter().all(|r| r.gone), "{answer:?}");
    assert_eq!(audit_count(&rdam, "federation.proof-refused"), 2);
    assert_eq!(audit_count(&rdam, "federation.match"), 0, "no pair from a forged re-key");
    eventually(5, "no contacts queued for the rogue", || rdam.handle.store().outbox_depth("utrecht") == 0).await;
    assert!(!fake.items_from("rotterdam").iter().any(|i| matches!(i.body, Some(Body::Contacts(_)))));
    rdam.stop().await.unwrap();
}

// ---- invariant 2: no peer can test a guessed BSN offline -------------------------------------

fn with_oracle_budget(files: &mut RegionFiles, budget: u64) {
    let text = std::fs::read_to_string(&files.config_path).unwrap();
    assert!(text.contains("\n[federation]\n"));
    let text = text.replacen("\n[federation]\n", &format!("\n[federation]\noracle_budget_per_hour = {budget}\n"), 1);
    std::fs::write(&files.config_path, text).unwrap();
    files.config = Config::load(&files.config_path).unwrap();
    assert_eq!(files.config.federation.as_ref().unwrap().oracle_budget_per_hour, budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_oracle_budget_is_enforced_counted_and_audited() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    with_oracle_budget(&mut files.regions[0], 3);
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    let mut utrecht = peer_client(peer_listen(&rdam.files), &node_material(&files.ca_dir, "utrecht")).await.unwrap();
    let guesses = ["123456782", "047812618", "065444942", "095607481", "132650460"];
    let key = BlindKey::random();
    let probe = |seq: u64, resync: bool| {
        let point = key.blind_bsn(&Bsn::parse(guesses[seq as usize - 1]).unwrap());
        request("utrecht", 42, resync, vec![publish_item(seq, &[seq as u8; 16], &point, true)])
    };
    for seq in 1..=3 {
        utrecht.exchange(probe(seq, false)).await.unwrap();
    }
    let status = utrecht.exchange(probe(4, false)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("budget"), "{}", status.message());
    let counters = &rdam.handle.peer_counters()["utrecht"];
    assert_eq!(counters.budget_rejections.load(std::sync::atomic::Ordering::Relaxed), 1);
    let exceeded: Vec<_> =
        store.audit_entries().unwrap().into_iter().filter(|e| e.action == "federation.budget-exceeded").collect();
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0].actor, "region:utrecht");
    assert_eq!(store.peer_index_len("utrecht"), 3, "the refused publish was not applied");

    // Items that blind nothing are not oracle queries and still pass.
    utrecht.exchange(request("utrecht", 42, false, vec![remove_item(4, &[3; 16])])).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 2);
    // Resync is a separate (bulk) budget, open only with the federation CA's ticket.
    let refused = utrecht.exchange(probe(5, true)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(store.peer_index_len("utrecht"), 2, "no ticket: nothing applied");
    let ticket = virfed::pki::ticket::read_ticket_file(&files.regions[0].dir.join("resync-ticket.pem")).unwrap();
    let with_ticket = fpb::ExchangeRequest { resync_ticket: ticket, ..probe(5, true) };
    utrecht.exchange(with_ticket).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 3);
    assert_eq!(counters.budget_rejections.load(std::sync::atomic::Ordering::Relaxed), 2);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant2_peer_cannot_test_a_guess_offline() {
    // utrecht is down: rotterdam's publish stays in its outbox, exactly as it will be sent.
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    register(&rdam, "jeugdzorg", CHILD).await;
    let bsn = Bsn::parse(CHILD).unwrap();
    let mut queued = rdam.handle.store().outbox_batch::<OutItem>("utrecht", 10).unwrap();
    // A new node first asks its peers for a resync; the publish follows.
    queued.retain(|o| !matches!(o.item, OutItem::ResyncRequest));
    let [out] = queued.as_slice() else { panic!("expected one publish, got {queued:?}") };
    let OutItem::Publish(publish) = &out.item else { panic!("expected a publish, got {out:?}") };
    let point = &publish.point;

    let peer_key = BlindKey::random(); // everything the peer has: its own secret
    let d = peer_key.blind_point(point).unwrap();
    // The point is neither the BSN's hash nor anything the peer can make from a guess.
    assert_ne!(*point, bsn_point(&bsn).compress().to_bytes());
    assert_ne!(*point, peer_key.blind_bsn(&bsn));
    assert_ne!(d, peer_key.blind_bsn(&bsn));
    assert_ne!(d, bsn_point(&bsn).compress().to_bytes());
    // D takes both secrets: with rotterdam's key (never sent anywhere) it is reproduced.
    let rdam_key = BlindKey::load_or_create(&rdam.files.config.blind_key_path()).unwrap();
    assert_eq!(*point, rdam_key.blind_bsn(&bsn));
    assert_eq!(d, rdam_key.blind_point(&peer_key.blind_bsn(&bsn)).unwrap());
    rdam.stop().await.unwrap();
}

// ---- invariant 1: the BSN never leaves its node ----------------------------------------------

/// Every event and span field, at every level and target (including `log` records), as
/// text in a shared buffer. A plain layer without thread-locals of its own: the fmt layer's
/// thread-local buffer panics when a thread logs while its thread-locals are torn down,
/// which aborts the whole test binary.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value} ({value:?})", field.name());
    }
}

impl Capture {
    fn push(&self, line: String) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut line = format!("span {} {}", attrs.metadata().target(), attrs.metadata().name());
        attrs.record(&mut Fields(&mut line));
        self.push(line);
    }
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut line = String::from("record");
        values.record(&mut Fields(&mut line));
        self.push(line);
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Fields(&mut line));
        self.push(line);
    }
}

/// Valid BSNs of the test vectors, as written there (9 digits, or 8 without the leading 0).
fn canaries() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bsn-vectors.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let input = f.next()?;
            (f.next() == Some("valid")).then(|| input.to_owned())
        })
        .collect()
}

/// The canaries found in `hay` as numbers of their own: maximal runs of hex digits that
/// equal a canary, so random hex ids in logs cannot fake a hit. One pass, however many canaries.
fn numbers_in(hay: &[u8], canaries: &HashSet<&[u8]>) -> BTreeSet<String> {
    hay.split(|c| !c.is_ascii_hexdigit())
        .filter(|run| canaries.contains(run))
        .map(|run| String::from_utf8_lossy(run).into_owned())
        .collect()
}

/// The canaries found anywhere in `hay`, as raw bytes (binary files, encodings).
fn substrings_in(hay: &[u8], canaries: &HashSet<&[u8]>) -> BTreeSet<String> {
    let lens: BTreeSet<usize> = canaries.iter().map(|c| c.len()).collect();
    let mut found = BTreeSet::new();
    for i in 0..hay.len() {
        if !hay[i].is_ascii_digit() {
            continue;
        }
        for &n in &lens {
            if let Some(w) = hay.get(i..i + n) {
                if canaries.contains(w) {
                    found.insert(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
    }
    found
}

/// Real rotterdam and utrecht nodes federate with each other and with a fake zwolle, whose
/// server keeps every message they send it as it arrived on the wire. Canary BSNs are
/// registered in both regions (some matching, some not); zwolle publishes some of them, so
/// both real nodes also send it contact exchanges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant1_no_bsn_in_peer_messages_logs_or_peer_data() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = Capture::default();
    tracing_subscriber::registry()
        .with(logs.clone())
        .try_init()
        .expect("only this test installs the global subscriber (which also takes `log` records)");

    let (dir, mut files) = federation_files(&["rotterdam", "utrecht", "zwolle"]);
    let ca_dir = files.ca_dir.clone();
    let (zwolle, _stop) = serve_fake(&ca_dir, "zwolle", peer_listen(&files.regions[2])).await;
    files.regions.truncate(2);
    let utr = start(files.regions.pop().unwrap()).await;
    let rdam = start(files.regions.pop().unwrap()).await;

    let canaries = canaries();
    assert!(canaries.len() >= 40 && canaries.iter().any(|c| c.len() == 8));
    let both: Vec<&String> = canaries.iter().step_by(3).collect();
    // Every child also names a parent (another canary) or two: parent BSNs are covered as
    // child BSNs are (family matches, D11).
    let parents_of = |i: usize| -> Vec<String> {
        let n = canaries.len();
        let mut p = vec![canaries[(i + 7) % n].clone()];
        if i % 2 == 0 {
            p.push(canaries[(i + 11) % n].clone());
        }
        p.retain(|b| Bsn::parse(b).unwrap() != Bsn::parse(&canaries[i]).unwrap());
        p
    };
    for (i, bsn) in canaries.iter().enumerate() {
        for (region, org, skip) in [(&rdam, "jeugdzorg", 2), (&utr, "school", 1)] {
            if i % 3 != skip {
                let mut registration = req_by(bsn, &format!("{org} pro"));
                registration.parent_bsns = parents_of(i);
                region.org_client(org).await.unwrap().register_signal(registration).await.unwrap();
            }
        }
    }
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, region) in [("rotterdam", &rdam), ("utrecht", &utr)] {
        for peer in ["rotterdam", "utrecht", "zwolle"] {
            for out in region.handle.store().outbox_batch::<OutItem>(peer, 10_000).unwrap() {
                seen.push((format!("{name} outbox for {peer} (debug)"), format!("{out:?}").into_bytes()));
                seen.push((format!("{name} outbox for {peer} (postcard)"), postcard::to_stdvec(&out.item).unwrap()));
            }
        }
    }

    // zwolle publishes the children signalled in both regions to both (and some others).
    let zwolle_material = node_material(&ca_dir, "zwolle");
    for region in [&rdam, &utr] {
        let items = canaries
            .iter()
            .enumerate()
            .filter(|(i, _)| match i % 3 {
                0 => true,
                1 => region.files.config.region.as_str() == "utrecht",
                _ => region.files.config.region.as_str() == "rotterdam",
            })
            .map(|(i, bsn)| {
                let point = zwolle.key.blind_bsn(&Bsn::parse(bsn).unwrap());
                publish_item(i as u64 + 1, &[i as u8; 16], &point, true)
            })
            .collect();
        let mut client = peer_client(peer_listen(&region.files), &zwolle_material).await.unwrap();
        client.exchange(request("zwolle", 99, false, items)).await.unwrap();
    }

    let contacts_from =
        |from: &str| zwolle.items_from(from).into_iter().filter(|i| matches!(i.body, Some(Body::Contacts(_)))).count();
    eventually(40, "matches and contact exchanges settle", || {
        notices(&rdam, "jeugdzorg", NoticeKind::MatchCreated, Addressee::Professional) == both.len()
            && notices(&utr, "school", NoticeKind::MatchCreated, Addressee::Professional) == both.len()
            && contacts_from("rotterdam") == both.len()
            && contacts_from("utrecht") == both.len()
            && ["utrecht", "zwolle"].iter().all(|p| rdam.handle.store().outbox_depth(p) == 0)
            && ["rotterdam", "zwolle"].iter().all(|p| utr.handle.store().outbox_depth(p) == 0)
    })
    .await;
    let in_utrecht = (0..canaries.len()).filter(|i| i % 3 != 1).count();
    // Utrecht's children and, once each, their parents (a parent is its own entry).
    let parents_in_utrecht: BTreeSet<String> =
        (0..canaries.len()).filter(|i| i % 3 != 1).flat_map(parents_of).map(|b| format!("{b:0>9}")).collect();
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), in_utrecht + parents_in_utrecht.len());

    for (i, req) in zwolle.received().iter().enumerate() {
        seen.push((format!("wire message {i} from {} (protobuf)", req.from_region), req.encode_to_vec()));
        seen.push((format!("wire message {i} from {} (debug)", req.from_region), format!("{req:?}").into_bytes()));
    }
    for (name, region) in [("rotterdam", &rdam), ("utrecht", &utr)] {
        let store = region.handle.store();
        for (k, v) in store.federation_raw().unwrap() {
            seen.push((format!("{name} federation data"), [k, v].concat()));
        }
        seen.push((format!("{name} audit"), format!("{:?}", store.audit_entries().unwrap()).into_bytes()));
        for org in ["jeugdzorg", "school", "gemeente"] {
            let n = store.notices_after(&OrgId::parse(org).unwrap(), 0, 10_000).unwrap();
            seen.push((format!("{name} notices of {org}"), format!("{n:?}").into_bytes()));
        }
    }
    rdam.stop().await.unwrap();
    utr.stop().await.unwrap();
    let mut paths = Vec::new();
    files_under(dir.path(), &mut paths);
    assert!(paths.iter().any(|p| p.to_string_lossy().contains("utrecht/data")));
    for path in paths {
        seen.push((format!("file {}", path.display()), std::fs::read(&path).unwrap()));
    }

    let logs = logs.0.lock().unwrap().clone();
    assert!(!logs.is_empty(), "no logs captured");
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("rotterdam"), "node logs not captured");
    assert!(text.contains("peer"), "peer traffic logs not captured");
    assert!(text.contains("DEBUG virfed::federation::delivery") && text.contains("TRACE "), "not captured at TRACE");

    let forms: Vec<String> = canaries.iter().flat_map(|b| [b.clone(), format!("{b:0>9}")]).collect();
    let forms: HashSet<&[u8]> = forms.iter().map(|f| f.as_bytes()).collect();
    // The scanners themselves find a canary where one is.
    let probe = format!("x bsn={} 0{}\0", canaries[0], canaries.iter().find(|c| c.len() == 8).unwrap());
    assert_eq!(numbers_in(probe.as_bytes(), &forms).len(), 2);
    assert_eq!(substrings_in(&[b"\xff".as_slice(), probe.as_bytes()].concat(), &forms).len(), 3);
    let mut leaks = BTreeSet::new();
    for bsn in numbers_in(&logs, &forms) {
        leaks.insert(format!("{bsn} in the logs"));
    }
    for (what, bytes) in &seen {
        for bsn in substrings_in(bytes, &forms) {
            leaks.insert(format!("{bsn} in {what}"));
        }
    }
    assert!(leaks.is_empty(), "BSNs left their node: {leaks:#?}");
}

// ---- invariant 7 on the peer API -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_point_and_malformed_items_are_refused_and_change_nothing() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let store = rdam.handle.store().clone();
    let mut utrecht = peer_client(peer_listen(&rdam.files), &node_material(&files.ca_dir, "utrecht")).await.unwrap();
    let (_, good) = point_of(CHILD);
    let (_, other) = point_of("123456782");
    let h = [5u8; 16];
    let ok = |seq| publish_item(seq, &[9; 16], &other, true);
    let mut non_canonical = [0xffu8; 32];
    non_canonical[31] = 0x7f;

    let cases: Vec<(&str, Vec<fpb::Item>)> = vec![
        ("31-byte point", vec![ok(1), publish_item(2, &h, &good[..31], true)]),
        ("33-byte point", vec![ok(1), publish_item(2, &h, &[good.clone(), vec![0]].concat(), true)]),
        ("identity point", vec![ok(1), publish_item(2, &h, &[0; 32], true)]),
        ("invalid encoding", vec![ok(1), publish_item(2, &h, &non_canonical, true)]),
        ("empty point", vec![ok(1), publish_item(2, &h, &[], true)]),
        ("15-byte handle", vec![ok(1), publish_item(2, &h[..15], &good, true)]),
        ("17-byte handle", vec![ok(1), publish_item(2, &[5; 17], &good, true)]),
        ("remove with bad handle", vec![ok(1), remove_item(2, &[])]),
        ("contacts with bad handle", vec![ok(1), contacts_item(2, &h, &h[..8], "school")]),
        ("contacts with bad organisation id", vec![ok(1), contacts_item(2, &h, &h, "")]),
        ("decreasing seq", vec![ok(2), publish_item(1, &h, &good, true)]),
        ("repeated seq", vec![ok(1), publish_item(1, &h, &good, true)]),
        ("seq 0", vec![publish_item(0, &h, &good, true)]),
        ("item without body", vec![ok(1), fpb::Item { seq: 2, body: None }]),
        ("257 items", (1..=257).map(|s| publish_item(s, &h, &good, true)).collect()),
    ];
    for (what, items) in cases {
        let status = utrecht.exchange(request("utrecht", 1, false, items)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
        assert_eq!(store.peer_index_len("utrecht"), 0, "{what} stored something");
    }
    assert_eq!(audit_count(&rdam, "federation.exchange"), 0);
    let counters = &rdam.handle.peer_counters()["utrecht"];
    assert_eq!(counters.items_received.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Nothing advanced the idempotency state either: seq 1 of the same epoch is applied now,
    // and exactly 256 items is the limit, not over it.
    let max: Vec<_> = (1..=256).map(|s| remove_item(s, &h)).collect();
    utrecht.exchange(request("utrecht", 1, false, max)).await.unwrap();
    utrecht.exchange(request("utrecht", 2, false, vec![ok(1)])).await.unwrap();
    assert_eq!(store.peer_index_len("utrecht"), 1);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_version_mismatch_is_reported_clearly() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let mut utrecht = peer_client(peer_listen(&rdam.files), &node_material(&files.ca_dir, "utrecht")).await.unwrap();
    let (_, point) = point_of(CHILD);
    let mut req = request("utrecht", 1, false, vec![publish_item(1, &[1; 16], &point, true)]);
    req.protocol_version = 99;
    let status = utrecht.exchange(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let msg = status.message();
    assert!(msg.contains("99") && msg.contains(&PROTOCOL_VERSION.to_string()), "{msg}");
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 0);
    assert_eq!(audit_count(&rdam, "federation.exchange"), 0);
    rdam.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_one_minor_version_apart_interoperate() {
    let (_dir, mut files) = federation_files(&["rotterdam", "utrecht"]);
    let rdam = start(files.regions.remove(0)).await;
    let mut utrecht = peer_client(peer_listen(&rdam.files), &node_material(&files.ca_dir, "utrecht")).await.unwrap();
    let (_, point) = point_of(CHILD);
    // A newer minor version may carry item kinds this node does not know (a body it
    // cannot decode): acknowledged, not applied; the known items around it apply.
    let unknown = fpb::Item { seq: 2, body: None };
    let mut newer = request("utrecht", 1, false, vec![publish_item(1, &[1; 16], &point, true), unknown.clone()]);
    newer.protocol_minor = virfed::federation::PROTOCOL_MINOR + 1;
    let answer = utrecht.exchange(newer).await.unwrap().into_inner();
    assert_eq!(answer.results.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rdam.handle.store().peer_index_len("utrecht"), 1);
    // From a node of the same minor version, an item without a body is malformed.
    let same = request("utrecht", 1, false, vec![fpb::Item { seq: 3, body: None }]);
    assert_eq!(utrecht.exchange(same).await.unwrap_err().code(), Code::InvalidArgument);
    rdam.stop().await.unwrap();
}
