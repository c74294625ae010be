//! `virfed bench`: figures next to the floors they are measured against, in one run.
//!
//! - `register`: durable registrations per second through the whole stack (gRPC over
//!   mTLS, validation, one transaction with audit entry, group-commit flush) with 4, 16 and
//!   64 concurrent clients, beside the store alone and the raw floor: sled inserts flushed
//!   in batches of the same size.
//! - `crypto`: peer blind operations (decode, multiply, encode: what a peer does per
//!   published child) per second on one core, beside raw ristretto255 scalar
//!   multiplications.
//! - `join`: time for a new region to join N regions of M children each, beside the crypto
//!   floor (the multiplications and proof work needed ÷ cores), and the newcomer's store
//!   footprint (disk per (child, peer) entry against its logical bytes) and peak RSS.
//! - `national`: joins at growing sizes, the curve of per-item cost, disk per entry and
//!   memory they draw, and what it says a node needs at national scale and ten times.
//! - `latency`: cross-region match latency p50/p99 on loopback, beside one flush plus one
//!   mTLS round trip.
//! - `status` ([`status`](status())): a status sweep over N nodes beside N health checks,
//!   and the cost of a `/metrics` scrape.
//!
//! The raw floors measure the storage engine itself, beneath the store, through
//! `store::engine::Floor` (so the engines stay named in one file). `register`, `join`,
//! `national` and `latency` take `--engine sled|redb` (`national`: `--engines`, side by
//! side in one run): every store of the run, and the raw floors, on that engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fixture::{contact, register_request, valid_bsns, FederationFiles, RegionFiles, RunningRegion};
use super::{KitError, KitResult};
use crate::domain::SystemClock;
use crate::pb::client as pb;
use crate::store::Engine;

mod status;
pub use status::status;

/// Raw floor: `total` inserts of `value_len` bytes into the bare storage engine, flushed
/// every `batch` inserts.
fn engine_floor(engine: Engine, batch: usize, total: usize, value_len: usize) -> KitResult<f64> {
    let dir = tempfile::tempdir()?;
    Ok(crate::store::engine::Floor::open(dir.path(), engine)?.insert_flush_rate(batch, total, value_len)?)
}

/// Raw floor of one durable write: a bare engine database under `dir`, and a writer that
/// inserts 400 bytes under key `i` and flushes.
fn flush_floor_db(dir: &std::path::Path, engine: Engine) -> KitResult<impl FnMut(u64) -> KitResult<()>> {
    let floor = crate::store::engine::Floor::open(dir, engine)?;
    Ok(move |i: u64| {
        floor.insert(i, &[0u8; 400])?;
        floor.flush()?;
        Ok(())
    })
}

