//! Federation across regions: real nodes on loopback, real mTLS with node certificates
//! from a federation CA, real sled, blinded pseudonyms.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use virfed::domain::SystemClock;
use virfed::fixture::{contact, FederationFiles, RunningRegion};
use virfed::pb::client as pb;

fn req(bsn: &str, who: &str) -> pb::RegisterSignalRequest {
    let c = contact(who, "professional", &format!("{}@example.nl", who.to_lowercase().replace([' ', '.'], "")));
    pb::RegisterSignalRequest {
        bsn: bsn.into(),
        date_of_birth: "2014-05-01".into(),
        professional: Some(pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
        removal_date: String::new(),
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

async fn federation(regions: &[&str]) -> (tempfile::TempDir, Vec<RunningRegion>) {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), regions).unwrap();
    let running = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    for r in &running {
        r.add_org("jeugdzorg", &format!("Jeugdzorg {}", r.files.config.region), "youth-care", None).await.unwrap();
        r.add_org("school", &format!("School {}", r.files.config.region), "education", None).await.unwrap();
    }
    (dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_match_is_notified_in_both_regions() {
    let (_dir, regions) = federation(&["rotterdam", "utrecht"]).await;
    let (rdam, utr) = (&regions[0], &regions[1]);
    rdam.org_client("jeugdzorg").await.unwrap().register_signal(req("111222333", "R Jansen")).await.unwrap();
    utr.org_client("school").await.unwrap().register_signal(req("111222333", "U Bakker")).await.unwrap();
    let at_r = notices(rdam, "jeugdzorg", 0, 1).await;
    let at_u = notices(utr, "school", 0, 1).await;
    assert_eq!(at_r[0].kind, pb::NoticeKind::MatchCreated as i32);
    assert_eq!(at_r[0].counterparts.len(), 1);
    assert_eq!(at_r[0].counterparts[0].region_id, "utrecht");
    assert_eq!(at_r[0].counterparts[0].organisation_id, "school");
    assert_eq!(at_u[0].counterparts[0].region_id, "rotterdam");
    assert_eq!(at_u[0].counterparts[0].professional.as_ref().unwrap().name, "R Jansen");
}
