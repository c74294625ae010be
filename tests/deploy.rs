//! The deploy files parse and agree with the node configuration (issue 5, "the deploy files
//! parse and agree with the config"). Nothing here builds or runs an image (the development
//! machine has no Docker engine): the compose file, the Kubernetes manifests and the
//! Prometheus configuration are parsed with serde_yaml, every node.toml they carry is parsed
//! with `virfed::config::Config::parse`, and the ports, volume paths, probes, peers, scrape
//! targets, the Dockerfile and the systemd unit are checked against those configs.
//!
//! Keys apart from data (issue 9): every node config puts its key files (`local.key`,
//! `blind.key`, and `blind.key.new` during a re-key) in a `keys_dir` outside its `data_dir`,
//! and every deploy layout gives that directory a writable mount of its own, so that a copy
//! of the data volume holds no key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_yaml::Value;
use virfed::config::Config;
use virfed::federation::rekey::pending_path;

// ---- helpers -------------------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One YAML document, with `<<` merge keys applied (docker-compose.yml uses an anchor).
fn yaml(rel: &str) -> Value {
    let mut value: Value =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel} is not valid YAML: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("deploy/{rel}: cannot apply merge keys: {e}"));
    value
}

/// Every document of a multi-document YAML file.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let mut value = <Value as serde::Deserialize>::deserialize(de)
            .unwrap_or_else(|e| panic!("deploy/{rel}: document #{} is not valid YAML: {e}", i + 1));
        value.apply_merge().unwrap_or_else(|e| panic!("deploy/{rel}: document #{}: merge keys: {e}", i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

/// `v` at a dotted path ("spec.template.spec"); panics naming the file and the path.
fn at<'a>(v: &'a Value, path: &str, what: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.get(key).unwrap_or_else(|| panic!("{what}: missing `{path}` (no `{key}`)"));
    }
    cur
}

fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn s<'a>(v: &'a Value, path: &str, what: &str) -> &'a str {
    at(v, path, what).as_str().unwrap_or_else(|| panic!("{what}: `{path}` is not a string"))
}

fn seq<'a>(v: &'a Value, path: &str, what: &str) -> &'a [Value] {
    at(v, path, what).as_sequence().unwrap_or_else(|| panic!("{what}: `{path}` is not a list")).as_slice()
}

/// A scalar (string or number) as text: compose ports may be written either way.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn parse_config(text: &str, what: &str) -> Config {
    Config::parse(text).unwrap_or_else(|e| panic!("{what}: node.toml does not parse with Config::parse: {e}"))
}

/// The three ports a node listens on: client API, peer API, HTTP health port.
fn config_ports(config: &Config, what: &str) -> BTreeMap<&'static str, u16> {
    let federation = config.federation.as_ref().unwrap_or_else(|| panic!("{what}: no [federation] section"));
    BTreeMap::from([
        ("client", config.listen.port()),
        ("peer", federation.listen.port()),
        ("http", config.http_listen.port()),
    ])
}

/// Every file the node reads besides node.toml.
fn config_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.tls.ca.clone(), config.tls.cert.clone(), config.tls.key.clone()];
    files.extend(config.tls.crls.iter().cloned());
    if let Some(f) = &config.federation {
        files.extend([f.ca.clone(), f.cert.clone(), f.key.clone()]);
        files.extend(f.crls.iter().cloned());
    }
    files
}

/// Every key file the node reads or writes: `local.key`, `blind.key`, and the `blind.key.new`
/// that `virfed rekey` writes beside `blind.key` before it renames it into place.
fn key_files(config: &Config) -> [PathBuf; 3] {
    let blind = config.blind_key_path();
    let pending = pending_path(&blind);
    [config.local_key_path(), blind, pending]
}

/// The key files live in `keys_dir`, which is set, is not inside `data_dir` and does not hold
/// it: then a snapshot or backup of the data volume holds no key (and the node does not warn).
fn assert_keys_apart_from_data(config: &Config, what: &str) {
    let (data, keys) = (config.data_dir.as_path(), config.keys_dir());
    for (name, dir) in [("data_dir", data), ("keys_dir", keys)] {
        assert!(
            dir.is_absolute() && !dir.components().any(|c| c == Component::ParentDir),
            "{what}: {name} {} should be an absolute path without `..`",
            dir.display()
        );
    }
    assert!(config.keys_dir.is_some(), "{what}: no keys_dir, so the key files default to data_dir");
    assert!(
        !config.keys_beside_data(),
        "{what}: keys_dir {} is inside data_dir {} (the node warns at start)",
        keys.display(),
        data.display()
    );
    assert!(
        !data.starts_with(keys),
        "{what}: data_dir {} is inside keys_dir {}: a copy of the keys would hold the store",
        data.display(),
        keys.display()
    );
    for file in key_files(config) {
        assert_eq!(
            file.parent(),
            Some(keys),
            "{what}: {} should be in keys_dir {} (on its mount, in its backup)",
            file.display(),
            keys.display()
        );
        assert!(!file.starts_with(data), "{what}: key file {} is inside data_dir", file.display());
    }
}

fn assert_http_listens_on_all_interfaces(config: &Config, what: &str) {
    assert!(
        config.http_listen.ip().is_unspecified(),
        "{what}: http_listen is {} but must be 0.0.0.0:PORT in a container, or probes and Prometheus cannot reach it",
        config.http_listen
    );
}

// ---- docker compose --------------------------------------------------------------------------

const REGIONS: [&str; 3] = ["rotterdam", "utrecht", "zwolle"];

struct Mount {
    source: String,
    target: PathBuf,
    read_only: bool,
}

struct ComposeNode {
    service: String,
    config: Config,
    mounts: Vec<Mount>,
    service_value: Value,
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// The mount a path in the container is on: the one with the longest target above it.
fn mount_holding<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts.iter().filter(|m| path.starts_with(&m.target)).max_by_key(|m| m.target.components().count())
}

