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
