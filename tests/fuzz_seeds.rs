//! Issue 11, part 3, on stable: every fuzz target's entry point (`fuzz/fuzz_targets/`) run
//! over its committed seeds (`fuzz/seeds/<target>/`) and a few thousand seeded random
//! mutations of them: any input gives a value or an error, never a panic. Not coverage
//! guided; the coverage-guided runs are `cargo +nightly fuzz run <target>` (see
//! docs/reliability.md).

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut all: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    all.sort();
    assert!(!all.is_empty(), "no seeds in {}", dir.display());
    all
}

/// The seeds, then `n` mutations of them: bytes flipped, inserted, removed, truncated.
fn inputs(target: &str, n: usize) -> Vec<Vec<u8>> {
    let seeds = seeds(target);
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = seeds.clone();
    for _ in 0..n {
        let mut b = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..=b.len());
            match rng.gen_range(0..4) {
                0 if at < b.len() => b[at] ^= 1 << rng.gen_range(0..8),
                1 => b.insert(at, rng.gen()),
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
        }
        out.push(b);
    }
    out
}

#[test]
fn fuzz_seeds_config_parser_never_panics() {
    let mut parsed = 0;
    for input in inputs("config", 3000) {
        if let Ok(text) = std::str::from_utf8(&input) {
            parsed += usize::from(virfed::config::Config::parse(text).is_ok());
        }
    }
    assert!(parsed >= 1, "not even the seeds parse: the target would test nothing");
}

#[test]
fn fuzz_seeds_certificate_identity_never_panics() {
    let mut ok = 0;
    for input in inputs("cert_identity", 3000) {
        let cert = rustls::pki_types::CertificateDer::from(input);
        ok += usize::from(virfed::pki::identity_from_cert(&cert).is_ok());
    }
    assert!(ok >= 2, "the seed certificates give identities");
}

#[test]
fn invariant9_fuzz_seeds_exchange_request_decode_and_validation_never_panic() {
    let from = virfed::domain::RegionId::parse("utrecht").unwrap();
    let mut valid = 0;
    for input in inputs("exchange_request", 5000) {
        let Ok(request) = virfed::pb::federation::ExchangeRequest::decode(input.as_slice()) else { continue };
        for item in request.items {
            valid += usize::from(virfed::federation::convert::item_in(item.body, &from, false).is_ok());
        }
    }
    assert!(valid > 0, "some items pass validation");
}

#[test]
fn fuzz_seeds_backup_reader_never_panics_and_restores_the_seed() {
    let mut restored = 0;
    for input in inputs("backup_reader", 150) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.vfb");
        std::fs::write(&file, &input).unwrap();
        restored += usize::from(virfed::store::backup::restore(&dir.path().join("store"), &file, false).is_ok());
    }
    assert!(restored >= 1, "the seed backup restores");
}
