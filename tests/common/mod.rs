//! Helpers shared by the integration tests (`mod common;` in each file that needs them).
//!
//! Each test file is its own crate and uses only some of these, hence the `dead_code`
//! allowance. What a node, a region or a federation is comes from `virfed::kit`; this
//! module holds only the small builders the test files would otherwise each repeat.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use virfed::kit::fixture::{register_request, RegionFiles};
use virfed::pb::client as pb;
use virfed::pki::{Ca, CertSpec, TlsMaterial};

/// A registration of `bsn` by professional `who` (e-mail someone@example.nl).
pub fn req(bsn: &str, who: &str) -> pb::RegisterSignalRequest {
    register_request(bsn, who, "someone@example.nl")
}

/// The e-mail address of professional `who`: `"A. de Vries"` → `adevries@example.nl`,
/// unique per name, so a test can look for it in what a region stores or sends.
pub fn email_of(who: &str) -> String {
    format!("{}@example.nl", who.to_lowercase().replace([' ', '.'], ""))
}

/// A registration of `bsn` by professional `who` with the e-mail [`email_of`] `who`.
pub fn req_by(bsn: &str, who: &str) -> pb::RegisterSignalRequest {
    register_request(bsn, who, &email_of(who))
}

/// `region/org/professional` of a party ("-" for this region): how tests name who a
/// notice tells about.
pub fn party_key(p: &pb::Party) -> String {
    let region = if p.region_id.is_empty() { "-" } else { &p.region_id };
    format!("{region}/{}/{}", p.organisation_id, p.professional.as_ref().map(|c| c.name.as_str()).unwrap_or(""))
}

/// The [`party_key`]s of `parties`.
pub fn keys(parties: &[pb::Party]) -> std::collections::BTreeSet<String> {
    parties.iter().map(party_key).collect()
}

pub fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every file below `dir`, recursively, appended to `out`.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Environment variables that would silently change what a `virfed` child process does;
/// tests remove them from every child's environment.
pub const VIRFED_ENV: &[&str] = &[
    "VIRFED_CONFIG",
    "VIRFED_REGION",
    "VIRFED_DATA_DIR",
    "VIRFED_LISTEN",
    "VIRFED_TLS_CA",
    "VIRFED_TLS_CERT",
    "VIRFED_TLS_KEY",
    "VIRFED_MATCH_OFFICER_ORG",
    "VIRFED_CA_DIR",
    "VIRFED_NODE",
    "VIRFED_SERVER_NAME",
    "VIRFED_CA",
    "VIRFED_CERT",
    "VIRFED_KEY",
];

/// The address of a region's peer API, from its config.
pub fn peer_listen(files: &RegionFiles) -> SocketAddr {
    files.config.federation.as_ref().unwrap().listen
}

/// TLS material of a node certificate of `region`, issued by the federation CA in `ca_dir`:
/// what a peer (or a rogue with a genuine certificate) presents.
pub fn node_material(ca_dir: &Path, region: &str) -> TlsMaterial {
    let ca = Ca::load(ca_dir).unwrap();
    let issued = ca.issue(&CertSpec::node(region, vec!["localhost".into()], 30)).unwrap();
    TlsMaterial::from_issued(&ca.cert_pem(), &issued)
}

/// Everything a TRACE-level, thread-local `tracing` subscriber writes while it is held:
/// the log capture of the privacy canary tests (invariant 1). Run such a test on a
/// current-thread runtime and in its own process ([`in_own_process`]).
pub struct LogCapture {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// Starts capturing every log line of this thread at TRACE level.
pub fn capture_logs() -> LogCapture {
    use tracing_subscriber::util::SubscriberInitExt;
    let sink = Sink::default();
    let guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(sink.clone())
        .finish()
        .set_default();
    LogCapture { bytes: sink.0, _guard: guard }
}

impl LogCapture {
    /// What was logged so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

/// Runs the test `name` of this test binary alone in a child process (marked by the
/// environment variable `env`), so tracing's process-wide call-site interest cache, filled
/// by other tests logging on other threads, cannot hide lines from a thread-local capture.
/// Returns `true` in the child, which then runs the test body; in the parent it asserts
/// that the child ran exactly that test and passed, and returns `false`.
pub fn in_own_process(name: &str, env: &str) -> bool {
    if std::env::var_os(env).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(env, "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the test failed in its own process:\n{text}");
    assert!(text.contains("1 passed"), "the test did not run in its own process:\n{text}");
    false
}
