//! Federation across regions: real nodes on loopback, real mTLS with node certificates
//! from a federation CA, real sled, blinded pseudonyms.
//!
//! Readiness is always awaited by reading watch streams (or polling store state) with a
//! per-step timeout, never by sleeping. Where a double notice would be a bug, a test
//! checks that nothing more arrives for a short while after the expected notices.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use virfed::domain::{Clock, ManualClock, SystemClock};
use virfed::kit::fixture::{FederationFiles, RegionFiles, RunningRegion, MATCH_OFFICER_ORG};
use virfed::pb::admin as admin_pb;
use virfed::pb::admin::organisations_client::OrganisationsClient;
use virfed::pb::client as pb;
use virfed::pb::client::signals_client::SignalsClient;
use virfed::pki::{client_config, connect, Identity};

use common::{email_of, keys, party_key, req_by, set, VIRFED_ENV};

/// How long one expected notice (or one polled condition) may take on a loaded machine.
const STEP: Duration = Duration::from_secs(20);

/// How long to watch for a notice that must not come.
const QUIET: Duration = Duration::from_millis(500);

/// A registration with a professional whose name, e-mail and phone are all unique to `who`.
fn req_unique(bsn: &str, who: &str, phone: &str) -> pb::RegisterSignalRequest {
    let mut r = req_by(bsn, who);
    r.professional.as_mut().unwrap().phone = phone.into();
    r
}

/// A valid BSN (D9) for every `seed` < 900_000, distinct per seed.
fn bsn(seed: u32) -> String {
    let mut n = 10_000_000 + seed * 100;
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

/// Reads `n` notices after `after` from the org's watch stream (10 s per notice at most).
async fn notices(region: &RunningRegion, org: &str, after: u64, n: usize) -> Vec<pb::Notice> {
    let mut client = region.org_client(org).await.unwrap();
    let mut stream = client.watch(pb::WatchRequest { after_cursor: after }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(notice))) => out.push(notice),
            other => panic!("{org}: expected {n} notices, got {} then {other:?}", out.len()),
        }
    }
    out
}

/// An open watch stream of one organisation, read incrementally.
struct Watcher {
    who: String,
    stream: tonic::Streaming<pb::Notice>,
    seen: Vec<pb::Notice>,
}

impl Watcher {
    async fn open(region: &RunningRegion, org: &str) -> Watcher {
        let client = region.org_client(org).await.unwrap();
        Watcher::on(client, &format!("{}/{org}", region.files.config.region)).await
    }

    async fn on(mut client: SignalsClient<Channel>, who: &str) -> Watcher {
        let stream = client.watch(pb::WatchRequest { after_cursor: 0 }).await.unwrap().into_inner();
        Watcher { who: who.to_owned(), stream, seen: Vec::new() }
    }

    /// The next `n` notices, each within [`STEP`].
    async fn take(&mut self, n: usize) -> Vec<pb::Notice> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(STEP, self.stream.next()).await {
                Ok(Some(Ok(notice))) => out.push(notice),
                other => panic!(
                    "{}: expected {n} more notices, got {} ({:?}) then {other:?}; earlier: {:?}",
                    self.who,
                    out.len(),
                    out.iter().map(describe).collect::<Vec<_>>(),
                    self.seen.iter().map(describe).collect::<Vec<_>>()
                ),
            }
        }
        self.seen.extend(out.iter().cloned());
        out
    }

    async fn one(&mut self) -> pb::Notice {
        self.take(1).await.remove(0)
    }

    /// Asserts that no further notice arrives within [`QUIET`].
    async fn quiet(&mut self) {
        if let Ok(next) = tokio::time::timeout(QUIET, self.stream.next()).await {
            let extra = match next {
                Some(Ok(n)) => describe(&n),
                other => format!("{other:?}"),
            };
            panic!(
                "{}: no further notice expected, got {extra}; earlier: {:?}",
                self.who,
                self.seen.iter().map(describe).collect::<Vec<_>>()
            );
        }
    }
}

fn kind(n: &pb::Notice) -> pb::NoticeKind {
    pb::NoticeKind::try_from(n.kind).unwrap()
}

fn describe(n: &pb::Notice) -> String {
    let parties: Vec<String> = n.counterparts.iter().map(party_key).collect();
    format!("#{} {:?} to {:?} parties {parties:?}", n.cursor, kind(n), pb::Addressee::try_from(n.addressee).unwrap())
}

async fn add_orgs(r: &RunningRegion) {
    let region = &r.files.config.region;
    r.add_org("jeugdzorg", &format!("Jeugdzorg {region}"), "youth-care", None).await.unwrap();
    r.add_org("school", &format!("School {region}"), "education", None).await.unwrap();
}

async fn federation(regions: &[&str]) -> (tempfile::TempDir, Vec<RunningRegion>) {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), regions).unwrap();
    let running = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    for r in &running {
        add_orgs(r).await;
    }
    (dir, running)
}