/// Registrations per second through the store alone (no gRPC, no TLS), `clients` tasks.
async fn store_rate(engine: Engine, clients: usize, total: usize) -> KitResult<f64> {
    use crate::domain::{Clock, OrgDomain, OrgId, Organisation};
    let dir = tempfile::tempdir()?;
    let store = crate::store::Store::open(dir.path(), &crate::store::StoreOptions { engine, ..Default::default() })?;
    let registry = crate::registry::Registry::new(store.clone());
    let clock = SystemClock;
    let org = Organisation {
        id: OrgId::parse("org-a")?,
        name: "Org A".into(),
        domain: OrgDomain::YouthCare,
        coordinator: None,
    };
    registry.put_org(&org, "bench", clock.now()).await?;
    let key = crate::pseudonym::LocalKey::from_bytes([1; 32]);
    let bsns = valid_bsns(300_000_000, total);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (registry, key, org) = (registry.clone(), key.clone(), org.id.clone());
        let mine: Vec<String> = bsns.iter().skip(i).step_by(clients).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for bsn in mine {
                let new = crate::registry::NewSignal {
                    child: key.child_key(&crate::domain::Bsn::parse(&bsn)?),
                    org: org.clone(),
                    professional: contact("B. Ench", "professional", "bench@example.nl"),
                    date_of_birth: chrono::NaiveDate::from_ymd_opt(2014, 5, 1).unwrap_or_default(),
                    removal_date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap_or_default(),
                    now: SystemClock.now(),
                    point: None,
                    parents: vec![],
                    lookup: None,
                };
                registry.register(&new, "bench").await?;
            }
            Ok::<_, super::KitError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (flushes, jobs, flush_us, txn_us) = store.write_stats().snapshot();
    if std::env::var_os("VIRFED_BENCH_DETAIL").is_some() {
        eprintln!(
            "  store-only, {clients} clients: {flushes} batches of {:.1} jobs; per batch {:.0} us in the transaction, {:.0} us flushing",
            jobs as f64 / flushes.max(1) as f64,
            txn_us as f64 / flushes.max(1) as f64,
            flush_us as f64 / flushes.max(1) as f64
        );
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// `virfed bench register`.
pub async fn register(per_level: usize, engine: Engine) -> KitResult<()> {
    let dir = tempfile::Builder::new().prefix("virfed-bench-").tempdir()?;
    let mut files =
        RegionFiles::create(&dir.path().join("bench"), "bench", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    files.config.store.engine = engine;
    // The benchmark is one organisation registering as fast as it can: exactly what the
    // registration rate limit is there to stop, so it is lifted for this run.
    let levels = [4usize, 16, 64];
    let wanted = (per_level * levels.len()) as u64;
    files.config.registration_limits.burst = wanted;
    files.config.registration_limits.per_hour = wanted;
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await?;
    region.add_org("org-a", "Org A", "youth-care", None).await?;
    let bsns = valid_bsns(100_000_000, per_level * levels.len());
    println!(
        "durable registrations/s (gRPC + mTLS + transaction + audit + group-commit flush) vs raw {} insert+flush floor",
        engine.name()
    );
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
        let floor = tokio::task::spawn_blocking(move || engine_floor(engine, clients, per_level, 400)).await??;
        let store_only = store_rate(engine, clients, per_level).await?;
        println!(
            "{clients:>8} {rate:>14.0} {store_only:>14.0} {floor:>14.0} {:>8.2} {:>12.1}",
            rate / floor,
            writers as f64 / flushes.max(1) as f64
        );
    }
    region.stop().await?;
    Ok(())
}

/// Raw ristretto255 scalar multiplications per second on one core, and peer blind
/// operations (decode + multiply + encode of a received point) per second on one core.
pub fn crypto_rates(n: usize) -> (f64, f64) {
    use crate::pseudonym::BlindKey;
    use curve25519_dalek::ristretto::RistrettoPoint;
    use curve25519_dalek::scalar::Scalar;
    let key = BlindKey::random();
    let points: Vec<[u8; 32]> = valid_bsns(200_000_000, 64)
        .iter()
        .filter_map(|b| crate::domain::Bsn::parse(b).ok())
        .map(|b| BlindKey::random().blind_bsn(&b))
        .collect();
    let decoded: Vec<RistrettoPoint> =
        points.iter().filter_map(|p| curve25519_dalek::ristretto::CompressedRistretto(*p).decompress()).collect();
    let scalar = Scalar::from_bytes_mod_order([7u8; 32]);
    // As the peer API does it: whole batches of received points.
    let batch: Vec<[u8; 32]> = (0..256).map(|i| points[i % points.len()]).collect();
    // Alternate short rounds of both and keep each one's best, so a busy neighbour on the
    // machine slows both alike instead of skewing the ratio.
    let (mut raw, mut blind) = (0f64, 0f64);
    let per_round = (n / 8).max(256);
    for _ in 0..8 {
        let started = Instant::now();
        let mut acc = RistrettoPoint::default();
        for i in 0..per_round {
            acc += decoded[i % decoded.len()] * scalar;
        }
        std::hint::black_box(acc);
        raw = raw.max(per_round as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let mut sink = 0u8;
        let mut done = 0;
        while done < per_round {
            if let Ok(d) = key.blind_points(&batch) {
                sink ^= d[0][0];
            }
            done += batch.len();
        }
        std::hint::black_box(sink);
        blind = blind.max(done as f64 / started.elapsed().as_secs_f64());
    }
    (raw, blind)
}

/// `virfed bench crypto`.
pub fn crypto(n: usize) {
    let (raw, blind) = crypto_rates(n);
    println!("peer blind operations per second per core vs raw ristretto255 scalar multiplications");
    println!("{:>16} {:>16} {:>8}", "blind ops/s", "scalar mults/s", "ratio");
    println!("{blind:>16.0} {raw:>16.0} {:>8.2}", blind / raw);
    let proven = proof_rates(n);
    println!();
    println!("proven answers (RFC 9497 batched DLEQ, batches of {PROOF_BATCH}), per item per core");
    println!("{:>22} {:>14} {:>14}", "", "items/s", "µs/item");
    for (name, rate) in [
        ("blind", proven.blind),
        ("blind + prove", proven.blind_and_prove),
        ("verify", proven.verify),
        ("raw scalar mult", raw),
    ] {
        println!("{name:>22} {rate:>14.0} {:>14.2}", 1e6 / rate);
    }
    // A verified exchange costs the answerer blind + prove and the asker verify.
    let verified = 1.0 / (1.0 / proven.blind_and_prove + 1.0 / proven.verify);
    println!(
        "{:>22} {verified:>14.0} {:>14.2}   ratio to unverified (blind only): {:.2} (target ≥ 0.5)",
        "verified exchange",
        1e6 / verified,
        verified / proven.blind
    );
}

/// Items per batch in the proof benchmark: a full exchange.
const PROOF_BATCH: usize = 256;

/// Per-item rates of blinding a batch, blinding and proving it, and verifying the proof.
pub struct ProofRates {
    pub blind: f64,
    pub blind_and_prove: f64,
    pub verify: f64,
    /// The sender's side: a stored base point times the per-peer tweak.
    pub publish: f64,
}

impl ProofRates {
    /// CPU seconds of crypto one join item needs at least: the sender's per-peer
    /// multiplication, the answerer's blind and proof, the asker's verification.
    pub fn join_item_seconds(&self) -> f64 {
        1.0 / self.publish + 1.0 / self.blind_and_prove + 1.0 / self.verify
    }
}

/// Measures [`ProofRates`] over about `n` items, best of alternating rounds.
pub fn proof_rates(n: usize) -> ProofRates {
    use crate::pseudonym::BlindKey;
    let key = BlindKey::random();
    let public = crate::dleq::public_key(&key);
    let inputs: Vec<[u8; 32]> = valid_bsns(210_000_000, PROOF_BATCH)
        .iter()
        .filter_map(|b| crate::domain::Bsn::parse(b).ok())
        .map(|b| BlindKey::random().blind_bsn(&b))
        .collect();
    let context = crate::dleq::virfed_context("utrecht", "rotterdam", 7).unwrap_or_default();
    let mut rng = rand::thread_rng();
    let rounds = (n / PROOF_BATCH / 4).clamp(1, 64);
    let towards = key.towards("rotterdam");
    let (mut blind, mut proved, mut verified, mut published) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..4 {
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(towards.publish_points(&inputs).ok());
        }
        published = published.max((rounds * inputs.len()) as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(key.blind_points(&inputs).ok());
        }
        blind = blind.max((rounds * inputs.len()) as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let mut last = None;
        // As the peer API does it: each received point decoded once, blinded, proven.
        for _ in 0..rounds {
            let decoded = crate::pseudonym::decode_points(&inputs).unwrap_or_default();
            let answers = key.blind_decoded(&decoded);
            let proof = crate::dleq::prove_decoded(&key, &decoded, &inputs, &answers, &context, &mut rng).ok();
            last = proof.map(|p| (answers, p.to_bytes()));
        }
        proved = proved.max((rounds * inputs.len()) as f64 / started.elapsed().as_secs_f64());
        let Some((answers, proof)) = last else { continue };
        // The asker holds its published points decoded (it computed them).
        let decoded = crate::pseudonym::decode_points(&inputs).unwrap_or_default();
        let started = Instant::now();
        for _ in 0..rounds {
            let ok = crate::dleq::verify_decoded(&public, &decoded, &inputs, &answers, &proof, &context).is_ok();
            std::hint::black_box(ok);
        }
        verified = verified.max((rounds * inputs.len()) as f64 / started.elapsed().as_secs_f64());
    }
    ProofRates { blind, blind_and_prove: proved, verify: verified, publish: published }
}

/// The parents of the `i`-th child of a bench run (`--parents`): children come in sibling
/// pairs; of every 10 families 1 lists no parent, 3 one and 6 two (a realistic mix), drawn
/// from a pool of parent BSNs apart from the children's.
fn bench_parents(pool: &[String], i: usize) -> Vec<String> {
    let family = i / 2;
    let n = match family % 10 {
        0 => 0,
        1..=3 => 1,
        _ => 2,
    };
    (0..n).map(|k| pool[(2 * family + k) % pool.len()].clone()).collect()
}

/// What to run in one join benchmark.
#[derive(Clone, Copy, Debug)]
pub struct JoinSetup {
    /// Regions already in the federation.
    pub regions: usize,
    /// Children per region.
    pub signals: usize,
    /// Every child with 0-2 parents (see [`bench_parents`]).
    pub parents: bool,
    /// Every store created with compressed pages (`[store] compression`).
    pub compression: bool,
    /// Every node's page cache (`[store] cache_mb`).
    pub cache_mb: u64,
    /// Every node's storage engine (`[store] engine`).
    pub engine: Engine,
}

/// What one join benchmark measured.
pub struct JoinFigures {
    pub items: usize,
    pub wall: f64,
    pub floor: f64,
    /// The newcomer's store after the join.
    pub footprint: crate::store::Footprint,
    pub peak_disk: u64,
    pub quiet_disk: u64,
    pub rest_disk: u64,
    /// Peak RSS of this process (every node of the run), where the system reports it.
    pub peak_rss: Option<u64>,
    /// (child, peer) entries over every node of the run.
    pub all_entries: u64,
}

/// `virfed bench join`: a new region joins `regions` regions of `signals` children each
/// (with `parents`, every child has 0-2 parents, see [`bench_parents`]).
pub async fn join(setup: JoinSetup) -> KitResult<()> {
    let f = join_run(setup).await?;
    let JoinSetup { regions, signals, parents, compression, engine, .. } = setup;
    let with = if parents { " with 0-2 parents each" } else { "" };
    let zstd = if compression { ", compressed stores" } else { "" };
    println!(
        "join of a new region: {regions} regions x {signals} children{with}, {} stores{zstd}, {} join items (publishes)",
        engine.name(),
        f.items
    );
    println!(
        "floor: per item one per-peer multiplication, one blind + proof, one verification = {:.1} µs of crypto, over {} cores",
        f.floor / f.items as f64 * cores() * 1e6,
        cores()
    );
    println!("{:>12} {:>12} {:>8} {:>14}", "wall s", "floor s", "ratio", "ms per item");
    println!("{:>12.2} {:>12.2} {:>8.2} {:>14.3}", f.wall, f.floor, f.wall / f.floor, f.wall * 1000.0 / f.items as f64);
    print_footprint(&f);
    Ok(())
}

fn cores() -> f64 {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64
}

/// Runs one join and measures it.
pub async fn join_run(setup: JoinSetup) -> KitResult<JoinFigures> {
    let JoinSetup { regions, signals, parents, compression, cache_mb, engine } = setup;
    let dir = tempfile::Builder::new().prefix("virfed-bench-join-").tempdir()?;
    let mut names: Vec<String> = (0..regions).map(|i| format!("region-{i:02}")).collect();
    names.push("newcomer".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // A star: every region peers with the newcomer only, so the run measures the join.
    let mut files = FederationFiles::create_star(dir.path(), &refs, "newcomer")?;
    for region in files.regions.iter_mut() {
        // Compression is a sled option (the config refuses it with redb).
        region.config.store.compression = compression && engine == Engine::Sled;
        region.config.store.cache_mb = cache_mb;
        region.config.store.engine = engine;
    }
    let clock: Arc<dyn crate::domain::Clock> = Arc::new(SystemClock);
    // Fill each store before the nodes start (children published when the node first runs).
    let bsns = valid_bsns(300_000_000, signals * 2);
    let pool = if parents { valid_bsns(700_000_000, signals * 2) } else { Vec::new() };
    let started = Instant::now();
    // What each region's index of the other side must hold at the end: its children and
    // each of their parents once.
    let mut subjects = Vec::new();
    for (i, region) in files.regions.iter().enumerate() {
        // Half of each region's children are shared with the newcomer, so pairs form.
        let range = if i == regions { 0..signals } else { signals / 2..signals / 2 + signals };
        let mine: Vec<(&String, Vec<String>)> =
            range.map(|k| (&bsns[k], if parents { bench_parents(&pool, k) } else { Vec::new() })).collect();
        let distinct: std::collections::BTreeSet<&String> = mine.iter().flat_map(|(_, p)| p.iter()).collect();
        subjects.push(signals + distinct.len());
        prefill(region, &mine).await?;
    }
    eprintln!(
        "prefilled {} regions x {signals} children in {:.1} s (RSS now {:.0} MiB, peak {:.0} MiB)",
        regions + 1,
        started.elapsed().as_secs_f64(),
        mib(rss_bytes("VmRSS:").unwrap_or(0)),
        mib(rss_bytes("VmHWM:").unwrap_or(0)),
    );
    let newcomer_path = files.regions[regions].config.store_path();
    let options = crate::store::StoreOptions::of(&files.regions[regions].config.store);
    let started = Instant::now();
    let running = RunningRegion::start_federation(files, clock).await?;
    let newcomer = &running[regions];
    let mut peak_disk = 0u64;
    let mut progress = Instant::now();
    // Done when no outbox holds anything, every region indexes all the newcomer's children
    // and the newcomer all of every region's. Counting an index is a scan, so it waits for
    // the outboxes, which are checked by their first key: the poll must not cost the nodes
    // what it measures.
    let indexed = |names: &[String]| -> (bool, usize) {
        let mut done = true;
        let mut n = 0;
        for (i, (r, name)) in running[..regions].iter().zip(names).enumerate() {
            let (theirs, mine) =
                (r.handle.store().peer_index_len("newcomer"), newcomer.handle.store().peer_index_len(name));
            n += theirs + mine;
            done &= theirs == subjects[regions] && mine == subjects[i];
        }
        (done, n)
    };
    let empty = |r: &RunningRegion, peer: &str| r.handle.store().outbox_oldest(peer).is_ok_and(|o| o.is_none());
    loop {
        peak_disk = peak_disk.max(newcomer.handle.store().size_on_disk().unwrap_or(0));
        let quiet = running[..regions]
            .iter()
            .zip(&names[..regions])
            .all(|(r, name)| empty(r, "newcomer") && empty(newcomer, name));
        if quiet && indexed(&names[..regions]).0 {
            break;
        }
        if progress.elapsed() > Duration::from_secs(15) {
            eprintln!("  {:.0} s: {} entries indexed", started.elapsed().as_secs_f64(), indexed(&names[..regions]).1);
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    for r in &running {
        let (flushes, jobs, flush_us, txn_us) = r.handle.store().write_stats().snapshot();
        eprintln!(
            "  {}: {flushes} batches, {jobs} jobs, {:.0} ms in transactions, {:.0} ms flushing",
            r.files.config.region,
            txn_us as f64 / 1000.0,
            flush_us as f64 / 1000.0
        );
    }
    eprintln!("  joined: RSS now {:.0} MiB", mib(rss_bytes("VmRSS:").unwrap_or(0)));
    let quiet_disk = newcomer.handle.store().size_on_disk()?;
    let footprint = newcomer.handle.store().footprint()?;
    let peak_rss = peak_rss_bytes();
    let mut all_entries = 0;
    for r in &running {
        all_entries += r.handle.store().footprint()?.entries;
    }
    // Every region blinds the newcomer's subjects (children and parents) and the newcomer
    // blinds every region's.
    let items: usize = subjects[..regions].iter().sum::<usize>() + regions * subjects[regions];
    let floor = items as f64 * proof_rates((items * 4).clamp(4096, 20_000)).join_item_seconds() / cores();
    for r in running {
        r.stop().await?;
    }
    // At rest: the newcomer's store reopened after a clean stop.
    let rest_disk = crate::store::Store::open(&newcomer_path, &options)?.size_on_disk()?;
    Ok(JoinFigures { items, wall, floor, footprint, peak_disk, quiet_disk, rest_disk, peak_rss, all_entries })
}

/// The newcomer's store after a join: disk per (child, peer) entry against the logical
/// bytes (keys and values) the store holds per entry.
fn print_footprint(j: &JoinFigures) {
    let f = &j.footprint;
    let (keys, logical) = f.total();
    let entries = f.entries.max(1) as f64;
    println!(
        "newcomer store: {} (child, peer) entries, {keys} keys, {:.1} MiB logical ({:.0} bytes and {:.1} keys per entry)",
        f.entries,
        mib(logical),
        logical as f64 / entries,
        keys as f64 / entries
    );
    println!("{:>18} {:>12} {:>16} {:>22}", "disk", "MiB", "bytes per entry", "ratio to logical");
    for (name, bytes) in
        [("peak (join)", j.peak_disk), ("quiet (joined)", j.quiet_disk), ("at rest (reopened)", j.rest_disk)]
    {
        println!(
            "{name:>18} {:>12.1} {:>16.0} {:>22.2}",
            mib(bytes),
            bytes as f64 / entries,
            bytes as f64 / logical.max(1) as f64
        );
    }
    let by_table: Vec<String> = f
        .tables
        .iter()
        .filter(|t| t.keys > 0)
        .map(|t| format!("{} {} keys {:.1} MiB", t.name, t.keys, mib(t.bytes)))
        .collect();
    println!("  by table: {}", by_table.join(", "));
    match j.peak_rss {
        Some(rss) => println!(
            "peak RSS of this process (every node of the run, {} entries in all, and their clients): {:.0} MiB",
            j.all_entries,
            mib(rss)
        ),
        None => println!("peak RSS: not available on this system"),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// (child, peer) entries a node holds at today's national scale: ~29 peers × ~57,000
/// children, each way (issue 12).
pub const NATIONAL_ENTRIES: f64 = 2.0 * 29.0 * 57_000.0;

/// `virfed bench national`: joins at growing sizes (`signals` children per region, 4
/// regions), and the curve they draw: per-item join cost, disk per entry and memory, with
/// what the curve says a node needs at national scale and at ten times (extrapolated).
pub async fn national(sizes: &[usize], engines: &[Engine], compression: bool, cache_mb: u64) -> KitResult<()> {
    // Peak RSS is the process's: with several engines, each runs in a process of its own
    // (this binary again), one after the other, so no engine's figure holds another's.
    if engines.len() > 1 {
        let exe = std::env::current_exe()?;
        let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
        for engine in engines {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["bench", "national", "--sizes", &sizes.join(","), "--engines", engine.name()]);
            cmd.args(["--cache-mb", &cache_mb.to_string()]);
            if compression && *engine == Engine::Sled {
                cmd.arg("--compression");
            }
            let status = cmd.status()?;
            if !status.success() {
                return Err(KitError::Failed(format!("bench national with {} stores: {status}", engine.name())));
            }
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for &engine in engines {
        let mut rows = Vec::new();
        for &signals in sizes {
            let setup = JoinSetup { regions: 4, signals, parents: false, compression, cache_mb, engine };
            eprintln!("national: join of 4 x {signals} children, {} stores", engine.name());
            rows.push((signals, join_run(setup).await?));
        }
        runs.push((engine, rows));
    }
    for (engine, rows) in runs {
        print_national(engine, &rows, compression, cache_mb);
    }
    Ok(())
}

/// One engine's table and extrapolation of [`national`].
fn print_national(engine: Engine, rows: &[(usize, JoinFigures)], compression: bool, cache_mb: u64) {
    let zstd = if compression { " (compressed stores)" } else { "" };
    println!(
        "{}: join cost and store footprint by size{zstd}: a newcomer joins 4 regions, {cache_mb} MiB page cache per node",
        engine.name()
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "entries",
        "items",
        "wall s",
        "floor s",
        "ratio",
        "ms/item",
        "disk MiB",
        "B/entry",
        "logical",
        "ratio",
        "RSS MiB"
    );
    for (_, f) in rows {
        let (_, logical) = f.footprint.total();
        let entries = f.footprint.entries.max(1) as f64;
        println!(
            "{:>10} {:>9} {:>8.1} {:>8.2} {:>7.2} {:>9.3} {:>10.1} {:>10.0} {:>9.0} {:>9.2} {:>10}",
            f.footprint.entries,
            f.items,
            f.wall,
            f.floor,
            f.wall / f.floor,
            f.wall * 1000.0 / f.items as f64,
            mib(f.peak_disk),
            f.peak_disk as f64 / entries,
            logical as f64 / entries,
            f.peak_disk as f64 / logical.max(1) as f64,
            f.peak_rss.map(|r| format!("{:.0}", mib(r))).unwrap_or_else(|| "-".into()),
        );
    }
    // Extrapolation: disk per entry and per-item cost from the largest run, with their
    // growth per doubling of the store from the two largest; memory from the slope of RSS
    // against the entries every node of the run held.
    if let [.., (_, a), (_, b)] = rows {
        let per_entry = |f: &JoinFigures| f.peak_disk as f64 / f.footprint.entries.max(1) as f64;
        let per_item = |f: &JoinFigures| f.wall / f.items as f64;
        let doublings = (b.footprint.entries as f64 / a.footprint.entries.max(1) as f64).log2().max(1e-9);
        let disk_growth = (per_entry(b) / per_entry(a)).powf(1.0 / doublings);
        let cost_growth = (per_item(b) / per_item(a)).powf(1.0 / doublings);
        println!(
            "per doubling of the store: disk per entry x{disk_growth:.3}, join cost per item x{cost_growth:.3} (from the two largest runs)"
        );
        let rss_slope = match (a.peak_rss, b.peak_rss) {
            (Some(ra), Some(rb)) if b.all_entries > a.all_entries => {
                Some((rb as f64 - ra as f64).max(0.0) / (b.all_entries - a.all_entries) as f64)
            }
            _ => None,
        };
        let cache = cache_mb as f64;
        for (name, entries) in [("national scale", NATIONAL_ENTRIES), ("ten times national", 10.0 * NATIONAL_ENTRIES)] {
            let d = (entries / b.footprint.entries.max(1) as f64).log2().max(0.0);
            let disk = per_entry(b) * disk_growth.powf(d) * entries;
            let item = per_item(b) * cost_growth.powf(d);
            let memory = rss_slope.map(|s| format!("{:.0} MiB", cache + s * entries / (1024.0 * 1024.0)));
            println!(
                "extrapolated, {name} ({:.1} M entries): disk {:.1} GiB, a full join or resync {:.0} min at {:.2} ms per item, memory {} (the {cache:.0} MiB page cache plus {} bytes per entry)",
                entries / 1e6,
                disk / (1024.0 * 1024.0 * 1024.0),
                entries * item / 60.0,
                item * 1000.0,
                memory.unwrap_or_else(|| "not measured".into()),
                rss_slope.map(|s| format!("{s:.0}")).unwrap_or_else(|| "?".into()),
            );
        }
    }
}

/// The process's peak resident set (`VmHWM`), where the system reports it.
fn peak_rss_bytes() -> Option<u64> {
    rss_bytes("VmHWM:")
}

/// A figure of `/proc/self/status` in bytes (`VmRSS:` now, `VmHWM:` the peak).
fn rss_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Registers `bsns` (each with its parents) in the region's store directly (the node is not
/// running yet).
async fn prefill(region: &RegionFiles, bsns: &[(&String, Vec<String>)]) -> KitResult<()> {
    use crate::domain::{Clock, OrgDomain, OrgId, Organisation};
    let config = &region.config;
    std::fs::create_dir_all(&config.data_dir)?;
    // As the node does at start: the key files live in their own directory.
    crate::server::create_private_dir(config.keys_dir())?;
    let store = crate::store::Store::open(&config.store_path(), &crate::store::StoreOptions::of(&config.store))?;
    let local = crate::pseudonym::LocalKey::load_or_create(&config.local_key_path())?;
    let blind =
        crate::federation::rekey::load_blind_key(config, &store).await.map_err(crate::server::NodeError::from)?;
    // Federation on, but no peers yet: points are stored, nothing is queued; the join
    // after start publishes everything, as when a region is added to a running federation.
    let pairs = crate::federation::Pairs::new(Vec::new(), local.clone(), Some(&blind));
    let registry = crate::registry::Registry::with_federation(store.clone(), std::sync::Arc::new(pairs));
    let org = Organisation {
        id: OrgId::parse("org-a")?,
        name: "Org A".into(),
        domain: OrgDomain::YouthCare,
        coordinator: None,
    };
    registry.put_org(&org, "bench", SystemClock.now()).await?;
    let jobs = bsns.iter().map(|(b, parents)| {
        let bsn = crate::domain::Bsn::parse(b);
        let parents: Result<Vec<crate::domain::Bsn>, _> =
            parents.iter().map(|p| crate::domain::Bsn::parse(p)).collect();
        let (registry, local, blind, org) = (registry.clone(), local.clone(), blind.clone(), org.id.clone());
        async move {
            let bsn = bsn?;
            let parents = parents?
                .iter()
                .map(|p| crate::registry::family::NewParent {
                    key: local.parent_key(p),
                    point: Some(blind.blind_parent(p)),
                })
                .collect();
            let new = crate::registry::NewSignal {
                child: local.child_key(&bsn),
                org,
                professional: contact("B. Ench", "professional", "bench@example.nl"),
                date_of_birth: chrono::NaiveDate::from_ymd_opt(2014, 5, 1).unwrap_or_default(),
                removal_date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap_or_default(),
                now: SystemClock.now(),
                point: Some(blind.blind_bsn(&bsn)),
                parents,
                lookup: None,
            };
            registry.register(&new, "bench").await?;
            Ok::<_, super::KitError>(())
        }
    });
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    Ok(())
}

/// `virfed bench latency`: register in one region a child the other already holds, and
/// time until the registering professional's watch stream shows the cross-region match
/// (with `parents`, every registration names the child's 0-2 parents, [`bench_parents`]).
pub async fn latency(samples: usize, parents: bool, engine: Engine) -> KitResult<()> {
    use tokio_stream::StreamExt;
    let dir = tempfile::Builder::new().prefix("virfed-bench-latency-").tempdir()?;
    let mut files = FederationFiles::create(dir.path(), &["alpha", "beta"])?;
    for region in files.regions.iter_mut() {
        region.config.store.engine = engine;
    }
    let running = RunningRegion::start_federation(files, Arc::new(SystemClock)).await?;
    for r in &running {
        r.add_org("org-a", "Org A", "youth-care", None).await?;
    }
    let (a, b) = (&running[0], &running[1]);
    let mut a_client = a.org_client("org-a").await?;
    let mut b_client = b.org_client("org-a").await?;
    let mut watch = a_client.clone().watch(pb::WatchRequest { after_cursor: 0 }).await?.into_inner();
    let bsns = valid_bsns(400_000_000, samples);
    let pool = if parents { valid_bsns(700_000_000, samples * 2) } else { Vec::new() };
    let request = |i: usize, who: &str, email: &str| {
        let mut r = register_request(&bsns[i], who, email);
        if parents {
            r.parent_bsns = bench_parents(&pool, i);
        }
        r
    };
    for i in 0..bsns.len() {
        b_client.register_signal(request(i, "B. Eta", "b@example.nl")).await?;
    }
    while b.handle.store().outbox_depth("alpha") > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut times = Vec::with_capacity(samples);
    for i in 0..bsns.len() {
        let started = Instant::now();
        a_client.register_signal(request(i, "A. Lpha", "a@example.nl")).await?;
        loop {
            let notice = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .map_err(|_| KitError::Failed("no match notice within 10 s".into()))?
                .ok_or_else(|| KitError::Failed("watch ended".into()))??;
            // The child match (a sibling's family match may come as well, before or after).
            if notice.kind == pb::NoticeKind::MatchCreated as i32 && !notice.family {
                break;
            }
        }
        times.push(started.elapsed());
    }
    // Floor: one durable write (a flush) plus one mTLS round trip, measured here too.
    let mut floor_times = Vec::with_capacity(samples);
    let mut peer = crate::pb::federation::peer_client::PeerClient::new(
        a.channel(crate::pki::Identity::Region("beta".into()))
            .await
            .map_err(|_| KitError::Failed("peer channel".into()))?,
    );
    let _ = peer.ping(crate::pb::federation::PingRequest { from_region: "beta".into(), ..Default::default() }).await;
    let floor_dir = tempfile::tempdir()?;
    let mut durable_write = flush_floor_db(floor_dir.path(), engine)?;
    for i in 0..samples {
        let started = Instant::now();
        durable_write(i as u64)?;
        let _ =
            peer.ping(crate::pb::federation::PingRequest { from_region: "beta".into(), ..Default::default() }).await;
        floor_times.push(started.elapsed());
    }
    times.sort();
    floor_times.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    let with = if parents { ", registrations with 0-2 parents" } else { "" };
    println!(
        "cross-region match latency on loopback vs one flush + one mTLS round trip ({samples} samples{with}, {} stores)",
        engine.name()
    );
    println!("{:>10} {:>12} {:>12} {:>8}", "", "match ms", "floor ms", "ratio");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (m, f) = (pct(&times, p), pct(&floor_times, p));
        println!("{name:>10} {m:>12.2} {f:>12.2} {:>8.2}", m / f);
    }
    for r in running {
        r.stop().await?;
    }
    Ok(())
}
