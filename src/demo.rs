//! `virfed demo` and `virfed bench`: programs, not library code, so they use anyhow.
//!
//! The demo starts a real region node in a temp dir (fresh CA, mTLS on loopback, sled on
//! disk), registers organisations through the admin API, lets two of them signal the same
//! child and prints the notices each party receives on its watch stream.
//!
//! The benchmark measures durable registrations per second through the whole stack
//! (gRPC over mTLS, validation, transaction, audit chain, group-commit flush) with 4, 16
//! and 64 concurrent clients, next to the floor measured in the same run: raw sled inserts
//! flushed in batches of the same size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_stream::StreamExt;

use crate::client::{format_notice, format_party};
use crate::domain::SystemClock;
use crate::fixture::{contact, RunningRegion, MATCH_OFFICER_ORG};
use crate::pb::client as pb;

/// The first `n` valid BSNs at or after `start` (11-proef), as 9-digit strings.
pub fn valid_bsns(start: u32, n: usize) -> Vec<String> {
    (start..999_999_999).map(|x| format!("{x:09}")).filter(|s| crate::domain::Bsn::parse(s).is_ok()).take(n).collect()
}

fn register_request(bsn: &str, who: &str, email: &str) -> pb::RegisterSignalRequest {
    let c = contact(who, "professional", email);
    pb::RegisterSignalRequest {
        bsn: bsn.into(),
        date_of_birth: "2014-05-01".into(),
        professional: Some(pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
        removal_date: String::new(),
    }
}

/// Reads notices from a watch stream until none arrives for a moment.
async fn drain_notices(region: &RunningRegion, org: &str) -> anyhow::Result<Vec<pb::Notice>> {
    let mut client = region.org_client(org).await?;
    let mut stream = client.watch(pb::WatchRequest { after_cursor: 0 }).await?.into_inner();
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(400), stream.next()).await {
        out.push(item?);
    }
    Ok(out)
}