async fn register(r: &RunningRegion, org: &str, request: pb::RegisterSignalRequest) -> String {
    let resp = r.org_client(org).await.unwrap().register_signal(request).await.unwrap().into_inner();
    assert!(resp.created, "{org}: a new signal was expected");
    resp.signal.unwrap().signal_id
}

async fn withdraw(r: &RunningRegion, org: &str, signal_id: &str, reason: pb::WithdrawReason) {
    r.org_client(org)
        .await
        .unwrap()
        .withdraw_signal(pb::WithdrawSignalRequest {
            signal_id: signal_id.into(),
            reason: reason as i32,
            withdrawn_by: pb::Withdrawer::Professional as i32,
        })
        .await
        .unwrap();
}

async fn list_matches(r: &RunningRegion, org: &str) -> Vec<pb::MatchView> {
    r.org_client(org).await.unwrap().list_matches(pb::ListMatchesRequest {}).await.unwrap().into_inner().matches
}

/// Polls `cond` until it holds, panicking with `what` after [`STEP`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    while !cond() {
        assert!(started.elapsed() < STEP, "timed out waiting for: {what}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// Waits until every node's outbox is empty (everything delivered and acknowledged).
async fn settled(regions: &[&RunningRegion]) {
    for r in regions {
        let me = r.files.config.region.to_string();
        let peers: Vec<String> =
            regions.iter().map(|p| p.files.config.region.to_string()).filter(|p| *p != me).collect();
        for peer in peers {
            eventually(&format!("{me}'s outbox for {peer} to drain"), || r.handle.store().outbox_depth(&peer) == 0)
                .await;
        }
    }
}

// ---- D5 ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_match_is_notified_in_both_regions() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    rdam.org_client("jeugdzorg").await.unwrap().register_signal(req_by("111222333", "R Jansen")).await.unwrap();
    utr.org_client("school").await.unwrap().register_signal(req_by("111222333", "U Bakker")).await.unwrap();
    let at_r = notices(rdam, "jeugdzorg", 0, 1).await;
    let at_u = notices(utr, "school", 0, 1).await;
    assert_eq!(at_r[0].kind, pb::NoticeKind::MatchCreated as i32);
    assert_eq!(at_r[0].counterparts.len(), 1);
    assert_eq!(at_r[0].counterparts[0].region_id, "utrecht");
    assert_eq!(at_r[0].counterparts[0].organisation_id, "school");
    assert_eq!(at_u[0].counterparts[0].region_id, "rotterdam");
    assert_eq!(at_u[0].counterparts[0].professional.as_ref().unwrap().name, "R Jansen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_three_region_child_is_matched_in_every_region() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht", "zwolle"]).await;
    let names = ["rotterdam", "utrecht", "zwolle"];
    let orgs = ["jeugdzorg", "school", "jeugdzorg"];
    let profs = ["Rob Rotterdam", "Ute Utrecht", "Zef Zwolle"];
    for r in &regions {
        r.add_org(MATCH_OFFICER_ORG, "Gemeente", "social-support", None).await.unwrap();
    }
    let mut reporters = Vec::new();
    let mut officers = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        reporters.push(Watcher::open(r, orgs[i]).await);
        officers.push(Watcher::open(r, MATCH_OFFICER_ORG).await);
    }
    let child = bsn(1);
    let mut ids = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        ids.push(register(r, orgs[i], req_by(&child, profs[i])).await);
    }
    for i in 0..3 {
        let expected: BTreeSet<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("{}/{}/{}", names[j], orgs[j], profs[j])).collect();
        // The reporter: MATCH_CREATED notices that together name each remote party once.
        let mut named = Vec::new();
        while named.len() < 2 {
            let n = reporters[i].one().await;
            assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}: {}", names[i], describe(&n));
            assert_eq!(n.addressee, pb::Addressee::Professional as i32);
            assert_eq!(n.signal_id, ids[i]);
            named.extend(n.counterparts.iter().map(party_key));
            for p in &n.counterparts {
                let j = names.iter().position(|x| *x == p.region_id).expect("a remote region");
                let prof = p.professional.as_ref().unwrap();
                assert_eq!((prof.name.as_str(), prof.email.clone()), (profs[j], email_of(profs[j])));
                assert_eq!(
                    p.organisation_name,
                    format!("{} {}", if orgs[j] == "school" { "School" } else { "Jeugdzorg" }, names[j])
                );
            }
        }
        assert_eq!(named.len(), 2, "{}: each remote party named once: {named:?}", names[i]);
        assert_eq!(named.iter().cloned().collect::<BTreeSet<_>>(), expected, "{}", names[i]);
        reporters[i].quiet().await;
        // The match officer: the local signal and every remote party, once each.
        let mut remote = Vec::new();
        while remote.len() < 2 {
            let n = officers[i].one().await;
            assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}: {}", names[i], describe(&n));
            assert_eq!(n.addressee, pb::Addressee::MatchOfficer as i32);
            assert_eq!(n.signal_ids, vec![ids[i].clone()]);
            assert!(n.signal_id.is_empty());
            let local: Vec<_> = n.counterparts.iter().filter(|p| p.region_id.is_empty()).collect();
            assert_eq!(local.len(), 1, "{}: officer notice names the local reporter: {}", names[i], describe(&n));
            assert_eq!(local[0].professional.as_ref().unwrap().name, profs[i]);
            remote.extend(n.counterparts.iter().filter(|p| !p.region_id.is_empty()).map(party_key));
        }
        assert_eq!(remote.len(), 2, "{}: {remote:?}", names[i]);
        assert_eq!(remote.iter().cloned().collect::<BTreeSet<_>>(), expected);
        officers[i].quiet().await;
        // ListMatches: one match, the two remote parties.
        let matches = list_matches(&regions[i], orgs[i]).await;
        assert_eq!(matches.len(), 1, "{}: {matches:?}", names[i]);
        assert_eq!(matches[0].signal_id, ids[i]);
        assert_eq!(keys(&matches[0].counterparts), expected, "{}", names[i]);
        assert_eq!(matches[0].counterparts.len(), 2);
    }
}

