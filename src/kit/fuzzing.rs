//! What the fuzz targets (`fuzz/fuzz_targets/`, issue 11, part 3) run on their bytes, one
//! function per target, shared with the stable seed test (`tests/fuzz_seeds.rs`) so both
//! drive exactly the same code. Every place bytes from outside enter: the node config,
//! certificate identity, CRL loading, the peer `Exchange` request (decoded and validated,
//! and applied to a real store), the client and admin API requests, the BRP's answer and
//! the backup file. Each returns whether the input was accepted (the tests check that the
//! seeds reach past the first refusal); a finding is a panic.
//!
//! [`ExchangeTarget`] is the node `exchange_apply` sends its bytes to: region rotterdam,
//! on a real sled store in a temporary directory, with utrecht as its one peer. Two
//! children are registered, one of them with two parents, and utrecht has answered their
//! publishes (played here in-process with a fixed key, as its delivery answer would be
//! applied), so a publish of utrecht's for the same child or parent completes a pair: the
//! seeds ([`ExchangeTarget::seeds`]) reach the pair, contacts, state, remove and
//! party-gone paths, not only decoding. Each input is one `Exchange` request, decoded,
//! validated and applied exactly as the peer API does once the caller is identified
//! ([`PeerService::exchange_identified`]). The store is kept from one input to the next,
//! as a node's is from one exchange to the next: a replayed (epoch, seq) is answered as a
//! replay.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{Datelike, Days, Months, NaiveDate};
use prost::Message;

use crate::api::convert;
use crate::brp::{read_answer, read_token_answer, Parents, MAX_TOKEN_LIFETIME};
use crate::config::{Config, FamilySource};
use crate::pb::{admin as admin_pb, client as client_pb};
use crate::pki::{client_config, identity_from_cert, server_config, write_cert_pair, Ca, CertSpec, TlsMaterial};

use crate::domain::bucket::Limit;
use crate::domain::{Bsn, Clock, NoticeKind, OrgDomain, OrgId, Organisation, RegionId, SystemClock};
use crate::federation::pairs::Pairs;
use crate::federation::service::PeerService;
use crate::federation::{Federation, FederationError, ItemAnswer, OutItem, PeerCounters};
use crate::pb::federation as pb;
use crate::pseudonym::{BlindKey, Blinded, LocalKey};
use crate::registry::family::NewParent;
use crate::registry::{NewSignal, Registry};
use crate::store::{Outgoing, Store, StoreOptions};

use super::fixture::contact;
use super::{KitError, KitResult};

fn fail(message: impl Into<String>) -> KitError {
    KitError::Failed(message.into())
}

/// A temporary directory for a target's files, in memory (`/dev/shm`) where there is one:
/// a store's every write ends in an fsync, which on a disk would make the fuzzer measure
/// the disk. The files are the same sled files; only their durability is not under test.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return tempfile::tempdir();
    }
    // A target kept for the whole run (a static) is never dropped, and libFuzzer ends
    // with exit(): the directories of runs that have ended are removed here instead.
    for entry in std::fs::read_dir(shm)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("virfed-fuzz-").and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new().prefix(&format!("virfed-fuzz-{}-", std::process::id())).tempdir_in(shm)
}

/// `config`: the node config parser.
pub fn config(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| Config::parse(text).is_ok())
}

/// `cert_identity`: the identity (region, organisation, operator) in a peer's certificate.
pub fn cert_identity(der: &[u8]) -> bool {
    identity_from_cert(&rustls::pki_types::CertificateDer::from(der.to_vec())).is_ok()
}

/// `exchange_request`: a peer's request decoded, and each item validated as the peer API
/// does before anything is applied. Returns the number of valid items.
pub fn exchange_request(bytes: &[u8]) -> usize {
    let Ok(request) = pb::ExchangeRequest::decode(bytes) else { return 0 };
    let from = RegionId::parse("utrecht").expect("a valid region");
    let newer = request.protocol_minor > crate::federation::PROTOCOL_MINOR;
    request
        .items
        .into_iter()
        .filter(|i| crate::federation::convert::item_in(i.body.clone(), &from, newer).is_ok())
        .count()
}

