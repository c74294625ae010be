//! Family matches (D11): signals on different children who share a parent, in one region
//! and across regions. Real nodes on loopback, real mTLS, real sled; readiness is awaited
//! on watch streams, never by sleeping. Where a double notice would be a bug, a test checks
//! that nothing more arrives for a while.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use prost::Message;
use tokio_stream::StreamExt;
use virfed::domain::{Clock, ManualClock, SystemClock};
use virfed::kit::fixture::{register_with_parents, FederationFiles, RunningRegion, MATCH_OFFICER_ORG};
use virfed::pb::client as pb;

use common::{email_of, files_under, keys, party_key, set};

const STEP: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(700);

/// A valid BSN (D9) per seed, distinct per seed (8 + check digit).
fn bsn(seed: u32) -> String {
    let mut n = 20_000_000 + seed * 100;
    loop {
        let digits: Vec<u32> = format!("{n:08}").chars().map(|c| c.to_digit(10).unwrap()).collect();
        let sum: u32 = digits.iter().zip((2..=9).rev()).map(|(d, w)| d * w).sum();
        let check = sum % 11;
        if check < 10 {
            return format!("{n:08}{check}");
        }
        n += 1;
    }
}

/// A registration of `child` with `parents` by professional `who` (unique e-mail).
fn req(child: &str, parents: &[&str], who: &str) -> pb::RegisterSignalRequest {
    register_with_parents(child, parents, who, &email_of(who))
}

struct Watcher {
    who: String,
    stream: tonic::Streaming<pb::Notice>,
}

impl Watcher {
    async fn open(region: &RunningRegion, org: &str) -> Watcher {
        let mut client = region.org_client(org).await.unwrap();
        let stream = client.watch(pb::WatchRequest { after_cursor: 0 }).await.unwrap().into_inner();
        Watcher { who: format!("{}/{org}", region.files.config.region), stream }
    }

    async fn one(&mut self) -> pb::Notice {
        match tokio::time::timeout(STEP, self.stream.next()).await {
            Ok(Some(Ok(n))) => n,
            other => panic!("{}: expected a notice, got {other:?}", self.who),
        }
    }

    async fn quiet(&mut self) {
        if let Ok(next) = tokio::time::timeout(QUIET, self.stream.next()).await {
            panic!("{}: no further notice expected, got {:?}", self.who, next.map(|n| n.map(|n| describe(&n))));
        }
    }
}

/// Polls `cond` every 50 ms until it holds, failing with `what` after [`STEP`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < STEP, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kind(n: &pb::Notice) -> pb::NoticeKind {
    pb::NoticeKind::try_from(n.kind).unwrap()
}

fn describe(n: &pb::Notice) -> String {
    let family = if n.family { "family " } else { "" };
    format!("#{} {family}{:?} parties {:?}", n.cursor, kind(n), keys(&n.counterparts))
}

async fn add_orgs(r: &RunningRegion) {
    let region = &r.files.config.region;
    for (id, domain) in [("jeugdzorg", "youth-care"), ("school", "education"), ("ggd", "health")] {
        r.add_org(id, &format!("{id} {region}"), domain, None).await.unwrap();
    }
    r.add_org(MATCH_OFFICER_ORG, "Gemeente", "social-support", None).await.unwrap();
}

async fn one_region() -> (tempfile::TempDir, RunningRegion) {
    let dir = tempfile::tempdir().unwrap();
    let r = RunningRegion::start(dir.path(), "rotterdam", Arc::new(SystemClock)).await.unwrap();
    add_orgs(&r).await;
    (dir, r)
}

async fn federation(regions: &[&str], clock: Arc<dyn Clock>) -> (tempfile::TempDir, Vec<RunningRegion>) {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), regions).unwrap();
    let running = RunningRegion::start_federation(files, clock).await.unwrap();
    for r in &running {
        add_orgs(r).await;
    }
    (dir, running)
}

async fn register(r: &RunningRegion, org: &str, request: pb::RegisterSignalRequest) -> pb::RegisterSignalResponse {
    let resp = r.org_client(org).await.unwrap().register_signal(request).await.unwrap().into_inner();
    assert!(resp.created, "{org}: a new signal was expected");
    resp
}

fn id(resp: &pb::RegisterSignalResponse) -> String {
    resp.signal.as_ref().unwrap().signal_id.clone()
}