// ---- invariant 3 ----------------------------------------------------------------------

/// Every file under `dir`, read raw.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Where in `region`'s federation state and data directory `needle` occurs.
fn occurrences(region: &RunningRegion, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (k, v) in region.handle.store().federation_raw().unwrap() {
        if contains(&k, needle) || contains(&v, needle) {
            found.push(format!("federation_raw key {:?}", String::from_utf8_lossy(&k[..1])));
        }
    }
    for (path, bytes) in files_under(&region.files.dir) {
        if contains(&bytes, needle) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant3_no_contact_details_cross_for_non_matching_signals() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    // (name, phone) per professional; every name, e-mail and phone is unique to its person.
    let r_people = [("Rinus Zwijgzaam", "+31 10 700 0001"), ("Roos Onbekend", "+31 10 700 0002")];
    let u_people = [
        ("Ulla Stilzwijgend", "+31 30 800 0001"),
        ("Urbain Verborgen", "+31 30 800 0002"),
        ("Uma Anoniem", "+31 30 800 0003"),
    ];
    for (i, (who, phone)) in r_people.iter().enumerate() {
        register(rdam, "jeugdzorg", req_unique(&bsn(100 + i as u32), who, phone)).await;
    }
    for (i, (who, phone)) in u_people.iter().enumerate() {
        register(utr, "school", req_unique(&bsn(200 + i as u32), who, phone)).await;
    }
    eventually("utrecht's index of rotterdam holds 2 children", || utr.handle.store().peer_index_len("rotterdam") == 2)
        .await;
    eventually("rotterdam's index of utrecht holds 3 children", || rdam.handle.store().peer_index_len("utrecht") == 3)
        .await;
    settled(&[rdam, utr]).await;
    let check_absent = |at: &RunningRegion, people: &[(&str, &str)]| {
        for (who, phone) in people {
            for needle in [who.to_string(), email_of(who), phone.to_string()] {
                let found = occurrences(at, &needle);
                assert!(
                    found.is_empty(),
                    "{:?} of another region's non-matching signal is stored in {}: {found:?}",
                    needle,
                    at.files.config.region
                );
            }
        }
    };
    check_absent(utr, &r_people);
    check_absent(rdam, &u_people);
    // Sanity: the scan does find a region's own professionals.
    assert!(!occurrences(rdam, r_people[0].0).is_empty(), "the scan must see rotterdam's own data");

    // Now a matching child: only its two reporters' details cross.
    let (r_match, u_match) = (("Rik Gedeeld", "+31 10 700 0099"), ("Ursula Gedeeld", "+31 30 800 0099"));
    let mut rw = Watcher::open(rdam, "jeugdzorg").await;
    let mut uw = Watcher::open(utr, "school").await;
    let shared = bsn(300);
    register(rdam, "jeugdzorg", req_unique(&shared, r_match.0, r_match.1)).await;
    register(utr, "school", req_unique(&shared, u_match.0, u_match.1)).await;
    assert_eq!(kind(&rw.one().await), pb::NoticeKind::MatchCreated);
    assert_eq!(kind(&uw.one().await), pb::NoticeKind::MatchCreated);
    settled(&[rdam, utr]).await;
    for needle in [u_match.0.to_string(), email_of(u_match.0), u_match.1.to_string()] {
        assert!(!occurrences(rdam, &needle).is_empty(), "{needle:?} of the matched utrecht reporter at rotterdam");
    }
    for needle in [r_match.0.to_string(), email_of(r_match.0), r_match.1.to_string()] {
        assert!(!occurrences(utr, &needle).is_empty(), "{needle:?} of the matched rotterdam reporter at utrecht");
    }
    check_absent(utr, &r_people);
    check_absent(rdam, &u_people);
    rw.quiet().await;
    uw.quiet().await;
}

// ---- invariant 5 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant5_concurrent_registration_race_in_two_regions_matches_once_at_each_side() {
    const CHILDREN: u32 = 20;
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mut rw = Watcher::open(rdam, "jeugdzorg").await;
    let mut uw = Watcher::open(utr, "school").await;
    let rc = rdam.org_client("jeugdzorg").await.unwrap();
    let uc = utr.org_client("school").await.unwrap();
    let mut r_ids = BTreeSet::new();
    let mut u_ids = BTreeSet::new();
    for i in 0..CHILDREN {
        let child = bsn(400 + i);
        let (mut rc2, mut uc2) = (rc.clone(), uc.clone());
        let (a, b) = tokio::join!(
            rc2.register_signal(req_by(&child, "Race Rotterdam")),
            uc2.register_signal(req_by(&child, "Race Utrecht"))
        );
        r_ids.insert(a.unwrap().into_inner().signal.unwrap().signal_id);
        u_ids.insert(b.unwrap().into_inner().signal.unwrap().signal_id);
    }
    for (w, ids, other) in
        [(&mut rw, &r_ids, "utrecht/school/Race Utrecht"), (&mut uw, &u_ids, "rotterdam/jeugdzorg/Race Rotterdam")]
    {
        let got = w.take(CHILDREN as usize).await;
        let mut per_signal: BTreeMap<String, usize> = BTreeMap::new();
        for n in &got {
            assert_eq!(kind(n), pb::NoticeKind::MatchCreated, "{}", describe(n));
            assert_eq!(keys(&n.counterparts), set(&[other]));
            *per_signal.entry(n.signal_id.clone()).or_default() += 1;
        }
        assert_eq!(per_signal.keys().cloned().collect::<BTreeSet<_>>(), *ids, "every signal notified");
        assert!(per_signal.values().all(|c| *c == 1), "one MATCH_CREATED per signal: {per_signal:?}");
        w.quiet().await;
    }
    assert_eq!(list_matches(rdam, "jeugdzorg").await.len(), CHILDREN as usize);
    assert_eq!(list_matches(utr, "school").await.len(), CHILDREN as usize);
}

