//! Federation health: the status API, `virfed status`, probes, metrics and the shipped
//! alert rules and dashboard — on real nodes over real mTLS on loopback.
//!
//! Readiness is awaited by polling state with a per-step timeout, never by sleeping a
//! fixed time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virfed::config::Config;
use virfed::domain::SystemClock;
use virfed::health::metrics::{families, is_documented, METRICS};
use virfed::health::sweep::{self, exit_code, Link};
use virfed::kit::fixture::{contact, free_port, FederationFiles, RunningRegion};
use virfed::pb::admin as admin_pb;
use virfed::pb::admin::status_client::StatusClient;
use virfed::pb::client as pb;
use virfed::pki::{client_config, connect, write_cert_pair, Ca, CertSpec, Identity, TlsMaterial};

/// How long one polled condition may take on a loaded machine.
const STEP: Duration = Duration::from_secs(30);

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < STEP, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn connected(region: &RunningRegion, peer: &str) -> bool {
    region.handle.peer_counters().get(peer).is_some_and(|c| c.connected.load(std::sync::atomic::Ordering::Relaxed))
}

/// A client config with a certificate for `identity` from the federation CA.
fn federation_tls(files_ca: &Path, identity: Identity) -> Arc<rustls::ClientConfig> {
    let ca = Ca::load(files_ca).expect("federation CA");
    let spec = match &identity {
        Identity::Region(r) => CertSpec::node(r, vec!["localhost".into()], 30),
        other => CertSpec::client(other.clone(), 30),
    };
    let issued = ca.issue(&spec).expect("issue");
    client_config(&TlsMaterial::from_issued(&ca.cert_pem(), &issued)).expect("tls")
}

fn peer_addr(region: &RunningRegion) -> String {
    region.handle.peer_addr().expect("federating node").to_string()
}

/// Valid BSNs from the shared test vectors (also our canaries).
fn bsn_vectors() -> Vec<String> {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bsn-vectors.txt"))
        .expect("vectors")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _input = f.next()?;
            (f.next()? == "valid").then(|| f.next().map(String::from)).flatten()
        })
        .collect()
}

fn register(bsn: &str, who: &str) -> pb::RegisterSignalRequest {
    let c = contact(who, "professional", &format!("{}@canary.example.nl", who.to_lowercase().replace(' ', ".")));
    pb::RegisterSignalRequest {
        bsn: bsn.into(),
        date_of_birth: "2014-05-01".into(),
        professional: Some(pb::Contact { name: c.name, role: c.role, phone: "+31 6 1234 5678".into(), email: c.email }),
        removal_date: String::new(),
        parent_bsns: vec![],
    }
}