fn compose_mounts(service: &Value, what: &str) -> Vec<Mount> {
    seq(service, "volumes", what)
        .iter()
        .map(|m| {
            let text = m.as_str().unwrap_or_else(|| panic!("{what}: use the short volume syntax SRC:DST[:ro]"));
            let parts: Vec<&str> = text.split(':').collect();
            assert!(parts.len() == 2 || parts.len() == 3, "{what}: volume {text:?} is not SRC:DST[:ro]");
            Mount {
                source: parts[0].to_string(),
                target: PathBuf::from(parts[1]),
                read_only: parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro")),
            }
        })
        .collect()
}

/// The compose services that run `virfed node`, each with the node.toml mounted into it.
fn compose_nodes() -> Vec<ComposeNode> {
    let compose = compose();
    let services = at(&compose, "services", "docker-compose.yml").as_mapping().expect("services is a mapping");
    let mut nodes = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings").to_string();
        let what = format!("docker-compose.yml service {name}");
        if opt(service, "build.dockerfile").and_then(Value::as_str) != Some("deploy/Dockerfile") {
            continue;
        }
        let mounts = compose_mounts(service, &what);
        let config_mount = mounts
            .iter()
            .find(|m| m.target == Path::new("/etc/virfed/node.toml"))
            .unwrap_or_else(|| panic!("{what}: no volume mounted at /etc/virfed/node.toml"));
        assert!(config_mount.read_only, "{what}: node.toml should be mounted read-only (:ro)");
        let config_rel = config_mount.source.strip_prefix("./").unwrap_or(&config_mount.source).to_string();
        let config = parse_config(&read(&config_rel), &format!("{what} (deploy/{config_rel})"));
        nodes.push(ComposeNode { service: name, config, mounts, service_value: service.clone() });
    }
    nodes
}

#[test]
fn compose_file_has_the_three_regions_and_prometheus() {
    let nodes = compose_nodes();
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.service.as_str()).collect();
    assert_eq!(names, BTreeSet::from(REGIONS), "docker-compose.yml: expected one virfed node service per region");
    for node in &nodes {
        assert_eq!(
            node.config.region.as_str(),
            node.service,
            "docker-compose.yml service {}: its node.toml says region {:?}",
            node.service,
            node.config.region
        );
    }
    let compose = compose();
    let image = s(&compose, "services.prometheus.image", "docker-compose.yml service prometheus");
    assert!(image.contains("prometheus"), "docker-compose.yml: the prometheus service runs {image:?}");
}

#[test]
fn compose_node_configs_parse_and_ports_agree_with_expose_and_published_ports() {
    let dockerfile_ports = dockerfile_exposed_ports();
    for node in compose_nodes() {
        let what = format!("docker-compose.yml service {}", node.service);
        assert_http_listens_on_all_interfaces(&node.config, &what);
        let ports: BTreeSet<u16> = config_ports(&node.config, &what).into_values().collect();
        let exposed: BTreeSet<u16> = seq(&node.service_value, "expose", &what)
            .iter()
            .map(|p| scalar(p).parse().unwrap_or_else(|_| panic!("{what}: expose entry {p:?} is not a port")))
            .collect();
        assert_eq!(exposed, ports, "{what}: `expose` differs from the config's listen, federation.listen, http_listen");
        assert_eq!(dockerfile_ports, ports, "{what}: the Dockerfile's EXPOSE differs from the config's ports");
        for published in opt(&node.service_value, "ports").and_then(Value::as_sequence).into_iter().flatten() {
            let text = scalar(published);
            let container: u16 = text
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: published port {text:?} is not HOST:CONTAINER"));
            assert!(
                ports.contains(&container),
                "{what}: publishes container port {container}, which the node does not listen on"
            );
            assert_ne!(
                container,
                node.config.http_listen.port(),
                "{what}: the plain-HTTP health port must not be published on the host"
            );
            assert!(text.starts_with("127.0.0.1:"), "{what}: publish {text:?} on the host's loopback only");
        }
    }
}