// ---- D7 -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_withdrawal_in_one_region_ends_the_match_in_both() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    // One signal on each side; rotterdam withdraws (concern resolved).
    let child = bsn(500);
    let r_id = register(rdam, "jeugdzorg", req_by(&child, "Wim Weg")).await;
    register(utr, "school", req_by(&child, "Uri Blijft")).await;
    assert_eq!(kind(&rj.one().await), pb::NoticeKind::MatchCreated);
    assert_eq!(kind(&us.one().await), pb::NoticeKind::MatchCreated);
    withdraw(rdam, "jeugdzorg", &r_id, pb::WithdrawReason::ConcernResolved).await;
    let ended = us.one().await;
    assert_eq!(kind(&ended), pb::NoticeKind::MatchEnded, "{}", describe(&ended));
    assert_eq!(keys(&ended.counterparts), set(&["rotterdam/jeugdzorg/Wim Weg"]));
    assert!(list_matches(utr, "school").await.is_empty());
    assert!(list_matches(rdam, "jeugdzorg").await.is_empty());
    // The withdrawing side is not told anything; the counterpart gets exactly one notice.
    rj.quiet().await;
    us.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_withdrawing_one_of_two_local_signals_ends_only_that_party_across_the_border() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut rs = Watcher::open(rdam, "school").await;
    let mut us = Watcher::open(utr, "school").await;
    // Two organisations in rotterdam and one in utrecht on the same child.
    let child = bsn(501);
    let rj_id = register(rdam, "jeugdzorg", req_by(&child, "Jet Eerst")).await;
    register(utr, "school", req_by(&child, "Ubbo Ander")).await;
    assert_eq!(keys(&rj.one().await.counterparts), set(&["utrecht/school/Ubbo Ander"]));
    assert_eq!(keys(&us.one().await.counterparts), set(&["rotterdam/jeugdzorg/Jet Eerst"]));
    register(rdam, "school", req_by(&child, "Sien Tweede")).await;
    // The new local reporter learns both; the others learn of the new one only.
    let n = rs.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated);
    assert_eq!(keys(&n.counterparts), set(&["-/jeugdzorg/Jet Eerst", "utrecht/school/Ubbo Ander"]));
    assert_eq!(keys(&rj.one().await.counterparts), set(&["-/school/Sien Tweede"]));
    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated);
    assert_eq!(keys(&n.counterparts), set(&["rotterdam/school/Sien Tweede"]));
    rj.quiet().await;
    rs.quiet().await;
    us.quiet().await;
    // Withdrawing one of the two rotterdam signals: utrecht learns only that party is gone.
    withdraw(rdam, "jeugdzorg", &rj_id, pb::WithdrawReason::ConcernResolved).await;
    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchEnded, "{}", describe(&n));
    assert_eq!(keys(&n.counterparts), set(&["rotterdam/jeugdzorg/Jet Eerst"]));
    let n = rs.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchEnded, "{}", describe(&n));
    assert_eq!(keys(&n.counterparts), set(&["-/jeugdzorg/Jet Eerst"]));
    us.quiet().await;
    rs.quiet().await;
    rj.quiet().await;
    // The match stays for the other rotterdam organisation, on both sides.
    let at_u = list_matches(utr, "school").await;
    let with_part2: Vec<_> = at_u.iter().map(|m| keys(&m.counterparts)).collect();
    assert_eq!(with_part2, vec![set(&["rotterdam/school/Sien Tweede"])]);
    let at_r = list_matches(rdam, "school").await;
    assert_eq!(at_r.len(), 1);
    assert_eq!(keys(&at_r[0].counterparts), set(&["utrecht/school/Ubbo Ander"]));
    assert!(list_matches(rdam, "jeugdzorg").await.is_empty());
}