/// `backup_reader`: `virfed store restore` of the bytes into an empty directory.
pub fn backup_reader(bytes: &[u8]) -> bool {
    let dir = scratch_dir().expect("a temp dir");
    let file = dir.path().join("backup.vfb");
    std::fs::write(&file, bytes).expect("writing the input");
    crate::store::backup::restore(&dir.path().join("store"), &file, false).is_ok()
}

/// The message must not hold a BSN field's value (one with enough digits to be a number,
/// however it was written: `123 456 789` is checked as `123456789`), nor any run of 8
/// digits.
fn assert_quiet(message: &str, bsn_fields: &[String]) {
    let squeeze = |text: &str| text.chars().filter(|c| !matches!(c, ' ' | '.' | '-')).collect::<String>();
    let said = squeeze(message);
    // Only a field that could be a BSN counts: fixed text the fuzzer happens to send
    // ("the digits") is not a leak.
    let numbers =
        bsn_fields.iter().map(|v| squeeze(v)).filter(|v| v.len() >= 8 && v.bytes().all(|b| b.is_ascii_digit()));
    for value in numbers {
        assert!(!said.contains(&value), "a refusal quotes a BSN field: {message}");
    }
    assert!(longest_digit_run(message) < 8, "a refusal prints a BSN-like number: {message}");
}

/// A child's age on `on`: the birthdays passed.
fn full_years(date_of_birth: NaiveDate, on: NaiveDate) -> i32 {
    let before_birthday = (on.month(), on.day()) < (date_of_birth.month(), date_of_birth.day());
    on.year() - date_of_birth.year() - i32::from(before_birthday)
}

/// The longest run of consecutive ASCII digits in `text` (a date has runs of four).
pub fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
}

/// `client_request`: the client and admin APIs' request conversion and validation
/// (invariant 7; D3, D4, D7, D9, D11). The first byte picks the request (and, for a
/// registration, where the region's parents come from), the rest is its protobuf. A
/// valid registration keeps the rules; no refusal quotes a BSN sent in a BSN field (the
/// message reaches logs).
pub fn client_request(bytes: &[u8]) -> bool {
    let Some((&kind, body)) = bytes.split_first() else { return false };
    let today = NaiveDate::from_ymd_opt(2026, 12, 4).expect("a date");
    match kind % 5 {
        0 | 1 => {
            let Ok(r) = client_pb::RegisterSignalRequest::decode(body) else { return false };
            let mut fields = vec![r.bsn.clone()];
            fields.extend(r.parent_bsns.iter().cloned());
            let family = [FamilySource::Request, FamilySource::Brp, FamilySource::Off][usize::from(kind / 5 % 3)];
            match convert::registration_in(r, family, today) {
                Ok(reg) => {
                    assert!(reg.parents.len() <= 2, "at most two parents (D11)");
                    assert!(!reg.parents.contains(&reg.bsn), "the child is not its own parent");
                    // Checked by counting birthdays, not with the rules' own date helpers.
                    assert!(reg.date_of_birth <= today && full_years(reg.date_of_birth, today) < 23, "D3: under 23");
                    let two_years_on = today.checked_add_months(Months::new(24)).expect("a date");
                    assert!(today < reg.removal_date && reg.removal_date <= two_years_on, "D4: two years at most");
                    assert!(
                        family == FamilySource::Request || reg.parents.is_empty(),
                        "parents only from the request's region"
                    );
                    true
                }
                Err(e) => {
                    assert_quiet(&e.to_string(), &fields);
                    false
                }
            }
        }
        2 => {
            let Ok(r) = client_pb::WithdrawSignalRequest::decode(body) else { return false };
            match convert::withdrawal_in(&r) {
                Ok(_) => true,
                Err(e) => {
                    // A BSN pasted into a text field is not quoted back either.
                    assert_quiet(&e.to_string(), std::slice::from_ref(&r.signal_id));
                    false
                }
            }
        }
        3 => {
            let Ok(r) = client_pb::EraseChildRequest::decode(body) else { return false };
            match Bsn::parse(&r.bsn) {
                Ok(_) => true,
                Err(e) => {
                    assert_quiet(&e.to_string(), &[r.bsn]);
                    false
                }
            }
        }
        _ => {
            let Ok(r) = admin_pb::Organisation::decode(body) else { return false };
            let fields = [r.id.clone(), r.domain.clone()];
            match convert::organisation_in(r) {
                Ok(_) => true,
                Err(e) => {
                    assert_quiet(&e.to_string(), &fields);
                    false
                }
            }
        }
    }
}

