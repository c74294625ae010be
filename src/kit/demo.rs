//! `virfed demo`: a walkthrough of the federation, for people.
//!
//! The demo starts a federation of three regions in a temp dir (a federation CA and node
//! certificates minted on the fly, mTLS on loopback, sled on disk), registers
//! organisations through the admin API, and walks through a cross-border match, a child in
//! all three regions, a withdrawal that ends a match on both sides, a region that goes
//! down and catches up when it returns, and a cross-border family match (siblings). Every step reads the notices from the watch
//! streams, as a regional application would.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::fixture::{contact, register_request, FederationFiles, RunningRegion, MATCH_OFFICER_ORG};
use super::{fail, KitError, KitResult};
use crate::client::format_notice;
use crate::domain::SystemClock;
use crate::pb::client as pb;

/// Reads exactly `n` notices after `after` from the org's watch stream (15 s at most each).
async fn next_notices(region: &RunningRegion, org: &str, after: u64, n: usize) -> KitResult<Vec<pb::Notice>> {
    let mut client = region.org_client(org).await?;
    let mut stream = client.watch(pb::WatchRequest { after_cursor: after }).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(item)) => out.push(item?),
            _ => fail!("{org} in {} expected {n} notices, got {}", region.files.config.region, out.len()),
        }
    }
    Ok(out)
}

fn show(region: &RunningRegion, org: &str, notices: &[pb::Notice]) {
    for n in notices {
        print!("  [{} / {org}] {}", region.files.config.region, format_notice(n));
    }
}

async fn register(region: &RunningRegion, org: &str, bsn: &str, who: &str) -> KitResult<String> {
    let email = format!("{}@{org}.example", who.to_lowercase().replace([' ', '.'], ""));
    let resp = region.org_client(org).await?.register_signal(register_request(bsn, who, &email)).await?.into_inner();
    Ok(resp.signal.map(|s| s.signal_id).unwrap_or_default())
}

/// A registration with the child's parents (family matches).
async fn register_family(region: &RunningRegion, org: &str, bsn: &str, parents: &[&str], who: &str) -> KitResult<()> {
    let email = format!("{}@{org}.example", who.to_lowercase().replace([' ', '.'], ""));
    let request = super::fixture::register_with_parents(bsn, parents, who, &email);
    region.org_client(org).await?.register_signal(request).await?;
    Ok(())
}

/// Notices after `after` until a family match notice.
async fn collect_until_family(region: &RunningRegion, org: &str, after: u64) -> KitResult<Vec<pb::Notice>> {
    let mut cursor = after;
    loop {
        let next = next_notices(region, org, cursor, 1).await?;
        cursor = next[0].cursor;
        if next[0].family {
            return Ok(next);
        }
    }
}