// ---- D4 -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_expiry_ends_the_match_in_both_regions() {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), &["rotterdam", "utrecht"]).unwrap();
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap());
    let regions = RunningRegion::start_federation(files, Arc::new(clock.clone())).await.unwrap();
    let (rdam, utr) = (&regions[0], &regions[1]);
    for r in &regions {
        add_orgs(r).await;
    }
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    let child = bsn(600);
    let mut short = req_by(&child, "Kees Kort");
    short.removal_date = (clock.today() + chrono::Duration::days(7)).to_string();
    register(rdam, "jeugdzorg", short).await;
    register(utr, "school", req_by(&child, "Lotte Lang")).await;
    assert_eq!(keys(&rj.one().await.counterparts), set(&["utrecht/school/Lotte Lang"]));
    assert_eq!(keys(&us.one().await.counterparts), set(&["rotterdam/jeugdzorg/Kees Kort"]));
    clock.advance(chrono::Duration::days(8));
    let report = rdam.handle.sweep_now().await.unwrap();
    assert_eq!(report.archived, 1, "{report:?}");
    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchEnded, "{}", describe(&n));
    assert_eq!(keys(&n.counterparts), set(&["rotterdam/jeugdzorg/Kees Kort"]));
    us.quiet().await;
    rj.quiet().await;
    assert!(list_matches(utr, "school").await.is_empty());
    assert!(list_matches(rdam, "jeugdzorg").await.is_empty());
    // Sweeping utrecht at the same date changes nothing there: its signal is still active.
    assert_eq!(utr.handle.sweep_now().await.unwrap().archived, 0);
}

// ---- D6 -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_history_notice_across_regions() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    let mut uj = Watcher::open(utr, "jeugdzorg").await;
    let child = bsn(700);
    let r_id = register(rdam, "jeugdzorg", req_unique(&child, "Hanna Historie", "+31 10 123 4567")).await;
    eventually("utrecht knows rotterdam's child", || utr.handle.store().peer_index_len("rotterdam") == 1).await;
    withdraw(rdam, "jeugdzorg", &r_id, pb::WithdrawReason::ConcernResolved).await;
    settled(&[rdam, utr]).await;

    let u_id = register(utr, "school", req_by(&child, "Sjoerd Later")).await;
    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::History, "{}", describe(&n));
    assert_eq!(n.signal_id, u_id);
    assert_eq!(n.counterparts.len(), 1);
    let p = &n.counterparts[0];
    assert_eq!((p.region_id.as_str(), p.organisation_id.as_str()), ("rotterdam", "jeugdzorg"));
    let prof = p.professional.as_ref().unwrap();
    assert_eq!(
        (prof.name.as_str(), prof.email.as_str(), prof.phone.as_str()),
        ("Hanna Historie", email_of("Hanna Historie").as_str(), "+31 10 123 4567")
    );
    us.quiet().await;
    assert!(list_matches(utr, "school").await.is_empty(), "an archived signal does not match");

    // A second utrecht organisation signals while school's signal is active: the child no
    // longer has only archived signals, so (as within one region) no history notice, only
    // the local match (D5) naming school.
    let u2_id = register(utr, "jeugdzorg", req_by(&child, "Joost Daarna")).await;
    let local = uj.take(1).await;
    assert_eq!(kind(&local[0]), pb::NoticeKind::MatchCreated, "{}", describe(&local[0]));
    assert_eq!(local[0].signal_id, u2_id);
    assert_eq!(keys(&local[0].counterparts), set(&["-/school/Sjoerd Later"]));
    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated);
    assert_eq!(keys(&n.counterparts), set(&["-/jeugdzorg/Joost Daarna"]), "no remote party in a local match");
    us.quiet().await;
    uj.quiet().await;
    rj.quiet().await;
}