/// Seeds for [`client_request`]: a registration with parents, one with a removal date, a
/// withdrawal, an erasure, an organisation.
pub fn client_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |kind: u8, body: Vec<u8>| [vec![kind], body].concat();
    let mut dated = super::fixture::register_request(CHILDREN[1], "R de Vries", "r.devries@example.nl");
    dated.removal_date = "2027-06-01".into();
    let c = contact("C Jansen", "coordinator", "c.jansen@school.example.nl");
    vec![
        (
            "register-with-parents",
            with(
                0,
                super::fixture::register_with_parents(CHILDREN[0], &PARENTS, "R de Vries", "r@example.nl")
                    .encode_to_vec(),
            ),
        ),
        ("register-removal-date", with(0, dated.encode_to_vec())),
        (
            "withdraw",
            with(
                2,
                client_pb::WithdrawSignalRequest {
                    signal_id: "9f1c2a4e-8b3d-4e5f-a6b7-c8d9e0f1a2b3".into(),
                    reason: client_pb::WithdrawReason::ConcernResolved as i32,
                    withdrawn_by: client_pb::Withdrawer::Coordinator as i32,
                }
                .encode_to_vec(),
            ),
        ),
        ("erase", with(3, client_pb::EraseChildRequest { bsn: CHILDREN[0].into() }.encode_to_vec())),
        (
            "organisation",
            with(
                4,
                admin_pb::Organisation {
                    id: "school".into(),
                    name: "School Utrecht".into(),
                    domain: "education".into(),
                    coordinator: Some(admin_pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
                }
                .encode_to_vec(),
            ),
        ),
    ]
}

/// A marker put in place of an answer's access token (`brp_answer`).
const TOKEN_CANARY: &str = "canary-token-not-to-be-quoted";

/// `brp_answer`: an answer body from the BRP side, bytes from an outside system, read both
/// as the Personen answer (Haal Centraal BRP Personen, `RaadpleegMetBurgerservicenummer`)
/// and as the OAuth token endpoint's answer (RFC 6749 §5.1). Parents are valid BSNs, at
/// most two, never the child; no error quotes a run of 9 digits of the answer; a token is
/// a sensitive `Bearer` value used for a bounded time, and no error quotes it. True when
/// either reading accepts the bytes.
pub fn brp_answer(bytes: &[u8]) -> bool {
    let child = Bsn::parse("111222333").expect("a valid BSN");
    let personen = match read_answer(&child, bytes, &AtomicU64::new(0)) {
        Ok(Parents::Found(parents)) => {
            assert!(parents.len() <= 2, "at most two parents");
            assert!(!parents.contains(&child), "the child is not its own parent");
            true
        }
        Ok(Parents::NotFound) => true,
        Err(e) => {
            let message = e.to_string();
            for run in bytes.split(|b| !b.is_ascii_digit()).filter(|r| r.len() >= 9) {
                let run = String::from_utf8_lossy(run);
                assert!(!message.contains(&*run), "the error quotes the answer: {message}");
            }
            false
        }
    };
    let token = match read_token_answer(bytes) {
        Ok((value, lifetime)) => {
            assert!(value.is_sensitive() && value.as_bytes().starts_with(b"Bearer "), "a sensitive Bearer value");
            assert!(lifetime <= MAX_TOKEN_LIFETIME, "the token's lifetime is bounded");
            true
        }
        Err(_) => {
            // The same answer with a marker as its access token: no refusal shows it (unless
            // the answer holds the marker elsewhere already).
            let holds_marker = String::from_utf8_lossy(bytes).contains(TOKEN_CANARY);
            let parsed = serde_json::from_slice(bytes).ok().filter(|_| !holds_marker);
            if let Some(serde_json::Value::Object(mut answer)) = parsed {
                if answer.get("access_token").is_some_and(serde_json::Value::is_string) {
                    answer.insert("access_token".into(), TOKEN_CANARY.into());
                    let marked = serde_json::to_vec(&answer).expect("a JSON object serialises");
                    if let Err(e) = read_token_answer(&marked) {
                        assert!(!e.to_string().contains(TOKEN_CANARY), "the error quotes the access token: {e}");
                    }
                }
            }
            false
        }
    };
    personen || token
}

