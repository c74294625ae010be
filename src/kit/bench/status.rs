//! `virfed bench status`: the wall time of a status sweep over N nodes, beside N health
//! round trips in parallel (connect, mTLS handshake, `grpc.health.v1.Health/Check`) as the
//! floor — a sweep does the same handshakes and one small request each, so it should stay
//! within 2× of it — and the cost of a `/metrics` scrape of an idle node: the render alone
//! (CPU, in-process) and the whole HTTP request.
//!
//! The nodes run in this process, each with a `[federation]` section and no peers: the
//! status API lives on the peer port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::SystemClock;
use crate::health::{http, metrics, sweep};
use crate::kit::fixture::{FederationFiles, RunningRegion};
use crate::kit::{fail, KitError, KitResult};
use crate::pki::{client_config, connect, Ca, CertSpec, TlsMaterial};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmark and prints its figures.
pub async fn status(nodes: usize, scrapes: usize) -> KitResult<()> {
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..nodes).map(|i| format!("r{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let files = FederationFiles::create_with(dir.path(), &refs, |_, _| false)?;
    let ca = Ca::load(&files.ca_dir)?;
    let coordinator = ca.issue(&CertSpec::coordinator("bench", 30))?;
    let tls = client_config(&TlsMaterial::from_issued(&ca.cert_pem(), &coordinator))?;
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await?;
    let addrs: Vec<String> = regions
        .iter()
        .map(|r| r.handle.peer_addr().map(|a| a.to_string()).ok_or_else(|| KitError::Failed("no peer port".into())))
        .collect::<Result<_, _>>()?;
    println!("status sweep over {nodes} in-process nodes (fresh mTLS connection per node, as `virfed status`)");
    let rounds = 15;
    let (mut sweeps, mut floors) = (Vec::new(), Vec::new());
    // One warm-up of each, then alternate so both see the same machine state.
    for round in 0..=rounds {
        let started = Instant::now();
        let sweep = sweep::sweep(&addrs, tls.clone()).await;
        let took = started.elapsed();
        if let Some((addr, e)) = sweep.unreachable().first() {
            fail!("{addr} did not answer: {e}");
        }
        let started = Instant::now();
        let checks = addrs.iter().map(|addr| {
            let tls = tls.clone();
            async move {
                let channel = connect(addr, "127.0.0.1", tls).await?;
                tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await?;
                Ok::<_, KitError>(())
            }
        });
        for r in futures::future::join_all(checks).await {
            r?;
        }
        let floor = started.elapsed();
        if round > 0 {
            sweeps.push(took);
            floors.push(floor);
        }
    }
    let (sweep, floor) = (median(sweeps), median(floors));
    println!("  sweep, median of {rounds}:                  {:>8.1} ms", sweep.as_secs_f64() * 1e3);
    println!("  floor, {nodes:>3} health checks in parallel: {:>8.1} ms", floor.as_secs_f64() * 1e3);
    println!("  ratio: {:.2}x (target <= 2x)", sweep.as_secs_f64() / floor.as_secs_f64());

    let node = &regions[0].handle;
    let health = node.health().clone();
    let status = health.status().await;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        bytes = metrics::render(&health, &status).len();
    }
    let render = started.elapsed() / scrapes as u32;
    let started = Instant::now();
    for _ in 0..scrapes {
        let (code, _) = http::get_text(node.http_addr(), "/metrics").await?;
        if code != 200 {
            fail!("/metrics answered {code}");
        }
    }
    let scrape = started.elapsed() / scrapes as u32;
    println!("/metrics of an idle node ({bytes} bytes, {scrapes} sequential scrapes)");
    println!("  render (CPU, in-process):  {:>8.1} us", render.as_secs_f64() * 1e6);
    println!("  whole HTTP scrape:         {:>8.1} us", scrape.as_secs_f64() * 1e6);
    for region in regions {
        region.stop().await?;
    }
    Ok(())
}
