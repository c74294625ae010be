//! Transport security (invariant 6), durability (invariant 4) and the operator's command
//! line, against real processes, real sockets, real mutual TLS and real sled files.
//!
//! - TLS refusals run against a node in this process ([`RunningRegion`]); after every
//!   refusal a valid organisation certificate still gets an answer.
//! - Durability and the CLI run the real `virfed` binary as a child process, on a port
//!   picked by binding port 0 and releasing it. Readiness is polled, never slept for.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use virfed::domain::SystemClock;
use virfed::kit::fixture::{RegionFiles, RunningRegion};
use virfed::pb::admin as admin_pb;
use virfed::pb::admin::organisations_client::OrganisationsClient;
use virfed::pb::client as pb;
use virfed::pb::client::signals_client::SignalsClient;
use virfed::pki::{client_config, connect, Ca, CertSpec, Identity, TlsMaterial};
use virfed::server::Node;
use virfed::store::{Store, StoreOptions, SCHEMA_VERSION};

use common::VIRFED_ENV;

/// The binary under test.
const VIRFED: &str = env!("CARGO_BIN_EXE_virfed");

/// How long a child node may take to start serving on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long any single step (an RPC, a CLI run, a process exit) may take.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

// ---- helpers --------------------------------------------------------------------------

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, release it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("metadata of {}: {e}", path.display())).permissions().mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn pb_contact(name: &str, email: &str) -> pb::Contact {
    pb::Contact {
        name: name.into(),
        role: "jeugdhulpverlener".into(),
        phone: "+31 30 555 0100".into(),
        email: email.into(),
    }
}

fn register_request(bsn: &str, who: &str) -> pb::RegisterSignalRequest {
    pb::RegisterSignalRequest {
        bsn: bsn.into(),
        date_of_birth: "2014-05-01".into(),
        professional: Some(pb_contact(who, "prof@example.nl")),
        removal_date: String::new(),
        parent_bsns: vec![],
    }
}

fn organisation(id: &str, domain: &str) -> admin_pb::Organisation {
    admin_pb::Organisation {
        id: id.into(),
        name: format!("Organisation {id}"),
        domain: domain.into(),
        coordinator: None,
    }
}

/// An mTLS channel to `addr` with `material`, verifying the server as `localhost`.
async fn channel_as(addr: SocketAddr, material: &TlsMaterial) -> Channel {
    let config = client_config(material).expect("client TLS config");
    tokio::time::timeout(STEP_DEADLINE, connect(&addr.to_string(), "localhost", config))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A `virfed` child process with a clean environment; killed if the test panics.
fn virfed_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(VIRFED);
    cmd.args(args).kill_on_drop(true).env("VIRFED_LOG", "warn");
    for var in VIRFED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// What a finished CLI run printed.
struct CliRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl CliRun {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn expect_ok(self, what: &str) -> CliRun {
        assert!(
            self.status.success(),
            "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code(),
            self.stdout,
            self.stderr
        );
        self
    }

    fn expect_code(self, code: i32, what: &str) -> CliRun {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: wrong exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `virfed ARGS` to completion, feeding `stdin` if given.
async fn cli(args: &[&str], stdin: Option<&str>) -> CliRun {
    let mut cmd = virfed_command(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn virfed");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(STEP_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("virfed {args:?} did not finish"))
        .expect("wait for virfed");
    CliRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `virfed node --config CONFIG` as a child process, its log in a file.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    fn spawn(config: &Path, log: &Path, level: &str) -> NodeProcess {
        let file = std::fs::File::create(log).expect("create node log");
        let err = file.try_clone().expect("clone log handle");
        let child = virfed_command(&["node", "--config", config.to_str().expect("utf-8 path")])
            .env("VIRFED_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn virfed node");
        NodeProcess { child, log: log.to_owned() }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("node still running")
    }

    /// Polls until the admin API answers `material` (an operator). `Err(log)` when the
    /// process exits first; panics with the log when the deadline passes.
    async fn wait_serving(&mut self, addr: SocketAddr, material: &TlsMaterial) -> Result<(), String> {
        let config = client_config(material).expect("client TLS config");
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("the node exited before serving ({status}); log:\n{}", self.log_text()));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let channel =
                    connect(&addr.to_string(), "localhost", config.clone()).await.map_err(|e| e.to_string())?;
                OrganisationsClient::new(channel)
                    .list_organisations(admin_pb::ListOrganisationsRequest {})
                    .await
                    .map_err(|s| s.to_string())
            })
            .await;
            let last_error = match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "attempt timed out".to_string(),
            };
            assert!(
                started.elapsed() < START_DEADLINE,
                "the node did not serve on {addr} within {START_DEADLINE:?} (last error: {last_error}); log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Waits for the process to exit on its own.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for node"),
            Err(_) => panic!("the node did not exit within {within:?}; log:\n{}", self.log_text()),
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    async fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = self.wait_exit(STEP_DEADLINE).await;
        assert!(!status.success(), "a killed node cannot exit cleanly");
    }

    /// SIGTERM, then the exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(STEP_DEADLINE).await
    }
}