#[test]
fn compose_data_volume_is_mounted_at_each_config_data_dir() {
    let compose = compose();
    let volumes = at(&compose, "volumes", "docker-compose.yml").as_mapping().expect("top-level volumes is a mapping");
    let mut seen = BTreeSet::new();
    for node in compose_nodes() {
        let what = format!("docker-compose.yml service {}", node.service);
        let data = node
            .mounts
            .iter()
            .find(|m| m.target == node.config.data_dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at data_dir {}", node.config.data_dir.display()));
        assert!(!data.read_only, "{what}: the data volume must be writable");
        assert!(
            volumes.contains_key(data.source.as_str()),
            "{what}: data_dir is mounted from {:?}, which is not a named volume in the top-level `volumes`",
            data.source
        );
        assert!(seen.insert(data.source.clone()), "{what}: shares data volume {:?} with another region", data.source);
        assert_eq!(node.config.data_dir, dockerfile_volume(), "{what}: data_dir differs from the Dockerfile's VOLUME");
    }
}

#[test]
fn compose_keys_live_on_a_writable_volume_of_their_own_apart_from_the_data() {
    let compose = compose();
    let volumes = at(&compose, "volumes", "docker-compose.yml").as_mapping().expect("top-level volumes is a mapping");
    let private_dirs = dockerfile_private_dirs();
    let mut sources = BTreeSet::new();
    for node in compose_nodes() {
        let what = format!("docker-compose.yml service {}", node.service);
        assert_keys_apart_from_data(&node.config, &what);
        let keys_dir = node.config.keys_dir();
        let data = node
            .mounts
            .iter()
            .find(|m| m.target == node.config.data_dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at data_dir {}", node.config.data_dir.display()));
        let keys = node
            .mounts
            .iter()
            .find(|m| m.target == keys_dir)
            .unwrap_or_else(|| panic!("{what}: no volume is mounted at keys_dir {}", keys_dir.display()));
        for file in key_files(&node.config) {
            assert!(
                mount_holding(&node.mounts, &file).is_some_and(|m| m.target == keys_dir),
                "{what}: key file {} is not on the keys volume",
                file.display()
            );
        }
        assert!(
            !keys.read_only,
            "{what}: the keys volume must be writable (keys are created on first start, re-key writes blind.key.new)"
        );
        assert!(
            volumes.contains_key(keys.source.as_str()),
            "{what}: keys_dir is mounted from {:?}, which is not a named volume in the top-level `volumes`",
            keys.source
        );
        assert_ne!(keys.source, data.source, "{what}: keys and data on the same volume");
        for source in [&data.source, &keys.source] {
            assert!(sources.insert(source.clone()), "{what}: volume {source:?} is used twice (per region: data, keys)");
        }
        assert!(
            private_dirs.contains(keys_dir),
            "{what}: the Dockerfile does not create keys_dir {} owned by uid 10001 with mode 0700, so a new named \
             volume mounted there would start owned by root and the node could not create its keys",
            keys_dir.display()
        );
    }
}

#[test]
fn compose_mounts_every_certificate_file_the_config_reads_read_only() {
    for node in compose_nodes() {
        let what = format!("docker-compose.yml service {}", node.service);
        for file in config_files(&node.config) {
            let mount = mount_holding(&node.mounts, &file).unwrap_or_else(|| {
                panic!("{what}: the config reads {} but no volume is mounted there", file.display())
            });
            assert!(
                mount.read_only,
                "{what}: {} comes from a writable mount; certificates are mounted :ro",
                file.display()
            );
            assert!(
                mount.source.starts_with("./compose/certs/"),
                "{what}: {} is mounted from {:?}; certificates live in ./compose/certs (see deploy/README.md)",
                file.display(),
                mount.source
            );
        }
    }
}

#[test]
fn compose_peers_address_existing_services_on_their_peer_port() {
    let nodes = compose_nodes();
    let by_service: BTreeMap<&str, &ComposeNode> = nodes.iter().map(|n| (n.service.as_str(), n)).collect();
    for node in &nodes {
        let what = format!("docker-compose.yml service {}", node.service);
        let federation = node.config.federation.as_ref().unwrap_or_else(|| panic!("{what}: no [federation]"));
        let peers: BTreeSet<&str> = federation.peers.iter().map(|p| p.region.as_str()).collect();
        let others: BTreeSet<&str> = REGIONS.iter().copied().filter(|r| *r != node.service).collect();
        assert_eq!(peers, others, "{what}: every other region should be a peer");
        for peer in &federation.peers {
            let (host, port) = peer.address.rsplit_once(':').expect("validated by Config::parse");
            let target = by_service.get(host).unwrap_or_else(|| {
                panic!("{what}: peer {} at {:?} does not name a compose service", peer.region, peer.address)
            });
            assert_eq!(
                target.config.region, peer.region,
                "{what}: {:?} is service {host}, another region",
                peer.address
            );
            let peer_port = target.config.federation.as_ref().map(|f| f.listen.port());
            assert_eq!(
                port.parse::<u16>().ok(),
                peer_port,
                "{what}: peer {} dialled on port {port}, but its federation.listen port is {peer_port:?}",
                peer.region
            );
            assert_eq!(peer.server_name(), host, "{what}: the peer's certificate name should be the service name");
        }
    }
}

// ---- Prometheus ------------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_each_nodes_http_port_with_a_region_label() {
    let prometheus = yaml("prometheus.yml");
    let jobs = seq(&prometheus, "scrape_configs", "deploy/prometheus.yml");
    let job = jobs
        .iter()
        .find(|j| j.get("job_name").and_then(Value::as_str) == Some("virfed"))
        .expect("deploy/prometheus.yml: no scrape job named \"virfed\" (the alert rules select job=\"virfed\")");
    let path = opt(job, "metrics_path").and_then(Value::as_str).unwrap_or("/metrics");
    assert_eq!(path, "/metrics", "deploy/prometheus.yml: the virfed job must scrape /metrics");
    let mut targets = BTreeMap::new();
    for group in seq(job, "static_configs", "deploy/prometheus.yml job virfed") {
        let region = s(group, "labels.region", "deploy/prometheus.yml static_configs entry").to_string();
        for t in seq(group, "targets", "deploy/prometheus.yml static_configs entry") {
            targets.insert(scalar(t), region.clone());
        }
    }
    let expected: BTreeMap<String, String> = compose_nodes()
        .iter()
        .map(|n| (format!("{}:{}", n.service, n.config.http_listen.port()), n.config.region.to_string()))
        .collect();
    assert_eq!(targets, expected, "deploy/prometheus.yml: targets must be every compose node's http_listen port");
}

#[test]
fn prometheus_service_mounts_its_config_and_the_alert_rules_it_loads() {
    let compose = compose();
    let what = "docker-compose.yml service prometheus";
    let service = at(&compose, "services.prometheus", what);
    let mounts = compose_mounts(service, what);
    let config_path = seq(service, "command", what)
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml");
    let config_mount = mounts.iter().find(|m| m.target == Path::new(config_path));
    assert_eq!(
        config_mount.map(|m| m.source.as_str()),
        Some("./prometheus.yml"),
        "{what}: deploy/prometheus.yml should be mounted at {config_path}"
    );
    let rules: Vec<String> =
        seq(&yaml("prometheus.yml"), "rule_files", "deploy/prometheus.yml").iter().map(scalar).collect();
    let alerts = mounts
        .iter()
        .find(|m| m.source == "./prometheus-alerts.yml")
        .unwrap_or_else(|| panic!("{what}: deploy/prometheus-alerts.yml is not mounted"));
    assert!(
        rules.iter().any(|r| Path::new(r) == alerts.target),
        "{what}: prometheus-alerts.yml is mounted at {} but rule_files loads {rules:?}",
        alerts.target.display()
    );
    yaml("prometheus-alerts.yml");
}

// ---- Kubernetes ------------------------------------------------------------------------------

fn k8s_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir().join("k8s"))
        .expect("deploy/k8s exists")
        .map(|e| e.expect("readable entry").file_name().into_string().expect("UTF-8 file name"))
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|n| format!("k8s/{n}"))
        .collect();
    files.sort();
    files
}

/// Every Kubernetes object in deploy/k8s, with the file it came from.
fn k8s_objects() -> Vec<(String, Value)> {
    k8s_files().into_iter().flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d))).collect()
}

fn k8s_object(kind: &str) -> Value {
    let found: Vec<Value> = k8s_objects()
        .into_iter()
        .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "deploy/k8s: expected exactly one {kind}, found {}", found.len());
    found.into_iter().next().expect("one")
}

