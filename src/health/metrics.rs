//! The Prometheus exporter and the RPC metrics layer.
//!
//! Every scrape renders a fresh registry from [`NodeHealth::status`], so the metrics are
//! the same figures as the status API, plus the long-lived RPC counters and the store
//! writer's flush counters. Labels are the peer region, the port, the RPC method (from the
//! protos; anything else is `other`), the gRPC code, a certificate kind or a count's
//! state, a registered organisation's id — never anything personal. Small-count suppressed figures ("<5") are exported as
//! 0. The names below are stable; [`METRICS`] is the documented list (README, alert rules
//! and the Grafana dashboard use only these).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{suppressed_value, NodeHealth, RPC_METHODS};
use crate::pb::admin as pb;

/// Every exported metric: name as it appears in the exposition, and what it means.
/// Histograms also expose `_bucket`, `_sum` and `_count` series.
pub const METRICS: &[(&str, &str)] = &[
    ("virfed_build_info", "1, labelled with the software version and protocol version"),
    ("virfed_uptime_seconds", "seconds since the node started"),
    ("virfed_ready", "1 when the API ports are bound and the store takes writes"),
    ("virfed_store_writable", "1 when the last probe write to the store succeeded"),
    ("virfed_store_size_bytes", "bytes the store takes on disk"),
    ("virfed_store_flushes_total", "group-commit flushes of the store writer"),
    ("virfed_store_flush_seconds_total", "time spent flushing; mean flush latency = rate of this / rate of flushes"),
    ("virfed_store_transaction_seconds_total", "time spent in batch transactions"),
    ("virfed_store_writes_total", "writes (jobs) committed by the store writer"),
    ("virfed_cert_expiry_days", "days until this node's certificate expires, label cert=api|federation"),
    ("virfed_signals", "signals by state=active|archived (below 5 exported as 0)"),
    ("virfed_matches", "matches by scope=local|cross_region|family_local|family_cross_region (below 5 exported as 0)"),
    ("virfed_family_lookups_pending", "BRP parent lookups waiting in the durable queue (family.source = brp)"),
    ("virfed_family_lookup_oldest_age_seconds", "age of the oldest waiting BRP lookup; 0 when none waits"),
    ("virfed_peer_up", "1 when the last attempt to reach the peer succeeded, label peer"),
    ("virfed_peer_last_success_timestamp_seconds", "Unix time of the last successful exchange or ping; 0 never"),
    ("virfed_peer_rtt_seconds", "round trip of the last ping to the peer"),
    ("virfed_peer_outbox_depth", "protocol messages queued for the peer"),
    ("virfed_peer_outbox_oldest_age_seconds", "age of the oldest queued message; 0 when the outbox is empty"),
    ("virfed_peer_items_delivered_total", "outbox items the peer acknowledged (delivery and resync progress)"),
    ("virfed_peer_items_received_total", "items received from the peer"),
    ("virfed_peer_delivery_failures_total", "failed outbox delivery attempts to the peer"),
    ("virfed_peer_budget_rejections_total", "blind requests of the peer refused over its oracle or resync budget"),
    ("virfed_peer_blinds_total", "blind operations granted to the peer, label kind=oracle|resync (its budget use)"),
    (
        "virfed_peer_proof_failures_total",
        "exchanges whose blinded answers or re-key from the peer failed their DLEQ proof (refused whole)",
    ),
    ("virfed_peer_cert_expiry_days", "days until the peer's node certificate expires, as the peer reports it"),
    ("virfed_peer_protocol_version", "the peer's protocol version from its last ping (0 unknown)"),
    ("virfed_grpc_requests_total", "gRPC requests by port=client|peer, method and code"),
    ("virfed_grpc_request_duration_seconds", "gRPC request latency until response headers, by port and method"),
    ("virfed_peer_delivery_attempts_total", "outbox exchanges sent to the peer (successful or not)"),
    ("virfed_org_quiet", "1 for an organisation the participation report flags as quiet (default period), label org"),
    (
        "virfed_registrations_rate_limited_total",
        "registrations refused over the organisation's registration limit, label org (registered organisations only)",
    ),
];

/// Metrics other parts of virfed will export; alert rules may already use them.
pub const PLANNED_METRICS: &[(&str, &str)] = &[];

type Labels = Vec<(&'static str, String)>;

/// Request counts and latencies of both gRPC ports, and the client API's refusals over the
/// registration limit, kept for the node's lifetime (since this process started).
pub struct RpcMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Per organisation; only the API's limiter increments it, after it has checked that
    /// the caller is a registered organisation, so the label set is the organisation list.
    rate_limited: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rate_limited: Family::default(),
        }
    }
}

impl RpcMetrics {
    /// Records one request.
    pub fn record(&self, port: &'static str, method: &'static str, code: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&vec![("port", port.into()), ("method", method.into()), ("code", code.into())])
            .inc();
        self.latency.get_or_create(&vec![("port", port.into()), ("method", method.into())]).observe(seconds);
    }

    /// Counts one registration of registered organisation `org` refused over its limit.
    pub fn registration_rate_limited(&self, org: &str) {
        self.rate_limited.get_or_create(&vec![("org", org.into())]).inc();
    }

    /// Refusals over the registration limit so far for `org`.
    pub fn registrations_rate_limited(&self, org: &str) -> u64 {
        self.rate_limited.get(&vec![("org", org.into())]).map_or(0, |c| c.get())
    }
}

