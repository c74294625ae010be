//! `virfed`: the command line. Parses arguments, sets up logging, dispatches to a command
//! module, and maps errors to a message and an exit code (0 ok, 1 failed, 2 usage error;
//! `virfed status` has its own codes, for cron).
//!
//! - `args`: every subcommand and flag (clap).
//! - `node`: `virfed node`, and the signals that stop it.
//! - `ca`: certificate authority tooling.
//! - `client`: `org`, `signal`, `matches`: requests to a node's client and admin APIs.
//! - `store`: `audit`, `backup`, `restore`, `migrate`: a node's store and its backups.
//! - `rekey`: `virfed rekey` (the key-file protocol is `virfed::federation::rekey`).
//! - `health`: `status`, `coordinator`, `participation`: federation and region health.
//! - `kit`: `demo` and `bench`.
#![forbid(unsafe_code)]

mod args;
mod ca;
mod client;
mod health;
mod kit;
mod node;
mod rekey;
mod store;

use clap::Parser;

use args::{Cli, Command};

/// How a command ended, when it did not fail.
enum Done {
    /// Exit 0, after an orderly teardown.
    Ok,
    /// Exit at once with this code (`virfed status`).
    Exit(i32),
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(Done::Ok) => {}
        Ok(Done::Exit(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Logs go to standard error, filtered by `VIRFED_LOG`. The demo, the benchmark and the
/// status sweep print their own story; the node logs its steps.
fn init_logging(command: &Command) {
    let default_level = match command {
        Command::Demo { .. } | Command::Bench(_) | Command::Status { .. } => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRFED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(command: Command) -> anyhow::Result<Done> {
    match command {
        Command::Node { config } => node::run(&config).await?,
        Command::Ca(cmd) => ca::run(cmd)?,
        Command::Org(cmd) => client::org(cmd).await?,
        Command::Signal(cmd) => client::signal(cmd).await?,
        Command::Matches(cmd) => client::matches(cmd).await?,
        Command::Audit(cmd) => store::audit(cmd)?,
        Command::Backup { conn, out } => store::backup(&conn, &out).await?,
        Command::Restore { config, from, replace } => store::restore(&config, &from, replace)?,
        Command::Migrate { config, dry_run } => store::migrate(&config, dry_run)?,
        Command::Rekey { config } => rekey::run(&config).await?,
        Command::Status { nodes, ca, cert, key } => {
            return Ok(Done::Exit(health::status(&nodes, &ca, &cert, &key).await))
        }
        Command::Coordinator { config } => health::coordinator(&config).await?,
        Command::Participation { conn, quiet_after_days, csv, html } => {
            health::participation(&conn, quiet_after_days, csv.as_deref(), html.as_deref()).await?
        }
        Command::Demo { keep_running } => kit::demo(keep_running).await?,
        Command::Bench(cmd) => kit::bench(cmd).await?,
    }
    Ok(Done::Ok)
}