/// The port in the `listen = "127.0.0.1:PORT"` line of a node config.
fn configured_addr(config: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(config).expect("read node config");
    text.lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {text}"))
}

/// Rewrites the `listen = ` line of a node config to 127.0.0.1:`port`.
fn set_listen_port(config: &Path, port: u16) {
    let text = std::fs::read_to_string(config).expect("read node config");
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("listen = ") { format!("listen = \"{}\"", loopback(port)) } else { l.to_string() })
        .collect();
    std::fs::write(config, text.join("\n") + "\n").expect("write node config");
}

/// Starts `virfed node --config CONFIG` and waits until it serves `operator`. The port was
/// only free when it was picked: if another process took it meanwhile, the `listen` line
/// is rewritten with a fresh port and the node started again. Returns the node and the
/// address it serves on.
async fn start_node(config: &Path, log: &Path, level: &str, operator: &TlsMaterial) -> (NodeProcess, SocketAddr) {
    for _ in 0..5 {
        let addr = configured_addr(config);
        let mut node = NodeProcess::spawn(config, log, level);
        match node.wait_serving(addr, operator).await {
            Ok(()) => return (node, addr),
            Err(log) if log.contains("cannot listen on") => {
                eprintln!("port {} was taken meanwhile; picking another", addr.port());
                set_listen_port(config, free_port());
            }
            Err(log) => panic!("{log}"),
        }
    }
    panic!("no free port for the node after 5 attempts");
}

/// A node in this process with organisation `jeugdzorg` and one signal of it.
struct TlsFixture {
    _tmp: tempfile::TempDir,
    region: RunningRegion,
    signal_id: String,
}

async fn tls_fixture() -> TlsFixture {
    let tmp = tempdir();
    let files = RegionFiles::create(tmp.path(), "rotterdam", loopback(0)).expect("files");
    tls_fixture_from(tmp, files).await
}

/// Starts a node on `files` (which live in `tmp`) and registers `jeugdzorg` and a signal.
async fn tls_fixture_from(tmp: tempfile::TempDir, files: RegionFiles) -> TlsFixture {
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.expect("start region");
    region.add_org("jeugdzorg", "Jeugdzorg Rijnmond", "youth-care", None).await.expect("add organisation");
    let bsn = &virfed::kit::fixture::valid_bsns(111_222_333, 1)[0];
    let signal_id = region
        .org_client("jeugdzorg")
        .await
        .expect("org client")
        .register_signal(register_request(bsn, "A. de Vries"))
        .await
        .expect("register")
        .into_inner()
        .signal
        .expect("signal")
        .signal_id;
    TlsFixture { _tmp: tmp, region, signal_id }
}

impl TlsFixture {
    fn addr(&self) -> String {
        self.region.addr.to_string()
    }

    /// A client config that trusts the region CA and presents `issued` (which may come
    /// from another CA or be expired).
    fn config_presenting(&self, issued: &virfed::pki::IssuedCert) -> Arc<rustls::ClientConfig> {
        client_config(&TlsMaterial::from_issued(&self.region.files.ca.cert_pem(), issued)).expect("client config")
    }

    /// The node still serves a valid organisation: its stored signal can be read back.
    async fn assert_still_serves(&self) {
        let mut client = self.region.org_client("jeugdzorg").await.expect("connect");
        let view = tokio::time::timeout(
            STEP_DEADLINE,
            client.get_signal(pb::GetSignalRequest { signal_id: self.signal_id.clone() }),
        )
        .await
        .expect("get_signal timed out")
        .expect("a valid organisation certificate is still served")
        .into_inner();
        assert_eq!(view.signal_id, self.signal_id);
        assert_eq!(view.state, "active");
    }