/// `crl`: a node's `[tls] crls` file read as the node reads it
/// ([`TlsMaterial::from_files`]), then the server and client TLS configurations built
/// with it (the webpki CRL parse). The first byte picks how the rest is used: as the file
/// itself, or as DER in an `X509 CRL` PEM block (so the DER parser is reached without the
/// fuzzer guessing base64).
pub struct CrlTarget {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: PathBuf,
}

impl CrlTarget {
    /// A CA and a node certificate to load the CRL with.
    pub fn new() -> KitResult<CrlTarget> {
        let dir = scratch_dir()?;
        let ca = Ca::init(&dir.path().join("ca"), "virfed fuzz CA", 365)?;
        let issued = ca.issue(&CertSpec::server(vec!["localhost".into()], 30))?;
        write_cert_pair(dir.path(), "node", &issued, false)?;
        Ok(CrlTarget {
            ca: dir.path().join("ca/ca.pem"),
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node.key"),
            crl: dir.path().join("crl.pem"),
            _dir: dir,
        })
    }

    /// A CRL of this target's CA revoking one serial (a seed).
    pub fn sample_crl(&self) -> KitResult<String> {
        let ca = Ca::load(self.ca.parent().ok_or_else(|| fail("the CA directory"))?)?;
        Ok(ca.revocation_list(&[vec![0x42, 0x17]], 7)?)
    }

    /// One input: whether the CRL loaded and both configurations were built.
    pub fn load(&self, bytes: &[u8]) -> bool {
        let Some((&mode, rest)) = bytes.split_first() else { return false };
        let pem = match mode & 1 {
            0 => rest.to_vec(),
            _ => format!(
                "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rest)
            )
            .into_bytes(),
        };
        std::fs::write(&self.crl, &pem).expect("writing the input");
        let Ok(material) = TlsMaterial::from_files(&self.ca, &self.cert, &self.key, std::slice::from_ref(&self.crl))
        else {
            return false;
        };
        let server = server_config(&material).is_ok();
        client_config(&material).is_ok() && server
    }
}

/// The children rotterdam has signals on (valid test BSNs), and the parents of the first.
pub const CHILDREN: [&str; 2] = ["111222333", "123456782"];
pub const PARENTS: [&str; 2] = ["047812618", "065444942"];
/// The epoch of the seeds' requests.
pub const EPOCH: u64 = 0x5eed;
/// rotterdam's reporting organisation.
pub const ORG: &str = "jeugdzorg";

/// utrecht's reporting school, as its node sends it.
fn utrecht_party() -> pb::Party {
    pb::Party {
        organisation_id: "school".into(),
        organisation_name: "School Utrecht".into(),
        organisation_domain: "education".into(),
        professional: Some(pb::Contact {
            name: "U Bakker".into(),
            role: "mentor".into(),
            phone: "+31 30 123 4567".into(),
            email: "u.bakker@school-utrecht.example.nl".into(),
        }),
        coordinator: None,
    }
}

/// utrecht's blinding key (fixed, so the seeds stay valid from run to run).
fn utrecht_key() -> BlindKey {
    BlindKey::from_bytes([7; 32]).expect("a canonical non-zero scalar")
}

/// rotterdam's node as both exchange targets start it: a store in scratch memory, its
/// keys and federation with utrecht, its organisation and signals registered, and its
/// first batch towards utrecht as the delivery task sends it (four publishes, their
/// points under its key towards utrecht).
struct Rotterdam {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    store: Store,
    local: LocalKey,
    blind: BlindKey,
    federation: Federation,
    batch: Vec<Outgoing<OutItem>>,
    /// The batch's points as sent, decoded (for a proof) and encoded.
    published: Vec<curve25519_dalek::ristretto::RistrettoPoint>,
    sent: Vec<Blinded>,
}