async fn withdraw(r: &RunningRegion, org: &str, signal_id: &str) {
    r.org_client(org)
        .await
        .unwrap()
        .withdraw_signal(pb::WithdrawSignalRequest {
            signal_id: signal_id.into(),
            reason: pb::WithdrawReason::ConcernResolved as i32,
            withdrawn_by: pb::Withdrawer::Professional as i32,
        })
        .await
        .unwrap();
}

async fn erase(r: &RunningRegion, child: &str) {
    let mut officer = r.org_client(MATCH_OFFICER_ORG).await.unwrap();
    officer.erase_child(pb::EraseChildRequest { bsn: child.into() }).await.unwrap();
}

async fn matches(r: &RunningRegion, org: &str) -> Vec<pb::MatchView> {
    r.org_client(org).await.unwrap().list_matches(pb::ListMatchesRequest {}).await.unwrap().into_inner().matches
}

/// Asserts `n` is a family match notice (made, or `ended`) naming exactly `parties`.
fn assert_family(n: &pb::Notice, ended: bool, parties: &[&str]) {
    let want = if ended { pb::NoticeKind::MatchEnded } else { pb::NoticeKind::MatchCreated };
    assert!(n.family && kind(n) == want, "expected a family {want:?}, got {}", describe(n));
    assert_eq!(keys(&n.counterparts), set(parties), "{}", describe(n));
}

fn assert_child(n: &pb::Notice, parties: &[&str]) {
    assert!(!n.family && kind(n) == pb::NoticeKind::MatchCreated, "expected a child match, got {}", describe(n));
    assert_eq!(keys(&n.counterparts), set(parties), "{}", describe(n));
}