fn k8s_objects_of(kind: &str) -> Vec<Value> {
    k8s_objects()
        .into_iter()
        .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|(_, o)| o)
        .collect()
}

fn statefulset() -> Value {
    k8s_object("StatefulSet")
}

fn pod_spec(sts: &Value) -> &Value {
    at(sts, "spec.template.spec", "StatefulSet")
}

fn node_container(sts: &Value) -> &Value {
    seq(pod_spec(sts), "containers", "StatefulSet")
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("virfed"))
        .expect("StatefulSet: no container named virfed")
}

/// The ConfigMap's node.toml key contains a dot, so it cannot go through a dotted path.
fn configmap_node_toml(cm: &Value) -> &str {
    at(cm, "data", "ConfigMap")
        .get("node.toml")
        .and_then(Value::as_str)
        .expect("deploy/k8s ConfigMap: no data key node.toml")
}

fn k8s_node_config() -> Config {
    let cm = k8s_object("ConfigMap");
    parse_config(configmap_node_toml(&cm), "deploy/k8s ConfigMap virfed-config")
}

/// Container port number by name (probes and Services refer to ports by name).
fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    seq(container, "ports", "StatefulSet container virfed")
        .iter()
        .map(|p| {
            let name = s(p, "name", "container port").to_string();
            let port = at(p, "containerPort", "container port").as_u64().expect("containerPort is a number");
            (name, u16::try_from(port).expect("a port"))
        })
        .collect()
}

fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>, what: &str) -> u16 {
    match port {
        Value::String(name) => *ports.get(name).unwrap_or_else(|| panic!("{what}: no container port named {name:?}")),
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).expect("a port number"),
        other => panic!("{what}: port {other:?} is neither a name nor a number"),
    }
}

#[test]
fn every_k8s_manifest_parses_as_kubernetes_objects() {
    let files = k8s_files();
    for wanted in ["statefulset", "service", "pdb", "configmap", "secret.example"] {
        assert!(
            files.iter().any(|f| f.starts_with(&format!("k8s/{wanted}."))),
            "deploy/k8s: missing {wanted}.yaml (have {files:?})"
        );
    }
    for (file, object) in k8s_objects() {
        let what = format!("deploy/{file}");
        s(&object, "apiVersion", &what);
        s(&object, "kind", &what);
        if object.get("kind").and_then(Value::as_str) != Some("Kustomization") {
            s(&object, "metadata.name", &what);
        }
    }
    let kinds: BTreeSet<String> =
        k8s_objects().iter().filter_map(|(_, o)| o.get("kind").and_then(Value::as_str).map(String::from)).collect();
    for kind in ["StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"] {
        assert!(kinds.contains(kind), "deploy/k8s: no {kind} object (found {kinds:?})");
    }
}

#[test]
fn k8s_configmap_node_toml_parses_and_listens_on_all_interfaces() {
    let config = k8s_node_config();
    assert_http_listens_on_all_interfaces(&config, "deploy/k8s ConfigMap");
    let sts = statefulset();
    let container = node_container(&sts);
    let args: Vec<String> = seq(container, "args", "StatefulSet container virfed").iter().map(scalar).collect();
    assert_eq!(args[..2], ["node", "--config"], "StatefulSet: the container should run `virfed node --config PATH`");
    let config_path = Path::new(&args[2]);
    let mount = seq(container, "volumeMounts", "StatefulSet container virfed")
        .iter()
        .find(|m| Path::new(s(m, "mountPath", "volumeMount")) == config_path)
        .unwrap_or_else(|| panic!("StatefulSet: nothing is mounted at the config path {}", config_path.display()));
    let volume = pod_volume(&sts, s(mount, "name", "volumeMount"));
    let cm_name = s(volume, "configMap.name", "StatefulSet config volume");
    let cm = k8s_object("ConfigMap");
    assert_eq!(cm_name, s(&cm, "metadata.name", "ConfigMap"), "StatefulSet: the config volume names another ConfigMap");
    assert_eq!(mount.get("subPath").and_then(Value::as_str), Some("node.toml"), "StatefulSet: mount subPath node.toml");
}

fn pod_volume<'a>(sts: &'a Value, name: &str) -> &'a Value {
    seq(pod_spec(sts), "volumes", "StatefulSet")
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("StatefulSet: no pod volume named {name}"))
}

#[test]
fn k8s_container_ports_agree_with_the_config_and_the_dockerfile() {
    let config = k8s_node_config();
    let sts = statefulset();
    let ports = container_ports(node_container(&sts));
    for (name, port) in config_ports(&config, "deploy/k8s ConfigMap") {
        assert_eq!(
            ports.get(name),
            Some(&port),
            "StatefulSet: container port {name:?} should be {port} as in the ConfigMap's node.toml"
        );
    }
    let dockerfile_ports = dockerfile_exposed_ports();
    assert_eq!(
        ports.values().copied().collect::<BTreeSet<u16>>(),
        dockerfile_ports,
        "StatefulSet vs Dockerfile EXPOSE"
    );
}

#[test]
fn k8s_probes_hit_healthz_and_readyz_on_the_http_port() {
    let config = k8s_node_config();
    let sts = statefulset();
    let container = node_container(&sts);
    let ports = container_ports(container);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let what = format!("StatefulSet {probe}");
        assert_eq!(s(container, &format!("{probe}.httpGet.path"), &what), path, "{what} should GET {path}");
        let port = resolve_port(at(container, &format!("{probe}.httpGet.port"), &what), &ports, &what);
        assert_eq!(port, config.http_listen.port(), "{what} should probe the http_listen port");
    }
    if let Some(startup) = opt(container, "startupProbe.httpGet") {
        let port = resolve_port(at(startup, "port", "startupProbe"), &ports, "startupProbe");
        assert_eq!(port, config.http_listen.port(), "StatefulSet startupProbe should probe the http_listen port");
    }
}