/// The method label for a request path: a known RPC, or `other`.
pub fn method_label(path: &str) -> &'static str {
    const STANDARD: &[&str] = &[
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    RPC_METHODS.iter().chain(STANDARD).find(|m| **m == path).map(|m| m.trim_start_matches('/')).unwrap_or("other")
}

/// The code label from a gRPC response's headers (a trailers-only error carries
/// `grpc-status` there; a successful unary response does not).
fn code_label(headers: &http::HeaderMap) -> &'static str {
    let code = headers.get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes())).unwrap_or(tonic::Code::Ok);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A tower layer for a tonic server that counts and times every request.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<RpcMetrics>,
    port: &'static str,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<RpcMetrics>, port: &'static str) -> RpcMetricsLayer {
        RpcMetricsLayer { metrics, port }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: self.metrics.clone(), port: self.port }
    }
}

/// The service [`RpcMetricsLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
    port: &'static str,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let (metrics, port) = (self.metrics.clone(), self.port);
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => code_label(r.headers()),
                Err(_) => "TRANSPORT_ERROR",
            };
            metrics.record(port, method, code, started.elapsed().as_secs_f64());
            res
        })
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The documented help text of a metric registered as `name` (without prefix or `_total`).
fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|(n, _)| {
            let n = n.strip_prefix("virfed_").unwrap_or(n);
            n == name || n.strip_suffix("_total") == Some(name)
        })
        .map(|(_, h)| *h)
        .unwrap_or("")
}

