//! `virfed status`: asks every node for its status in parallel (peer API port, a
//! coordinator certificate of the federation CA) and turns the answers into a node table,
//! a link matrix and warnings. Library functions, so a dashboard can reuse them.
//!
//! The link matrix is region × region, one cell per direction: row = the reporting node,
//! column = its peer. A link is `down` when the reporting node is not connected to the
//! peer (its last attempt failed, or none succeeded yet), `lagging` when its outbox for
//! the peer holds an item older than [`LAG_SECS`] (5 minutes), otherwise `ok`. A row of a
//! node that did not answer reads `?`; `.` marks regions that are not peers.
//!
//! Exit code ([`exit_code`]): 0 all healthy, 1 warnings, 2 a node unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pb::admin as pb;
use crate::pb::admin::status_client::StatusClient;
use crate::pki::connect;

/// An outbox item older than this makes its link `lagging` (seconds).
pub const LAG_SECS: u64 = 5 * 60;
/// An outbox item older than this is a warning (seconds).
pub const OUTBOX_WARN_SECS: u64 = 3600;
/// A certificate expiring within this many days is a warning.
pub const CERT_WARN_DAYS: i64 = 30;
/// Connect plus request, per node.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's answer.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// The address queried (host:port of its peer API).
    pub address: String,
    /// Its status, or why it could not be had.
    pub status: Result<pb::NodeStatus, String>,
    /// How long the query took.
    pub elapsed: Duration,
}

/// The answers of every node, in the order the nodes were given.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    pub nodes: Vec<NodeReport>,
}

/// State of one direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ok,
    Lagging,
    Down,
    /// The reporting node did not answer.
    Unknown,
    /// The reporting node does not list this region as a peer.
    NotPeered,
    /// A region and itself.
    Itself,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Ok => "ok",
            Link::Lagging => "lagging",
            Link::Down => "down",
            Link::Unknown => "?",
            Link::NotPeered => ".",
            Link::Itself => "-",
        }
    }
}

/// Queries one node.
pub async fn query(address: &str, tls: Arc<rustls::ClientConfig>) -> Result<pb::NodeStatus, String> {
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address).trim_matches(['[', ']']);
    let ask = async {
        let channel = connect(address, host, tls).await.map_err(|e| e.to_string())?;
        StatusClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    match tokio::time::timeout(NODE_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", NODE_TIMEOUT.as_secs())),
    }
}

/// Queries every node in parallel.
pub async fn sweep(nodes: &[String], tls: Arc<rustls::ClientConfig>) -> Sweep {
    let queries = nodes.iter().map(|address| {
        let tls = tls.clone();
        async move {
            let started = Instant::now();
            let status = query(address, tls).await;
            NodeReport { address: address.clone(), status, elapsed: started.elapsed() }
        }
    });
    Sweep { nodes: futures::future::join_all(queries).await }
}

impl Sweep {
    /// The nodes that answered.
    pub fn answered(&self) -> impl Iterator<Item = &pb::NodeStatus> {
        self.nodes.iter().filter_map(|n| n.status.as_ref().ok())
    }

    /// The region of a node: its own answer, else what its peers call the address it was
    /// queried at, else `?<address>`.
    pub fn region_of(&self, node: &NodeReport) -> String {
        if let Ok(s) = &node.status {
            return s.region.clone();
        }
        self.answered()
            .flat_map(|s| s.peers.iter())
            .find(|p| p.address == node.address)
            .map(|p| p.region.clone())
            .unwrap_or_else(|| format!("?{}", node.address))
    }

    /// Every region seen: queried nodes and the peers they name, sorted.
    pub fn regions(&self) -> Vec<String> {
        let mut all: BTreeSet<String> = self.nodes.iter().map(|n| self.region_of(n)).collect();
        all.extend(self.answered().flat_map(|s| s.peers.iter().map(|p| p.region.clone())));
        all.into_iter().collect()
    }

