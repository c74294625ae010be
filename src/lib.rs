//! virfed: a regional node of the federated Verwijsindex Risicojongeren (VIR).
//!
//! # Layout
//!
//! Data flows client → validate (11-proef, age) → core rules → store + outbox (durable,
//! per peer, same transaction) → peer exchange → verified answer (a DLEQ proof) → pair
//! detected at both sides → contact exchange → notify (watch stream, webhook). Every arrow that crosses the
//! network retries from the outbox until the peer acknowledges it. `docs/architecture.md`
//! draws the layers and follows a registration and a cross-region match through them.
//!
//! Layers, top to bottom (a module imports only modules below it):
//!
//! - the binary (`src/bin/virfed/`): parse, telemetry, dispatch, exit code.
//! - [`server`]: `Node::bind` then `run(shutdown)`: composes services and background
//!   tasks (expiry sweeper, webhook delivery, health probe) and drains on shutdown.
//! - services: [`api`] (client API for organisations, admin API for operators, the one
//!   error → status mapping), [`federation::service`] and [`federation::delivery`] (peer
//!   API, outbox delivery), [`health`] (status, gRPC health, `/metrics`, `virfed status`),
//!   [`dashboard`] (the coordinators' page), [`notify`] (signed webhooks),
//!   [`participation`] (which organisations signal and which went quiet), [`client`] (the
//!   CLI's mTLS client of a node), [`brp`] (the BRP Personen client: a child's parents
//!   for family matches, D11) and [`lookups`] (the durable BRP lookup queue's worker).
//! - the application core: [`registry`] — when a match is made (D5), who is told what
//!   (D5–D7), withdrawal, retention and erasure (D3, D4), family matches (D11,
//!   [`registry::family`]: siblings by a shared parent) — and [`federation::pairs`] —
//!   when a cross-border pair is made or ended, for a child or a parent — as functions over
//!   a store transaction. Beside the pair rules, `federation::model` (feature `kit`): a
//!   model of the pair protocol, checked with stateright (`tests/model.rs`).
//! - [`store`]: tables, key codecs, schema and migrations, the single writer (group
//!   commit), backup, the audit chain (D8); `store/engine.rs` is the only file that names
//!   an engine: sled (the default) or redb (`[store] engine`, measured beside it). No table
//!   holds a BSN.
//! - [`domain`] (the VIR's types and pure rules: [`domain::Bsn`] (D9), signals, notices,
//!   retention, the audit vocabulary, the injected clock), [`pseudonym`] (keyed
//!   pseudonyms, blinding), [`pki`] (CA tooling, rustls configs, identities from
//!   certificates), [`config`] (TOML with environment overrides; ids typed as it loads).
//! - [`dleq`]: batched DLEQ proofs (RFC 9497 §2.2, ristretto255-SHA512) that a peer's blinded
//!   answers were made with the key it published; a node applies them only with a valid proof
//!   (invariant 9). Beside [`pseudonym`], whose blinding it proves.
//! - `kit` (cargo feature `kit`, on by default, off in production builds): the test and
//!   demo kit above everything else: `kit::fixture` (a real region on loopback: CA,
//!   certificates, config, node), `kit::demo` (`virfed demo`), `kit::bench` (`virfed
//!   bench`, figures printed next to their floors), `kit::process` (nodes as real child
//!   processes), `kit::faults` (proof under faults: crash cycles, `virfed bench crash`, and
//!   network faults, `virfed bench network`), `kit::netns` (nodes in network namespaces
//!   of their own, with loss, duplication, reordering, a bottleneck or a partition put on
//!   the links between them) and `kit::fuzzing` (what each `fuzz/` target runs on its
//!   bytes, shared with `tests/fuzz_seeds.rs`).
//! - leaves every layer may use: [`shutdown`] (the signal every task listens to, so no
//!   service imports `server` to learn it is stopping), [`backoff`] (jittered exponential
//!   backoff for the retry loops: outbox, webhooks), [`https`] (the connector of the
//!   node's outbound HTTP calls: TCP, then rustls with a [`pki`] config; plain http to
//!   loopback only).
//! - [`pb`]: generated protobuf code, nothing else.
#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod brp;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod dleq;
pub mod domain;
pub mod federation;
pub mod health;
pub mod https;
#[cfg(feature = "kit")]
pub mod kit;
pub mod lookups;
pub mod notify;
pub mod participation;
pub mod pki;
pub mod pseudonym;
pub mod registry;
pub mod server;
pub mod shutdown;
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
