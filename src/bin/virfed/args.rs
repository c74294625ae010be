//! The command line: every subcommand, flag and environment override, as clap types.
//! Nothing here runs; the command modules do.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;

use virfed::domain::OrgDomain;
use virfed::pki::PkiError;

#[derive(Parser)]
#[command(name = "virfed", version, about = "Federated Verwijsindex Risicojongeren: a regional VIR node and its tools")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum BenchCommand {
    /// Durable registrations per second with 4, 16 and 64 clients vs the engine's insert+flush.
    Register {
        /// Registrations per concurrency level.
        #[arg(long, default_value_t = 2000)]
        registrations: usize,
        /// Every store's engine (`[store] engine`): sled or redb; the floors use it too.
        #[arg(long, default_value = "sled")]
        engine: virfed::store::Engine,
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
        /// Every child with 0-2 parents (a realistic mix of sibling families).
        #[arg(long)]
        parents: bool,
        /// Create every store with compressed pages (`[store] compression = true`).
        #[arg(long)]
        compression: bool,
        /// Every node's page cache in MiB (`[store] cache_mb`).
        #[arg(long, default_value_t = 128)]
        cache_mb: u64,
        /// Every store's engine (`[store] engine`): sled or redb; the floors use it too.
        #[arg(long, default_value = "sled")]
        engine: virfed::store::Engine,
    },
    /// Joins at growing sizes: per-item cost, disk per entry and memory by store size, and
    /// what they extrapolate to at national scale and ten times (takes several minutes).
    National {
        /// Children per region of each run (4 regions and a newcomer); the newcomer holds
        /// 8 (child, peer) entries per child: 2500,12500,50000 are 20k, 100k and 400k.
        #[arg(long, value_delimiter = ',', default_value = "2500,12500,50000")]
        sizes: Vec<usize>,
        /// The engines to run, side by side: sled, redb (with two, each runs in a process of
        /// its own, so its peak RSS is its own).
        #[arg(long, value_delimiter = ',', default_value = "sled")]
        engines: Vec<virfed::store::Engine>,
        /// Create every store with compressed pages (`[store] compression = true`).
        #[arg(long)]
        compression: bool,
        /// Every node's page cache in MiB (`[store] cache_mb`).
        #[arg(long, default_value_t = 128)]
        cache_mb: u64,
    },
    /// Cross-region match latency p50/p99 vs one flush + one mTLS round trip.
    Latency {
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Every registration names 0-2 parents (a realistic mix of sibling families).
        #[arg(long)]
        parents: bool,
        /// Every store's engine (`[store] engine`): sled or redb; the floors use it too.
        #[arg(long, default_value = "sled")]
        engine: virfed::store::Engine,
    },
    /// Crash cycles: three node processes under load, one killed with SIGKILL at random
    /// each cycle and restarted; prints acknowledged writes, cycles survived, anything lost
    /// or doubled (target: 0 and 0). Exits non-zero on any finding.
    Crash {
        #[arg(long, default_value_t = 50)]
        cycles: u32,
        /// Seeds the victims, the moments and the load (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Every store's engine (`[store] engine`): sled or redb.
        #[arg(long, default_value = "sled")]
        engine: virfed::store::Engine,
        /// Keep the federation's files (stores, logs) here instead of a temp dir.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Network faults: three node processes, each in a network namespace of its own (needs
    /// root; installs iproute2 and nftables where missing), under the crash harness's load;
    /// each cycle puts loss, duplication, reordering, a bottleneck or a partition on one
    /// link, heals it, and checks that every match formed at both sides exactly once, every
    /// withdrawal landed, the outboxes drained, and (partitions) that status showed the link
    /// down and then ok. Exits non-zero on any finding.
    Network {
        /// Cycles; each fault kind comes round every five.
        #[arg(long, default_value_t = 25)]
        cycles: u32,
        /// Seeds the links, the moments and the load (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Every store's engine (`[store] engine`): sled or redb.
        #[arg(long, default_value = "sled")]
        engine: virfed::store::Engine,
        /// Keep the federation's files (stores, logs) here instead of a temp dir.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// The pair protocol's model, checked exhaustively with stateright to a depth: every
    /// interleaving, a loss, a duplicate and a crash anywhere; prints the states explored
    /// and each property's verdict (a counterexample path when one fails). Exits non-zero
    /// when a property fails. Three nodes grow fast: `--nodes 3 --depth 12` takes about
    /// 20 s and 3 million states, each step more about six times that.
    Model {
        /// Steps explored from the start (the test runs 16 on two nodes, 9 on three).
        #[arg(long, default_value_t = 20)]
        depth: usize,
        /// Registrations, withdrawals and erasures in all.
        #[arg(long, default_value_t = 3)]
        changes: u8,
        /// Nodes (2 or 3).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
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
pub enum CaCommand {
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
pub enum IssueCommand {
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
    /// A resync ticket: lets REGION publish up to N children in bulk at each peer (a join,
    /// a re-key, answering a peer's restore). Without one, peers refuse bulk publishes.
    /// The region's operator sets [federation] resync_ticket to the file.
    ResyncTicket {
        #[arg(long, env = "VIRFED_CA_DIR")]
        dir: PathBuf,
        #[arg(long)]
        region: String,
        /// How many children the region may publish under it, at each peer (its child
        /// count, with room to grow while the resync runs).
        #[arg(long)]
        children: u64,
        /// Validity in days (a join or re-key takes hours; keep it short).
        #[arg(long, default_value_t = 7)]
        valid_days: u32,
        /// Where to write the ticket (PEM; default: <dir>/resync-ticket-<region>.pem).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
pub struct IssueOut {
    /// Directory for <stem>.pem and <stem>.key (default: the CA directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name stem (default: the org, operator name or first DNS name).
    #[arg(long)]
    pub stem: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum OrgCommand {
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
pub enum Reason {
    /// Delete the signal outright.
    MadeInError,
    /// Archive it for 5 years; it never matches again.
    ConcernResolved,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum By {
    Professional,
    Coordinator,
}

#[derive(Subcommand)]
pub enum SignalCommand {
    /// Register a signal. The BSN is read from standard input unless --bsn is given
    /// (arguments are visible to other users in the process list). On standard input, the
    /// child's parents (family matches) may follow the child's BSN on the same line:
    /// `CHILD [PARENT [PARENT]]`, separated by spaces.
    Register {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        bsn: Option<String>,
        /// A parent's BSN (at most twice), for family matches on a node whose family.source
        /// is "request". Visible in the process list: prefer standard input.
        #[arg(long = "parent")]
        parents: Vec<String>,
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
pub enum MatchesCommand {
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
pub enum AuditCommand {
    /// Verify the hash chain of a stopped node's audit log (or of a copy of its store).
    Verify {
        #[arg(long, short, env = "VIRFED_CONFIG")]
        config: PathBuf,
    },
}

/// Where and as whom to connect.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnArgs {
    /// Node address, host:port.
    #[arg(long, env = "VIRFED_NODE", default_value = "127.0.0.1:7443")]
    pub node: String,
    /// Name in the node's server certificate; defaults to the host part of --node.
    #[arg(long, env = "VIRFED_SERVER_NAME")]
    pub server_name: Option<String>,
    /// CA certificate that issued the node's certificate (PEM).
    #[arg(long, env = "VIRFED_CA")]
    pub ca: PathBuf,
    /// Your client certificate (PEM): an organisation's, or an operator's for `org`.
    #[arg(long, env = "VIRFED_CERT")]
    pub cert: PathBuf,
    /// Your private key (PEM, mode 0600).
    #[arg(long, env = "VIRFED_KEY")]
    pub key: PathBuf,
}

impl ConnArgs {
    /// Connects now, so a bad certificate or a down node is reported before any work.
    pub async fn connect(&self) -> Result<Channel, PkiError> {
        virfed::client::connect_node(&self.node, self.server_name.as_deref(), &self.ca, &self.cert, &self.key).await
    }
}
