//! `virfed demo` and `virfed bench`: the library's walkthrough and benchmarks, dispatched.
//! Both live in the test and demo kit (cargo feature `kit`, on by default); a production
//! build (`--no-default-features`) answers them with how to get them.

use crate::args::BenchCommand;

#[cfg(feature = "kit")]
pub async fn demo(keep_running: bool) -> anyhow::Result<()> {
    Ok(virfed::kit::demo::run(keep_running).await?)
}

#[cfg(feature = "kit")]
pub async fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    use virfed::kit::bench;
    match cmd {
        BenchCommand::Register { registrations, engine } => bench::register(registrations, engine).await?,
        BenchCommand::Crypto { operations } => bench::crypto(operations),
        BenchCommand::Join { regions, signals, parents, compression, cache_mb, engine } => {
            bench::join(bench::JoinSetup { regions, signals, parents, compression, cache_mb, engine }).await?
        }
        BenchCommand::National { sizes, engines, compression, cache_mb } => {
            bench::national(&sizes, &engines, compression, cache_mb).await?
        }
        BenchCommand::Latency { samples, parents, engine } => bench::latency(samples, parents, engine).await?,
        BenchCommand::Status { nodes, scrapes } => bench::status(nodes, scrapes).await?,
        BenchCommand::Crash { cycles, seed, engine, dir } => {
            faults(virfed::kit::faults::Faults::Crash, cycles, seed, engine, dir).await?
        }
        BenchCommand::Model { depth, changes, nodes } => model(depth, changes, nodes)?,
        BenchCommand::Network { cycles, seed, engine, dir } => {
            faults(virfed::kit::faults::Faults::Network, cycles, seed, engine, dir).await?
        }
    }
    Ok(())
}

/// `virfed bench crash` and `virfed bench network`: the fault harness on this very binary.
#[cfg(feature = "kit")]
async fn faults(
    faults: virfed::kit::faults::Faults,
    cycles: u32,
    seed: Option<u64>,
    engine: virfed::store::Engine,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use virfed::kit::faults::{crash_cycles, CrashOptions, Faults, REGIONS};
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    let binary = std::env::current_exe()?;
    let kind = match faults {
        Faults::Crash => "crash cycles (kill -9 and restart)",
        Faults::Network => "network-fault cycles (loss, duplication, reordering, bottleneck, partition)",
    };
    println!(
        "{kind}: {} node processes ({}), {} stores, {cycles} cycles, seed {seed} (repeat with --seed {seed})",
        REGIONS.len(),
        REGIONS.join(", "),
        engine.name()
    );
    let options = CrashOptions { binary, cycles, seed, engine, dir, faults };
    let report = crash_cycles(&options, |line| println!("  {line}")).await?;
    println!("{}", report.summary());
    println!("target: {cycles} cycles, 0 lost, 0 doubled");
    if !report.clean() {
        anyhow::bail!("the federation did not come through the {kind} unharmed (findings above)");
    }
    Ok(())
}

/// `virfed bench model`: the pair protocol's model, checked deeper than the test does.
#[cfg(feature = "kit")]
fn model(depth: usize, changes: u8, nodes: usize) -> anyhow::Result<()> {
    use stateright::{Checker, Model};
    use virfed::federation::model::{ModelConfig, PairProtocol};
    if !(2..=3).contains(&nodes) {
        anyhow::bail!("--nodes must be 2 or 3, not {nodes}");
    }
    let config = ModelConfig { max_depth: depth, local_changes: changes, nodes, ..ModelConfig::short() };
    println!("pair protocol model: {config:?}");
    let started = std::time::Instant::now();
    let checker = PairProtocol { config }.check();
    println!(
        "{} states ({} unique) to depth {} in {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    let mut failed = false;
    for property in checker.model().properties() {
        let found = checker.discovery(property.name);
        let verdict = match (property.expectation, &found) {
            (stateright::Expectation::Sometimes, Some(_)) => "reached".to_owned(),
            (stateright::Expectation::Sometimes, None) => {
                "not reached at this depth (the checks \"once quiet\" had nothing to check: go deeper)".to_owned()
            }
            (_, None) => "holds".to_owned(),
            (_, Some(path)) => {
                failed = true;
                format!("FAILS: {path:?}")
            }
        };
        println!("  {}: {verdict}", property.name);
    }
    if failed {
        anyhow::bail!("a property of the pair protocol's model failed (above)");
    }
    Ok(())
}

#[cfg(not(feature = "kit"))]
const NO_KIT: &str = "this virfed was built without the `kit` feature (a production build), so it has no demo or \
     benchmarks; build with default features for them: cargo run --release -- demo";

#[cfg(not(feature = "kit"))]
pub async fn demo(_keep_running: bool) -> anyhow::Result<()> {
    anyhow::bail!(NO_KIT)
}

#[cfg(not(feature = "kit"))]
pub async fn bench(_cmd: BenchCommand) -> anyhow::Result<()> {
    anyhow::bail!(NO_KIT)
}