    /// The link from `from` to `to`, as `from` reports it.
    pub fn link(&self, from: &str, to: &str) -> Link {
        if from == to {
            return Link::Itself;
        }
        let Some(node) = self.answered().find(|s| s.region == from) else { return Link::Unknown };
        match node.peers.iter().find(|p| p.region == to) {
            None => Link::NotPeered,
            Some(p) if !p.connected => Link::Down,
            Some(p) if p.outbox_oldest_age_seconds.unwrap_or(0) > LAG_SECS => Link::Lagging,
            Some(_) => Link::Ok,
        }
    }

    /// The link matrix: (from, to) → state.
    pub fn matrix(&self) -> BTreeMap<(String, String), Link> {
        let regions = self.regions();
        let mut m = BTreeMap::new();
        for from in &regions {
            for to in &regions {
                m.insert((from.clone(), to.clone()), self.link(from, to));
            }
        }
        m
    }

    /// Addresses of the nodes that did not answer, with the reason.
    pub fn unreachable(&self) -> Vec<(&str, &str)> {
        self.nodes.iter().filter_map(|n| n.status.as_ref().err().map(|e| (n.address.as_str(), e.as_str()))).collect()
    }

    /// Everything a coordinator should look at.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for n in &self.nodes {
            if let Err(e) = &n.status {
                w.push(format!("node {} ({}) unreachable: {e}", n.address, self.region_of(n)));
            }
        }
        let expiring = |days: Option<i64>| days.is_some_and(|d| d < CERT_WARN_DAYS);
        for s in self.answered() {
            if !s.store_writable {
                w.push(format!("{}: the store does not take writes", s.region));
            }
            for (kind, days) in [("client API", s.api_cert_days_left), ("federation", s.federation_cert_days_left)] {
                if expiring(days) {
                    w.push(format!("{}: {kind} certificate expires in {} days", s.region, days.unwrap_or(0)));
                }
            }
            for p in &s.peers {
                if !p.connected {
                    let why = if p.last_error.is_empty() { "not reached yet".into() } else { p.last_error.clone() };
                    w.push(format!("link {} -> {} down: {why}", s.region, p.region));
                }
                if let Some(age) = p.outbox_oldest_age_seconds.filter(|a| *a > OUTBOX_WARN_SECS) {
                    w.push(format!(
                        "link {} -> {}: outbox oldest item {} old ({} queued)",
                        s.region,
                        p.region,
                        human_secs(age),
                        p.outbox_depth
                    ));
                }
                if p.budget_rejections > 0 {
                    w.push(format!(
                        "{} is over its budget at {}: {} blind requests refused",
                        p.region, s.region, p.budget_rejections
                    ));
                }
                if p.proof_failures > 0 {
                    w.push(format!(
                        "{} sent {} answer batches to {} that failed their proof (refused)",
                        p.region, p.proof_failures, s.region
                    ));
                }
                // Both ends of a link report the key of the same direction: what the peer
                // uses towards this node (pinned here) and what it says it uses.
                let theirs = self
                    .answered()
                    .find(|o| o.region == p.region)
                    .and_then(|o| o.peers.iter().find(|q| q.region == s.region))
                    .map(|q| q.own_key_fingerprint.as_str())
                    .filter(|f| !f.is_empty());
                if let Some(theirs) = theirs {
                    if !p.peer_key_fingerprint.is_empty() && p.peer_key_fingerprint != theirs {
                        w.push(format!(
                            "{} pinned blinding key {} for {}, which reports {}: check both nodes (re-key in progress or a key substituted)",
                            s.region, p.peer_key_fingerprint, p.region, theirs
                        ));
                    }
                }
                if expiring(p.peer_cert_days_left) && !self.answered().any(|o| o.region == p.region) {
                    w.push(format!(
                        "{}: node certificate expires in {} days (reported by {})",
                        p.region,
                        p.peer_cert_days_left.unwrap_or(0),
                        s.region
                    ));
                }
            }
        }
        let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.answered() {
            versions
                .entry(format!("{} (protocol {})", s.software_version, s.protocol_version))
                .or_default()
                .insert(s.region.clone());
            for p in s.peers.iter().filter(|p| !p.peer_software_version.is_empty()) {
                if !self.answered().any(|o| o.region == p.region) {
                    versions
                        .entry(format!("{} (protocol {})", p.peer_software_version, p.peer_protocol_version))
                        .or_default()
                        .insert(p.region.clone());
                }
            }
        }
        if versions.len() > 1 {
            let list: Vec<String> = versions
                .iter()
                .map(|(v, regions)| format!("{v}: {}", regions.iter().cloned().collect::<Vec<_>>().join(", ")))
                .collect();
            w.push(format!("version skew: {}", list.join("; ")));
        }
        w
    }
}

