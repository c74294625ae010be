//! `virfed`: the command line. Parses arguments, sets up logging, runs, and maps errors to
//! a message and an exit code (0 ok, 1 failed, 2 usage error).
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_stream::StreamExt;

use virfed::client::{format_notice, format_party, format_signal, status_message, ConnArgs};
use virfed::config::Config;
use virfed::domain::{OrgDomain, SystemClock};
use virfed::pb::admin as admin_pb;
use virfed::pb::client as pb;
use virfed::pki::{write_cert_pair, Ca, CertSpec, Identity};
use virfed::server::Node;
use virfed::store::{Store, StoreOptions};

#[derive(Parser)]
#[command(name = "virfed", version, about = "Federated Verwijsindex Risicojongeren: a regional VIR node and its tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a regional node.
    Node {
        /// Node configuration (see deploy/node.example.toml).
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
    },
    /// Certificate authority tooling.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage the region's organisations (needs an operator certificate).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Register, withdraw and show signals (needs an organisation certificate).
    #[command(subcommand)]
    Signal(SignalCommand),
    /// List and watch matches (needs an organisation certificate).
    #[command(subcommand)]
    Matches(MatchesCommand),
    /// The audit log (D8).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rotate the node's blinding key and re-run the exchange with every peer (run on a
    /// stopped node; matches are kept, none is made twice).
    Rekey {
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
    },
    /// Start a federation of three regions on loopback with real TLS and storage and show
    /// cross-border matches end to end.
    Demo {
        /// Leave the node running after the walkthrough and print how to reach it.
        #[arg(long)]
        keep_running: bool,
    },
    /// Federation health: query every node's status API in parallel and print a node
    /// table, the link matrix and warnings. Exit code 0 healthy, 1 warnings, 2 a node
    /// unreachable, 3 the sweep could not run (certificate files).
    Status {
        /// Peer API addresses of the nodes, host:port, comma-separated.
        #[arg(long, env = "VIRFED_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// The federation CA certificate (PEM).
        #[arg(long, env = "VIRFED_CA")]
        ca: PathBuf,
        /// A coordinator certificate from the federation CA (`virfed ca issue coordinator`).
        #[arg(long, env = "VIRFED_CERT")]
        cert: PathBuf,
        /// Its private key (PEM, mode 0600).
        #[arg(long, env = "VIRFED_KEY")]
        key: PathBuf,
    },
    /// Serve the national coordinator's dashboard: node table, link grid, warnings and
    /// history, refreshed live (see deploy/coordinator.example.toml).
    Coordinator {
        #[arg(long, short, env = "VIRFED_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// The region's participation report: which organisations signal, which went quiet
    /// (operator or municipality certificate).
    Participation {
        #[command(flatten)]
        conn: ConnArgs,
        /// Days without a signal after which an organisation counts as quiet.
        #[arg(long, default_value_t = 182)]
        quiet_after_days: u32,
        /// Also write the report as CSV to this file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Also write the report as a self-contained HTML page (table and chart).
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Take a consistent backup of a running node's store over the admin API (operator
    /// certificate). The key files are not in it: back them up separately.
    Backup {
        #[command(flatten)]
        conn: ConnArgs,
        /// File to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a stopped node's data directory. Checks the file and its audit
    /// chain first; the node asks its peers for a resync when it next starts.
    Restore {
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
        /// The backup file (from `virfed backup`).
        #[arg(long)]
        from: PathBuf,
        /// Move an existing store aside instead of refusing.
        #[arg(long)]
        replace: bool,
    },
    /// Migrate a stopped node's store to this virfed's schema (the node also does this when
    /// it starts); with --dry-run, only say what would change.
    Migrate {
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Benchmarks, each printed next to the floor it is measured against.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable registrations per second with 4, 16 and 64 clients vs sled insert+flush.
    Register {
        /// Registrations per concurrency level.
        #[arg(long, default_value_t = 2000)]
        registrations: usize,
    },
    /// Peer blind operations per second per core vs raw scalar multiplications.
    Crypto {
        #[arg(long, default_value_t = 20_000)]
        operations: usize,
    },
    /// Time for a new region to join N regions of M children vs the crypto floor.
    Join {
        #[arg(long, default_value_t = 4)]
        regions: usize,
        #[arg(long, default_value_t = 2_000)]
        signals: usize,
    },
    /// Cross-region match latency p50/p99 vs one flush + one mTLS round trip.
    Latency {
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// A status sweep over N nodes vs N parallel health round trips; /metrics scrape cost.
    Status {
        #[arg(long, default_value_t = 25)]
        nodes: usize,
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA (ca.pem, ca.key with mode 0600) in a directory.
    Init {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        /// Common name of the CA certificate, e.g. "virfed Rotterdam region CA".
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Issue a certificate signed by the CA.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Renew a certificate this CA issued: same identity, names and usages, a new key and
    /// a new validity. Replace the files on the node; it re-reads them without a restart.
    Renew {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        /// The certificate to renew (PEM).
        #[arg(long)]
        cert: PathBuf,
        #[command(flatten)]
        out: IssueOut,
    },
    /// Revoke a certificate this CA issued: adds it to revoked.txt and rewrites crl.pem.
    /// Nodes re-read crl.pem when it changes; no restart is needed.
    Revoke {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

#[derive(Subcommand)]
enum IssueCommand {
    /// A client certificate for an organisation (SAN urn:virfed:org:ORG).
    Client {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        #[arg(long)]
        org: String,
        #[command(flatten)]
        out: IssueOut,
    },
    /// A server certificate for a node's API.
    Server {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        /// DNS names or IP addresses the node is reached at (repeatable).
        #[arg(long, required = true)]
        dns: Vec<String>,
        #[command(flatten)]
        out: IssueOut,
    },
    /// A federation node certificate (SAN urn:virfed:region:REGION, server and client).
    Node {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        #[arg(long)]
        region: String,
        /// DNS names or IP addresses the node's peer API is reached at (repeatable).
        #[arg(long, required = true)]
        dns: Vec<String>,
        #[command(flatten)]
        out: IssueOut,
    },
    /// A national coordinator certificate (SAN urn:virfed:coordinator:NAME): health only.
    Coordinator {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        out: IssueOut,
    },
    /// A client certificate for a regional operator (SAN urn:virfed:operator:NAME).
    Operator {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        out: IssueOut,
    },
}

#[derive(clap::Args)]
struct IssueOut {
    /// Directory for <stem>.pem and <stem>.key (default: the CA directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// File name stem (default: the org, operator name or first DNS name).
    #[arg(long)]
    stem: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Register an organisation, or update it.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_domain)]
        domain: OrgDomain,
        /// The organisation's VIR coordinator: name, role, phone, email (all four or none).
        #[arg(long, num_args = 4, value_names = ["NAME", "ROLE", "PHONE", "EMAIL"])]
        coordinator: Option<Vec<String>>,
    },
    /// List the registered organisations.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

fn parse_domain(s: &str) -> Result<OrgDomain, String> {
    s.parse().map_err(|e: virfed::domain::FieldError| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum Reason {
    /// Delete the signal outright.
    MadeInError,
    /// Archive it for 5 years; it never matches again.
    ConcernResolved,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Professional,
    Coordinator,
}

#[derive(Subcommand)]
enum SignalCommand {
    /// Register a signal. The BSN is read from standard input unless --bsn is given
    /// (arguments are visible to other users in the process list).
    Register {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        bsn: Option<String>,
        /// The child's date of birth, YYYY-MM-DD.
        #[arg(long)]
        dob: String,
        /// Removal date, YYYY-MM-DD (default and maximum: 2 years from today).
        #[arg(long)]
        removal_date: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        phone: String,
        #[arg(long)]
        email: String,
    },
    /// Withdraw one of your organisation's signals.
    Withdraw {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        id: String,
        #[arg(long, value_enum)]
        reason: Reason,
        #[arg(long, value_enum, default_value = "professional")]
        by: By,
    },
    /// Show one of your organisation's signals.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum MatchesCommand {
    /// List your organisation's active matches.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Stream notices as they arrive; resume with --after CURSOR.
    Watch {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of a stopped node's audit log (or of a copy of its store).
    Verify {
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    // The demo and the benchmark print their own story; the node logs its steps.
    let default_level = match cli.command {
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Maps a gRPC status to an error a person can act on.
fn refused(status: tonic::Status) -> anyhow::Error {
    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable) {
        return anyhow::anyhow!(
            "{}\nhint: the node closed the connection. Is your client certificate expired, revoked or from another CA? Is the node running at that address? The node's log says which.",
            status_message(&status)
        );
    }
    anyhow::anyhow!(status_message(&status))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node { config } => {
            let config = Config::load(&config)?;
            let node = Node::bind(config, Arc::new(SystemClock)).await?;
            node.run(shutdown_signal()).await?;
        }
        Command::Ca(cmd) => ca(cmd)?,
        Command::Org(cmd) => org(cmd).await?,
        Command::Signal(cmd) => signal(cmd).await?,
        Command::Matches(cmd) => matches(cmd).await?,
        Command::Audit(AuditCommand::Verify { config }) => {
            let config = Config::load(&config)?;
            let store = Store::open(&config.store_path(), &StoreOptions::default())?;
            match store.verify_audit()? {
                Ok(summary) => {
                    println!("audit log intact: {} entries, head {}", summary.entries, hex::encode(summary.head_hash))
                }
                Err(broken) => bail!("audit log TAMPERED: {broken}"),
            }
        }
        Command::Rekey { config } => rekey(&config).await?,
        #[cfg(feature = "kit")]
        Command::Demo { keep_running } => virfed::kit::demo::run(keep_running).await?,
        #[cfg(feature = "kit")]
        Command::Bench(BenchCommand::Register { registrations }) => virfed::kit::bench::register(registrations).await?,
        #[cfg(feature = "kit")]
        Command::Bench(BenchCommand::Crypto { operations }) => virfed::kit::bench::crypto(operations),
        #[cfg(feature = "kit")]
        Command::Bench(BenchCommand::Join { regions, signals }) => virfed::kit::bench::join(regions, signals).await?,
        #[cfg(feature = "kit")]
        Command::Bench(BenchCommand::Latency { samples }) => virfed::kit::bench::latency(samples).await?,
        #[cfg(not(feature = "kit"))]
        Command::Demo { .. } | Command::Bench(_) => bail!(
            "this virfed was built without the `kit` feature (a production build), so it has no demo or benchmarks; \
             build with default features for them: cargo run --release -- demo"
        ),
        Command::Migrate { config, dry_run } => {
            let config = Config::load(&config)?;
            let steps = virfed::store::migrate::plan(&config.store_path())?;
            if steps.is_empty() {
                println!("the store is at schema version {}: nothing to do", virfed::store::SCHEMA_VERSION);
            }
            for step in &steps {
                let verb = if dry_run { "would migrate" } else { "migrating" };
                println!("{verb} schema {} -> {}: {} ({} entries)", step.from, step.to, step.what, step.entries);
            }
            if !dry_run && !steps.is_empty() {
                Store::open(&config.store_path(), &StoreOptions::default())?;
                println!("store migrated to schema version {}", virfed::store::SCHEMA_VERSION);
            }
        }
        Command::Backup { conn, out } => {
            use tokio::io::AsyncWriteExt;
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let mut stream = client.backup(admin_pb::BackupRequest {}).await.map_err(refused)?.into_inner();
            let partial = out.with_extension("partial");
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(refused)?;
                bytes += chunk.data.len();
                file.write_all(&chunk.data).await?;
            }
            file.sync_all().await?;
            if out.exists() {
                bail!(
                    "{} exists; choose another file name (the backup is kept in {})",
                    out.display(),
                    partial.display()
                );
            }
            std::fs::rename(&partial, &out)?;
            println!("backup written to {} ({bytes} bytes); back up the node's key files separately", out.display());
        }
        Command::Restore { config, from, replace } => {
            let config = Config::load(&config)?;
            let (summary, moved) = virfed::store::backup::restore(&config.store_path(), &from, replace)?;
            if let Some(aside) = moved {
                println!("the previous store was moved to {}", aside.display());
            }
            println!(
                "restored {} entries ({} audit entries, chain verified) from a backup taken {}; on its next start the node asks its peers for a resync",
                summary.entries, summary.audit_entries, summary.created_at
            );
        }
        Command::Coordinator { config } => {
            let config = virfed::dashboard::CoordinatorConfig::load(&config)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            eprintln!("coordinator dashboard on http://{} ({} nodes)", listener.local_addr()?, config.nodes.len());
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            virfed::dashboard::run(config, listener, stopped).await?;
        }
        Command::Participation { conn, quiet_after_days, csv, html } => {
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let report = client
                .get_participation(admin_pb::ParticipationRequest { quiet_after_days })
                .await
                .map_err(refused)?
                .into_inner();
            print!("{}", report.text);
            if let Some(path) = csv {
                std::fs::write(&path, &report.csv).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("CSV written to {}", path.display());
            }
            if let Some(path) = html {
                std::fs::write(&path, &report.html).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("HTML written to {}", path.display());
            }
        }
        #[cfg(feature = "kit")]
        Command::Bench(BenchCommand::Status { nodes, scrapes }) => virfed::kit::bench::status(nodes, scrapes).await?,
        // Its own exit codes (0 healthy, 1 warnings, 2 unreachable, 3 cannot run), for cron.
        Command::Status { nodes, ca, cert, key } => std::process::exit(status(&nodes, &ca, &cert, &key).await),
    }
    Ok(())
}

/// `virfed status`: the sweep, printed; returns the exit code.
async fn status(nodes: &[String], ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> i32 {
    let tls =
        match virfed::pki::TlsMaterial::from_files(ca, cert, key, &[]).and_then(|m| virfed::pki::client_config(&m)) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("error: {e}");
                return 3;
            }
        };
    let sweep = virfed::health::sweep::sweep(nodes, tls).await;
    print!("{}", virfed::health::sweep::render(&sweep));
    virfed::health::sweep::exit_code(&sweep)
}

/// `virfed rekey`: new blinding key, everything re-keyed in one transaction, new key file
/// renamed into place last (an interruption is finished by the next start).
async fn rekey(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(fed) = &config.federation else {
        bail!("{} has no [federation] section: there is nothing to re-key", path.display());
    };
    let store = Store::open(&config.store_path(), &StoreOptions::default())?;
    let old = virfed::server::load_blind_key(&config, &store).await?;
    let local = virfed::pseudonym::LocalKey::load_or_create(&config.local_key_path())?;
    store.enable_federation(fed.peers.iter().map(|p| p.region.clone()).collect(), local);
    let key_path = config.blind_key_path();
    let pending = key_path.with_extension("key.new");
    let new = virfed::pseudonym::BlindKey::random();
    virfed::pseudonym::write_new_secret(&pending, format!("{}\n", hex::encode(new.to_bytes())).as_bytes())
        .with_context(|| format!("writing {}", pending.display()))?;
    let (children, entries) = store.rekey(&old, &new).await?;
    std::fs::rename(&pending, &key_path).with_context(|| format!("moving the new key into {}", key_path.display()))?;
    println!(
        "re-keyed: {children} children and {entries} peer index entries; {} items queued for {} peers; start the node to send them",
        fed.peers.iter().map(|p| store.outbox_depth(&p.region)).sum::<usize>(),
        fed.peers.len()
    );
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, name, days } => {
            Ca::init(&dir, &name, days)?;
            let crl = Ca::publish_crl(&dir, 30)?;
            println!("CA created in {} (ca.pem, ca.key mode 0600; empty CRL {})", dir.display(), crl.display());
        }
        CaCommand::Renew { dir, cert, out } => {
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let ca = Ca::load(&dir)?;
            let issued = ca.renew(&pem, out.days)?;
            let stem = match out.stem {
                Some(s) => s,
                None => cert
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| format!("{s}-renewed"))
                    .context("certificate file name")?,
            };
            let out_dir = out.out.unwrap_or_else(|| cert.parent().map(|p| p.to_path_buf()).unwrap_or_default());
            let (c, k) = write_cert_pair(&out_dir, &stem, &issued, out.force)?;
            println!("renewed: wrote {} and {} (mode 0600); move them over the old files", c.display(), k.display());
        }
        CaCommand::Revoke { dir, cert, days } => {
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let crl = Ca::revoke(&dir, &pem, days)?;
            println!("revoked {}; CRL rewritten: {}", cert.display(), crl.display());
        }
        CaCommand::Issue(issue) => {
            let (dir, spec, default_stem, out) = match issue {
                IssueCommand::Client { dir, org, out } => {
                    let spec = CertSpec::client(Identity::Organisation(org.clone()), out.days);
                    (dir, spec, org, out)
                }
                IssueCommand::Operator { dir, name, out } => {
                    let spec = CertSpec::client(Identity::Operator(name.clone()), out.days);
                    (dir, spec, name, out)
                }
                IssueCommand::Node { dir, region, dns, out } => {
                    (dir, CertSpec::node(&region, dns, out.days), region, out)
                }
                IssueCommand::Coordinator { dir, name, out } => {
                    let spec = CertSpec::coordinator(&name, out.days);
                    (dir, spec, name, out)
                }
                IssueCommand::Server { dir, dns, out } => {
                    let stem = dns[0].replace(|c: char| !c.is_ascii_alphanumeric(), "-").to_lowercase();
                    (dir, CertSpec::server(dns, out.days), stem, out)
                }
            };
            if let Some(identity) = &spec.identity {
                virfed::pki::validate_id(identity.name())?;
            }
            let ca = Ca::load(&dir)?;
            let issued = ca.issue(&spec)?;
            let out_dir = out.out.unwrap_or(dir);
            let stem = out.stem.unwrap_or(default_stem);
            let (cert, key) = write_cert_pair(&out_dir, &stem, &issued, out.force)?;
            println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
        }
    }
    Ok(())
}

async fn org(cmd: OrgCommand) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Add { conn, id, name, domain, coordinator } => {
            let coordinator = coordinator.map(|c| admin_pb::Contact {
                name: c[0].clone(),
                role: c[1].clone(),
                phone: c[2].clone(),
                email: c[3].clone(),
            });
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let org = client
                .add_organisation(admin_pb::Organisation { id, name, domain: domain.to_string(), coordinator })
                .await
                .map_err(refused)?
                .into_inner();
            println!("organisation {} ({}, {}) registered", org.id, org.name, org.domain);
        }
        OrgCommand::List { conn } => {
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let list = client.list_organisations(admin_pb::ListOrganisationsRequest {}).await.map_err(refused)?;
            for o in list.into_inner().organisations {
                let coordinator =
                    o.coordinator.map(|c| format!(" coordinator {} <{}>", c.name, c.email)).unwrap_or_default();
                println!("{:<32} {:<16} {}{coordinator}", o.id, o.domain, o.name);
            }
        }
    }
    Ok(())
}

async fn signal(cmd: SignalCommand) -> anyhow::Result<()> {
    match cmd {
        SignalCommand::Register { conn, bsn, dob, removal_date, name, role, phone, email } => {
            let bsn = match bsn {
                Some(b) => b,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).context("reading the BSN from standard input")?;
                    line.trim().to_string()
                }
            };
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let resp = client
                .register_signal(pb::RegisterSignalRequest {
                    bsn,
                    date_of_birth: dob,
                    professional: Some(pb::Contact { name, role, phone, email }),
                    removal_date: removal_date.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            let verb = if resp.created { "registered" } else { "already registered (unchanged)" };
            let signal = resp.signal.context("the node sent no signal")?;
            println!("{verb}: {}", format_signal(&signal));
        }
        SignalCommand::Withdraw { conn, id, reason, by } => {
            let reason = match reason {
                Reason::MadeInError => pb::WithdrawReason::MadeInError,
                Reason::ConcernResolved => pb::WithdrawReason::ConcernResolved,
            };
            let by = match by {
                By::Professional => pb::Withdrawer::Professional,
                By::Coordinator => pb::Withdrawer::Coordinator,
            };
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let resp = client
                .withdraw_signal(pb::WithdrawSignalRequest {
                    signal_id: id.clone(),
                    reason: reason as i32,
                    withdrawn_by: by as i32,
                })
                .await
                .map_err(refused)?;
            println!("signal {id} withdrawn: {}", resp.into_inner().outcome);
        }
        SignalCommand::Show { conn, id } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let s = client.get_signal(pb::GetSignalRequest { signal_id: id }).await.map_err(refused)?;
            print!("{}", format_signal(&s.into_inner()));
        }
    }
    Ok(())
}

async fn matches(cmd: MatchesCommand) -> anyhow::Result<()> {
    match cmd {
        MatchesCommand::List { conn } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let list = client.list_matches(pb::ListMatchesRequest {}).await.map_err(refused)?.into_inner();
            if list.matches.is_empty() {
                println!("no active matches");
            }
            for m in list.matches {
                println!("your signal {} matches:", m.signal_id);
                for p in &m.counterparts {
                    print!("{}", format_party(p));
                }
            }
        }
        MatchesCommand::Watch { conn, after } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let mut stream =
                client.watch(pb::WatchRequest { after_cursor: after }).await.map_err(refused)?.into_inner();
            eprintln!("watching for notices after cursor {after} (Ctrl-C to stop; resume with --after)");
            while let Some(notice) = stream.next().await {
                let notice = notice.map_err(refused)?;
                print!("{}", format_notice(&notice));
            }
        }
    }
    Ok(())
}