// ---- invariant 8 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant8_peer_down_signals_queued_then_caught_up() {
    let (_dir, mut regions) = federation(&["rotterdam", "utrecht", "zwolle"]).await;
    let zwolle = regions.pop().unwrap();
    let (rdam, utr) = (&regions[0], &regions[1]);
    let down_child = bsn(800);
    let z_id = register(&zwolle, "school", req_by(&down_child, "Zoe Wacht")).await;
    eventually("rotterdam knows zwolle's child", || rdam.handle.store().peer_index_len("zwolle") == 1).await;
    settled(&[rdam, utr, &zwolle]).await;
    let z_files = zwolle.stop().await.unwrap();

    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    let r_id = register(rdam, "jeugdzorg", req_by(&down_child, "Ruud Rotterdam")).await;
    assert!(rdam.handle.store().outbox_depth("zwolle") > 0, "the publish for zwolle waits in the outbox");
    // The federation works meanwhile: rotterdam and utrecht match on another child.
    let other = bsn(801);
    register(rdam, "jeugdzorg", req_by(&other, "Ruud Rotterdam")).await;
    register(utr, "school", req_by(&other, "Ulco Utrecht")).await;
    assert_eq!(keys(&rj.one().await.counterparts), set(&["utrecht/school/Ulco Utrecht"]));
    assert_eq!(keys(&us.one().await.counterparts), set(&["rotterdam/jeugdzorg/Ruud Rotterdam"]));
    assert!(rdam.handle.store().outbox_depth("zwolle") > 0, "still queued while zwolle is down");

    let zwolle = RunningRegion::start_with(z_files, Arc::new(SystemClock)).await.unwrap();
    let mut zs = Watcher::open(&zwolle, "school").await;
    let n = zs.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
    assert_eq!(n.signal_id, z_id);
    assert_eq!(keys(&n.counterparts), set(&["rotterdam/jeugdzorg/Ruud Rotterdam"]));
    let n = rj.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
    assert_eq!(n.signal_id, r_id);
    assert_eq!(keys(&n.counterparts), set(&["zwolle/school/Zoe Wacht"]));
    settled(&[rdam, utr, &zwolle]).await;
    zs.quiet().await;
    rj.quiet().await;
    us.quiet().await;
}

/// The pair flap the crash cycles found (docs/reliability.md): while zwolle is down,
/// utrecht queues for it, about one child, "archived" (its only signal resolved), "active"
/// (a new signal) and that signal's contacts. Zwolle comes back and speaks first (utrecht
/// is still backing off): its new party goes to utrecht, whose reply must not carry the
/// new signal's contacts ahead of the queued items, or zwolle announces the new signal,
/// ends it on the stale "archived" and announces it again. In order, zwolle's reporter
/// hears the old party end and the new one arrive, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant5_an_answer_never_overtakes_queued_items_so_a_pair_is_announced_once() {
    let (_dir, mut regions) = federation(&["utrecht", "zwolle"]).await;
    let zwolle = regions.pop().unwrap();
    let utr = &regions[0];
    let child = bsn(820);
    let old_id = register(utr, "jeugdzorg", req_by(&child, "Ivo Oud")).await;
    let mut zs = Watcher::open(&zwolle, "school").await;
    register(&zwolle, "school", req_by(&child, "Zita Zwolle")).await;
    assert_eq!(keys(&zs.one().await.counterparts), set(&["utrecht/jeugdzorg/Ivo Oud"]));
    settled(&[utr, &zwolle]).await;
    drop(zs);
    let z_files = zwolle.stop().await.unwrap();

    withdraw(utr, "jeugdzorg", &old_id, pb::WithdrawReason::ConcernResolved).await;
    register(utr, "school", req_by(&child, "Jan Nieuw")).await;
    // Utrecht backs off further with every failed attempt; after five the next is seconds
    // away, so zwolle's item reaches utrecht before utrecht's backlog reaches zwolle.
    let counters = utr.handle.peer_counters()["zwolle"].clone();
    eventually("utrecht failing to reach zwolle five times", || {
        counters.delivery_failures.load(std::sync::atomic::Ordering::Relaxed) >= 5
    })
    .await;
    let zwolle = RunningRegion::start_with(z_files, Arc::new(SystemClock)).await.unwrap();
    let mut zs = Watcher::open(&zwolle, "school").await;
    let replayed = zs.one().await; // the match from before the stop, replayed from cursor 0
    assert_eq!(kind(&replayed), pb::NoticeKind::MatchCreated, "{}", describe(&replayed));
    register(&zwolle, "jeugdzorg", req_by(&child, "Kees Zwolle")).await;
    let local = zs.one().await;
    assert_eq!(keys(&local.counterparts), set(&["-/jeugdzorg/Kees Zwolle"]), "{}", describe(&local));
    let (ended, created) = (zs.one().await, zs.one().await);
    assert_eq!(kind(&ended), pb::NoticeKind::MatchEnded, "{}", describe(&ended));
    assert_eq!(keys(&ended.counterparts), set(&["utrecht/jeugdzorg/Ivo Oud"]), "only the old party ends");
    assert_eq!(kind(&created), pb::NoticeKind::MatchCreated, "{}", describe(&created));
    assert_eq!(keys(&created.counterparts), set(&["utrecht/school/Jan Nieuw"]));
    settled(&[utr, &zwolle]).await;
    zs.quiet().await;
    let listed: Vec<BTreeSet<String>> =
        list_matches(&zwolle, "school").await.iter().map(|m| keys(&m.counterparts)).collect();
    let expected = vec![set(&["-/jeugdzorg/Kees Zwolle", "utrecht/school/Jan Nieuw"])];
    assert_eq!(listed, expected, "one match, with the new party and not the old one");
}