/// 0 all healthy, 1 warnings, 2 a node unreachable.
pub fn exit_code(sweep: &Sweep) -> i32 {
    if !sweep.unreachable().is_empty() {
        2
    } else if !sweep.warnings().is_empty() {
        1
    } else {
        0
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..=1023 => format!("{b} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.1} GiB", b as f64 / 1_073_741_824.0),
    }
}

fn days(d: Option<i64>) -> String {
    d.map(|d| d.to_string()).unwrap_or_else(|| "?".into())
}

/// Rows of cells as left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The node table, the link matrix and the warnings, as plain text.
pub fn render(sweep: &Sweep) -> String {
    let mut out = String::from("NODES\n");
    let mut rows = vec![[
        "region",
        "address",
        "state",
        "version",
        "proto",
        "uptime",
        "store",
        "cert days api/fed",
        "active",
        "archived",
        "local m.",
        "cross m.",
        "family m. local/cross",
    ]
    .map(String::from)
    .to_vec()];
    for n in &sweep.nodes {
        let region = sweep.region_of(n);
        rows.push(match &n.status {
            Ok(s) => vec![
                region,
                n.address.clone(),
                if s.store_writable { "up".into() } else { "store read-only".into() },
                s.software_version.clone(),
                s.protocol_version.to_string(),
                human_secs(s.uptime_seconds),
                human_bytes(s.store_bytes),
                format!("{}/{}", days(s.api_cert_days_left), days(s.federation_cert_days_left)),
                s.active_signals.clone(),
                s.archived_signals.clone(),
                s.local_matches.clone(),
                s.cross_region_matches.clone(),
                format!("{}/{}", s.family_local_matches, s.family_cross_region_matches),
            ],
            Err(_) => vec![region, n.address.clone(), "UNREACHABLE".into()],
        });
    }
    out.push_str(&table(&rows));
    out.push_str(
        "\nLINKS (row: reporting node, column: peer; ok / lagging = outbox older than 5 min / down / ? no answer)\n",
    );
    let regions = sweep.regions();
    let mut rows = vec![std::iter::once(String::new()).chain(regions.iter().cloned()).collect::<Vec<_>>()];
    for from in &regions {
        let mut row = vec![from.clone()];
        row.extend(regions.iter().map(|to| sweep.link(from, to).as_str().to_string()));
        rows.push(row);
    }
    out.push_str(&table(&rows));
    let mut peers = vec![[
        "from",
        "to",
        "state",
        "rtt ms",
        "last ok",
        "outbox",
        "oldest",
        "delivered",
        "budget rej.",
        "proof fail.",
        "peer key",
        "peer version",
    ]
    .map(String::from)
    .to_vec()];
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    for s in sweep.answered() {
        for p in &s.peers {
            peers.push(vec![
                s.region.clone(),
                p.region.clone(),
                sweep.link(&s.region, &p.region).as_str().into(),
                format!("{:.1}", p.rtt_micros as f64 / 1000.0),
                if p.last_ok_unix_ms == 0 {
                    "never".into()
                } else {
                    format!("{} ago", human_secs(now_ms.saturating_sub(p.last_ok_unix_ms) / 1000))
                },
                p.outbox_depth.to_string(),
                p.outbox_oldest_age_seconds.map(human_secs).unwrap_or_else(|| "-".into()),
                p.items_delivered.to_string(),
                p.budget_rejections.to_string(),
                p.proof_failures.to_string(),
                if p.peer_key_fingerprint.is_empty() { "-".into() } else { p.peer_key_fingerprint.clone() },
                if p.peer_software_version.is_empty() {
                    "?".into()
                } else {
                    format!("{}/{}", p.peer_software_version, p.peer_protocol_version)
                },
            ]);
        }
    }
    if peers.len() > 1 {
        out.push_str("\nPEER LINKS\n");
        out.push_str(&table(&peers));
    }
    let warnings = sweep.warnings();
    if warnings.is_empty() {
        out.push_str("\nno warnings\n");
    } else {
        out.push_str("\nWARNINGS\n");
        for w in warnings {
            let _ = writeln!(out, "- {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(region: &str, peers: Vec<pb::PeerStatus>) -> NodeReport {
        NodeReport {
            address: format!("{region}:7444"),
            status: Ok(pb::NodeStatus {
                region: region.into(),
                software_version: "0.1.0".into(),
                protocol_version: 1,
                store_writable: true,
                api_cert_days_left: Some(300),
                federation_cert_days_left: Some(300),
                peers,
                ..Default::default()
            }),
            elapsed: Duration::ZERO,
        }
    }

    fn peer(region: &str, connected: bool, oldest: Option<u64>) -> pb::PeerStatus {
        pb::PeerStatus {
            region: region.into(),
            address: format!("{region}:7444"),
            connected,
            outbox_oldest_age_seconds: oldest,
            peer_software_version: "0.1.0".into(),
            peer_protocol_version: 1,
            peer_cert_days_left: Some(300),
            ..Default::default()
        }
    }

    #[test]
    fn links_from_both_ends_and_exit_codes() {
        let healthy =
            Sweep { nodes: vec![node("a", vec![peer("b", true, None)]), node("b", vec![peer("a", true, None)])] };
        assert_eq!(healthy.link("a", "b"), Link::Ok);
        assert_eq!(exit_code(&healthy), 0, "{:?}", healthy.warnings());
        let lagging = Sweep {
            nodes: vec![node("a", vec![peer("b", true, Some(LAG_SECS + 1))]), node("b", vec![peer("a", false, None)])],
        };
        assert_eq!(lagging.link("a", "b"), Link::Lagging);
        assert_eq!(lagging.link("b", "a"), Link::Down);
        assert_eq!(exit_code(&lagging), 1);
        let mut gone = lagging.clone();
        gone.nodes[1].status = Err("connection refused".into());
        assert_eq!(gone.region_of(&gone.nodes[1]), "b", "named by its peers");
        assert_eq!(gone.link("b", "a"), Link::Unknown);
        assert_eq!(exit_code(&gone), 2);
    }

    #[test]
    fn warnings_for_certificates_outbox_skew_and_budget() {
        let mut p = peer("b", true, Some(OUTBOX_WARN_SECS + 5));
        p.budget_rejections = 3;
        p.peer_software_version = "0.2.0".into();
        p.peer_cert_days_left = Some(10);
        let mut a = node("a", vec![p]);
        if let Ok(s) = &mut a.status {
            s.api_cert_days_left = Some(29);
        }
        let w = Sweep { nodes: vec![a] }.warnings().join("\n");
        for needle in [
            "client API certificate expires in 29",
            "outbox oldest item",
            "version skew",
            "over its budget",
            "b: node certificate expires in 10",
        ] {
            assert!(w.contains(needle), "{needle} missing in\n{w}");
        }
    }

    #[test]
    fn warnings_for_proof_failures_and_a_pinned_key_the_peer_does_not_report() {
        let mut at_a = peer("b", true, None);
        at_a.proof_failures = 2;
        at_a.peer_key_fingerprint = "1111".into();
        let mut at_b = peer("a", true, None);
        at_b.own_key_fingerprint = "2222".into();
        let sweep = Sweep { nodes: vec![node("a", vec![at_a.clone()]), node("b", vec![at_b.clone()])] };
        let w = sweep.warnings().join("\n");
        assert!(w.contains("b sent 2 answer batches to a that failed their proof"), "{w}");
        assert!(w.contains("a pinned blinding key 1111 for b, which reports 2222"), "{w}");
        // Agreeing fingerprints and no failures: neither warning.
        at_a.proof_failures = 0;
        at_b.own_key_fingerprint = "1111".into();
        let w = Sweep { nodes: vec![node("a", vec![at_a]), node("b", vec![at_b])] }.warnings().join("\n");
        assert!(!w.contains("pinned blinding key") && !w.contains("failed their proof"), "{w}");
    }
}
