//! CRL loading: a node's `[tls] crls` file read as the node reads it, then its TLS
//! configurations built. The body is `virfed::kit::fuzzing::CrlTarget`, which
//! `tests/fuzz_seeds.rs` also runs on the committed seeds (`fuzz/seeds/crl/`) on stable.
#![no_main]
use std::sync::OnceLock;
use virfed::kit::fuzzing::CrlTarget;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static TARGET: OnceLock<CrlTarget> = OnceLock::new();
    TARGET.get_or_init(|| CrlTarget::new().expect("the CRL target's CA and certificate")).load(bytes);
});