/// The walkthrough behind `cargo run --release -- demo`.
pub async fn run(keep_running: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("virfed-demo-").tempdir()?;
    println!("== virfed demo: one region on loopback, real mTLS and sled under {}", dir.path().display());
    let region = RunningRegion::start(&dir.path().join("rotterdam"), "rotterdam", Arc::new(SystemClock)).await?;
    println!("node 'rotterdam' listening on {} (client certificates required)", region.addr);

    let coordinator = contact("M. Jansen", "VIR coordinator", "vir@jeugdzorg-rijnmond.example");
    region.add_org("jeugdzorg-rijnmond", "Jeugdzorg Rijnmond", "youth-care", Some(coordinator)).await?;
    region.add_org("lyceum-noord", "Lyceum Noord", "education", None).await?;
    region.add_org(MATCH_OFFICER_ORG, "Gemeente Rotterdam", "other", None).await?;
    println!(
        "registered organisations: jeugdzorg-rijnmond (youth care), lyceum-noord (education), gemeente (match officer)"
    );

    let bsn = "111222333"; // a test BSN from the shared vectors; never printed by the node
    let mut youth = region.org_client("jeugdzorg-rijnmond").await?;
    let mut school = region.org_client("lyceum-noord").await?;
    let first = youth
        .register_signal(register_request(bsn, "A. de Vries", "a.devries@jeugdzorg-rijnmond.example"))
        .await?
        .into_inner();
    let first_id = first.signal.as_ref().map(|s| s.signal_id.clone()).unwrap_or_default();
    println!("\n1. jeugdzorg-rijnmond signals a child        -> signal {first_id} (no match yet)");
    let second =
        school.register_signal(register_request(bsn, "P. Bakker", "p.bakker@lyceum-noord.example")).await?.into_inner();
    let second_id = second.signal.as_ref().map(|s| s.signal_id.clone()).unwrap_or_default();
    println!("2. lyceum-noord signals the same child       -> signal {second_id}: MATCH");
    let again =
        school.register_signal(register_request(bsn, "P. Bakker", "p.bakker@lyceum-noord.example")).await?.into_inner();
    println!("3. lyceum-noord signals it again             -> created = {} (idempotent, D2)", again.created);

    for org in ["jeugdzorg-rijnmond", "lyceum-noord", MATCH_OFFICER_ORG] {
        println!("\n-- notices received by {org} (watch stream):");
        for n in drain_notices(&region, org).await? {
            print!("{}", format_notice(&n));
        }
    }

    let list = school.list_matches(pb::ListMatchesRequest {}).await?.into_inner();
    println!("\n-- lyceum-noord's active matches:");
    for m in &list.matches {
        println!("  signal {}:", m.signal_id);
        for p in &m.counterparts {
            print!("{}", format_party(p));
        }
    }

    youth
        .withdraw_signal(pb::WithdrawSignalRequest {
            signal_id: first_id.clone(),
            reason: pb::WithdrawReason::ConcernResolved as i32,
            withdrawn_by: pb::Withdrawer::Professional as i32,
        })
        .await?;
    println!("\n4. jeugdzorg-rijnmond withdraws (concern resolved) -> archived; lyceum-noord is told:");
    let notices = drain_notices(&region, "lyceum-noord").await?;
    if let Some(last) = notices.last() {
        print!("{}", format_notice(last));
    }

    if keep_running {
        let files = &region.files;
        let (cert, key) =
            files.write_client("lyceum-noord", crate::pki::Identity::Organisation("lyceum-noord".into()))?;
        println!(
            "\nThe node keeps running. Try:\n  virfed matches list --node {} --ca {} --cert {} --key {}\nCtrl-C stops it.",
            region.addr,
            files.dir.join("ca").join("ca.pem").display(),
            cert.display(),
            key.display()
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    region.stop().await?;
    println!(
        "\n== demo done: a match formed between two organisations, both sides and the match officer were notified."
    );
    Ok(())
}

/// Raw floor: `total` sled inserts of `value_len` bytes, flushed every `batch` inserts.
fn sled_floor(batch: usize, total: usize, value_len: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).open()?;
    let tree = db.open_tree("floor")?;
    let value = vec![7u8; value_len];
    let started = Instant::now();
    let mut i = 0u64;
    while (i as usize) < total {
        for _ in 0..batch {
            tree.insert(i.to_be_bytes(), value.as_slice())?;
            i += 1;
        }
        db.flush()?;
    }
    Ok(i as f64 / started.elapsed().as_secs_f64())
}

/// Registrations per second through the store alone (no gRPC, no TLS), `clients` tasks.
async fn store_rate(clients: usize, total: usize) -> anyhow::Result<f64> {
    use crate::domain::{Clock, OrgDomain, OrgId, Organisation};
    let dir = tempfile::tempdir()?;
    let store = crate::store::Store::open(dir.path(), &Default::default())?;
    let clock = SystemClock;
    let org = Organisation {
        id: OrgId::parse("org-a")?,
        name: "Org A".into(),
        domain: OrgDomain::YouthCare,
        coordinator: None,
    };
    store.put_org(&org, "bench", clock.now()).await?;
    let key = crate::pseudonym::LocalKey::from_bytes([1; 32]);
    let bsns = valid_bsns(300_000_000, total);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (store, key, org) = (store.clone(), key.clone(), org.id.clone());
        let mine: Vec<String> = bsns.iter().skip(i).step_by(clients).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for bsn in mine {
                let new = crate::store::NewSignal {
                    child: key.child_key(&crate::domain::Bsn::parse(&bsn)?),
                    org: org.clone(),
                    professional: contact("B. Ench", "professional", "bench@example.nl"),
                    date_of_birth: chrono::NaiveDate::from_ymd_opt(2014, 5, 1).unwrap_or_default(),
                    removal_date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap_or_default(),
                    now: SystemClock.now(),
                    point: None,
                };
                store.register(&new, "bench").await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// `virfed bench`.
pub async fn bench(per_level: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("virfed-bench-").tempdir()?;
    let region = RunningRegion::start(&dir.path().join("bench"), "bench", Arc::new(SystemClock)).await?;
    region.add_org("org-a", "Org A", "youth-care", None).await?;
    let levels = [4usize, 16, 64];
    let bsns = valid_bsns(100_000_000, per_level * levels.len());
    println!("durable registrations/s (gRPC + mTLS + transaction + audit + group-commit flush) vs raw sled insert+flush floor");
    println!(
        "{:>8} {:>14} {:>14} {:>14} {:>8} {:>12}",
        "clients", "registrations/s", "store-only/s", "floor/s", "ratio", "writers/flush"
    );
    for (level_index, &clients) in levels.iter().enumerate() {
        let mine = &bsns[level_index * per_level..(level_index + 1) * per_level];
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(region.org_client("org-a").await?);
        }
        let (f0, w0, _, _) = region.handle.store().write_stats().snapshot();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, mut client) in conns.into_iter().enumerate() {
            let mine: Vec<String> = mine.iter().skip(i).step_by(clients).cloned().collect();
            tasks.push(tokio::spawn(async move {
                for bsn in mine {
                    client.register_signal(register_request(&bsn, "B. Ench", "bench@example.nl")).await?;
                }
                Ok::<_, tonic::Status>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = per_level as f64 / started.elapsed().as_secs_f64();
        let (f1, w1, _, _) = region.handle.store().write_stats().snapshot();
        let (flushes, writers) = (f1 - f0, w1 - w0);
        let floor = tokio::task::spawn_blocking(move || sled_floor(clients, per_level, 400)).await??;
        let store_only = store_rate(clients, per_level).await?;
        println!(
            "{clients:>8} {rate:>14.0} {store_only:>14.0} {floor:>14.0} {:>8.2} {:>12.1}",
            rate / floor,
            writers as f64 / flushes.max(1) as f64
        );
    }
    region.stop().await?;
    Ok(())
}