#[test]
fn k8s_volume_claim_is_mounted_at_the_config_data_dir() {
    let config = k8s_node_config();
    let sts = statefulset();
    assert_eq!(at(&sts, "spec.replicas", "StatefulSet").as_u64(), Some(1), "StatefulSet: one node per region");
    let claims = k8s_claims(&sts);
    assert_eq!(claims.len(), 2, "StatefulSet: two volumeClaimTemplates, for data_dir and keys_dir");
    let mount = k8s_mount_holding(&sts, &config.data_dir)
        .unwrap_or_else(|| panic!("StatefulSet: nothing is mounted at data_dir {}", config.data_dir.display()));
    assert!(
        claims.contains_key(s(mount, "name", "data mount")),
        "StatefulSet: data_dir must be on a volumeClaimTemplate, not on {:?}",
        s(mount, "name", "data mount")
    );
    assert_eq!(
        Path::new(s(mount, "mountPath", "data mount")),
        config.data_dir,
        "StatefulSet: the claim must be mounted at the ConfigMap's data_dir"
    );
    assert_ne!(mount.get("readOnly").and_then(Value::as_bool), Some(true), "StatefulSet: the data volume is writable");
    assert_eq!(
        config.data_dir,
        dockerfile_volume(),
        "deploy/k8s ConfigMap: data_dir differs from the Dockerfile VOLUME"
    );
}

/// The StatefulSet's volumeClaimTemplates by name.
fn k8s_claims(sts: &Value) -> BTreeMap<String, Value> {
    seq(sts, "spec.volumeClaimTemplates", "StatefulSet")
        .iter()
        .map(|c| (s(c, "metadata.name", "volumeClaimTemplate").to_string(), c.clone()))
        .collect()
}

/// The node container's volumeMount a path is on: the one with the longest mountPath above it.
fn k8s_mount_holding<'a>(sts: &'a Value, path: &Path) -> Option<&'a Value> {
    seq(node_container(sts), "volumeMounts", "StatefulSet container virfed")
        .iter()
        .filter(|m| path.starts_with(s(m, "mountPath", "volumeMount")))
        .max_by_key(|m| Path::new(s(m, "mountPath", "volumeMount")).components().count())
}

fn init_containers(sts: &Value) -> &[Value] {
    opt(pod_spec(sts), "initContainers").and_then(Value::as_sequence).map(|v| v.as_slice()).unwrap_or_default()
}

fn container_script(c: &Value) -> String {
    opt(c, "command").and_then(Value::as_sequence).into_iter().flatten().map(scalar).collect::<Vec<_>>().join(" ")
}

#[test]
fn k8s_keys_live_on_a_writable_claim_of_their_own_apart_from_the_data() {
    let config = k8s_node_config();
    let what = "deploy/k8s";
    assert_keys_apart_from_data(&config, &format!("{what} ConfigMap"));
    let sts = statefulset();
    let claims = k8s_claims(&sts);
    let keys_dir = config.keys_dir();
    let data = k8s_mount_holding(&sts, &config.data_dir)
        .unwrap_or_else(|| panic!("StatefulSet: nothing is mounted at data_dir {}", config.data_dir.display()));
    let keys = k8s_mount_holding(&sts, keys_dir)
        .unwrap_or_else(|| panic!("StatefulSet: keys_dir {} is on the read-only root filesystem", keys_dir.display()));
    let keys_claim = s(keys, "name", "keys mount");
    let data_claim = s(data, "name", "data mount");
    assert_eq!(Path::new(s(keys, "mountPath", "keys mount")), keys_dir, "StatefulSet: mount the keys at keys_dir");
    assert_ne!(keys_claim, data_claim, "StatefulSet: the keys are on the data volume");
    assert!(
        claims.contains_key(keys_claim),
        "StatefulSet: keys_dir is on volume {keys_claim:?}, not on a volumeClaimTemplate: a Secret or ConfigMap is \
         read-only (no key created on first start, no blind.key.new during re-key), an emptyDir is lost with the \
         pod and the store is of no use without its keys"
    );
    assert_ne!(
        keys.get("readOnly").and_then(Value::as_bool),
        Some(true),
        "StatefulSet: the keys volume must be writable (keys are created on first start, re-key writes blind.key.new)"
    );
    assert!(keys.get("subPath").is_none(), "StatefulSet: mount the whole keys claim at keys_dir, not a subPath");
    for file in key_files(&config) {
        let on = k8s_mount_holding(&sts, &file).map(|m| s(m, "name", "volumeMount"));
        assert_eq!(on, Some(keys_claim), "StatefulSet: key file {} is not on the keys claim", file.display());
    }
    let component = |claim: &str| {
        opt(&claims[claim], "metadata.labels").and_then(|l| l.get("app.kubernetes.io/component")).cloned()
    };
    assert!(
        component(keys_claim).is_some() && component(keys_claim) != component(data_claim),
        "StatefulSet: the keys and data claims need different app.kubernetes.io/component labels, so that \
         snapshot and backup policies can leave the keys out"
    );
    for (key, value) in
        opt(&sts, "spec.persistentVolumeClaimRetentionPolicy").and_then(Value::as_mapping).into_iter().flatten()
    {
        assert_eq!(
            value.as_str(),
            Some("Retain"),
            "StatefulSet: persistentVolumeClaimRetentionPolicy {key:?} must be Retain"
        );
    }

    // An init container that writes keys_dir (seeding it from a Secret) mounts the same claim
    // at the same path, installs the files 0600, and its Secret is optional and read-only.
    let example_secrets: BTreeMap<String, Value> =
        k8s_objects_of("Secret").into_iter().map(|o| (s(&o, "metadata.name", "Secret").to_string(), o)).collect();
    for init in init_containers(&sts) {
        let name = s(init, "name", "initContainer");
        let mounts = seq(init, "volumeMounts", name);
        let Some(on_keys) = mounts.iter().find(|m| s(m, "name", "volumeMount") == keys_claim) else {
            continue;
        };
        let what = format!("StatefulSet initContainer {name}");
        assert_eq!(Path::new(s(on_keys, "mountPath", &what)), keys_dir, "{what}: mounts the keys claim elsewhere");
        let script = container_script(init);
        assert!(script.contains(&keys_dir.display().to_string()), "{what}: its script does not write keys_dir");
        assert!(script.contains("install -m 0600"), "{what}: key files must be installed with mode 0600");
        let key_names: Vec<String> = key_files(&config)[..2]
            .iter()
            .map(|f| f.file_name().and_then(|n| n.to_str()).expect("a file name").to_string())
            .collect();
        for m in mounts {
            let mounted = s(m, "name", "volumeMount");
            if claims.contains_key(mounted) {
                continue;
            }
            let volume = pod_volume(&sts, mounted);
            let Some(secret) = opt(volume, "secret.secretName").and_then(Value::as_str) else { continue };
            assert_eq!(
                m.get("readOnly").and_then(Value::as_bool),
                Some(true),
                "{what}: mount Secret {secret} readOnly"
            );
            assert_eq!(
                opt(volume, "secret.optional").and_then(Value::as_bool),
                Some(true),
                "{what}: the seed Secret {secret} must be optional, or the pod cannot start without it"
            );
            let example = example_secrets
                .get(secret)
                .unwrap_or_else(|| panic!("deploy/k8s/secret.example.yaml shows no Secret {secret}"));
            for key in &key_names {
                assert!(
                    opt(example, "stringData").and_then(|d| d.get(key.as_str())).is_some(),
                    "secret.example.yaml {secret}: no key {key}"
                );
                assert!(script.contains(key.as_str()), "{what}: its script does not seed {key}");
            }
        }
    }
}