impl Rotterdam {
    fn open() -> KitResult<Rotterdam> {
        let dir = scratch_dir()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let store = Store::open(&dir.path().join("store"), &StoreOptions::default())?;
        let local = LocalKey::from_bytes([3; 32]);
        let blind = BlindKey::from_bytes([5; 32]).expect("a canonical non-zero scalar");
        let federation =
            Federation::new(store.clone(), Pairs::new(vec!["utrecht".into()], local.clone(), Some(&blind)));
        let registry = Registry::with_federation(store.clone(), Arc::new(federation.pairs().clone()));
        runtime.block_on(register_rotterdam(&registry, &local, &blind, &SystemClock))?;
        let mut batch = store.outbox_batch::<OutItem>("utrecht", 64)?;
        let published = crate::federation::delivery::towards_peer(&blind.towards("utrecht"), &mut batch)
            .map_err(|_| fail("a stored point does not decode"))?;
        let sent: Vec<Blinded> = batch.iter().filter_map(|o| o.item.publish().map(|p| p.point)).collect();
        if sent.len() != CHILDREN.len() + PARENTS.len() {
            return Err(fail(format!("expected 4 publishes towards utrecht, found {}", sent.len())));
        }
        Ok(Rotterdam { dir, runtime, store, local, blind, federation, batch, published, sent })
    }
}