/// Rewrites the address of `peer` in a region's config to `address` (before start).
fn set_peer_address(files: &mut virfed::kit::fixture::RegionFiles, peer: &str, address: &str) {
    let text = std::fs::read_to_string(&files.config_path).expect("config");
    let mut out = String::new();
    let mut in_peer = false;
    for line in text.lines() {
        if line.starts_with("region = ") {
            in_peer = line == format!("region = {peer:?}");
        }
        if in_peer && line.starts_with("address = ") {
            out.push_str(&format!("address = {address:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&files.config_path, &out).expect("write config");
    files.config = Config::parse(&out).expect("config still valid");
}

async fn get_status(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<admin_pb::NodeStatus, tonic::Status> {
    let channel = connect(addr, "localhost", tls).await.expect("connect");
    StatusClient::new(channel).get_status(admin_pb::GetStatusRequest {}).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_table_and_link_matrix_with_a_node_stopped_and_a_link_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = FederationFiles::create(tmp.path(), &["amsterdam", "rotterdam", "utrecht"]).unwrap();
    // Block amsterdam -> rotterdam: a port nobody listens on.
    set_peer_address(&mut files.regions[0], "rotterdam", &format!("127.0.0.1:{}", free_port().unwrap()));
    let ca_dir = files.ca_dir.clone();
    let mut regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    wait_for("rotterdam and utrecht to reach their peers", || {
        connected(&regions[1], "amsterdam")
            && connected(&regions[1], "utrecht")
            && connected(&regions[2], "amsterdam")
            && connected(&regions[0], "utrecht")
    })
    .await;
    let addrs: Vec<String> = regions.iter().map(peer_addr).collect();
    let utrecht = regions.pop().unwrap();
    utrecht.stop().await.unwrap();
    // Give amsterdam and rotterdam something to deliver, so they notice utrecht is gone.
    for (i, region) in regions.iter().enumerate() {
        region.add_org("jz", "Jeugdzorg", "youth-care", None).await.unwrap();
        let mut client = region.org_client("jz").await.unwrap();
        client.register_signal(register(&bsn_vectors()[i], "Sam Status")).await.unwrap();
    }
    wait_for("amsterdam and rotterdam to see utrecht down", || {
        !connected(&regions[0], "utrecht") && !connected(&regions[1], "utrecht")
    })
    .await;

    let tls = federation_tls(&ca_dir, Identity::Coordinator("landelijk".into()));
    let s = sweep::sweep(&addrs, tls).await;
    assert!(s.nodes[0].status.is_ok() && s.nodes[1].status.is_ok(), "{:?}", s.nodes);
    assert!(s.nodes[2].status.is_err(), "utrecht is stopped");
    assert_eq!(s.region_of(&s.nodes[2]), "utrecht", "an unreachable node is named by its peers");
    assert_eq!(s.regions(), ["amsterdam", "rotterdam", "utrecht"]);
    let expect = [
        ("amsterdam", "rotterdam", Link::Down),
        ("amsterdam", "utrecht", Link::Down),
        ("rotterdam", "amsterdam", Link::Ok),
        ("rotterdam", "utrecht", Link::Down),
        ("utrecht", "amsterdam", Link::Unknown),
        ("utrecht", "rotterdam", Link::Unknown),
        ("amsterdam", "amsterdam", Link::Itself),
    ];
    for (from, to, link) in expect {
        assert_eq!(s.link(from, to), link, "{from} -> {to}");
    }
    assert_eq!(exit_code(&s), 2);
    let text = sweep::render(&s);
    println!("{text}");
    let matrix_row = |region: &str| -> Vec<String> {
        let links = text.split("LINKS").nth(1).unwrap();
        let line = links.lines().find(|l| l.starts_with(region)).unwrap();
        line.split_whitespace().skip(1).map(String::from).collect()
    };
    assert_eq!(matrix_row("amsterdam"), ["-", "down", "down"]);
    assert_eq!(matrix_row("rotterdam"), ["ok", "-", "down"]);
    assert_eq!(matrix_row("utrecht"), ["?", "?", "-"]);
    let nodes = text.split("LINKS").next().unwrap();
    let utrecht_line = nodes.lines().find(|l| l.starts_with("utrecht")).unwrap();
    assert!(utrecht_line.contains("UNREACHABLE") && utrecht_line.contains(&addrs[2]), "{utrecht_line}");
    assert!(nodes.lines().find(|l| l.starts_with("amsterdam")).unwrap().contains(" up "), "{nodes}");
    assert!(text.contains("link amsterdam -> rotterdam down"), "{text}");
    assert!(text.contains(&format!("node {} (utrecht) unreachable", addrs[2])), "{text}");
    assert!(!text.contains("link rotterdam -> amsterdam down"), "{text}");
    for region in regions {
        region.stop().await.unwrap();
    }
}

/// Runs `virfed status` and returns its exit code and output.
async fn status_cli(nodes: &[String], cert_dir: &Path, ca_dir: &Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_virfed"))
        .args(["status", "--nodes", &nodes.join(",")])
        .arg("--ca")
        .arg(ca_dir.join("ca.pem"))
        .arg("--cert")
        .arg(cert_dir.join("coordinator.pem"))
        .arg("--key")
        .arg(cert_dir.join("coordinator.key"))
        .output()
        .await
        .expect("run virfed status");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virfed_status_exit_codes_healthy_warnings_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    // amsterdam <-> rotterdam; utrecht also lists amsterdam, at a blocked address.
    let linked = |a: &str, b: &str| {
        matches!((a, b), ("amsterdam", "rotterdam") | ("rotterdam", "amsterdam") | ("utrecht", "amsterdam"))
    };
    let mut files = FederationFiles::create_with(tmp.path(), &["amsterdam", "rotterdam", "utrecht"], linked).unwrap();
    set_peer_address(&mut files.regions[2], "amsterdam", &format!("127.0.0.1:{}", free_port().unwrap()));
    let ca_dir = files.ca_dir.clone();
    let ca = Ca::load(&ca_dir).unwrap();
    write_cert_pair(tmp.path(), "coordinator", &ca.issue(&CertSpec::coordinator("landelijk", 30)).unwrap(), true)
        .unwrap();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    wait_for("amsterdam and rotterdam connected", || {
        connected(&regions[0], "rotterdam") && connected(&regions[1], "amsterdam")
    })
    .await;
    let addrs: Vec<String> = regions.iter().map(peer_addr).collect();

    let (code, text) = status_cli(&addrs[..2], tmp.path(), &ca_dir).await;
    assert_eq!(code, 0, "healthy pair:\n{text}");
    assert!(text.contains("no warnings"), "{text}");

    let (code, text) = status_cli(&addrs, tmp.path(), &ca_dir).await;
    assert_eq!(code, 1, "utrecht's link to amsterdam is down:\n{text}");
    assert!(text.contains("link utrecht -> amsterdam down"), "{text}");

    let mut with_dead = addrs.clone();
    with_dead.push(format!("127.0.0.1:{}", free_port().unwrap()));
    let (code, text) = status_cli(&with_dead, tmp.path(), &ca_dir).await;
    assert_eq!(code, 2, "a node that does not answer:\n{text}");
    assert!(text.contains("UNREACHABLE"), "{text}");

    // A certificate the status API refuses makes that node unreachable for the sweep.
    write_cert_pair(
        tmp.path(),
        "coordinator",
        &ca.issue(&CertSpec::client(Identity::Organisation("jz".into()), 30)).unwrap(),
        true,
    )
    .unwrap();
    let (code, text) = status_cli(&addrs[..1], tmp.path(), &ca_dir).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("PermissionDenied"), "{text}");
    for region in regions {
        region.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_for_configured_peers_and_coordinator_certificates_only() {
    let tmp = tempfile::tempdir().unwrap();
    let files = FederationFiles::create_with(tmp.path(), &["amsterdam", "rotterdam"], |_, _| true).unwrap();
    let ca_dir = files.ca_dir.clone();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    let addr = peer_addr(&regions[0]);
    for identity in [Identity::Coordinator("landelijk".into()), Identity::Region("rotterdam".into())] {
        let status = get_status(&addr, federation_tls(&ca_dir, identity.clone())).await;
        assert_eq!(status.unwrap_or_else(|e| panic!("{identity}: {e}")).region, "amsterdam");
    }
    // A valid node certificate of a region that is not a peer of this node reads nothing
    // (issue 9: any region certificate could read the status API).
    let err = get_status(&addr, federation_tls(&ca_dir, Identity::Region("zwolle".into()))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("not a configured peer"), "{}", err.message());
    for identity in [Identity::Organisation("jz".into()), Identity::Operator("ops".into())] {
        let err = get_status(&addr, federation_tls(&ca_dir, identity.clone())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{identity}: {err}");
        assert!(err.message().contains("node and coordinator certificates only"), "{}", err.message());
    }
    // The coordinator's certificate reads health only: the node-to-node API refuses it.
    let channel =
        connect(&addr, "localhost", federation_tls(&ca_dir, Identity::Coordinator("landelijk".into()))).await.unwrap();
    let err = virfed::pb::federation::peer_client::PeerClient::new(channel)
        .ping(virfed::pb::federation::PingRequest { from_region: "landelijk".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    for region in regions {
        region.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_counts_are_suppressed_in_status_and_metrics() {
    assert_eq!((0..5).map(virfed::health::suppress).collect::<Vec<_>>(), ["<5"; 5]);
    assert_eq!(virfed::health::suppress(5), "5");
    assert_eq!(virfed::health::suppress(1234), "1234");
    let tmp = tempfile::tempdir().unwrap();
    let files = FederationFiles::create_with(tmp.path(), &["amsterdam"], |_, _| false).unwrap();
    let ca_dir = files.ca_dir.clone();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    let region = &regions[0];
    let tls = federation_tls(&ca_dir, Identity::Coordinator("landelijk".into()));
    region.add_org("jz", "Jeugdzorg", "youth-care", None).await.unwrap();
    region.add_org("school", "School", "education", None).await.unwrap();
    let bsns = bsn_vectors();
    let mut jz = region.org_client("jz").await.unwrap();
    let mut school = region.org_client("school").await.unwrap();
    // 4 children, each with two signals: 8 active signals, 4 local matches.
    for bsn in &bsns[..4] {
        jz.register_signal(register(bsn, "Jo Jeugd")).await.unwrap();
        school.register_signal(register(bsn, "Sanne School")).await.unwrap();
    }
    let status = get_status(&peer_addr(region), tls.clone()).await.unwrap();
    assert_eq!(status.active_signals, "8");
    assert_eq!(status.archived_signals, "<5");
    assert_eq!(status.local_matches, "<5", "4 matches are suppressed");
    assert_eq!(status.cross_region_matches, "<5");
    let (_, metrics) = virfed::health::http::get_text(region.handle.http_addr(), "/metrics").await.unwrap();
    assert!(metrics.contains("virfed_matches{scope=\"local\"} 0"), "{metrics}");
    assert!(metrics.contains("virfed_signals{state=\"active\"} 8"), "{metrics}");
    jz.register_signal(register(&bsns[4], "Jo Jeugd")).await.unwrap();
    school.register_signal(register(&bsns[4], "Sanne School")).await.unwrap();
    let started = Instant::now();
    loop {
        // Figures are cached for a moment (FIGURES_TTL).
        let status = get_status(&peer_addr(region), tls.clone()).await.unwrap();
        if status.local_matches == "5" {
            assert_eq!(status.active_signals, "10");
            break;
        }
        assert_eq!(status.local_matches, "<5");
        assert!(started.elapsed() < STEP, "5 matches never reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = virfed::health::http::get_text(region.handle.http_addr(), "/metrics").await.unwrap();
    assert!(metrics.contains("virfed_matches{scope=\"local\"} 5"), "{metrics}");
    for region in regions {
        region.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bsn_or_contact_details_in_status_metrics_or_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(tmp.path(), &["amsterdam", "rotterdam"]).unwrap();
    let ca_dir = files.ca_dir.clone();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    let bsns = bsn_vectors();
    let coordinator = contact("Cora Canary", "coordinator", "cora.canary@canary.example.nl");
    let mut who = vec!["Cora Canary".to_string(), "cora.canary@canary.example.nl".to_string()];
    for (i, region) in regions.iter().enumerate() {
        region.add_org("jz", "Jeugdzorg", "youth-care", Some(coordinator.clone())).await.unwrap();
        let mut client = region.org_client("jz").await.unwrap();
        // Shared children match across the border; the rest stay local.
        for (j, bsn) in bsns.iter().take(12).enumerate() {
            if j < 6 || j % 2 == i {
                let name = format!("Pim Prof{i}x{j}");
                let req = register(bsn, &name);
                who.push(name);
                who.push(req.professional.as_ref().unwrap().email.clone());
                client.register_signal(req).await.unwrap();
            }
        }
    }
    wait_for("cross-region matches at both ends", || {
        regions.iter().all(|r| r.handle.store().match_counts().map(|(_, cross)| cross >= 6).unwrap_or(false))
    })
    .await;
    let tls = federation_tls(&ca_dir, Identity::Coordinator("landelijk".into()));
    let mut seen = String::new();
    for region in &regions {
        let status = get_status(&peer_addr(region), tls.clone()).await.unwrap();
        seen.push_str(&format!("{status:?}\n"));
        for path in ["/healthz", "/readyz", "/metrics"] {
            let (code, body) = virfed::health::http::get_text(region.handle.http_addr(), path).await.unwrap();
            assert_eq!(code, 200, "{path}: {body}");
            seen.push_str(&body);
        }
    }
    let addrs: Vec<String> = regions.iter().map(peer_addr).collect();
    seen.push_str(&sweep::render(&sweep::sweep(&addrs, tls).await));
    assert!(seen.contains("cross_region_matches: \"6\""), "the figures are there: {seen}");
    for bsn in &bsns {
        assert!(!seen.contains(bsn.as_str()), "BSN {bsn} leaked");
        assert!(!seen.contains(bsn.trim_start_matches('0')), "BSN {bsn} leaked without leading zero");
    }
    for canary in who.iter().map(String::as_str).chain(["+31 6 1234 5678", "canary.example.nl", "Canary"]) {
        assert!(!seen.contains(canary), "contact detail {canary:?} leaked");
    }
    for region in regions {
        region.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serving_reflection_lists_services_and_http_probes() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let tmp = tempfile::tempdir().unwrap();
    let files = FederationFiles::create(tmp.path(), &["amsterdam", "rotterdam"]).unwrap();
    let ca_dir = files.ca_dir.clone();
    let regions = RunningRegion::start_federation(files, Arc::new(SystemClock)).await.unwrap();
    let region = &regions[0];
    let client_port = region.channel(Identity::Organisation("jz".into())).await.unwrap();
    let peer_port =
        connect(&peer_addr(region), "localhost", federation_tls(&ca_dir, Identity::Coordinator("landelijk".into())))
            .await
            .unwrap();
    let ports = [
        ("client", client_port, vec!["virfed.client.v1.Signals", "virfed.admin.v1.Organisations"]),
        ("peer", peer_port, vec!["virfed.federation.v1.Peer", "virfed.admin.v1.Status"]),
    ];
    for (port, channel, services) in ports {
        let mut health = HealthClient::new(channel.clone());
        for service in std::iter::once("").chain(services.iter().copied()) {
            let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
            assert_eq!(status.status, ServingStatus::Serving as i32, "{port} port, service {service:?}");
        }
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let answer = answers.message().await.unwrap().expect("an answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{port}: not a service list: {answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in services.iter().copied().chain(["grpc.health.v1.Health"]) {
            assert!(names.iter().any(|n| n == service), "{port} port reflection lists {names:?}, not {service}");
        }
    }
    let http = region.handle.http_addr();
    assert_eq!(virfed::health::http::get_text(http, "/healthz").await.unwrap(), (200, "ok\n".to_string()));
    let (code, ready) = virfed::health::http::get_text(http, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{ready}");
    wait_for("amsterdam to reach rotterdam", || connected(region, "rotterdam")).await;
    // An organisation, so the per-organisation participation gauge has a series.
    region.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    let (code, metrics) = virfed::health::http::get_text(http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for (name, _) in METRICS {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    for family in families(&metrics) {
        assert!(is_documented(&family), "{family} is exported but not documented");
    }
    assert!(
        metrics.contains("method=\"grpc.health.v1.Health/Check\"") && metrics.contains("port=\"peer\""),
        "{metrics}"
    );
    assert!(metrics.contains("virfed_peer_up{peer=\"rotterdam\"} 1"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    for region in regions {
        region.stop().await.unwrap();
    }
}

/// Every `virfed_*` name in a text (alert expressions, dashboard queries).
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("virfed_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_and_dashboard_use_only_documented_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let alerts_text = std::fs::read_to_string(root.join("prometheus-alerts.yml")).unwrap();
    let alerts: serde_yaml::Value = serde_yaml::from_str(&alerts_text).unwrap();
    let rules: Vec<&serde_yaml::Value> = alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .collect();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for expected in [
        "VirfedNodeDown",
        "VirfedLinkDown",
        "VirfedLinkLagging",
        "VirfedCertificateExpiring",
        "VirfedPeerOverBudget",
        "VirfedOrganisationQuiet",
    ] {
        assert!(names.contains(&expected), "alert {expected} missing: {names:?}");
    }
    let mut used = Vec::new();
    for rule in &rules {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        assert!(!metric_names(expr).is_empty() || expr.contains("up{"), "{expr}");
        used.extend(metric_names(expr));
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 6, "the dashboard has panels with queries");
    for expr in &exprs {
        used.extend(metric_names(expr));
    }
    assert!(used.len() > 10);
    for name in used {
        assert!(is_documented(&name), "{name} is used by deploy/ but not in the exporter's documented list");
    }
}