#[test]
fn k8s_pod_runs_non_root_with_a_read_only_root_filesystem() {
    let sts = statefulset();
    let pod = pod_spec(&sts);
    let what = "StatefulSet pod securityContext";
    assert_eq!(at(pod, "securityContext.runAsNonRoot", what).as_bool(), Some(true), "{what}: runAsNonRoot: true");
    assert!(at(pod, "securityContext.fsGroup", what).as_u64().is_some(), "{what}: fsGroup makes the PVCs writable");
    assert_eq!(
        opt(pod, "securityContext.fsGroupChangePolicy").and_then(Value::as_str),
        Some("OnRootMismatch"),
        "{what}: fsGroupChangePolicy OnRootMismatch; the default (Always) makes the key files group-readable at \
         every mount, and the node then refuses them"
    );
    let uid = at(pod, "securityContext.runAsUser", what).as_u64();
    assert_eq!(uid, Some(u64::from(dockerfile_uid())), "{what}: runAsUser should be the Dockerfile's USER");
    let containers = seq(pod, "containers", "StatefulSet").iter().chain(init_containers(&sts));
    for c in containers {
        let what = format!("StatefulSet container {}", s(c, "name", "container"));
        assert_eq!(
            at(c, "securityContext.readOnlyRootFilesystem", &what).as_bool(),
            Some(true),
            "{what}: readOnlyRootFilesystem: true"
        );
        assert_eq!(
            at(c, "securityContext.allowPrivilegeEscalation", &what).as_bool(),
            Some(false),
            "{what}: allowPrivilegeEscalation: false"
        );
    }
}

#[test]
fn k8s_certificates_come_from_secrets_mounted_read_only() {
    let config = k8s_node_config();
    let sts = statefulset();
    let container = node_container(&sts);
    let mounts = seq(container, "volumeMounts", "StatefulSet container virfed");
    let example_secrets: BTreeMap<String, BTreeSet<String>> = k8s_objects_of("Secret")
        .iter()
        .map(|secret| {
            let name = s(secret, "metadata.name", "Secret").to_string();
            let data = opt(secret, "stringData").or_else(|| opt(secret, "data")).and_then(Value::as_mapping);
            let keys = data.into_iter().flatten().filter_map(|(k, _)| k.as_str().map(String::from)).collect();
            (name, keys)
        })
        .collect();
    let init_script: String = init_containers(&sts).iter().map(container_script).collect::<Vec<_>>().join(" ");
    let mut secret_mounts = 0;
    for m in mounts {
        // The data and keys volumes come from volumeClaimTemplates, not from the pod's volumes.
        let name = s(m, "name", "volumeMount");
        let Some(volume) = seq(pod_spec(&sts), "volumes", "StatefulSet")
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        else {
            continue;
        };
        if let Some(secret) = opt(volume, "secret.secretName").and_then(Value::as_str) {
            secret_mounts += 1;
            assert_eq!(
                m.get("readOnly").and_then(Value::as_bool),
                Some(true),
                "StatefulSet: Secret {secret} must be mounted readOnly: true"
            );
            assert!(example_secrets.contains_key(secret), "deploy/k8s/secret.example.yaml shows no Secret {secret}");
        }
    }
    assert!(secret_mounts >= 2, "StatefulSet: the API and federation certificates come from Secrets");
    for file in config_files(&config) {
        let what = format!("StatefulSet: the config reads {}", file.display());
        let m = mounts
            .iter()
            .filter(|m| file.starts_with(s(m, "mountPath", "volumeMount")))
            .max_by_key(|m| Path::new(s(m, "mountPath", "volumeMount")).components().count())
            .unwrap_or_else(|| panic!("{what}, but no volume is mounted there"));
        assert_eq!(m.get("readOnly").and_then(Value::as_bool), Some(true), "{what} from a writable mount");
        let volume = pod_volume(&sts, s(m, "name", "volumeMount"));
        let key = file.file_name().and_then(|n| n.to_str()).expect("a file name");
        if let Some(secret) = opt(volume, "secret.secretName").and_then(Value::as_str) {
            assert!(
                example_secrets.get(secret).is_some_and(|keys| keys.contains(key)),
                "{what}: Secret {secret} in secret.example.yaml has no key {key}"
            );
        } else if opt(volume, "emptyDir").is_some() {
            assert!(
                init_script.contains(&file.display().to_string()),
                "{what} from an emptyDir, but no init container writes it"
            );
        } else {
            panic!("{what} from volume {volume:?}, neither a Secret nor the init container's emptyDir");
        }
    }
}

#[test]
fn k8s_secret_example_holds_placeholders_only() {
    for secret in yaml_docs("k8s/secret.example.yaml") {
        let name = s(&secret, "metadata.name", "secret.example.yaml").to_string();
        assert!(opt(&secret, "data").is_none(), "secret.example.yaml {name}: use stringData placeholders, not data");
        for (key, value) in at(&secret, "stringData", &name).as_mapping().expect("stringData is a mapping") {
            let value = scalar(value);
            assert!(value.contains("PLACEHOLDER"), "secret.example.yaml {name}: {key:?} must be a placeholder");
        }
    }
}