    /// Connecting with `config` fails, or the first RPC does, without any answer from the
    /// API (TLS 1.3 clients finish their side of the handshake before the server checks
    /// the client certificate, so the refusal may only surface on the first request).
    async fn assert_refused(&self, config: Arc<rustls::ClientConfig>, what: &str) {
        let outcome = tokio::time::timeout(STEP_DEADLINE, async {
            let channel = match connect(&self.addr(), "localhost", config).await {
                Ok(c) => c,
                Err(e) => return Err(format!("connect failed: {e}")),
            };
            match SignalsClient::new(channel)
                .get_signal(pb::GetSignalRequest { signal_id: self.signal_id.clone() })
                .await
            {
                Ok(view) => Ok(view.into_inner()),
                Err(status) => {
                    // An application-level refusal would mean the connection was
                    // accepted; TLS must refuse before any handler runs.
                    assert!(
                        !matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated | Code::NotFound),
                        "{what}: the connection reached the API: {status:?}"
                    );
                    Err(format!("first RPC failed: {status}"))
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: neither refused nor answered in time"));
        match outcome {
            Ok(view) => panic!("{what}: the node answered: {view:?}"),
            Err(reason) => eprintln!("{what}: refused as expected ({reason})"),
        }
    }
}

fn client_config_without_certificate(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("trust anchor");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

// ---- invariant 6: TLS refusals ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_no_client_certificate_is_refused() {
    let f = tls_fixture().await;
    let config = client_config_without_certificate(&f.region.files.ca.cert_pem());
    f.assert_refused(config, "no client certificate").await;
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_certificate_of_another_ca_is_refused() {
    let f = tls_fixture().await;
    let foreign = Ca::generate("someone else's CA", 30).expect("foreign CA");
    // Same identity as a registered organisation: only the issuer differs.
    let issued = foreign
        .issue(&CertSpec::client(Identity::Organisation("jeugdzorg".into()), 10))
        .expect("issue foreign certificate");
    f.assert_refused(f.config_presenting(&issued), "certificate of another CA").await;
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_expired_certificate_is_refused() {
    let f = tls_fixture().await;
    let mut spec = CertSpec::client(Identity::Organisation("jeugdzorg".into()), 10);
    let now = time::OffsetDateTime::now_utc();
    spec.not_before = now - time::Duration::days(30);
    spec.not_after = now - time::Duration::days(1);
    let issued = f.region.files.ca.issue(&spec).expect("issue expired");
    f.assert_refused(f.config_presenting(&issued), "expired certificate").await;
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_revoked_certificate_is_refused() {
    let tmp = tempdir();
    let mut files = RegionFiles::create(tmp.path(), "rotterdam", loopback(0)).expect("files");
    let revoked = files.ca.issue(&CertSpec::client(Identity::Organisation("jeugdzorg".into()), 10)).expect("issue");
    let serial = virfed::pki::cert_serial(&revoked.cert_pem).expect("serial");
    let crl = files.ca.revocation_list(&[serial], 7).expect("CRL");
    let crl_path = tmp.path().join("revoked.crl.pem");
    std::fs::write(&crl_path, crl).expect("write CRL");
    files.config.tls.crls = vec![crl_path];
    let f = tls_fixture_from(tmp, files).await;
    // The fixture's own jeugdzorg certificates (fresh serials) are served; the revoked one,
    // same identity and same CA, is not.
    f.assert_refused(f.config_presenting(&revoked), "revoked certificate").await;
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_operator_certificate_cannot_use_client_api() {
    let f = tls_fixture().await;
    let before = f.region.handle.store().counts().expect("counts");
    let channel = f.region.channel(Identity::Operator("ops".into())).await.expect("operator channel");
    let mut signals = SignalsClient::new(channel);
    let status = signals.list_matches(pb::ListMatchesRequest {}).await.expect_err("an operator listed matches");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("organisation certificate"), "the refusal should say what to use: {status:?}");
    let bsn = &virfed::kit::fixture::valid_bsns(222_333_444, 1)[0];
    let status =
        signals.register_signal(register_request(bsn, "Operator")).await.expect_err("an operator registered a signal");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(!status.message().contains(bsn.as_str()), "{status:?}");
    let after = f.region.handle.store().counts().expect("counts");
    assert_eq!((before.active, before.archived), (after.active, after.archived), "a refused request changed the store");
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_organisation_certificate_cannot_use_admin_api() {
    let f = tls_fixture().await;
    let channel = f.region.channel(Identity::Organisation("jeugdzorg".into())).await.expect("organisation channel");
    let mut admin = OrganisationsClient::new(channel);
    let status = admin
        .add_organisation(organisation("intruder", "other"))
        .await
        .expect_err("an organisation registered an organisation");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("operator certificate"), "the refusal should say what to use: {status:?}");
    let status = admin
        .list_organisations(admin_pb::ListOrganisationsRequest {})
        .await
        .expect_err("an organisation listed organisations");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let orgs = f
        .region
        .operator()
        .await
        .expect("operator")
        .list_organisations(admin_pb::ListOrganisationsRequest {})
        .await
        .expect("operator lists")
        .into_inner()
        .organisations;
    let ids: Vec<_> = orgs.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["jeugdzorg"], "the refused add changed the list");
    f.assert_still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant6_plain_tcp_without_tls_gets_no_grpc_answer() {
    let f = tls_fixture().await;
    let probes: [(&str, &[u8]); 2] = [
        (
            "HTTP/2 preface",
            // Client preface plus an empty SETTINGS frame, as a plaintext gRPC client sends.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ),
        ("HTTP/1.1 GET", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    ];
    for (what, probe) in probes {
        let mut tcp = tokio::net::TcpStream::connect(f.region.addr).await.expect("TCP connect");
        tcp.write_all(probe).await.expect("write probe");
        let mut answer = Vec::new();
        // The node must close the connection; EOF or a reset both count.
        let read = tokio::time::timeout(STEP_DEADLINE, tcp.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{what}: the node kept the plain TCP connection open"));
        eprintln!("{what}: closed ({read:?}), {} bytes: {answer:02x?}", answer.len());
        // At most a TLS alert record (content type 21), never HTTP or an HTTP/2 frame.
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{what}: the node answered something other than a TLS alert: {:?}",
            String::from_utf8_lossy(&answer)
        );
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(!text.contains("http") && !text.contains("grpc"), "{what}: {text:?}");
    }
    f.assert_still_serves().await;
}

// ---- invariant 4: kill -9 loses no acknowledged write ----------------------------------

const DURABILITY_ORGS: [(&str, &str); 3] = [("jeugdzorg", "youth-care"), ("school", "education"), ("ggd", "health")];

/// A registration the node answered OK.
#[derive(Clone, Debug)]
struct Acked {
    org: &'static str,
    bsn: String,
    signal_id: String,
}

/// Every acknowledged signal is readable by its organisation and active; with
/// `repeat`, every tenth is registered again and must come back as the same signal (the
/// child index survived too, D2).
async fn assert_all_present(addr: SocketAddr, files: &RegionFiles, acked: &[Acked], repeat: bool) {
    for (org, _) in DURABILITY_ORGS {
        let material = files.client_material(Identity::Organisation(org.into())).expect("org material");
        let mut client = SignalsClient::new(channel_as(addr, &material).await);
        for (k, a) in acked.iter().filter(|a| a.org == org).enumerate() {
            let view = client
                .get_signal(pb::GetSignalRequest { signal_id: a.signal_id.clone() })
                .await
                .unwrap_or_else(|s| panic!("acknowledged signal {} lost: {s}", a.signal_id))
                .into_inner();
            assert_eq!(view.signal_id, a.signal_id);
            assert_eq!(view.organisation_id, org);
            assert_eq!(view.state, "active", "{view:?}");
            if repeat && k % 10 == 0 {
                let again = client
                    .register_signal(register_request(&a.bsn, "Durable Professional"))
                    .await
                    .expect("repeat registration")
                    .into_inner();
                assert!(!again.created, "a repeat after restart made a second signal");
                assert_eq!(again.signal.expect("signal").signal_id, a.signal_id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant4_acknowledged_writes_survive_kill_9() {
    const TARGET_ACKS: usize = 150;
    const WRITERS: usize = 6;

    let tmp = tempdir();
    let addr = loopback(free_port());
    let files = RegionFiles::create(tmp.path(), "rotterdam", addr).expect("region files");
    let ops = files.client_material(Identity::Operator("ops".into())).expect("operator material");

    let (mut node, addr) = start_node(&files.config_path, &tmp.path().join("node-1.log"), "warn", &ops).await;
    let mut admin = OrganisationsClient::new(channel_as(addr, &ops).await);
    for (id, domain) in DURABILITY_ORGS {
        admin.add_organisation(organisation(id, domain)).await.expect("add organisation");
    }

    let bsns = Arc::new(virfed::kit::fixture::valid_bsns(100_000_000, 20 * TARGET_ACKS));
    let next = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let (progress, mut progress_rx) = tokio::sync::watch::channel(0usize);
    let progress = Arc::new(progress);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (org, _) = DURABILITY_ORGS[w % DURABILITY_ORGS.len()];
        let material = files.client_material(Identity::Organisation(org.into())).expect("org material");
        let mut client = SignalsClient::new(channel_as(addr, &material).await);
        let (bsns, next, in_flight, killed, acked, progress) =
            (bsns.clone(), next.clone(), in_flight.clone(), killed.clone(), acked.clone(), progress.clone());
        writers.push(tokio::spawn(async move {
            while !killed.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(bsn) = bsns.get(i) else {
                    return Err(format!("writer {w}: ran out of BSNs before the node was killed"));
                };
                in_flight.fetch_add(1, Ordering::SeqCst);
                let answer = tokio::time::timeout(
                    STEP_DEADLINE,
                    client.register_signal(register_request(bsn, "Durable Professional")),
                )
                .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match answer {
                    // An OK is an acknowledgement even if it arrives after the kill.
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        if !resp.created {
                            return Err(format!("writer {w}: fresh BSN #{i} not created"));
                        }
                        let signal = resp.signal.expect("signal in response");
                        acked.lock().unwrap().push(Acked { org, bsn: bsn.clone(), signal_id: signal.signal_id });
                        progress.send_modify(|n| *n += 1);
                    }
                    Ok(Err(status)) if killed.load(Ordering::SeqCst) => {
                        eprintln!("writer {w}: after the kill: {:?}", status.code());
                        return Ok(());
                    }
                    Ok(Err(status)) => return Err(format!("writer {w}: refused before the kill: {status}")),
                    Err(_) if killed.load(Ordering::SeqCst) => return Ok(()),
                    Err(_) => return Err(format!("writer {w}: registration timed out")),
                }
            }
            Ok(())
        }));
    }

    tokio::time::timeout(Duration::from_secs(90), progress_rx.wait_for(|n| *n >= TARGET_ACKS))
        .await
        .unwrap_or_else(|_| panic!("fewer than {TARGET_ACKS} acknowledgements in 90 s; log:\n{}", node.log_text()))
        .expect("progress channel");
    killed.store(true, Ordering::SeqCst);
    let pending = in_flight.load(Ordering::SeqCst);
    node.kill_9().await;
    eprintln!("killed with {pending} registrations in flight");

    for writer in writers {
        tokio::time::timeout(STEP_DEADLINE, writer)
            .await
            .expect("writer did not stop after the kill")
            .expect("writer task panicked")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= TARGET_ACKS, "{} acknowledged", acked.len());
    eprintln!("{} registrations acknowledged before/at the kill", acked.len());

    // Restart on the same config and data directory: every acknowledged signal is there.
    let (mut node, addr) = start_node(&files.config_path, &tmp.path().join("node-2.log"), "warn", &ops).await;
    assert_all_present(addr, &files, &acked, true).await;

    // A quiet kill: sled writes out its log buffer when the next transaction starts, so
    // under load later writes push earlier ones to the OS anyway; only the flush before
    // the answer protects the last writes when nothing follows them.
    let first = next.load(Ordering::SeqCst);
    let mut last_writes = Vec::new();
    for (j, (org, _)) in DURABILITY_ORGS.into_iter().enumerate() {
        let material = files.client_material(Identity::Organisation(org.into())).expect("org material");
        let mut client = SignalsClient::new(channel_as(addr, &material).await);
        let bsn = bsns[first + j].clone();
        last_writes.push(tokio::spawn(async move {
            let resp = client
                .register_signal(register_request(&bsn, "Last Professional"))
                .await
                .expect("register before the quiet kill")
                .into_inner();
            assert!(resp.created);
            Acked { org, bsn, signal_id: resp.signal.expect("signal").signal_id }
        }));
    }
    let mut acked = acked;
    for task in last_writes {
        acked.push(task.await.expect("writer panicked"));
    }
    node.kill_9().await;
    let (mut node, addr) = start_node(&files.config_path, &tmp.path().join("node-3.log"), "warn", &ops).await;
    assert_all_present(addr, &files, &acked, false).await;

    let status = node.terminate().await;
    assert!(status.success(), "SIGTERM: {status}; log:\n{}", node.log_text());
    let config = files.config_path.to_str().expect("utf-8 path");
    let verify = cli(&["audit", "verify", "--config", config], None).await.expect_ok("audit verify");
    assert!(verify.stdout.contains("audit log intact"), "{}", verify.stdout);
    let entries: usize = verify
        .stdout
        .split("intact: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry count in {:?}", verify.stdout));
    assert!(
        entries >= acked.len() + DURABILITY_ORGS.len(),
        "{entries} audit entries for {} acknowledged registrations",
        acked.len()
    );
}

// ---- the command line, end to end ------------------------------------------------------

fn signal_id_in(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "signal")
        .nth(1)
        .unwrap_or_else(|| panic!("no signal id in {stdout:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end_with_the_real_binary() {
    let tmp = tempdir();
    let ca_dir = tmp.path().join("ca");
    let d = ca_dir.to_str().expect("utf-8 path");
    let file = |name: &str| ca_dir.join(name).to_str().expect("utf-8").to_string();

    // ---- CA tooling
    let out = cli(&["ca", "init", "--dir", d, "--name", "virfed test region CA"], None).await.expect_ok("ca init");
    assert!(out.stdout.contains("CA created"), "{}", out.stdout);
    let again = cli(&["ca", "init", "--dir", d, "--name", "virfed test region CA"], None)
        .await
        .expect_code(1, "second ca init");
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    cli(&["ca", "issue", "server", "--dir", d, "--dns", "localhost", "--dns", "127.0.0.1"], None)
        .await
        .expect_ok("issue server");
    cli(&["ca", "issue", "operator", "--dir", d, "--name", "ops"], None).await.expect_ok("issue operator");
    for org in ["jeugdzorg", "ggd"] {
        let out = cli(&["ca", "issue", "client", "--dir", d, "--org", org], None).await.expect_ok("issue client");
        assert!(out.stdout.contains(&format!("{org}.key")), "{}", out.stdout);
    }
    for key in ["ca.key", "localhost.key", "ops.key", "jeugdzorg.key", "ggd.key"] {
        assert_eq!(mode_of(&ca_dir.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode_of(&ca_dir), 0o700, "CA directory");

    let key_before = std::fs::read(ca_dir.join("jeugdzorg.key")).expect("key");
    let refused = cli(&["ca", "issue", "client", "--dir", d, "--org", "jeugdzorg"], None)
        .await
        .expect_code(1, "re-issue without --force");
    assert!(
        refused.stderr.contains("already exists") && refused.stderr.contains("refusing to overwrite"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read(ca_dir.join("jeugdzorg.key")).expect("key"),
        key_before,
        "a refused re-issue must leave the key alone"
    );
    cli(&["ca", "issue", "client", "--dir", d, "--org", "jeugdzorg", "--force"], None)
        .await
        .expect_ok("re-issue with --force");
    assert_ne!(std::fs::read(ca_dir.join("jeugdzorg.key")).expect("key"), key_before);
    assert_eq!(mode_of(&ca_dir.join("jeugdzorg.key")), 0o600);

    // ---- a node on those files
    let config_path = tmp.path().join("node.toml");
    std::fs::write(
        &config_path,
        format!(
            "region = \"utrecht\"\ndata_dir = {data:?}\nlisten = \"{listen}\"\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[match_officer]\norg = \"gemeente\"\n",
            data = tmp.path().join("data"),
            listen = loopback(free_port()),
            ca = file("ca.pem"),
            cert = file("localhost.pem"),
            key = file("localhost.key"),
        ),
    )
    .expect("write node.toml");
    let config = config_path.to_str().expect("utf-8 path");
    let ops_material =
        TlsMaterial::from_files(&ca_dir.join("ca.pem"), &ca_dir.join("ops.pem"), &ca_dir.join("ops.key"), &[])
            .expect("operator files");
    let (mut node, node_sock) = start_node(&config_path, &tmp.path().join("node.log"), "info", &ops_material).await;
    let node_addr = node_sock.to_string();

    let (ca_pem, ops_pem, ops_key) = (file("ca.pem"), file("ops.pem"), file("ops.key"));
    let as_ops = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--node",
                node_addr.as_str(),
                "--ca",
                ca_pem.as_str(),
                "--cert",
                ops_pem.as_str(),
                "--key",
                ops_key.as_str(),
            ]
            .map(String::from),
        );
        args
    };
    let as_org = |org: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--node".into(),
            node_addr.clone(),
            "--ca".into(),
            ca_pem.clone(),
            "--cert".into(),
            file(&format!("{org}.pem")),
            "--key".into(),
            file(&format!("{org}.key")),
        ]);
        args
    };
    async fn run(args: Vec<String>, stdin: Option<&str>) -> CliRun {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs, stdin).await
    }

    // ---- organisations (operator certificate; server name is the IP SAN 127.0.0.1)
    let out = run(
        as_ops(&[
            "org",
            "add",
            "--id",
            "jeugdzorg",
            "--name",
            "Jeugdzorg Utrecht",
            "--domain",
            "youth-care",
            "--coordinator",
            "C. Janssen",
            "VIR-coordinator",
            "+31 30 555 0199",
            "coordinator@jeugdzorg.example.nl",
        ]),
        None,
    )
    .await
    .expect_ok("org add jeugdzorg");
    assert!(out.stdout.contains("organisation jeugdzorg (Jeugdzorg Utrecht, youth-care) registered"), "{}", out.stdout);
    run(as_ops(&["org", "add", "--id", "ggd", "--name", "GGD regio Utrecht", "--domain", "health"]), None)
        .await
        .expect_ok("org add ggd");
    let list = run(as_ops(&["org", "list"]), None).await.expect_ok("org list");
    assert!(list.stdout.contains("jeugdzorg"), "{}", list.stdout);
    assert!(list.stdout.contains("Jeugdzorg Utrecht"), "{}", list.stdout);
    assert!(list.stdout.contains("C. Janssen"), "{}", list.stdout);
    assert!(list.stdout.contains("GGD regio Utrecht"), "{}", list.stdout);
    assert_eq!(list.stdout.lines().count(), 2, "{}", list.stdout);

    // ---- signals (organisation certificates; the BSN on stdin)
    let bsn = "111222333";
    let register = |org: &str, who: &str| {
        as_org(
            org,
            &[
                "signal",
                "register",
                "--dob",
                "2012-03-04",
                "--name",
                who,
                "--role",
                "jeugdhulpverlener",
                "--phone",
                "+31 30 555 0100",
                "--email",
                "prof@example.nl",
            ],
        )
    };
    let out = run(register("jeugdzorg", "A. de Vries"), Some(&format!("{bsn}\n"))).await.expect_ok("signal register");
    assert!(out.stdout.starts_with("registered: signal "), "{}", out.stdout);
    assert!(!out.stdout.contains(bsn) && !out.stderr.contains(bsn));
    let jz_signal = signal_id_in(&out.stdout);
    let repeat =
        run(register("jeugdzorg", "A. de Vries"), Some(&format!("{bsn}\n"))).await.expect_ok("repeat register");
    assert!(repeat.stdout.starts_with("already registered (unchanged): signal "), "{}", repeat.stdout);
    assert_eq!(signal_id_in(&repeat.stdout), jz_signal);
    let out =
        run(register("ggd", "B. Bakker"), Some(&format!("{bsn}\n"))).await.expect_ok("second organisation registers");
    let ggd_signal = signal_id_in(&out.stdout);

    let show = run(as_org("jeugdzorg", &["signal", "show", "--id", &jz_signal]), None).await.expect_ok("signal show");
    assert!(show.stdout.contains(&format!("signal {jz_signal}")), "{}", show.stdout);
    assert!(show.stdout.contains("organisation: jeugdzorg"), "{}", show.stdout);
    assert!(show.stdout.contains("A. de Vries"), "{}", show.stdout);
    assert!(show.stdout.contains("state:        active"), "{}", show.stdout);
    assert!(!show.stdout.contains(bsn), "{}", show.stdout);
    // Another organisation's signal is not shown (nor confirmed to exist).
    let hidden = run(as_org("ggd", &["signal", "show", "--id", &jz_signal]), None)
        .await
        .expect_code(1, "show another org's signal");
    assert!(hidden.stderr.contains("NotFound"), "{}", hidden.stderr);

    let matches = run(as_org("jeugdzorg", &["matches", "list"]), None).await.expect_ok("matches list");
    assert!(matches.stdout.contains(&format!("your signal {jz_signal} matches:")), "{}", matches.stdout);
    assert!(matches.stdout.contains("B. Bakker"), "{}", matches.stdout);
    assert!(matches.stdout.contains("GGD regio Utrecht"), "{}", matches.stdout);
    assert!(!matches.stdout.contains(bsn), "{}", matches.stdout);

    // ---- a bad BSN: exit 1, a clear message, the input never echoed
    let bad_bsn = "123456789";
    let bad = run(register("jeugdzorg", "A. de Vries"), Some(&format!("{bad_bsn}\n"))).await.expect_code(1, "bad BSN");
    assert!(bad.stderr.contains("11-proef"), "{}", bad.stderr);
    assert!(
        !bad.stderr.contains(bad_bsn) && !bad.stdout.contains(bad_bsn),
        "the BSN was echoed: {}{}",
        bad.stdout,
        bad.stderr
    );

    // ---- withdrawals
    let out =
        run(as_org("jeugdzorg", &["signal", "withdraw", "--id", &jz_signal, "--reason", "concern-resolved"]), None)
            .await
            .expect_ok("withdraw concern-resolved");
    assert!(out.stdout.contains(&format!("signal {jz_signal} withdrawn: archived")), "{}", out.stdout);
    let show = run(as_org("jeugdzorg", &["signal", "show", "--id", &jz_signal]), None).await.expect_ok("show archived");
    assert!(show.stdout.contains("state:        archived"), "{}", show.stdout);
    let matches = run(as_org("ggd", &["matches", "list"]), None).await.expect_ok("matches after withdrawal");
    assert!(matches.stdout.contains("no active matches"), "{}", matches.stdout);
    let out = run(as_org("ggd", &["signal", "withdraw", "--id", &ggd_signal, "--reason", "made-in-error"]), None)
        .await
        .expect_ok("withdraw made-in-error");
    assert!(out.stdout.contains("withdrawn: deleted"), "{}", out.stdout);

    // ---- SIGTERM drains: an open watch stream ends with UNAVAILABLE, the node exits 0
    let jz_material = TlsMaterial::from_files(
        &ca_dir.join("ca.pem"),
        &ca_dir.join("jeugdzorg.pem"),
        &ca_dir.join("jeugdzorg.key"),
        &[],
    )
    .expect("organisation files");
    let mut stream = SignalsClient::new(channel_as(node_sock, &jz_material).await)
        .watch(pb::WatchRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    // The stored notices (match created, match ended) arrive first.
    let first = tokio::time::timeout(STEP_DEADLINE, stream.next())
        .await
        .expect("first notice")
        .expect("stream open")
        .expect("notice");
    assert_eq!(first.kind, pb::NoticeKind::MatchCreated as i32, "{first:?}");
    let started = Instant::now();
    let status = node.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exit; log:\n{}", node.log_text());
    assert!(started.elapsed() < Duration::from_secs(10), "draining took {:?}", started.elapsed());
    let end = tokio::time::timeout(STEP_DEADLINE, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the watch stream did not end");
    if let Some(status) = end {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let log = node.log_text();
    assert!(log.contains("node stopped"), "{log}");
    assert!(!log.contains(bsn) && !log.contains(bad_bsn), "a BSN reached the node log:\n{log}");
    let verify = cli(&["audit", "verify", "--config", config], None).await.expect_ok("audit verify");
    assert!(verify.stdout.contains("audit log intact"), "{}", verify.stdout);

    // ---- start-up refusals
    let missing = tmp.path().join("missing.toml");
    let out = cli(&["node", "--config", missing.to_str().expect("utf-8")], None).await.expect_code(1, "missing config");
    assert!(out.stderr.contains("cannot read config file") && out.stderr.contains("missing.toml"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    chmod(&ca_dir.join("localhost.key"), 0o644);
    let out = cli(&["node", "--config", config], None).await.expect_code(1, "world-readable node key");
    assert!(out.stderr.contains("chmod 600") && out.stderr.contains("localhost.key"), "{}", out.stderr);
}

// ---- store and key refusals at start-up ------------------------------------------------

/// Opens the sled database at `path` directly, retrying while the node that just stopped
/// in this process still holds its file lock (its flush thread ends asynchronously).
async fn open_sled_when_released(path: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if started.elapsed() < STEP_DEADLINE => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

/// Starts a node in this process on the files of one that was just stopped here. The
/// stopped node's sled store releases its file lock only a moment after
/// `RunningRegion::stop` returns (see the report), so a lock error is retried.
async fn restart_in_process(files: RegionFiles) -> RunningRegion {
    let RegionFiles { dir, config, config_path, .. } = files;
    let started = Instant::now();
    loop {
        let files = RegionFiles {
            dir: dir.clone(),
            ca: Ca::load(&dir.join("ca")).expect("load the region CA"),
            config: config.clone(),
            config_path: config_path.clone(),
        };
        match RunningRegion::start_with(files, Arc::new(SystemClock)).await {
            Ok(region) => return region,
            Err(e) if e.to_string().contains("could not acquire lock") && started.elapsed() < STEP_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_with_another_schema_version_is_refused_naming_both_versions() {
    let tmp = tempdir();
    let region = RunningRegion::start(tmp.path(), "rotterdam", Arc::new(SystemClock)).await.expect("start region");
    region.add_org("jeugdzorg", "Jeugdzorg Rijnmond", "youth-care", None).await.expect("add organisation");
    let files = region.stop().await.expect("stop");
    let store_path = files.config.store_path();

    let db = open_sled_when_released(&store_path).await;
    let meta = db.open_tree("meta").expect("meta tree");
    assert_eq!(
        meta.get("schema_version").expect("read").as_deref(),
        Some(&SCHEMA_VERSION.to_be_bytes()[..]),
        "a new store records the current schema version"
    );
    meta.insert("schema_version", &99u32.to_be_bytes()).expect("write schema version");
    db.flush().expect("flush");
    drop(meta);
    drop(db);

    let started = Instant::now();
    let err = loop {
        match Store::open(&store_path, &StoreOptions::default()) {
            Ok(_) => panic!("a store with schema version 99 was opened"),
            // Our own sled handle may still hold the lock for a moment.
            Err(virfed::store::StoreError::Open { .. }) if started.elapsed() < STEP_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => break e,
        }
    };
    let msg = err.to_string();
    assert!(msg.contains("schema version 99") && msg.contains(&format!("version {SCHEMA_VERSION}")), "{msg}");

    // The binary says the same and exits 1; the store is left as it was. (sled releases
    // its file lock a moment after the last handle is dropped, so a run may first meet
    // our own lock; it is retried.)
    let config = files.config_path.to_str().expect("utf-8 path");
    let started = Instant::now();
    let out = loop {
        let out = cli(&["node", "--config", config], None).await.expect_code(1, "node on a store of another schema");
        if out.stderr.contains("could not acquire lock") && started.elapsed() < STEP_DEADLINE {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        break out;
    };
    assert!(out.stderr.contains("schema version 99"), "{}", out.stderr);
    let db = open_sled_when_released(&store_path).await;
    assert_eq!(
        db.open_tree("meta").expect("meta").get("schema_version").expect("read").as_deref(),
        Some(&99u32.to_be_bytes()[..]),
        "a refused open must not rewrite the schema version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_local_key_stops_the_node_from_starting() {
    let tmp = tempdir();
    let files = RegionFiles::create(tmp.path(), "rotterdam", loopback(0)).expect("files");
    // First start creates data/local.key with mode 0600.
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.expect("first start");
    let files = region.stop().await.expect("stop");
    let key_path = files.config.local_key_path();
    assert_eq!(mode_of(&key_path), 0o600, "local.key is created private");
    let key = std::fs::read(&key_path).expect("read local.key");

    chmod(&key_path, 0o644);
    let err = match Node::bind(files.config.clone(), Arc::new(SystemClock)).await {
        Ok(_) => panic!("a node started with a world-readable local.key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("chmod 600") && err.contains("local.key"), "{err}");
    let config = files.config_path.to_str().expect("utf-8 path");
    let out = cli(&["node", "--config", config], None).await.expect_code(1, "node with a world-readable local.key");
    assert!(out.stderr.contains("chmod 600") && out.stderr.contains("local.key"), "{}", out.stderr);
    assert_eq!(std::fs::read(&key_path).expect("read local.key"), key, "a refused start must not replace the key");

    // Once the operator fixes the mode, the node starts on the same key.
    chmod(&key_path, 0o600);
    let region = restart_in_process(files).await;
    region.stop().await.expect("stop");
    assert_eq!(std::fs::read(&key_path).expect("read local.key"), key);
}

/// A lost `local.key` must not be silently replaced: a new key would make every stored
/// child unfindable by BSN (each is keyed by an HMAC under the old key). The store records
/// the key's fingerprint on first start and refuses any other key, saying how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_other_local_key_is_refused_not_silently_replaced() {
    let tmp = tempdir();
    let files = RegionFiles::create(tmp.path(), "rotterdam", loopback(0)).expect("files");
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.expect("first start");
    let files = region.stop().await.expect("stop");
    let key_path = files.config.local_key_path();
    let key = std::fs::read(&key_path).expect("read local.key");

    std::fs::remove_file(&key_path).unwrap();
    let err = match Node::bind(files.config.clone(), Arc::new(SystemClock)).await {
        Ok(_) => panic!("a node started with a new local.key on an existing store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("restore local.key from your key backup") && err.contains("remove it first"), "{err}");
    let config = files.config_path.to_str().expect("utf-8 path");
    let out = cli(&["node", "--config", config], None).await.expect_code(1, "node with another local.key");
    assert!(out.stderr.contains("not the key this store was written with"), "{}", out.stderr);

    // The operator restores the key: the node starts again on the same store.
    std::fs::remove_file(&key_path).unwrap();
    virfed::pki::write_secret_file(&key_path, &key).unwrap();
    let region = restart_in_process(files).await;
    region.stop().await.expect("stop");
}