/// Renders the exposition (OpenMetrics text) of `status` and the node's live counters.
pub fn render(health: &NodeHealth, status: &pb::NodeStatus) -> String {
    let mut r = Registry::with_prefix("virfed");
    let info: Family<Labels, Gauge> = Family::default();
    info.get_or_create(&vec![
        ("version", status.software_version.clone()),
        ("protocol", status.protocol_version.to_string()),
    ])
    .set(1);
    r.register("build_info", help("build_info"), info);
    gauge(&mut r, "uptime_seconds", help("uptime_seconds"), status.uptime_seconds as i64);
    gauge(&mut r, "ready", help("ready"), health.ready() as i64);
    gauge(&mut r, "store_writable", help("store_writable"), status.store_writable as i64);
    gauge(&mut r, "store_size_bytes", help("store_size_bytes"), status.store_bytes as i64);
    let (flushes, writes, flush_us, txn_us) = health.store().write_stats().snapshot();
    counter(&mut r, "store_flushes", help("store_flushes"), flushes);
    counter(&mut r, "store_writes", help("store_writes"), writes);
    let seconds: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    seconds.inc_by(flush_us as f64 / 1e6);
    r.register("store_flush_seconds", help("store_flush_seconds"), seconds);
    let seconds: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    seconds.inc_by(txn_us as f64 / 1e6);
    r.register("store_transaction_seconds", help("store_transaction_seconds"), seconds);
    let certs: Family<Labels, Gauge> = Family::default();
    for (kind, days) in [("api", status.api_cert_days_left), ("federation", status.federation_cert_days_left)] {
        if let Some(days) = days {
            certs.get_or_create(&vec![("cert", kind.into())]).set(days);
        }
    }
    r.register("cert_expiry_days", help("cert_expiry_days"), certs);
    let signals: Family<Labels, Gauge> = Family::default();
    signals.get_or_create(&vec![("state", "active".into())]).set(suppressed_value(&status.active_signals) as i64);
    signals.get_or_create(&vec![("state", "archived".into())]).set(suppressed_value(&status.archived_signals) as i64);
    r.register("signals", help("signals"), signals);
    let matches: Family<Labels, Gauge> = Family::default();
    matches.get_or_create(&vec![("scope", "local".into())]).set(suppressed_value(&status.local_matches) as i64);
    matches
        .get_or_create(&vec![("scope", "cross_region".into())])
        .set(suppressed_value(&status.cross_region_matches) as i64);
    matches
        .get_or_create(&vec![("scope", "family_local".into())])
        .set(suppressed_value(&status.family_local_matches) as i64);
    matches
        .get_or_create(&vec![("scope", "family_cross_region".into())])
        .set(suppressed_value(&status.family_cross_region_matches) as i64);
    r.register("matches", help("matches"), matches);
    gauge(&mut r, "family_lookups_pending", help("family_lookups_pending"), status.family_lookups_pending as i64);
    gauge(
        &mut r,
        "family_lookup_oldest_age_seconds",
        help("family_lookup_oldest_age_seconds"),
        status.family_lookup_oldest_age_seconds as i64,
    );

    let up: Family<Labels, Gauge> = Family::default();
    let last_ok: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let rtt: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let depth: Family<Labels, Gauge> = Family::default();
    let oldest: Family<Labels, Gauge> = Family::default();
    let delivered: Family<Labels, Counter> = Family::default();
    let received: Family<Labels, Counter> = Family::default();
    let failures: Family<Labels, Counter> = Family::default();
    let budget: Family<Labels, Counter> = Family::default();
    let peer_cert: Family<Labels, Gauge> = Family::default();
    let peer_proto: Family<Labels, Gauge> = Family::default();
    for p in &status.peers {
        let l = vec![("peer", p.region.clone())];
        up.get_or_create(&l).set(p.connected as i64);
        last_ok.get_or_create(&l).set(p.last_ok_unix_ms as f64 / 1000.0);
        rtt.get_or_create(&l).set(p.rtt_micros as f64 / 1e6);
        depth.get_or_create(&l).set(p.outbox_depth as i64);
        oldest.get_or_create(&l).set(p.outbox_oldest_age_seconds.unwrap_or(0) as i64);
        delivered.get_or_create(&l).inc_by(p.items_delivered);
        received.get_or_create(&l).inc_by(p.items_received);
        failures.get_or_create(&l).inc_by(p.delivery_failures);
        budget.get_or_create(&l).inc_by(p.budget_rejections);
        if let Some(days) = p.peer_cert_days_left {
            peer_cert.get_or_create(&l).set(days);
        }
        peer_proto.get_or_create(&l).set(p.peer_protocol_version as i64);
    }
    r.register("peer_up", help("peer_up"), up);
    r.register("peer_last_success_timestamp_seconds", help("peer_last_success_timestamp_seconds"), last_ok);
    r.register("peer_rtt_seconds", help("peer_rtt_seconds"), rtt);
    r.register("peer_outbox_depth", help("peer_outbox_depth"), depth);
    r.register("peer_outbox_oldest_age_seconds", help("peer_outbox_oldest_age_seconds"), oldest);
    r.register("peer_items_delivered", help("peer_items_delivered"), delivered);
    r.register("peer_items_received", help("peer_items_received"), received);
    r.register("peer_delivery_failures", help("peer_delivery_failures"), failures);
    r.register("peer_budget_rejections", help("peer_budget_rejections"), budget);
    r.register("peer_cert_expiry_days", help("peer_cert_expiry_days"), peer_cert);
    r.register("peer_protocol_version", help("peer_protocol_version"), peer_proto);
    let attempts: Family<Labels, Counter> = Family::default();
    for p in &status.peers {
        attempts.get_or_create(&vec![("peer", p.region.clone())]).inc_by(p.delivery_attempts);
    }
    r.register("peer_delivery_attempts", help("peer_delivery_attempts"), attempts);
    // Budget use, not only refusals: a peer that keeps spending just under its refill is
    // visible too. From the counters (since this process started), per configured peer.
    let blinds: Family<Labels, Counter> = Family::default();
    for peer in &health.peers {
        let c = health.counters.get(&peer.region).cloned().unwrap_or_default();
        for (kind, n) in [("oracle", &c.oracle_blinds), ("resync", &c.resync_blinds)] {
            let l = vec![("peer", peer.region.clone()), ("kind", kind.to_string())];
            blinds.get_or_create(&l).inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    r.register("peer_blinds", help("peer_blinds"), blinds);
    // Answers that failed their proof: a peer forging blinded values (invariant 9).
    let proofs: Family<Labels, Counter> = Family::default();
    for peer in &health.peers {
        let c = health.counters.get(&peer.region).cloned().unwrap_or_default();
        let n = c.proof_failures.load(std::sync::atomic::Ordering::Relaxed);
        proofs.get_or_create(&vec![("peer", peer.region.clone())]).inc_by(n);
    }
    r.register("peer_proof_failures", help("peer_proof_failures"), proofs);
    let quiet: Family<Labels, Gauge> = Family::default();
    for (org, flagged) in health.quiet_orgs() {
        quiet.get_or_create(&vec![("org", org)]).set(flagged as i64);
    }
    // Every registered organisation has a series (0 until refused), so `increase()` in the
    // alert rule sees the first refusal.
    for (org, _) in health.quiet_orgs() {
        let _ = health.rpc.rate_limited.get_or_create(&vec![("org", org)]);
    }
    r.register("org_quiet", help("org_quiet"), quiet);
    r.register("registrations_rate_limited", help("registrations_rate_limited"), health.rpc.rate_limited.clone());
    r.register("grpc_requests", help("grpc_requests"), health.rpc.requests.clone());
    r.register("grpc_request_duration_seconds", help("grpc_request_duration_seconds"), health.rpc.latency.clone());
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// Metric family names in an exposition (from its `# TYPE` lines).
pub fn families(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Whether `name` (a series or family name) is a documented metric, counting the
/// `_total`, `_bucket`, `_sum`, `_count` and `_info` suffixes as the family's.
pub fn is_documented(name: &str) -> bool {
    let documented = |n: &str| METRICS.iter().chain(PLANNED_METRICS).any(|(m, _)| *m == n);
    documented(name)
        || ["_total", "_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(documented))
        || documented(&format!("{name}_total"))
}