/// The walkthrough behind `cargo run --release -- demo`: three regions on loopback.
pub async fn run(keep_running: bool) -> KitResult<()> {
    let dir = tempfile::Builder::new().prefix("virfed-demo-").tempdir()?;
    let names = ["rotterdam", "utrecht", "zwolle"];
    println!("== virfed demo: a federation of {} regions on loopback", names.len());
    println!(
        "   federation CA, node certificates and mutual TLS minted on the fly; sled stores under {}",
        dir.path().display()
    );
    let files = FederationFiles::create(dir.path(), &names)?;
    let clock: Arc<dyn crate::domain::Clock> = Arc::new(SystemClock);
    let mut regions = RunningRegion::start_federation(files, clock.clone()).await?;
    for r in &regions {
        let name = r.files.config.region.clone();
        let peer = r.files.config.federation.as_ref().map(|f| f.listen.to_string()).unwrap_or_default();
        println!("   node {name:<10} client API {}  peer API {peer}", r.addr);
        let coordinator = contact("M. Jansen", "VIR coordinator", &format!("vir@jeugdzorg-{name}.example"));
        r.add_org(&format!("jeugdzorg-{name}"), &format!("Jeugdzorg {name}"), "youth-care", Some(coordinator)).await?;
        r.add_org(&format!("school-{name}"), &format!("Lyceum {name}"), "education", None).await?;
        r.add_org(MATCH_OFFICER_ORG, &format!("Gemeente {name}"), "other", None).await?;
    }
    // Test BSNs from the shared vectors; the nodes never print, store or send them.
    let (child_a, child_b, child_c) = ("111222333", "123456782", "047812618");

    println!("\n1. One child, two regions: jeugdzorg in Rotterdam and a school in Utrecht signal it.");
    register(&regions[0], "jeugdzorg-rotterdam", child_a, "A. de Vries").await?;
    let utrecht_a = register(&regions[1], "school-utrecht", child_a, "P. Bakker").await?;
    show(&regions[0], "jeugdzorg-rotterdam", &next_notices(&regions[0], "jeugdzorg-rotterdam", 0, 1).await?);
    show(&regions[1], "school-utrecht", &next_notices(&regions[1], "school-utrecht", 0, 1).await?);

    println!("\n2. Another child, signalled in all three regions.");
    let mut cursors = Vec::new();
    for (r, who) in regions.iter().zip(["K. Smit", "L. Visser", "J. Mulder"]) {
        let org = format!("school-{}", r.files.config.region);
        let last = next_notices_after_all(r, &org).await?;
        register(r, &org, child_b, who).await?;
        cursors.push((org, last));
    }
    for (r, (org, last)) in regions.iter().zip(&cursors) {
        let seen = collect_until_parties(r, org, *last, 2).await?;
        show(r, org, &seen);
    }

    println!(
        "\n3. Utrecht withdraws its signal on the first child (concern resolved): the match ends in Rotterdam too."
    );
    let before = next_notices_after_all(&regions[0], "jeugdzorg-rotterdam").await?;
    regions[1]
        .org_client("school-utrecht")
        .await?
        .withdraw_signal(pb::WithdrawSignalRequest {
            signal_id: utrecht_a,
            reason: pb::WithdrawReason::ConcernResolved as i32,
            withdrawn_by: pb::Withdrawer::Professional as i32,
        })
        .await?;
    let ended = next_notices(&regions[0], "jeugdzorg-rotterdam", before, 2).await?;
    show(&regions[0], "jeugdzorg-rotterdam", &ended[..1]);

    println!("\n4. Zwolle signals a third child, then goes down; Rotterdam signals the same child meanwhile.");
    register(&regions[2], "jeugdzorg-zwolle", child_c, "T. de Boer").await?;
    let zwolle_before = next_notices_after_all(&regions[2], "jeugdzorg-zwolle").await?;
    let Some(zwolle) = regions.pop() else { fail!("the demo starts three regions") };
    let zwolle_files = zwolle.stop().await?;
    println!("   zwolle stopped");
    let before = next_notices_after_all(&regions[0], "jeugdzorg-rotterdam").await?;
    register(&regions[0], "jeugdzorg-rotterdam", child_c, "A. de Vries").await?;
    let queued = regions[0].handle.store().outbox_depth("zwolle");
    println!("   rotterdam's outbox for zwolle holds {queued} item(s), kept on disk until zwolle acknowledges them");
    let zwolle = RunningRegion::start_with(zwolle_files, clock.clone()).await?;
    println!("   zwolle restarted: it catches up by itself");
    show(
        &regions[0],
        "jeugdzorg-rotterdam",
        &collect_until_region(&regions[0], "jeugdzorg-rotterdam", before, "zwolle").await?,
    );
    show(
        &zwolle,
        "jeugdzorg-zwolle",
        &collect_until_region(&zwolle, "jeugdzorg-zwolle", zwolle_before, "rotterdam").await?,
    );
    regions.push(zwolle);

    println!(
        "\n5. A family match across the border: a school in Rotterdam signals a girl, jeugdzorg in Zwolle her\n   brother. They share their mother in the population register; the nodes compare the parents as\n   blinded pseudonyms, so both professionals learn of each other and nothing about which child,\n   which parent, or how they are related."
    );
    let (sister, brother, mother, father) = ("065444942", "095607481", "132650460", "146563256");
    let rs_before = next_notices_after_all(&regions[0], "school-rotterdam").await?;
    let zj_before = next_notices_after_all(&regions[2], "jeugdzorg-zwolle").await?;
    register_family(&regions[0], "school-rotterdam", sister, &[mother, father], "S. Jacobs").await?;
    register_family(&regions[2], "jeugdzorg-zwolle", brother, &[mother], "R. Peters").await?;
    show(&regions[0], "school-rotterdam", &collect_until_family(&regions[0], "school-rotterdam", rs_before).await?);
    show(&regions[2], "jeugdzorg-zwolle", &collect_until_family(&regions[2], "jeugdzorg-zwolle", zj_before).await?);

    let mut notices = 0usize;
    for r in &regions {
        for o in r.handle.store().orgs()? {
            notices += r.handle.store().notices_after(&o.id, 0, usize::MAX)?.len();
        }
    }
    println!(
        "\n== demo done: {} regions, cross-border child and family matches formed, ended and caught up after an outage; {notices} notices stored, no BSN ever left its region.",
        regions.len()
    );
    if keep_running {
        let r = &regions[0];
        let (cert, key) =
            r.files.write_client("school-rotterdam", crate::pki::Identity::Organisation("school-rotterdam".into()))?;
        println!(
            "\nThe federation keeps running. Try:\n  virfed matches list --node {} --server-name localhost --ca {} --cert {} --key {}\nCtrl-C stops it.",
            r.addr,
            r.files.dir.join("ca").join("ca.pem").display(),
            cert.display(),
            key.display()
        );
        tokio::signal::ctrl_c().await.map_err(|e| KitError::context("waiting for Ctrl-C", e))?;
    }
    for r in regions {
        r.stop().await?;
    }
    Ok(())
}

/// The org's latest notice cursor (0 if none).
async fn next_notices_after_all(region: &RunningRegion, org: &str) -> KitResult<u64> {
    let id = crate::domain::OrgId::parse(org)?;
    Ok(region.handle.store().notices_after(&id, 0, usize::MAX)?.last().map(|(c, _)| *c).unwrap_or(0))
}

/// Professional notices after `after` until they name `regions` other regions.
async fn collect_until_parties(
    region: &RunningRegion,
    org: &str,
    after: u64,
    regions: usize,
) -> KitResult<Vec<pb::Notice>> {
    let mut out: Vec<pb::Notice> = Vec::new();
    let mut cursor = after;
    loop {
        let next = next_notices(region, org, cursor, 1).await?;
        cursor = next[0].cursor;
        out.extend(next);
        let mut seen: Vec<&str> =
            out.iter().flat_map(|n| n.counterparts.iter().map(|p| p.region_id.as_str())).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() >= regions {
            return Ok(out);
        }
    }
}

/// Notices after `after` until one names a party of `from`.
async fn collect_until_region(region: &RunningRegion, org: &str, after: u64, from: &str) -> KitResult<Vec<pb::Notice>> {
    let mut cursor = after;
    loop {
        let next = next_notices(region, org, cursor, 1).await?;
        cursor = next[0].cursor;
        if next[0].counterparts.iter().any(|p| p.region_id == from) {
            return Ok(next);
        }
    }
}
