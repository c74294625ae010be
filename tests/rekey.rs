//! Re-keying a node's blinding secret (`virfed rekey`) keeps every cross-region match,
//! makes none twice, and later registrations still match under the new key.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use virfed::domain::SystemClock;
use virfed::kit::fixture::{FederationFiles, RunningRegion};
use virfed::pb::client as pb;

use common::req;

/// Notices after `after`: exactly `n` within 10 s each, then none for `quiet`.
async fn exactly(region: &RunningRegion, org: &str, after: u64, n: usize, quiet: Duration) -> Vec<pb::Notice> {
    let mut client = region.org_client(org).await.unwrap();
    let mut stream = client.watch(pb::WatchRequest { after_cursor: after }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(notice))) => out.push(notice),
            other => panic!("{org}: expected {n} notices after {after}, got {} then {other:?}", out.len()),
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("{org}: unexpected extra notice {extra:?}");
    }
    out
}

async fn drained(region: &RunningRegion, peer: &str) {
    for _ in 0..200 {
        if region.handle.store().outbox_depth(peer) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("outbox of {} for {peer} never drained", region.files.config.region);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_keeps_every_match_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), &["rotterdam", "utrecht"]).unwrap();
    let mut regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    for r in &regions {
        r.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    }
    let (x, y, z) = ("111222333", "123456782", "047812618");
    let mut rdam = regions[0].org_client("jeugdzorg").await.unwrap();
    let mut utr = regions[1].org_client("jeugdzorg").await.unwrap();
    rdam.register_signal(req(x, "R One")).await.unwrap();
    rdam.register_signal(req(y, "R Two")).await.unwrap();
    let utr_x = utr.register_signal(req(x, "U One")).await.unwrap().into_inner().signal.unwrap().signal_id;
    utr.register_signal(req(z, "U Three")).await.unwrap();
    let r_first = exactly(&regions[0], "jeugdzorg", 0, 1, Duration::from_millis(300)).await;
    let pinned_before = regions[1].handle.store().peer_key("rotterdam").unwrap().expect("pinned on first contact");
    let u_first = exactly(&regions[1], "jeugdzorg", 0, 1, Duration::from_millis(300)).await;
    drained(&regions[0], "utrecht").await;
    drained(&regions[1], "rotterdam").await;

    // Stop Rotterdam and re-key it with the real CLI.
    let rotterdam = regions.remove(0).stop().await.unwrap();
    let key_path = rotterdam.config.blind_key_path();
    let key_before = std::fs::read(&key_path).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virfed"))
        .args(["rekey", "--config"])
        .arg(&rotterdam.config_path)
        .env("VIRFED_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rekey failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("re-keyed: 2 children and 2 peer index entries"), "{stdout}");
    assert_ne!(std::fs::read(&key_path).unwrap(), key_before, "the key file must change");
    assert!(!key_path.with_extension("key.new").exists());

    let rotterdam = RunningRegion::start_with(rotterdam, Arc::new(SystemClock)).await.unwrap();
    regions.insert(0, rotterdam);
    drained(&regions[0], "utrecht").await;
    drained(&regions[1], "rotterdam").await;
    // Utrecht pinned Rotterdam's new key from its announcement (audited), and both ends of
    // the link report the same fingerprint for it.
    let pinned_after = regions[1].handle.store().peer_key("rotterdam").unwrap().unwrap();
    assert_ne!(pinned_after, pinned_before, "the re-key's announcement replaced the pin");
    let announced = regions[1].handle.store().audit_entries().unwrap();
    assert!(announced.iter().any(|e| e.action == "federation.peer-key" && e.detail.contains("replaces")));
    let own = regions[0].handle.health().status().await;
    let theirs = regions[1].handle.health().status().await;
    let utrecht_at_rdam = own.peers.iter().find(|p| p.region == "utrecht").unwrap();
    let rdam_at_utrecht = theirs.peers.iter().find(|p| p.region == "rotterdam").unwrap();
    assert_eq!(rdam_at_utrecht.peer_key_fingerprint, utrecht_at_rdam.own_key_fingerprint);
    assert_eq!(rdam_at_utrecht.peer_key_fingerprint, virfed::federation::pairs::key_fingerprint(&pinned_after));
    // No notice from the re-key itself: the match is kept, not made again.
    let r_cursor = r_first[0].cursor;
    let u_cursor = u_first[0].cursor;
    exactly(&regions[0], "jeugdzorg", r_cursor, 0, Duration::from_millis(800)).await;
    exactly(&regions[1], "jeugdzorg", u_cursor, 0, Duration::from_millis(300)).await;
    let mut rdam = regions[0].org_client("jeugdzorg").await.unwrap();
    let mut utr = regions[1].org_client("jeugdzorg").await.unwrap();
    let listed = rdam.list_matches(pb::ListMatchesRequest {}).await.unwrap().into_inner().matches;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].counterparts[0].region_id, "utrecht");

    // New registrations match under the new key, in both directions.
    utr.register_signal(req(y, "U Two")).await.unwrap();
    rdam.register_signal(req(z, "R Three")).await.unwrap();
    let r_new = exactly(&regions[0], "jeugdzorg", r_cursor, 2, Duration::from_millis(300)).await;
    assert!(r_new.iter().all(|n| n.kind == pb::NoticeKind::MatchCreated as i32));
    let u_new = exactly(&regions[1], "jeugdzorg", u_cursor, 2, Duration::from_millis(300)).await;
    assert!(u_new.iter().all(|n| n.kind == pb::NoticeKind::MatchCreated as i32));

    // The kept pair still ends on withdrawal.
    utr.withdraw_signal(pb::WithdrawSignalRequest {
        signal_id: utr_x,
        reason: pb::WithdrawReason::MadeInError as i32,
        withdrawn_by: pb::Withdrawer::Professional as i32,
    })
    .await
    .unwrap();
    let ended = exactly(&regions[0], "jeugdzorg", r_new[1].cursor, 1, Duration::from_millis(300)).await;
    assert_eq!(ended[0].kind, pb::NoticeKind::MatchEnded as i32);
    assert_eq!(ended[0].counterparts[0].professional.as_ref().unwrap().name, "U One");
}
