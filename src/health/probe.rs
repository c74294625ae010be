//! Standard gRPC probes on both ports: `grpc.health.v1` (tonic-health) and reflection
//! (tonic-reflection) over the crate's file descriptor set, so grpcurl and load
//! balancers work without virfed's protos.
//!
//! The health status follows the store: every [`PROBE_INTERVAL`] a tiny write
//! (`health_probe` in the store's meta tree, through the writer: one transaction and one
//! flush) must finish within [`PROBE_TIMEOUT`]; while it does not, the overall status ("")
//! and every service on both ports read NOT_SERVING.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::NodeHealth;
use crate::shutdown::Shutdown;

/// Time between probe writes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// A probe write slower than this counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Fully qualified names of the standard services on both ports.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
pub const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// The health reporters of the gRPC ports and the services each port serves.
#[derive(Clone, Default)]
pub struct Reporters {
    ports: Vec<(HealthReporter, Vec<&'static str>)>,
}

impl Reporters {
    /// A `grpc.health.v1` service for a port serving `services` (fully qualified names).
    pub fn add_port(
        &mut self,
        services: Vec<&'static str>,
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
        let (reporter, server) = tonic_health::server::health_reporter();
        self.ports.push((reporter, services));
        server
    }

    /// Sets the overall status and every service's status on every port.
    pub async fn set(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for (reporter, services) in &self.ports {
            reporter.set_service_status("", status).await;
            for service in services {
                reporter.set_service_status(service, status).await;
            }
        }
    }
}

/// One probe write; true when it was durable within [`PROBE_TIMEOUT`].
pub async fn probe_once(health: &NodeHealth) -> bool {
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    match tokio::time::timeout(PROBE_TIMEOUT, health.store().probe(now)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            warn!(error = %e, "health probe: the store refused a write; reporting NOT_SERVING");
            false
        }
        Err(_) => {
            warn!(timeout = ?PROBE_TIMEOUT, "health probe: a store write timed out; reporting NOT_SERVING");
            false
        }
    }
}

/// Records a probe result and updates the reporters when it changed.
pub async fn apply(health: &NodeHealth, reporters: &Reporters, ok: bool) {
    let was = health.store_writable();
    health.set_store_writable(ok);
    reporters.set(ok).await;
    if ok && !was {
        info!("health probe: the store takes writes again; SERVING");
    }
}

/// Probes now and every [`PROBE_INTERVAL`] until shutdown.
pub async fn run(health: Arc<NodeHealth>, reporters: Reporters, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.recv() => {
                reporters.set(false).await;
                return;
            }
        }
        let ok = probe_once(&health).await;
        apply(&health, &reporters, ok).await;
    }
}

/// gRPC reflection (v1 and v1alpha) over virfed's protos and the health service,
/// advertising `services` (the port's own services) and the standard ones.
pub fn reflection(
    services: &[&'static str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name(REFLECTION_SERVICE);
        for service in services {
            b = b.with_service_name(*service);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
