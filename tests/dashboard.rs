//! The coordinator dashboard (issue 4, item 5) in a real headless Chromium, against a
//! running three-node federation with one node stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use virfed::dashboard::{run, CoordinatorConfig};
use virfed::domain::SystemClock;
use virfed::kit::fixture::{contact, FederationFiles, RunningRegion};
use virfed::pb::client as pb;
use virfed::pki::{write_cert_pair, Ca, CertSpec};

const CANDIDATES: [&str; 3] = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

fn find_chromium() -> Option<String> {
    CANDIDATES.iter().find(|c| std::path::Path::new(c).exists()).map(|c| c.to_string())
}

/// The browser, provisioned on first use: on a machine without Chromium the test installs
/// Debian's package itself (as root, or through `sudo -n`), so `cargo test` needs nothing
/// beyond cargo and the package registry. apt's own lock (waited for up to 10 minutes)
/// serialises concurrent installs. Where it cannot install, it fails and says why.
fn chromium() -> String {
    static BROWSER: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    BROWSER.get_or_init(provision_chromium).clone().unwrap_or_else(|why| panic!("{why}"))
}

fn provision_chromium() -> Result<String, String> {
    if let Some(found) = find_chromium() {
        return Ok(found);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut cmd = if root {
            std::process::Command::new("apt-get")
        } else {
            let mut sudo = std::process::Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        cmd.args(["-o", "DPkg::Lock::Timeout=600", "-q"]).args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let out = cmd.output().map_err(|e| format!("cannot run apt-get ({e})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    eprintln!("dashboard test: Chromium is missing; installing Debian's chromium package (once, takes a minute)");
    apt(&["update"]).and_then(|()| apt(&["install", "-y", "--no-install-recommends", "chromium"])).map_err(|why| {
        format!(
            "this test drives a real headless Chromium and could not install it: {why}. \
                 Install it by hand (as root: apt-get install chromium) and run the tests again"
        )
    })?;
    find_chromium().ok_or_else(|| "apt-get installed chromium, but no chromium binary is in /usr/bin".to_owned())
}

/// Runs headless Chromium with the flags a closed network needs; returns stdout.
fn headless(url: &str, profile: &std::path::Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn get(addr: std::net::SocketAddr) -> String {
    virfed::health::http::get_text(addr, "/").await.map(|(_, body)| body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_grid_shows_a_stopped_node_as_down_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(dir.path(), &["rotterdam", "utrecht", "zwolle"]).unwrap();
    let ca = Ca::load(&files.ca_dir).unwrap();
    let coordinator = ca.issue(&CertSpec::coordinator("landelijk", 30)).unwrap();
    let (cert, key) = write_cert_pair(dir.path(), "coordinator", &coordinator, false).unwrap();
    let ca_pem = files.ca_dir.join("ca.pem");
    let nodes: Vec<String> =
        files.regions.iter().map(|r| r.config.federation.as_ref().unwrap().listen.to_string()).collect();
    let mut regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    for r in &regions {
        r.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    }
    // Stop zwolle, then give rotterdam something to deliver to it, so it notices.
    regions.pop().unwrap().stop().await.unwrap();
    let c = contact("A. de Vries", "professional", "a@example.nl");
    regions[0]
        .org_client("jeugdzorg")
        .await
        .unwrap()
        .register_signal(pb::RegisterSignalRequest {
            bsn: "111222333".into(),
            date_of_birth: "2014-05-01".into(),
            professional: Some(pb::Contact { name: c.name, role: c.role, phone: c.phone, email: c.email }),
            removal_date: String::new(),
            parent_bsns: vec![],
        })
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = CoordinatorConfig { listen: addr, refresh_secs: 1, nodes, ca: ca_pem, cert, key };
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(run(config, listener, stopped));
    // Wait until a sweep sees rotterdam report its link to zwolle as down.
    let mut page = String::new();
    for _ in 0..200 {
        page = get(addr).await;
        if page.contains("data-from=\"rotterdam\" data-to=\"zwolle\" data-state=\"down\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.contains("data-from=\"rotterdam\" data-to=\"zwolle\" data-state=\"down\""), "{page}");

    // The real browser renders the same: zwolle's row and its links marked down.
    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&url, profile.path(), &["--dump-dom"]);
    assert!(dom.contains("<table id=\"links\">"), "no link grid in the DOM: {dom}");
    assert!(dom.contains("<tr class=\"down\" data-region=\"zwolle\">"), "zwolle's row is not down: {dom}");
    assert!(
        dom.contains("data-from=\"utrecht\" data-to=\"zwolle\" data-state=\"down\"")
            || dom.contains("data-from=\"rotterdam\" data-to=\"zwolle\" data-state=\"down\"")
    );
    assert!(
        dom.contains("data-from=\"rotterdam\" data-to=\"utrecht\" data-state=\"ok\""),
        "a healthy link must stay ok"
    );
    assert!(dom.contains("<svg id=\"weekly\""), "the weekly chart is missing");
    assert!(!dom.contains("111222333") && !dom.contains("A. de Vries"), "no personal data on the dashboard");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(&url, profile.path(), &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("the screenshot was not written");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "not a PNG screenshot");

    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
    for r in regions {
        r.stop().await.unwrap();
    }
}
