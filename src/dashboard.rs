//! The national coordinator's dashboard (`virfed coordinator --config FILE`).
//!
//! A small web server on the coordinator's machine that sweeps every node's status API
//! (with the coordinator certificate, in parallel, as `virfed status` does) every
//! `refresh_secs`, and serves one server-rendered page: the node table, the region ×
//! region link matrix as a coloured grid, the warnings, and SVG charts of cross-region
//! matches per week and of outbox lag. The page refreshes itself; it needs no script, no
//! CDN and no internet. It shows only what the status API gives: no personal data.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Datelike, Utc};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::health::suppressed_value;
use crate::health::sweep::{sweep, Link, Sweep};
use crate::pki::{client_config, PkiError, TlsMaterial};
use crate::shutdown::Shutdown;

/// The coordinator's configuration (TOML).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Where the dashboard listens (plain HTTP: keep it on localhost or behind a proxy).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Seconds between sweeps (and page refreshes).
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Peer API addresses (host:port) of every node.
    pub nodes: Vec<String>,
    /// Federation CA and the coordinator's certificate (`virfed ca issue coordinator`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}
fn default_refresh() -> u64 {
    10
}

/// Why the dashboard could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    // The causes are in the messages, not chained as sources, so they print once.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{} is not valid: {error}", path.display())]
    Parse { path: PathBuf, error: toml::de::Error },
    #[error("{}: list the nodes' peer API addresses in `nodes`", path.display())]
    NoNodes { path: PathBuf },
    #[error("{}: refresh_secs must be at least 1", path.display())]
    NoRefresh { path: PathBuf },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Serve(#[from] std::io::Error),
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, DashboardError> {
        let text = std::fs::read_to_string(path).map_err(|error| DashboardError::Read { path: path.into(), error })?;
        let config: CoordinatorConfig =
            toml::from_str(&text).map_err(|error| DashboardError::Parse { path: path.into(), error })?;
        if config.nodes.is_empty() {
            return Err(DashboardError::NoNodes { path: path.into() });
        }
        if config.refresh_secs == 0 {
            return Err(DashboardError::NoRefresh { path: path.into() });
        }
        Ok(config)
    }
}

/// One sample of the federation over time.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: DateTime<Utc>,
    /// Sum of cross-region matched pairs over the nodes that answered (each pair is counted
    /// at both ends; suppressed counts "<5" count as 0).
    cross_matches: u64,
    /// The oldest queued outbox item over every link, seconds.
    max_lag_secs: u64,
}

/// The dashboard's state: the latest sweep and a bounded history.
#[derive(Default)]
pub struct Dashboard {
    latest: Mutex<Option<(DateTime<Utc>, Sweep)>>,
    history: Mutex<VecDeque<Sample>>,
    refresh_secs: u64,
}

/// Samples kept: a week at one a minute is plenty for the weekly chart's recent weeks.
const HISTORY: usize = 20_000;

impl Dashboard {
    pub fn new(refresh_secs: u64) -> Arc<Dashboard> {
        Arc::new(Dashboard { refresh_secs, ..Default::default() })
    }

    /// Records a sweep.
    pub fn record(&self, at: DateTime<Utc>, sweep: Sweep) {
        let cross_matches = sweep.answered().map(|s| suppressed_value(&s.cross_region_matches)).sum();
        let max_lag_secs = sweep
            .answered()
            .flat_map(|s| s.peers.iter())
            .filter_map(|p| p.outbox_oldest_age_seconds)
            .max()
            .unwrap_or(0);
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.push_back(Sample { at, cross_matches, max_lag_secs });
        while history.len() > HISTORY {
            history.pop_front();
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, sweep));
    }

    /// The page.
    pub fn page(&self) -> String {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let history: Vec<Sample> = self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        render_page(latest.as_ref(), &history, self.refresh_secs)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn link_class(link: Link) -> &'static str {
    match link {
        Link::Ok => "ok",
        Link::Lagging => "lagging",
        Link::Down => "down",
        Link::Unknown => "unknown",
        Link::NotPeered => "none",
        Link::Itself => "self",
    }
}