// ---- in one region ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_siblings_in_one_region_are_matched_with_the_family_flag() {
    let (_dir, r) = one_region().await;
    let (mother, father) = (bsn(1), bsn(2));
    let mut school = Watcher::open(&r, "school").await;
    let mut jeugdzorg = Watcher::open(&r, "jeugdzorg").await;
    let mut officer = Watcher::open(&r, MATCH_OFFICER_ORG).await;
    let first = register(&r, "school", req(&bsn(10), &[&mother, &father], "Sanne School")).await;
    assert_eq!(first.family_lookup, "request");
    // The brother shares only the mother.
    register(&r, "jeugdzorg", req(&bsn(11), &[&mother], "Joris Jeugd")).await;
    assert_family(&school.one().await, false, &["-/jeugdzorg/Joris Jeugd"]);
    assert_family(&jeugdzorg.one().await, false, &["-/school/Sanne School"]);
    let n = officer.one().await;
    assert_family(&n, false, &["-/school/Sanne School", "-/jeugdzorg/Joris Jeugd"]);
    assert_eq!(n.signal_ids.len(), 2);
    // A third child with neither parent matches nobody.
    register(&r, "ggd", req(&bsn(12), &[&bsn(3)], "Gert Ggd")).await;
    school.quiet().await;
    jeugdzorg.quiet().await;
    officer.quiet().await;
    // matches list names the family counterpart apart from child counterparts.
    let list = matches(&r, "school").await;
    assert_eq!(list.len(), 1);
    assert!(list[0].counterparts.is_empty());
    assert_eq!(keys(&list[0].family_counterparts), set(&["-/jeugdzorg/Joris Jeugd"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_the_same_child_with_a_shared_parent_gives_one_child_match_and_no_family_match() {
    let (_dir, r) = one_region().await;
    let (child, mother) = (bsn(20), bsn(21));
    let mut school = Watcher::open(&r, "school").await;
    let mut jeugdzorg = Watcher::open(&r, "jeugdzorg").await;
    register(&r, "school", req(&child, &[&mother], "Sanne School")).await;
    register(&r, "jeugdzorg", req(&child, &[&mother], "Joris Jeugd")).await;
    assert_child(&school.one().await, &["-/jeugdzorg/Joris Jeugd"]);
    assert_child(&jeugdzorg.one().await, &["-/school/Sanne School"]);
    school.quiet().await;
    jeugdzorg.quiet().await;
    let list = matches(&r, "school").await;
    assert!(list[0].family_counterparts.is_empty(), "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_an_8_digit_parent_bsn_is_the_same_parent_as_its_9_digit_form() {
    let (_dir, r) = one_region().await;
    // A parent whose BSN starts with 0: sent once with 9 digits, once with 8.
    let parent = virfed::kit::fixture::valid_bsns(10_000_000, 1).remove(0);
    assert!(parent.starts_with('0'));
    let mut school = Watcher::open(&r, "school").await;
    register(&r, "school", req(&bsn(30), &[&parent], "Sanne School")).await;
    register(&r, "jeugdzorg", req(&bsn(31), &[&parent[1..]], "Joris Jeugd")).await;
    assert_family(&school.one().await, false, &["-/jeugdzorg/Joris Jeugd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_an_invalid_parent_bsn_is_refused_with_a_clear_error_and_nothing_written() {
    let (_dir, r) = one_region().await;
    let child = bsn(40);
    let good = bsn(41);
    let before = r.handle.store().audit_entries().unwrap().len();
    let mut bad_check = good.clone().into_bytes();
    bad_check[8] = if bad_check[8] == b'9' { b'0' } else { bad_check[8] + 1 };
    let bad_check = String::from_utf8(bad_check).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![good.clone(), bad_check.clone()], "parent_bsns[1]: the BSN fails the 11-proef"),
        (vec!["1234".into()], "parent_bsns[0]: the BSN has 4 characters"),
        (vec![good.clone(), bsn(42), bsn(43)], "lists 3 BSNs; give at most 2"),
        (vec![good.clone(), good.clone()], "parent_bsns[1] repeats an earlier parent"),
        (vec![child.clone()], "parent_bsns[0] is the child's own BSN"),
    ];
    for (parents, expected) in cases {
        let mut request = req(&child, &[], "Sanne School");
        request.parent_bsns = parents.clone();
        let err = r.org_client("school").await.unwrap().register_signal(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{parents:?}");
        assert!(err.message().contains(expected), "{parents:?}: {}", err.message());
        for p in parents.iter().chain([&child]) {
            assert!(!err.message().contains(p.as_str()), "the error echoes a BSN: {}", err.message());
        }
    }
    assert_eq!(r.handle.store().counts().unwrap().active, 0, "nothing registered");
    assert_eq!(r.handle.store().audit_entries().unwrap().len(), before, "nothing written");
    assert!(r.handle.store().parents().next().is_none(), "no parent recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_a_notice_carries_no_bsn_no_child_or_parent_identifier_and_no_date() {
    let (_dir, r) = one_region().await;
    let (a, b, mother) = (bsn(50), bsn(51), bsn(52));
    let mut officer = Watcher::open(&r, MATCH_OFFICER_ORG).await;
    let mut school = Watcher::open(&r, "school").await;
    let mut jeugdzorg = Watcher::open(&r, "jeugdzorg").await;
    register(&r, "school", req(&a, &[&mother], "Sanne School")).await;
    register(&r, "jeugdzorg", req(&b, &[&mother], "Joris Jeugd")).await;
    let store = r.handle.store();
    let local = virfed::pseudonym::LocalKey::load_or_create(&r.files.dir.join("keys").join("local.key")).unwrap();
    let pseudonyms: Vec<Vec<u8>> = [
        local.child_key(&virfed::domain::Bsn::parse(&a).unwrap()).0.to_vec(),
        local.child_key(&virfed::domain::Bsn::parse(&b).unwrap()).0.to_vec(),
        local.parent_key(&virfed::domain::Bsn::parse(&mother).unwrap()).0.to_vec(),
    ]
    .into();
    assert_eq!(store.parents().count(), 1);
    for n in [school.one().await, jeugdzorg.one().await, officer.one().await] {
        // Exhaustive: the family flag is the only thing added to a notice.
        let pb::Notice { cursor: _, kind: _, addressee: _, signal_id: _, signal_ids: _, counterparts, family } =
            n.clone();
        assert!(family);
        assert_eq!(counterparts.len(), if n.addressee == pb::Addressee::MatchOfficer as i32 { 2 } else { 1 });
        let bytes = n.encode_to_vec();
        for forbidden in [a.as_str(), b.as_str(), mother.as_str(), "2014-05-01", "2014-", "2028-", "2029-"] {
            assert!(!contains(&bytes, forbidden.as_bytes()), "notice holds {forbidden:?}: {n:?}");
        }
        for p in &pseudonyms {
            assert!(!contains(&bytes, p), "notice holds a pseudonym");
            assert!(!contains(&bytes, hex(p).as_bytes()), "notice holds a pseudonym in hex");
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_withdrawal_and_erasure_end_local_family_matches() {
    let (_dir, r) = one_region().await;
    let (a, b, c, mother) = (bsn(60), bsn(61), bsn(62), bsn(63));
    let mut school = Watcher::open(&r, "school").await;
    let mut jeugdzorg = Watcher::open(&r, "jeugdzorg").await;
    let mut ggd = Watcher::open(&r, "ggd").await;
    register(&r, "school", req(&a, &[&mother], "Sanne School")).await;
    let j = register(&r, "jeugdzorg", req(&b, &[&mother], "Joris Jeugd")).await;
    assert_family(&school.one().await, false, &["-/jeugdzorg/Joris Jeugd"]);
    assert_family(&jeugdzorg.one().await, false, &["-/school/Sanne School"]);
    withdraw(&r, "jeugdzorg", &id(&j)).await;
    assert_family(&school.one().await, true, &["-/jeugdzorg/Joris Jeugd"]);
    jeugdzorg.quiet().await;
    // A third sibling, then the first child is erased: the third learns it ended.
    register(&r, "ggd", req(&c, &[&mother], "Gert Ggd")).await;
    assert_family(&school.one().await, false, &["-/ggd/Gert Ggd"]);
    assert_family(&ggd.one().await, false, &["-/school/Sanne School"]);
    erase(&r, &a).await;
    assert_family(&ggd.one().await, true, &["-/school/Sanne School"]);
    school.quiet().await;
    ggd.quiet().await;
    assert!(matches(&r, "ggd").await.is_empty());
}

// ---- across regions ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_siblings_in_two_regions_are_notified_on_both_sides_with_the_flag() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(SystemClock)).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let (mother, father) = (bsn(70), bsn(71));
    let mut rs = Watcher::open(rdam, "school").await;
    let mut uj = Watcher::open(utr, "jeugdzorg").await;
    let mut ro = Watcher::open(rdam, MATCH_OFFICER_ORG).await;
    let mut uo = Watcher::open(utr, MATCH_OFFICER_ORG).await;
    register(rdam, "school", req(&bsn(72), &[&mother, &father], "Rosa Rotterdam")).await;
    // The sister in Utrecht: both parents shared, one family match, notified once.
    register(utr, "jeugdzorg", req(&bsn(73), &[&father, &mother], "Uwe Utrecht")).await;
    assert_family(&rs.one().await, false, &["utrecht/jeugdzorg/Uwe Utrecht"]);
    assert_family(&uj.one().await, false, &["rotterdam/school/Rosa Rotterdam"]);
    assert_family(&ro.one().await, false, &["-/school/Rosa Rotterdam", "utrecht/jeugdzorg/Uwe Utrecht"]);
    assert_family(&uo.one().await, false, &["-/jeugdzorg/Uwe Utrecht", "rotterdam/school/Rosa Rotterdam"]);
    rs.quiet().await;
    uj.quiet().await;
    let list = matches(rdam, "school").await;
    assert_eq!(keys(&list[0].family_counterparts), set(&["utrecht/jeugdzorg/Uwe Utrecht"]));
    // Neither region holds the other's parent or child BSNs, nor its own, in plain form.
    for r in &regions {
        let mut files = Vec::new();
        files_under(&r.files.config.data_dir, &mut files);
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            for canary in [&mother, &father, &bsn(72), &bsn(73)] {
                assert!(!contains(&bytes, canary.as_bytes()), "{} holds a BSN", f.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_a_child_and_its_sibling_in_two_regions_give_each_match_once() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(SystemClock)).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let (x, y, mother) = (bsn(80), bsn(81), bsn(82));
    let mut rs = Watcher::open(rdam, "school").await;
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    let mut uj = Watcher::open(utr, "jeugdzorg").await;
    // Rotterdam: school on X, jeugdzorg on Y (siblings).
    register(rdam, "school", req(&x, &[&mother], "Rs X")).await;
    register(rdam, "jeugdzorg", req(&y, &[&mother], "Rj Y")).await;
    assert_family(&rs.one().await, false, &["-/jeugdzorg/Rj Y"]);
    assert_family(&rj.one().await, false, &["-/school/Rs X"]);
    // Utrecht: school on X; child match with Rotterdam's school, family match with the rest.
    register(utr, "school", req(&x, &[&mother], "Us X")).await;
    let mut at_us = BTreeSet::new();
    while at_us.len() < 2 {
        let n = us.one().await;
        assert!(at_us.insert(format!("{} {:?}", n.family, keys(&n.counterparts))), "told twice: {}", describe(&n));
    }
    assert_eq!(
        at_us,
        BTreeSet::from([
            format!("false {:?}", set(&["rotterdam/school/Rs X"])),
            format!("true {:?}", set(&["rotterdam/jeugdzorg/Rj Y"])),
        ])
    );
    assert_child(&rs.one().await, &["utrecht/school/Us X"]);
    assert_family(&rj.one().await, false, &["utrecht/school/Us X"]);
    // Utrecht: jeugdzorg on Y; child match with Rotterdam's jeugdzorg, family with both X.
    register(utr, "jeugdzorg", req(&y, &[&mother], "Uj Y")).await;
    let mut at_uj = BTreeSet::new();
    while at_uj.len() < 3 {
        let n = uj.one().await;
        for p in &n.counterparts {
            assert!(at_uj.insert(format!("{} {}", n.family, party_key(p))), "told twice: {}", describe(&n));
        }
    }
    assert_eq!(
        at_uj,
        set(&["false rotterdam/jeugdzorg/Rj Y", "true -/school/Us X", "true rotterdam/school/Rs X"]),
        "each pair once, as child or family match"
    );
    assert_family(&us.one().await, false, &["-/jeugdzorg/Uj Y"]);
    assert_child(&rj.one().await, &["utrecht/jeugdzorg/Uj Y"]);
    assert_family(&rs.one().await, false, &["utrecht/jeugdzorg/Uj Y"]);
    for w in [&mut rs, &mut rj, &mut us, &mut uj] {
        w.quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_withdrawal_expiry_and_erasure_end_the_family_match_on_both_sides() {
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap());
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(clock.clone())).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mother = bsn(90);
    let mut rs = Watcher::open(rdam, "school").await;
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut rg = Watcher::open(rdam, "ggd").await;
    let mut us = Watcher::open(utr, "school").await;
    // Withdrawal in Utrecht ends it in Rotterdam.
    register(rdam, "school", req(&bsn(91), &[&mother], "Rs One")).await;
    let u = register(utr, "school", req(&bsn(92), &[&mother], "Us Two")).await;
    assert_family(&rs.one().await, false, &["utrecht/school/Us Two"]);
    assert_family(&us.one().await, false, &["rotterdam/school/Rs One"]);
    withdraw(utr, "school", &id(&u)).await;
    assert_family(&rs.one().await, true, &["utrecht/school/Us Two"]);
    us.quiet().await;
    // Expiry in Rotterdam ends it in Utrecht.
    let mut short = req(&bsn(93), &[&mother], "Rj Short");
    short.removal_date = (clock.today() + chrono::Duration::days(7)).to_string();
    register(rdam, "jeugdzorg", short).await;
    assert_family(&rs.one().await, false, &["-/jeugdzorg/Rj Short"]);
    assert_family(&rj.one().await, false, &["-/school/Rs One"]);
    let u = register(utr, "school", req(&bsn(94), &[&mother], "Us Three")).await;
    let mut told = BTreeSet::new();
    while told.len() < 2 {
        let n = us.one().await;
        assert!(n.family, "{}", describe(&n));
        told.extend(keys(&n.counterparts));
    }
    assert_eq!(told, set(&["rotterdam/school/Rs One", "rotterdam/jeugdzorg/Rj Short"]));
    assert_family(&rs.one().await, false, &["utrecht/school/Us Three"]);
    assert_family(&rj.one().await, false, &["utrecht/school/Us Three"]);
    clock.advance(chrono::Duration::days(8));
    assert_eq!(rdam.handle.sweep_now().await.unwrap().archived, 1);
    assert_family(&rs.one().await, true, &["-/jeugdzorg/Rj Short"]);
    assert_family(&us.one().await, true, &["rotterdam/jeugdzorg/Rj Short"]);
    // Erasure of Rotterdam's child with the active signal ends it in Utrecht.
    erase(rdam, &bsn(91)).await;
    assert_family(&us.one().await, true, &["rotterdam/school/Rs One"]);
    for w in [&mut rs, &mut rj, &mut rg, &mut us] {
        w.quiet().await;
    }
    assert!(matches(utr, "school").await.iter().all(|m| m.family_counterparts.is_empty()));
    // Withdrawn too in Utrecht, then purged... the parent stays while an archived signal
    // on one of its children remains (the expired one in Rotterdam).
    withdraw(utr, "school", &id(&u)).await;
}

// ---- parents from the BRP ------------------------------------------------------------------

/// A region whose parents come from the kit's BRP server at `url` (API key).
fn brp_region(dir: &std::path::Path, url: &str) -> virfed::kit::fixture::RegionFiles {
    use virfed::brp::{ApiKeyAuth, BrpAuth, BrpConfig};
    let mut files = virfed::kit::fixture::RegionFiles::create(dir, "rotterdam", ([127, 0, 0, 1], 0).into()).unwrap();
    let value_file = dir.join("brp-api-key");
    virfed::pseudonym::write_new_secret(&value_file, b"family-test-key").unwrap();
    files.config.family.source = virfed::config::FamilySource::Brp;
    files.config.brp = Some(BrpConfig {
        url: url.to_owned(),
        ca: None,
        client_cert: None,
        client_key: None,
        auth: BrpAuth::ApiKey(ApiKeyAuth { header: "X-API-KEY".into(), value_file }),
        timeout_ms: 2000,
    });
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_brp_lookups_wait_in_a_durable_queue_and_complete_after_the_brp_returns() {
    use virfed::kit::brp::{BrpFault, BrpServer};
    let (a, b, c, mother) = (bsn(100), bsn(101), bsn(102), bsn(103));
    let (_, brp) = BrpServer::new()
        .api_key("X-API-KEY", "family-test-key")
        .person(&a, &[&mother])
        .person(&b, &[&mother])
        .start()
        .await
        .unwrap();
    brp.set_fault(BrpFault::Unavailable);
    let dir = tempfile::tempdir().unwrap();
    let r = RunningRegion::start_with(brp_region(dir.path(), &brp.url()), Arc::new(SystemClock)).await.unwrap();
    add_orgs(&r).await;
    let mut school = Watcher::open(&r, "school").await;
    let mut ggd = Watcher::open(&r, "ggd").await;
    // The BRP is down: registrations answer at once, the child match works, the family
    // lookups wait.
    let resp = register(&r, "school", req(&a, &[], "Sanne School")).await;
    assert_eq!(resp.family_lookup, "pending");
    register(&r, "jeugdzorg", req(&b, &[], "Joris Jeugd")).await;
    register(&r, "ggd", req(&a, &[], "Gert Ggd")).await;
    assert_child(&school.one().await, &["-/ggd/Gert Ggd"]);
    assert_child(&ggd.one().await, &["-/school/Sanne School"]);
    let refused = r.org_client("school").await.unwrap().register_signal(req(&c, &[&mother], "X")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("looks a child's parents up in the BRP"), "{}", refused.message());
    eventually("the queue to ask the BRP", || brp.lookups() >= 3).await;
    school.quiet().await;
    assert_eq!(r.handle.store().lookups().unwrap().len(), 2, "one lookup per child new here");
    let started = std::time::Instant::now();
    loop {
        let (_, text) = virfed::health::http::get_text(r.handle.http_addr(), "/metrics").await.unwrap();
        if text.lines().any(|l| l == "virfed_family_lookups_pending 2") {
            break;
        }
        assert!(started.elapsed() < STEP, "the waiting lookups never showed in /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // While they wait, the sealed BSNs are in the store, never in plain form.
    let files = r.files.config.data_dir.clone();
    for canary in [&a, &b, &mother] {
        let mut all = Vec::new();
        files_under(&files, &mut all);
        for f in all {
            assert!(!contains(&std::fs::read(&f).unwrap(), canary.as_bytes()), "{} holds a BSN", f.display());
        }
    }
    // A restart keeps the queue; the BRP comes back; the family match forms.
    let files = r.stop().await.unwrap();
    brp.set_fault(BrpFault::None);
    let r = RunningRegion::start_with(files, Arc::new(SystemClock)).await.unwrap();
    let mut school = Watcher::open(&r, "school").await;
    let mut jeugdzorg = Watcher::open(&r, "jeugdzorg").await;
    // (The child match notice from before the restart comes first on a fresh stream.)
    assert_child(&school.one().await, &["-/ggd/Gert Ggd"]);
    assert_family(&school.one().await, false, &["-/jeugdzorg/Joris Jeugd"]);
    assert_family(&jeugdzorg.one().await, false, &["-/school/Sanne School", "-/ggd/Gert Ggd"]);
    eventually("the queue to empty", || r.handle.store().lookups().unwrap().is_empty()).await;
    let done = r.handle.store().audit_entries().unwrap();
    assert_eq!(done.iter().filter(|e| e.action == "family.lookup-done").count(), 2);
    // A repeat registration on a known child says the lookup is done.
    let again = r.org_client("school").await.unwrap().register_signal(req(&a, &[], "Sanne School")).await.unwrap();
    assert_eq!(again.into_inner().family_lookup, "known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_brp_not_found_completes_the_lookup_without_parents_and_erasure_drops_a_waiting_one() {
    use virfed::kit::brp::{BrpFault, BrpServer};
    let (a, b) = (bsn(110), bsn(111));
    let (_, brp) = BrpServer::new().api_key("X-API-KEY", "family-test-key").start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = RunningRegion::start_with(brp_region(dir.path(), &brp.url()), Arc::new(SystemClock)).await.unwrap();
    add_orgs(&r).await;
    register(&r, "school", req(&a, &[], "Sanne School")).await;
    eventually("the not-found lookup to complete", || r.handle.store().lookups().unwrap().is_empty()).await;
    let entries = r.handle.store().audit_entries().unwrap();
    assert!(entries.iter().any(|e| e.action == "family.lookup-done" && e.detail == "not found in the BRP"));
    assert!(r.handle.store().parents().next().is_none());
    // A slow BRP: the lookup waits; erasing the child takes its sealed BSN with it.
    brp.set_fault(BrpFault::Delay(Duration::from_secs(30)));
    register(&r, "school", req(&b, &[], "Sanne School")).await;
    assert_eq!(r.handle.store().lookups().unwrap().len(), 1);
    erase(&r, &b).await;
    assert!(r.handle.store().lookups().unwrap().is_empty(), "the erased child's lookup is gone");
    // A signal made in error on a new child: deleting it takes the lookup along too.
    let c = register(&r, "school", req(&bsn(112), &[], "Sanne School")).await;
    assert_eq!(r.handle.store().lookups().unwrap().len(), 1);
    r.org_client("school")
        .await
        .unwrap()
        .withdraw_signal(pb::WithdrawSignalRequest {
            signal_id: id(&c),
            reason: pb::WithdrawReason::MadeInError as i32,
            withdrawn_by: pb::Withdrawer::Professional as i32,
        })
        .await
        .unwrap();
    assert!(r.handle.store().lookups().unwrap().is_empty(), "the deleted child's lookup is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_match_counts_are_suppressed_below_five_in_the_metrics() {
    let (_dir, r) = one_region().await;
    let metric = |text: &str| {
        text.lines().find(|l| l.starts_with("virfed_matches{scope=\"family_local\"}")).map(|l| l.to_owned())
    };
    for family in 0..5u32 {
        let parent = bsn(200 + family * 3);
        register(&r, "school", req(&bsn(201 + family * 3), &[&parent], "Sanne School")).await;
        register(&r, "jeugdzorg", req(&bsn(202 + family * 3), &[&parent], "Joris Jeugd")).await;
        let want = if family < 4 { "0" } else { "5" };
        let started = std::time::Instant::now();
        loop {
            let (_, text) = virfed::health::http::get_text(r.handle.http_addr(), "/metrics").await.unwrap();
            let line = metric(&text).expect("virfed_matches{scope=\"family_local\"} exported");
            if line.ends_with(&format!(" {want}")) {
                break;
            }
            assert!(family < 4 || started.elapsed() < STEP, "5 family matches never reported: {line}");
            if family < 4 {
                panic!("{} family matches are not suppressed: {line}", family + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let counts = r.handle.store().all_match_counts().unwrap();
    assert_eq!((counts.local, counts.family_local, counts.family_cross), (0, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_erasing_one_sibling_keeps_the_parent_link_for_the_others_on_both_sides() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(SystemClock)).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mother = bsn(120);
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut ug = Watcher::open(utr, "ggd").await;
    let mut us = Watcher::open(utr, "school").await;
    register(rdam, "school", req(&bsn(121), &[&mother], "Rs X")).await;
    register(rdam, "jeugdzorg", req(&bsn(122), &[&mother], "Rj Y")).await;
    assert_family(&rj.one().await, false, &["-/school/Rs X"]);
    register(utr, "ggd", req(&bsn(123), &[&mother], "Ug Z")).await;
    let mut told = BTreeSet::new();
    while told.len() < 2 {
        let n = ug.one().await;
        assert!(n.family, "{}", describe(&n));
        told.extend(keys(&n.counterparts));
    }
    assert_eq!(told, set(&["rotterdam/school/Rs X", "rotterdam/jeugdzorg/Rj Y"]));
    assert_family(&rj.one().await, false, &["utrecht/ggd/Ug Z"]);
    // Erasing X in Rotterdam ends its family matches, not the mother's link: Y keeps it.
    erase(rdam, &bsn(121)).await;
    assert_family(&rj.one().await, true, &["-/school/Rs X"]);
    assert_family(&ug.one().await, true, &["rotterdam/school/Rs X"]);
    register(utr, "school", req(&bsn(124), &[&mother], "Us W")).await;
    let mut told = BTreeSet::new();
    while told.len() < 2 {
        let n = us.one().await;
        assert!(n.family, "{}", describe(&n));
        told.extend(keys(&n.counterparts));
    }
    assert_eq!(told, set(&["-/ggd/Ug Z", "rotterdam/jeugdzorg/Rj Y"]));
    assert_family(&rj.one().await, false, &["utrecht/school/Us W"]);
    assert_family(&ug.one().await, false, &["-/school/Us W"]);
    for w in [&mut rj, &mut ug, &mut us] {
        w.quiet().await;
    }
    // Every notice the officer got here is about the mother's family: all carry the flag
    // (also the one for X's family pair, ended while X was unlinked).
    let officer = virfed::domain::OrgId::parse(MATCH_OFFICER_ORG).unwrap();
    for (_, n) in rdam.handle.store().notices_after(&officer, 0, 1000).unwrap() {
        assert!(n.kind.is_family(), "{n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_the_same_child_in_two_regions_with_a_shared_parent_is_one_child_match_begun_and_ended() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(SystemClock)).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let (child, mother) = (bsn(130), bsn(131));
    let mut rs = Watcher::open(rdam, "school").await;
    let mut uj = Watcher::open(utr, "jeugdzorg").await;
    register(rdam, "school", req(&child, &[&mother], "Rs C")).await;
    let u = register(utr, "jeugdzorg", req(&child, &[&mother], "Uj C")).await;
    assert_child(&rs.one().await, &["utrecht/jeugdzorg/Uj C"]);
    assert_child(&uj.one().await, &["rotterdam/school/Rs C"]);
    rs.quiet().await;
    uj.quiet().await;
    // Utrecht withdraws: a child match ended, and no family match ended that never began.
    withdraw(utr, "jeugdzorg", &id(&u)).await;
    let n = rs.one().await;
    assert!(!n.family && kind(&n) == pb::NoticeKind::MatchEnded, "{}", describe(&n));
    rs.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_parents_added_by_a_repeat_registration_reach_the_peer_for_a_known_parent() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"], Arc::new(SystemClock)).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mother = bsn(140);
    let mut ug = Watcher::open(utr, "ggd").await;
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    register(rdam, "school", req(&bsn(141), &[&mother], "Rs S")).await;
    register(utr, "ggd", req(&bsn(142), &[&mother], "Ug U")).await;
    assert_family(&ug.one().await, false, &["rotterdam/school/Rs S"]);
    // A child known here without parents, published to Utrecht, then a repeat names the
    // mother, already known here through its sibling.
    register(rdam, "jeugdzorg", req(&bsn(143), &[], "Rj C")).await;
    eventually("both outboxes to drain", || {
        rdam.handle.store().outbox_depth("utrecht") == 0 && utr.handle.store().outbox_depth("rotterdam") == 0
    })
    .await;
    let again = rdam.org_client("jeugdzorg").await.unwrap().register_signal(req(&bsn(143), &[&mother], "Rj C")).await;
    assert!(!again.unwrap().into_inner().created);
    assert_family(&ug.one().await, false, &["rotterdam/jeugdzorg/Rj C"]);
    let mut told = BTreeSet::new();
    while told.len() < 2 {
        let n = rj.one().await;
        assert!(n.family, "{}", describe(&n));
        told.extend(keys(&n.counterparts));
    }
    assert_eq!(told, set(&["-/school/Rs S", "utrecht/ggd/Ug U"]));
    ug.quiet().await;
    rj.quiet().await;
}