// ---- invariant 4 ----------------------------------------------------------------------

/// `virfed node --config CONFIG` as a child process; killed if the test panics.
fn spawn_node(config: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let err = file.try_clone().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_virfed"));
    cmd.args(["node", "--config", config.to_str().unwrap()]).env("VIRFED_LOG", "warn").kill_on_drop(true);
    for var in VIRFED_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::from(file)).stderr(Stdio::from(err)).spawn().expect("spawn virfed node")
}

/// An mTLS channel to a region's API as `identity`.
async fn channel_to(files: &RegionFiles, addr: SocketAddr, identity: Identity) -> Result<Channel, String> {
    let config = client_config(&files.client_material(identity).unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connect(&addr.to_string(), "localhost", config))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// Polls the child node's admin API with backoff until it answers.
async fn wait_serving(child: &mut Child, files: &RegionFiles, log: &Path) -> OrganisationsClient<Channel> {
    let addr = files.config.listen;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the node exited ({status}); log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        let last = match channel_to(files, addr, Identity::Operator("ops".into())).await {
            Ok(channel) => {
                let mut client = OrganisationsClient::new(channel);
                match client.list_organisations(admin_pb::ListOrganisationsRequest {}).await {
                    Ok(_) => return client,
                    Err(s) => s.to_string(),
                }
            }
            Err(e) => e,
        };
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node did not serve on {addr} ({last}); log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant4_outbox_survives_kill_9_of_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = FederationFiles::create(dir.path(), &["rotterdam", "utrecht"]).unwrap();
    let b_files = files.regions.pop().unwrap();
    let a_files = files.regions.pop().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let utr = RunningRegion::start_with(b_files, clock.clone()).await.unwrap();
    add_orgs(&utr).await;

    let log = dir.path().join("rotterdam.log");
    let mut node = spawn_node(&a_files.config_path, &log);
    let mut ops = wait_serving(&mut node, &a_files, &log).await;
    ops.add_organisation(admin_pb::Organisation {
        id: "jeugdzorg".into(),
        name: "Jeugdzorg rotterdam".into(),
        domain: "youth-care".into(),
        coordinator: None,
    })
    .await
    .unwrap();
    let a_addr = a_files.config.listen;
    let a_org = || async {
        SignalsClient::new(channel_to(&a_files, a_addr, Identity::Organisation("jeugdzorg".into())).await.unwrap())
    };

    // Utrecht goes down first, so rotterdam's publishes can only wait in its outbox.
    let b_files = utr.stop().await.unwrap();
    let child = bsn(900);
    let resp = a_org().await.register_signal(req_by(&child, "Karel Kill")).await.unwrap().into_inner();
    let a_id = resp.signal.unwrap().signal_id;
    node.start_kill().unwrap();
    let status = tokio::time::timeout(STEP, node.wait()).await.expect("killed node exits").unwrap();
    assert!(!status.success());

    let mut node = spawn_node(&a_files.config_path, &log);
    wait_serving(&mut node, &a_files, &log).await;
    let utr = RunningRegion::start_with(b_files, clock.clone()).await.unwrap();
    let mut us = Watcher::open(&utr, "school").await;
    let mut aw = Watcher::on(a_org().await, "rotterdam(process)/jeugdzorg").await;
    let u_id = register(&utr, "school", req_by(&child, "Uwe Overleeft")).await;

    let n = us.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
    assert_eq!(n.signal_id, u_id);
    assert_eq!(keys(&n.counterparts), set(&["rotterdam/jeugdzorg/Karel Kill"]));
    let n = aw.one().await;
    assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
    assert_eq!(n.signal_id, a_id);
    assert_eq!(keys(&n.counterparts), set(&["utrecht/school/Uwe Overleeft"]));
    us.quiet().await;
    aw.quiet().await;
    assert_eq!(utr.handle.store().peer_index_len("rotterdam"), 1);
    drop(aw);
    utr.stop().await.unwrap();
    node.start_kill().unwrap();
    let _ = node.wait().await;
}

// ---- join -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_a_new_region_gets_all_existing_matches() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = FederationFiles::create(dir.path(), &["rotterdam", "utrecht", "zwolle"]).unwrap();
    let z_files = files.regions.pop().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Rotterdam and utrecht first federate without zwolle: it is not yet one of their peers.
    let mut full_configs = Vec::new();
    let mut regions = Vec::new();
    for mut f in files.regions.drain(..) {
        full_configs.push(f.config.clone());
        f.config.federation.as_mut().unwrap().peers.retain(|p| p.region.as_str() != "zwolle");
        let r = RunningRegion::start_with(f, clock.clone()).await.unwrap();
        add_orgs(&r).await;
        regions.push(r);
    }
    let (shared, early, r_only) = (bsn(1000), bsn(1001), bsn(1002));
    {
        let (rdam, utr) = (&regions[0], &regions[1]);
        let mut rj = Watcher::open(rdam, "jeugdzorg").await;
        register(rdam, "jeugdzorg", req_by(&shared, "Reinier Eerst")).await;
        register(rdam, "jeugdzorg", req_by(&early, "Reinier Eerst")).await;
        register(rdam, "jeugdzorg", req_by(&r_only, "Reinier Eerst")).await;
        register(utr, "school", req_by(&shared, "Ursula Eerst")).await;
        assert_eq!(keys(&rj.one().await.counterparts), set(&["utrecht/school/Ursula Eerst"]));
        settled(&[rdam, utr]).await;
        assert_eq!(rdam.handle.store().outbox_depth("zwolle"), 0, "zwolle is no peer yet");
    }
    // The operators add zwolle as a peer and restart their nodes: they join it.
    let mut restarted = Vec::new();
    for (r, config) in regions.into_iter().zip(full_configs) {
        let mut f = r.stop().await.unwrap();
        f.config = config;
        restarted.push(RunningRegion::start_with(f, clock.clone()).await.unwrap());
    }
    let (rdam, utr) = (&restarted[0], &restarted[1]);
    eventually("rotterdam queues its 3 children for zwolle", || rdam.handle.store().outbox_depth("zwolle") >= 3).await;

    let zwolle = RunningRegion::start_with(z_files, clock.clone()).await.unwrap();
    add_orgs(&zwolle).await;
    eventually("zwolle's index of rotterdam holds all 3 children", || {
        zwolle.handle.store().peer_index_len("rotterdam") == 3
    })
    .await;
    eventually("zwolle's index of utrecht holds its child", || zwolle.handle.store().peer_index_len("utrecht") == 1)
        .await;

    let mut rj = Watcher::open(rdam, "jeugdzorg").await;
    let mut us = Watcher::open(utr, "school").await;
    let _ = rj.take(1).await; // the earlier rotterdam-utrecht match
    let _ = us.take(1).await;
    let mut zj = Watcher::open(&zwolle, "jeugdzorg").await;
    let z_shared = register(&zwolle, "jeugdzorg", req_by(&shared, "Zander Nieuw")).await;
    let z_early = register(&zwolle, "jeugdzorg", req_by(&early, "Zander Nieuw")).await;

    let mut at_z: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in zj.take(3).await {
        assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
        at_z.entry(n.signal_id.clone()).or_default().extend(n.counterparts.iter().map(party_key));
    }
    assert_eq!(at_z.len(), 2);
    assert_eq!(at_z[&z_shared], set(&["rotterdam/jeugdzorg/Reinier Eerst", "utrecht/school/Ursula Eerst"]));
    assert_eq!(at_z[&z_early], set(&["rotterdam/jeugdzorg/Reinier Eerst"]));
    let mut at_r = BTreeSet::new();
    for n in rj.take(2).await {
        assert_eq!(kind(&n), pb::NoticeKind::MatchCreated, "{}", describe(&n));
        assert_eq!(keys(&n.counterparts), set(&["zwolle/jeugdzorg/Zander Nieuw"]));
        at_r.insert(n.signal_id);
    }
    assert_eq!(at_r.len(), 2, "rotterdam's shared and early signals both match zwolle");
    let n = us.one().await;
    assert_eq!(keys(&n.counterparts), set(&["zwolle/jeugdzorg/Zander Nieuw"]));
    zj.quiet().await;
    rj.quiet().await;
    us.quiet().await;
    let z_matches = list_matches(&zwolle, "jeugdzorg").await;
    assert_eq!(z_matches.len(), 2);
}