fn render_page(latest: Option<&(DateTime<Utc>, Sweep)>, history: &[Sample], refresh: u64) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh}\">\
         <title>virfed federation health</title><style>{CSS}</style></head><body><h1>virfed federation health</h1>"
    );
    let Some((at, sweep)) = latest else {
        out.push_str("<p>Waiting for the first sweep…</p></body></html>");
        return out;
    };
    let _ =
        write!(out, "<p class=\"when\">Swept {} UTC; refreshes every {refresh} s.</p>", at.format("%Y-%m-%d %H:%M:%S"));

    out.push_str("<h2>Nodes</h2><table id=\"nodes\"><tr><th>region</th><th>address</th><th>state</th><th>version</th><th>uptime</th><th>active</th><th>archived</th><th>local matches</th><th>cross-region matches</th><th>certificate days</th></tr>");
    for node in &sweep.nodes {
        let region = sweep.region_of(node);
        match &node.status {
            Ok(s) => {
                let cert = s.federation_cert_days_left.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
                let _ = write!(
                    out,
                    "<tr class=\"up\" data-region=\"{r}\"><td>{r}</td><td>{a}</td><td>up</td><td>{v} (protocol {p})</td><td>{u} s</td><td>{ac}</td><td>{ar}</td><td>{lm}</td><td>{cm}</td><td>{cert}</td></tr>",
                    r = esc(&region),
                    a = esc(&node.address),
                    v = esc(&s.software_version),
                    p = s.protocol_version,
                    u = s.uptime_seconds,
                    ac = esc(&s.active_signals),
                    ar = esc(&s.archived_signals),
                    lm = esc(&s.local_matches),
                    cm = esc(&s.cross_region_matches),
                );
            }
            Err(e) => {
                let _ = write!(
                    out,
                    "<tr class=\"down\" data-region=\"{r}\"><td>{r}</td><td>{a}</td><td>unreachable</td><td colspan=\"7\">{e}</td></tr>",
                    r = esc(&region),
                    a = esc(&node.address),
                    e = esc(e)
                );
            }
        }
    }
    out.push_str("</table>");

    let regions = sweep.regions();
    out.push_str("<h2>Links</h2><p>Row: the reporting region; column: the peer it reports on.</p><table id=\"links\"><tr><th></th>");
    for to in &regions {
        let _ = write!(out, "<th>{}</th>", esc(to));
    }
    out.push_str("</tr>");
    for from in &regions {
        let _ = write!(out, "<tr><th>{}</th>", esc(from));
        for to in &regions {
            let link = sweep.link(from, to);
            let _ = write!(
                out,
                "<td class=\"{c}\" data-from=\"{f}\" data-to=\"{t}\" data-state=\"{s}\">{s}</td>",
                c = link_class(link),
                f = esc(from),
                t = esc(to),
                s = link.as_str()
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><p class=\"legend\"><span class=\"ok\">ok</span> <span class=\"lagging\">lagging</span> <span class=\"down\">down</span> <span class=\"unknown\">? no answer</span></p>");

    let warnings = sweep.warnings();
    let _ = write!(out, "<h2>Warnings ({})</h2><ul id=\"warnings\">", warnings.len());
    for w in &warnings {
        let _ = write!(out, "<li>{}</li>", esc(w));
    }
    out.push_str("</ul>");

    out.push_str("<h2>Cross-region matches per week</h2>");
    out.push_str(&weekly_chart(history));
    out.push_str("<h2>Outbox lag</h2>");
    out.push_str(&line_chart(history.iter().map(|s| (s.at, s.max_lag_secs as f64)).collect(), "seconds"));
    out.push_str("</body></html>");
    out
}

/// Bars: per ISO week, the highest total of cross-region matched pairs seen that week.
fn weekly_chart(history: &[Sample]) -> String {
    let mut weeks: Vec<(String, u64)> = Vec::new();
    for s in history {
        let w = s.at.iso_week();
        let label = format!("{}-W{:02}", w.year(), w.week());
        match weeks.last_mut() {
            Some((l, v)) if *l == label => *v = (*v).max(s.cross_matches),
            _ => weeks.push((label, s.cross_matches)),
        }
    }
    let weeks: Vec<_> = weeks.into_iter().rev().take(12).rev().collect();
    let (w, h) = (600.0, 160.0);
    let max = weeks.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        "<svg id=\"weekly\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"cross-region matches per week\">",
        h + 20.0
    );
    let bar = w / weeks.len().max(1) as f64;
    for (i, (label, v)) in weeks.iter().enumerate() {
        let bh = *v as f64 / max * h;
        let x = i as f64 * bar;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" class=\"bar\"><title>{label}: {v}</title></rect><text x=\"{:.1}\" y=\"{}\" class=\"axis\">{label}</text>",
            x + 4.0,
            h - bh,
            (bar - 8.0).max(1.0),
            x + 4.0,
            h + 14.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A polyline over time.
fn line_chart(points: Vec<(DateTime<Utc>, f64)>, unit: &str) -> String {
    let (w, h) = (600.0, 120.0);
    let mut svg =
        format!("<svg id=\"lag\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"outbox lag\">", h + 20.0);
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let span = (last.0 - first.0).num_milliseconds().max(1) as f64;
        let max = points.iter().map(|p| p.1).fold(1.0, f64::max);
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| {
                let x = (*t - first.0).num_milliseconds() as f64 / span * w;
                format!("{x:.1},{:.1}", h - v / max * h)
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" class=\"line\"/><text x=\"0\" y=\"{}\" class=\"axis\">max {max:.0} {unit}</text>",
            coords.join(" "),
            h + 14.0
        );
    }
    svg.push_str("</svg>");
    svg
}

const CSS: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1em}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:center}tr.down td{background:#f8d7da}\
td.ok,span.ok{background:#c8e6c9}td.lagging,span.lagging{background:#fff3cd}td.down,span.down{background:#e57373;color:#fff}\
td.unknown,span.unknown{background:#ddd}td.self{background:#f4f4f4;color:#999}td.none{color:#bbb}\
.bar{fill:#5c7cfa}.line{fill:none;stroke:#e8590c;stroke-width:2}.axis{font-size:10px;fill:#555}.when{color:#666}";

/// Serves the dashboard on `listener` until `shutdown` flips, sweeping every refresh.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Into<Shutdown>,
) -> Result<(), DashboardError> {
    let mut shutdown = shutdown.into();
    let material = TlsMaterial::from_files(&config.ca, &config.cert, &config.key, &[])?;
    let tls = client_config(&material)?;
    let dashboard = Dashboard::new(config.refresh_secs);
    let sweeper = {
        let (dashboard, nodes, mut stop) = (dashboard.clone(), config.nodes.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let result = sweep(&nodes, tls.clone()).await;
                dashboard.record(Utc::now(), result);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(config.refresh_secs)) => {}
                    _ = stop.recv() => return,
                }
            }
        })
    };
    let app = Router::new()
        .route("/", get(|State(d): State<Arc<Dashboard>>| async move { Html(d.page()) }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(dashboard);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.recv().await }).await?;
    sweeper.abort();
    Ok(())
}
