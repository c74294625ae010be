//! `virfed demo` and `virfed bench`: the library's walkthrough and benchmarks, dispatched.

use crate::args::BenchCommand;

pub async fn demo(keep_running: bool) -> anyhow::Result<()> {
    virfed::demo::run(keep_running).await
}

pub async fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Register { registrations } => virfed::bench::register(registrations).await?,
        BenchCommand::Crypto { operations } => virfed::bench::crypto(operations),
        BenchCommand::Join { regions, signals } => virfed::bench::join(regions, signals).await?,
        BenchCommand::Latency { samples } => virfed::bench::latency(samples).await?,
        BenchCommand::Status { nodes, scrapes } => virfed::health::bench::status(nodes, scrapes).await?,
    }
    Ok(())
}