#[test]
fn k8s_services_expose_the_config_ports_and_select_the_pod() {
    let config = k8s_node_config();
    let sts = statefulset();
    let ports = container_ports(node_container(&sts));
    let pod_labels = at(&sts, "spec.template.metadata.labels", "StatefulSet").clone();
    let services = k8s_objects_of("Service");
    let governing = s(&sts, "spec.serviceName", "StatefulSet");
    let mut all_ports = BTreeSet::new();
    for svc in &services {
        let name = s(svc, "metadata.name", "Service");
        let what = format!("Service {name}");
        for (k, v) in at(svc, "spec.selector", &what).as_mapping().expect("selector is a mapping") {
            assert_eq!(pod_labels.get(k.as_str().expect("label")), Some(v), "{what}: selector {k:?} misses the pod");
        }
        for p in seq(svc, "spec.ports", &what) {
            let port = at(p, "port", &what).as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
            let target = resolve_port(p.get("targetPort").unwrap_or(at(p, "port", &what)), &ports, &what);
            assert_eq!(port, target, "{what}: port {port} forwards to container port {target}");
            all_ports.insert(target);
            if name != governing {
                assert_ne!(
                    target,
                    config.http_listen.port(),
                    "{what}: the plain-HTTP port must stay on the in-cluster headless Service"
                );
            }
        }
    }
    let expected: BTreeSet<u16> = config_ports(&config, "deploy/k8s ConfigMap").into_values().collect();
    assert_eq!(all_ports, expected, "deploy/k8s Services: client, peer and metrics ports from the config");
    let headless = services
        .iter()
        .find(|svc| opt(svc, "metadata.name").and_then(Value::as_str) == Some(governing))
        .unwrap_or_else(|| panic!("StatefulSet serviceName {governing:?} names no Service"));
    assert_eq!(
        opt(headless, "spec.clusterIP").and_then(Value::as_str),
        Some("None"),
        "the StatefulSet's governing Service should be headless"
    );
}

#[test]
fn k8s_pdb_selects_the_pod_and_allows_a_single_replica_to_be_drained() {
    let pdb = k8s_object("PodDisruptionBudget");
    let sts = statefulset();
    let pod_labels = at(&sts, "spec.template.metadata.labels", "StatefulSet");
    for (k, v) in at(&pdb, "spec.selector.matchLabels", "PodDisruptionBudget").as_mapping().expect("a mapping") {
        assert_eq!(pod_labels.get(k.as_str().expect("label")), Some(v), "PodDisruptionBudget: {k:?} misses the pod");
    }
    let max_unavailable = opt(&pdb, "spec.maxUnavailable").and_then(Value::as_u64);
    let min_available = opt(&pdb, "spec.minAvailable").and_then(Value::as_u64);
    assert!(
        max_unavailable == Some(1) || min_available == Some(0),
        "PodDisruptionBudget: with one replica use maxUnavailable: 1 (or minAvailable: 0), or drains block forever"
    );
}

#[test]
fn kustomization_lists_existing_manifests_but_not_the_example_secret() {
    let k = yaml("k8s/kustomization.yaml");
    for r in seq(&k, "resources", "deploy/k8s/kustomization.yaml") {
        let r = scalar(r);
        assert!(deploy_dir().join("k8s").join(&r).is_file(), "kustomization.yaml lists {r}, which does not exist");
        assert!(!r.contains("example"), "kustomization.yaml must not apply the placeholder Secret {r}");
    }
}

// ---- Dockerfile ------------------------------------------------------------------------------

/// Dockerfile instructions (continuation lines joined), as (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        pending.push_str(trimmed.trim_end_matches('\\'));
        pending.push(' ');
        if trimmed.ends_with('\\') {
            continue;
        }
        let full = std::mem::take(&mut pending);
        let (instr, args) = full.trim().split_once(char::is_whitespace).unwrap_or((full.trim(), ""));
        out.push((instr.to_uppercase(), args.trim().to_string()));
    }
    out
}

fn dockerfile_args(instr: &str) -> Vec<String> {
    dockerfile().into_iter().filter(|(i, _)| i == instr).map(|(_, a)| a).collect()
}

fn dockerfile_exposed_ports() -> BTreeSet<u16> {
    dockerfile_args("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|p| p.split('/').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("Dockerfile: EXPOSE {p}")))
        .collect()
}

fn dockerfile_volume() -> PathBuf {
    let volumes = dockerfile_args("VOLUME");
    assert_eq!(volumes.len(), 1, "Dockerfile: expected one VOLUME, found {volumes:?}");
    PathBuf::from(volumes[0].trim_matches(|c| c == '[' || c == ']' || c == '"'))
}

/// Directories the Dockerfile creates with `install -d -o 10001 -g 10001 -m 0700 DIR...`: a
/// new named volume mounted on one starts with that owner and mode.
fn dockerfile_private_dirs() -> BTreeSet<PathBuf> {
    let uid = dockerfile_uid().to_string();
    let mut dirs = BTreeSet::new();
    for run in dockerfile_args("RUN") {
        for command in run.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            if words.get(..2) != Some(&["install", "-d"][..]) {
                continue;
            }
            let (mut options, mut paths) = (BTreeMap::new(), Vec::new());
            let mut rest = words[2..].iter();
            while let Some(word) = rest.next() {
                if word.starts_with('-') {
                    options.insert(*word, rest.next().copied().unwrap_or_default());
                } else {
                    paths.push(PathBuf::from(word));
                }
            }
            let private = options.get("-o") == Some(&uid.as_str())
                && options.get("-g") == Some(&uid.as_str())
                && options.get("-m") == Some(&"0700");
            if private {
                dirs.extend(paths);
            }
        }
    }
    dirs
}

fn dockerfile_uid() -> u32 {
    let users = dockerfile_args("USER");
    let user = users.last().expect("Dockerfile: no USER instruction: the image would run as root");
    let uid = user.split(':').next().unwrap_or(user);
    uid.parse().unwrap_or_else(|_| panic!("Dockerfile: USER {user:?} should be a numeric uid (runAsNonRoot needs one)"))
}