/// rotterdam's organisation and its signals: both children, the first with both parents
/// (so its outbox towards utrecht holds four publishes).
async fn register_rotterdam(
    registry: &Registry,
    local: &LocalKey,
    blind: &BlindKey,
    clock: &dyn Clock,
) -> KitResult<()> {
    let org = Organisation {
        id: OrgId::parse(ORG).map_err(|e| fail(e.to_string()))?,
        name: "Jeugdzorg Rotterdam".into(),
        domain: "youth-care".parse::<OrgDomain>().map_err(|e| fail(e.to_string()))?,
        coordinator: None,
    };
    registry.put_org(&org, "operator:fuzz", clock.now()).await?;
    let today = clock.today();
    for (i, text) in CHILDREN.iter().enumerate() {
        let bsn = Bsn::parse(text).map_err(|e| fail(e.to_string()))?;
        let parents: Vec<Bsn> = match i {
            0 => PARENTS.iter().map(|p| Bsn::parse(p).map_err(|e| fail(e.to_string()))).collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let new = NewSignal {
            child: local.child_key(&bsn),
            org: org.id.clone(),
            professional: contact("R de Vries", "jeugdconsulent", "r.devries@jeugdzorg-rotterdam.example.nl"),
            date_of_birth: today.checked_sub_days(Days::new(3650)).ok_or_else(|| fail("a date"))?,
            removal_date: today.checked_add_days(Days::new(365)).ok_or_else(|| fail("a date"))?,
            now: clock.now(),
            point: Some(blind.blind_bsn(&bsn)),
            parents: parents
                .iter()
                .map(|p| NewParent { key: local.parent_key(p), point: Some(blind.blind_parent(p)) })
                .collect(),
            lookup: None,
        };
        registry.register(&new, &format!("org:{ORG}")).await?;
    }
    Ok(())
}

/// The node under fuzzing and its runtime.
pub struct ExchangeTarget {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    service: PeerService,
    store: Store,
    utrecht: RegionId,
    /// rotterdam's handles towards utrecht for its first child and that child's first
    /// parent (a parent's handle is the child handle function over the parent key).
    own_handles: [Vec<u8>; 2],
    /// Every handle rotterdam published towards utrecht (its children and parents).
    published: HashSet<Vec<u8>>,
    /// `P·u·r_utrecht` for each of rotterdam's children and parents (`r_utrecht`: its key
    /// towards utrecht): the only values a publish
    /// from utrecht can match, so the only ones an answer may carry contacts for.
    matchable: HashSet<[u8; 32]>,
}

impl ExchangeTarget {
    /// Opens the store, registers the children and applies utrecht's answers to their
    /// publishes.
    pub fn new() -> KitResult<ExchangeTarget> {
        let Rotterdam { dir, runtime, store, local, blind, federation, batch, sent, .. } = Rotterdam::open()?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let utrecht = RegionId::parse("utrecht").map_err(|e| fail(e.to_string()))?;
        // utrecht answers every publish as its honest delivery answer would: the point as
        // published to it, times its key.
        let mut answers = utrecht_key().blind_points(&sent).map_err(|_| fail("a published point"))?.into_iter();
        let mut handles = Vec::new();
        let mut delivered = Vec::new();
        for out in batch {
            let blinded = match out.item.publish() {
                Some(p) => {
                    handles.push(p.handle.to_vec());
                    answers.next()
                }
                None => None,
            };
            let answer = ItemAnswer {
                seq: out.seq,
                blinded,
                gone: false,
                contacts: Vec::new(),
                contacts_archived: false,
                resync_requested: false,
                as_of: 0,
            };
            delivered.push((out, answer));
        }
        runtime.block_on(federation.apply_delivery("utrecht", delivered, None))?;
        let first = Bsn::parse(CHILDREN[0]).map_err(|e| fail(e.to_string()))?;
        let parent = Bsn::parse(PARENTS[0]).map_err(|e| fail(e.to_string()))?;
        let own_handles = [
            local.handle("utrecht", &local.child_key(&first)).to_vec(),
            local.handle("utrecht", &crate::domain::ChildKey(local.parent_key(&parent).0)).to_vec(),
        ];
        if !own_handles.iter().all(|h| handles.contains(h)) {
            return Err(fail("the first child or its parent was not published"));
        }
        let (key, towards) = (utrecht_key(), blind.towards("utrecht"));
        let mut matchable = HashSet::new();
        for text in CHILDREN.iter().chain(PARENTS.iter()) {
            let bsn = Bsn::parse(text).map_err(|e| fail(e.to_string()))?;
            for point in [key.blind_bsn(&bsn), key.blind_parent(&bsn)] {
                matchable.insert(towards.key().blind_point(&point).map_err(|_| fail("a valid point"))?);
            }
        }
        let blinds = HashSet::from(["utrecht".to_owned()]);
        let counters = Arc::new([("utrecht".to_owned(), Arc::new(PeerCounters::default()))].into_iter().collect());
        let generous = Limit::per_hour(1 << 40, 1 << 40);
        let service = PeerService::new(
            federation,
            "rotterdam".into(),
            dir.path().join("node.pem"),
            dir.path().join("ca.pem"),
            blind,
            blinds,
            generous,
            generous,
            counters,
            clock,
        );
        let published = handles.into_iter().collect();
        Ok(ExchangeTarget { _dir: dir, runtime, service, store, utrecht, own_handles, published, matchable })
    }

    /// One input: `None` when the bytes are not an `ExchangeRequest`, else the answer or
    /// the refusal. Panics (the fuzzer's finding) if an answer is not an answer to the
    /// request (a result for an item not sent, a blinded value for a non-publish) or hands
    /// out contacts it must not: for a publish that matches none of rotterdam's children
    /// and parents, for a Contacts item about a handle rotterdam never published, or for
    /// any other item (invariants 3 and 9: no contacts for a child the node does not have).
    pub fn apply(&self, bytes: &[u8]) -> Option<Result<pb::ExchangeResponse, FederationError>> {
        use pb::item::Body;
        let request = pb::ExchangeRequest::decode(bytes).ok()?;
        let mut sent: std::collections::HashMap<u64, Vec<Body>> = std::collections::HashMap::new();
        for item in &request.items {
            sent.entry(item.seq).or_default().extend(item.body.clone());
        }
        let answer = self.runtime.block_on(self.service.exchange_identified(&self.utrecht, request));
        if let Ok(response) = &answer {
            for r in &response.results {
                let bodies = sent.get(&r.seq);
                assert!(bodies.is_some(), "a result for item {} that was not sent", r.seq);
                let bodies = bodies.map(Vec::as_slice).unwrap_or_default();
                let publish = bodies.iter().any(|b| matches!(b, Body::Publish(_)));
                assert!(r.blinded.is_empty() || publish, "a blinded value for a non-publish");
                if r.contacts.is_empty() {
                    continue;
                }
                let allowed = bodies.iter().any(|b| match b {
                    Body::Publish(_) => {
                        <[u8; 32]>::try_from(r.blinded.as_slice()).is_ok_and(|d| self.matchable.contains(&d))
                    }
                    Body::Contacts(c) => self.published.contains(&c.to_handle),
                    _ => false,
                });
                assert!(allowed, "contacts in the answer to item {}, which matches no child of mine", r.seq);
            }
        }
        Some(answer)
    }

    /// "Match created" and "family match created" notices rotterdam's organisation has
    /// had: the child and family pairs the inputs formed.
    pub fn matches_notified(&self) -> (usize, usize) {
        let org = OrgId::parse(ORG).expect("a valid org id");
        let notices = self.store.notices_after(&org, 0, 100_000).unwrap_or_default();
        let count = |kind| notices.iter().filter(|(_, n)| n.kind == kind).count();
        (count(NoticeKind::MatchCreated), count(NoticeKind::FamilyMatchCreated))
    }

    /// Requests a real utrecht could send: publishes of the same children and a parent
    /// (completing child and family pairs), then contacts, a state change, a party gone
    /// and a remove for them, a key announcement, a bad point. Deterministic, so the
    /// committed seed files can be checked against them.
    pub fn seeds(&self) -> Vec<(&'static str, Vec<u8>)> {
        let key = utrecht_key();
        let bsn = |t: &str| Bsn::parse(t).expect("a valid test BSN");
        let item = |seq, body| pb::Item { seq, body: Some(body) };
        let publish = |handle: u8, point: [u8; 32], active| {
            pb::item::Body::Publish(pb::Publish { handle: vec![handle; 16], point: point.to_vec(), active })
        };
        let party = utrecht_party();
        let contacts = |from: u8, to: &[u8]| {
            pb::item::Body::Contacts(pb::Contacts {
                from_handle: vec![from; 16],
                to_handle: to.to_vec(),
                archived: false,
                parties: vec![party.clone()],
            })
        };
        let request = |epoch, items: Vec<pb::Item>| {
            pb::ExchangeRequest {
                protocol_version: crate::federation::PROTOCOL_VERSION,
                protocol_minor: crate::federation::PROTOCOL_MINOR,
                from_region: "utrecht".into(),
                epoch,
                resync: false,
                resync_ticket: Vec::new(),
                items,
            }
            .encode_to_vec()
        };
        let child = key.blind_bsn(&bsn(CHILDREN[0]));
        let other = key.blind_bsn(&bsn(CHILDREN[1]));
        let parent = key.blind_parent(&bsn(PARENTS[0]));
        let own = &self.own_handles;
        vec![
            ("child-pair", request(EPOCH, vec![item(1, publish(1, child, true))])),
            (
                "child-pair-contacts-state-remove",
                request(
                    EPOCH + 1,
                    vec![
                        item(1, publish(1, child, true)),
                        item(2, contacts(1, &own[0])),
                        item(3, pb::item::Body::State(pb::State { handle: vec![1; 16], active: false })),
                        item(4, pb::item::Body::State(pb::State { handle: vec![1; 16], active: true })),
                        item(
                            5,
                            pb::item::Body::PartyGone(pb::PartyGone {
                                from_handle: vec![1; 16],
                                to_handle: own[0].clone(),
                                organisation_id: "school".into(),
                            }),
                        ),
                        item(6, pb::item::Body::Remove(pb::Remove { handle: vec![1; 16] })),
                    ],
                ),
            ),
            (
                "family-pair",
                request(
                    EPOCH + 2,
                    vec![
                        item(1, publish(2, parent, true)),
                        item(2, contacts(2, &own[1])),
                        item(3, publish(3, other, false)),
                    ],
                ),
            ),
            (
                "key-announce-resync-request",
                request(
                    EPOCH + 3,
                    vec![
                        item(
                            1,
                            pb::item::Body::KeyAnnounce(pb::KeyAnnounce {
                                public_key: crate::dleq::public_key(&key).to_vec(),
                            }),
                        ),
                        item(2, pb::item::Body::ResyncRequest(pb::ResyncRequest {})),
                    ],
                ),
            ),
            ("bad-point", request(EPOCH + 4, vec![item(1, publish(4, [9; 32], true))])),
        ]
    }
}

/// `exchange_answer`: the peer's answer to this node's exchange, bytes from a peer that may
/// be compromised, read as the delivery task reads it (`delivery::answers_in`): each result
/// paired with the item it answers, contacts validated, the one DLEQ proof checked under
/// the key pinned for utrecht. Nothing is applied (the batch would be gone after the first
/// accepted answer); the verified answers go to the same `apply_delivery` the other tests
/// drive. Panics (a finding) if an accepted answer carries a blinded value other than the
/// honest one: no forged value gets past the proof.
pub struct AnswerTarget {
    _dir: tempfile::TempDir,
    batch: Vec<Outgoing<OutItem>>,
    /// The batch's publishes as sent (`P·k_utrecht`), decoded, for the proof.
    published: Vec<curve25519_dalek::ristretto::RistrettoPoint>,
    /// The same, encoded, and utrecht's honest answers to them (`P·k_utrecht·u`).
    sent: Vec<Blinded>,
    honest: Vec<Blinded>,
    utrecht: RegionId,
}

impl AnswerTarget {
    /// rotterdam's node with its two children registered, and its first batch towards
    /// utrecht (four publishes), as the delivery task would send it.
    pub fn new() -> KitResult<AnswerTarget> {
        let Rotterdam { dir, batch, published, sent, .. } = Rotterdam::open()?;
        let honest = utrecht_key().blind_points(&sent).map_err(|_| fail("a published point"))?;
        let utrecht = RegionId::parse("utrecht").map_err(|e| fail(e.to_string()))?;
        Ok(AnswerTarget { _dir: dir, batch, published, sent, honest, utrecht })
    }

    /// One input: `None` when the bytes are not an `ExchangeResponse`, else whether the
    /// answer was accepted.
    pub fn read(&self, bytes: &[u8]) -> Option<bool> {
        let response = pb::ExchangeResponse::decode(bytes).ok()?;
        let pinned = Some(crate::dleq::public_key(&utrecht_key()));
        let read = crate::federation::delivery::answers_in(
            self.batch.clone(),
            response,
            &self.published,
            pinned,
            &self.utrecht,
            "rotterdam",
            EPOCH,
        );
        let Ok((delivered, new_key)) = read else { return Some(false) };
        assert!(new_key.is_none(), "a key is pinned already: nothing new to pin");
        let answered: Vec<Option<Blinded>> =
            delivered.iter().filter(|(out, _)| out.item.publish().is_some()).map(|(_, a)| a.blinded).collect();
        for (answer, honest) in answered.iter().zip(&self.honest) {
            assert_eq!(
                answer.as_ref(),
                Some(honest),
                "an accepted answer carries a blinded value utrecht did not make"
            );
        }
        Some(true)
    }

    /// utrecht's honest answers: without and with contacts for the first child; and one
    /// forgery (two answers swapped under the honest proof), which must be refused.
    pub fn seeds(&self) -> Vec<(&'static str, Vec<u8>)> {
        let key = utrecht_key();
        let context = crate::dleq::virfed_context("utrecht", "rotterdam", EPOCH).expect("a context");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9497);
        let proof = crate::dleq::prove_blinded(&key, &self.sent, &self.honest, &context, &mut rng)
            .expect("a proof of honest answers")
            .to_bytes()
            .to_vec();
        let answer = |blinded: &[Blinded], contacts: Vec<pb::Party>| {
            let mut ds = blinded.iter();
            let mut first = Some(contacts);
            let results = self
                .batch
                .iter()
                .map(|out| match out.item.publish() {
                    Some(_) => pb::ItemResult {
                        seq: out.seq,
                        blinded: ds.next().map(|d| d.to_vec()).unwrap_or_default(),
                        contacts: first.take().unwrap_or_default(),
                        ..pb::ItemResult::default()
                    },
                    None => pb::ItemResult { seq: out.seq, ..pb::ItemResult::default() },
                })
                .collect();
            pb::ExchangeResponse {
                results,
                public_key: crate::dleq::public_key(&key).to_vec(),
                proof: proof.clone(),
                as_of_seq: 1,
            }
            .encode_to_vec()
        };
        let party = utrecht_party();
        let mut swapped = self.honest.clone();
        swapped.swap(0, 1);
        vec![
            ("honest", answer(&self.honest, Vec::new())),
            ("honest-with-contacts", answer(&self.honest, vec![party])),
            ("forged-swapped", answer(&swapped, Vec::new())),
        ]
    }
}
