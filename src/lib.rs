//! virfed: a regional node of the federated Verwijsindex Risicojongeren (VIR).
//!
//! # Layout
//!
//! Data flows client → validate (11-proef, age) → store + local match → outbox (durable,
//! per peer, same transaction) → peer exchange → pair detected at both sides → contact
//! exchange → notify (watch stream, webhook). Every arrow that crosses the network retries
//! from the outbox until the peer acknowledges it.
//!
//! - [`domain`]: the VIR's rules as types and pure functions: [`domain::Bsn`] (D9),
//!   signals (D1, D2), retention (D3, D4), notices (D5, D6), the injected clock.
//! - [`pseudonym`]: the child's local pseudonym, a keyed hash under the node's local key;
//!   the only thing about a child the store ever holds.
//! - [`store`]: the only module that sees sled: typed trees, transactions, group commit,
//!   the audit chain (D8), notice sequence numbers for resumable watch streams.
//! - [`pki`]: certificates and every rustls configuration: the CA tooling (`virfed ca`),
//!   identities from certificate SAN URIs, TLS accept and connect for tonic.
//! - [`api`]: the gRPC services (client API for organisations, admin API for operators),
//!   conversions between protobuf and domain types, the one error → status mapping.
//! - [`federation`]: the peer API (identity from node certificates, oracle budget) and
//!   per-peer outbox delivery with backoff; the protocol is in `docs/protocol.md`.
//! - [`health`]: federation health without personal data: the coordinators' status API,
//!   gRPC health and reflection, the HTTP port (`/healthz`, `/readyz`, `/metrics`), and
//!   `virfed status` (sweep of many nodes, link matrix, warnings).
//! - [`config`]: the node's TOML configuration with environment overrides.
//! - [`server`]: `Node::bind` then `run(shutdown)`: composes services and background
//!   tasks (expiry sweeper, webhook delivery) and drains on shutdown.
//! - [`notify`]: webhook delivery of stored notices, HMAC-signed, retried.
//! - [`client`]: the CLI's mTLS client of the node.
//! - `kit` (cargo feature `kit`, on by default, off in production builds): the test and
//!   demo kit. `kit::fixture`: a real region on loopback (CA, certificates, config, node)
//!   for the demo, the benchmark and the tests; `kit::demo`: a federation of three regions
//!   on loopback with real TLS and storage (`virfed demo`); `kit::bench`: `virfed bench`,
//!   figures printed next to their floors.
//! - [`pb`]: generated protobuf code, nothing else.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod domain;
pub mod federation;
pub mod health;
#[cfg(feature = "kit")]
pub mod kit;
pub mod notify;
pub mod participation;
pub mod pki;
pub mod pseudonym;
pub mod server;
pub mod store;

/// Generated protobuf and gRPC code.
pub mod pb {
    pub mod client {
        tonic::include_proto!("virfed.client.v1");
    }
    pub mod admin {
        tonic::include_proto!("virfed.admin.v1");
    }
    pub mod federation {
        tonic::include_proto!("virfed.federation.v1");
    }
}