#[test]
fn dockerfile_is_multistage_non_root_with_a_data_volume_at_the_default_data_dir() {
    let from = dockerfile_args("FROM");
    assert!(from.len() >= 2, "Dockerfile: expected a multi-stage build, found FROM {from:?}");
    assert!(
        from[0].starts_with("rust:1-bookworm"),
        "Dockerfile: build stage should be rust:1-bookworm, is {}",
        from[0]
    );
    assert_eq!(
        from.last().map(String::as_str),
        Some("debian:bookworm-slim"),
        "Dockerfile: runtime debian:bookworm-slim"
    );
    let run = dockerfile_args("RUN").join(" ");
    assert!(run.contains("cargo build --release --locked"), "Dockerfile: build with cargo build --release --locked");
    assert!(
        run.contains("--no-default-features"),
        "Dockerfile: build with --no-default-features (a production binary, without the test and demo kit)"
    );
    assert!(run.contains("ca-certificates"), "Dockerfile: the runtime installs ca-certificates");
    let uid = dockerfile_uid();
    assert_ne!(uid, 0, "Dockerfile: USER must not be root");
    assert_eq!(uid, 10001, "Dockerfile: USER should be uid 10001");
    let example = parse_config(&read("node.example.toml"), "deploy/node.example.toml");
    assert_eq!(dockerfile_volume(), example.data_dir, "Dockerfile: VOLUME should be the default data_dir");
    for dir in [example.data_dir.as_path(), example.keys_dir()] {
        assert!(
            dockerfile_private_dirs().contains(dir),
            "Dockerfile: create {} with install -d -o {uid} -g {uid} -m 0700 (a new volume there starts so)",
            dir.display()
        );
    }
    let expected: BTreeSet<u16> = config_ports(&example, "deploy/node.example.toml").into_values().collect();
    assert_eq!(dockerfile_exposed_ports(), expected, "Dockerfile: EXPOSE should be the default ports");
    assert_eq!(dockerfile_args("ENTRYPOINT"), ["[\"virfed\"]"], "Dockerfile: ENTRYPOINT [\"virfed\"]");
    assert_eq!(
        dockerfile_args("CMD"),
        ["[\"node\", \"--config\", \"/etc/virfed/node.toml\"]"],
        "Dockerfile: CMD node --config /etc/virfed/node.toml"
    );
    assert!(dockerfile_args("HEALTHCHECK").is_empty(), "Dockerfile: no HEALTHCHECK (no curl in slim; use probes)");
}

// ---- systemd ---------------------------------------------------------------------------------

#[test]
fn systemd_unit_is_hardened_and_runs_virfed_node() {
    let text = read("virfed.service");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for wanted in [
        "User=virfed",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        assert!(lines.contains(&wanted), "deploy/virfed.service: missing the line `{wanted}`");
    }
    let exec =
        lines.iter().find_map(|l| l.strip_prefix("ExecStart=")).expect("deploy/virfed.service: no ExecStart= line");
    assert!(
        exec.contains("virfed node --config "),
        "deploy/virfed.service: ExecStart={exec} should run virfed node --config"
    );
}

/// The values of `Key=` in one `[Section]` of the unit, each split at whitespace.
fn unit_values(section: &str, key: &str) -> Vec<String> {
    let text = read("virfed.service");
    let mut current = "";
    let mut values = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with(';')) {
        if line.starts_with('[') {
            current = line;
        } else if current == format!("[{section}]") {
            if let Some(v) = line.strip_prefix(key).and_then(|v| v.strip_prefix('=')) {
                values.extend(v.split_whitespace().map(String::from));
            }
        }
    }
    values
}

#[test]
fn systemd_unit_gives_data_dir_and_keys_dir_each_a_writable_directory_of_its_own() {
    let example = parse_config(&read("node.example.toml"), "deploy/node.example.toml");
    assert_keys_apart_from_data(&example, "deploy/node.example.toml");
    let dirs: BTreeSet<PathBuf> = BTreeSet::from([example.data_dir.clone(), example.keys_dir().to_path_buf()]);
    let paths = |section: &str, key: &str| -> BTreeSet<PathBuf> {
        unit_values(section, key).into_iter().map(PathBuf::from).collect()
    };
    // StateDirectory=NAME creates /var/lib/NAME, owned by User=, with StateDirectoryMode=.
    let state: BTreeSet<PathBuf> =
        unit_values("Service", "StateDirectory").iter().map(|n| Path::new("/var/lib").join(n)).collect();
    assert_eq!(
        state, dirs,
        "deploy/virfed.service: StateDirectory= should create data_dir and keys_dir of node.example.toml"
    );
    assert_eq!(
        paths("Service", "ReadWritePaths"),
        dirs,
        "deploy/virfed.service: ReadWritePaths= should be data_dir and keys_dir only (re-key writes blind.key.new)"
    );
    assert_eq!(
        paths("Unit", "RequiresMountsFor"),
        dirs,
        "deploy/virfed.service: [Unit] RequiresMountsFor= data_dir and keys_dir, so the node never starts on the \
         directory under a missing mount (and creates new keys there)"
    );
    assert_eq!(
        unit_values("Service", "WorkingDirectory"),
        [example.data_dir.display().to_string()],
        "deploy/virfed.service: WorkingDirectory= data_dir"
    );
}

// ---- every file says what it is for -----------------------------------------------------------

#[test]
fn every_packaging_file_starts_with_a_comment_saying_what_it_is_for() {
    let mut files: Vec<String> = [
        "Dockerfile",
        "Dockerfile.dockerignore",
        "docker-compose.yml",
        "prometheus.yml",
        "virfed.service",
        "compose/.gitignore",
    ]
    .map(String::from)
    .to_vec();
    files.extend(REGIONS.map(|r| format!("compose/{r}.toml")));
    files.extend(k8s_files());
    for file in files {
        let text = read(&file);
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("# ") && first.len() > 20,
            "deploy/{file}: should start with a comment saying what it is for"
        );
    }
    let readme = read("README.md");
    assert!(
        readme.contains("not built or run here") && readme.contains("no Docker engine"),
        "deploy/README.md must say plainly that the images are not built or run here"
    );
}
