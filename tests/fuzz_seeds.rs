//! Issue 11, part 3, on stable: every fuzz target's body (`virfed::kit::fuzzing`, which
//! `fuzz/fuzz_targets/` wraps) run over its committed seeds (`fuzz/seeds/<target>/`) and a
//! few thousand seeded random mutations of them: any input gives a value or an error,
//! never a panic, and the seeds reach past the first refusal. Not coverage guided; the
//! coverage-guided runs are `cargo +nightly fuzz run <target>` (see docs/reliability.md).
//!
//! The seeds the kit builds (exchange requests, client requests) are checked against the
//! committed files, so they cannot rot; `VIRFED_BLESS_SEEDS=1 cargo test --test
//! fuzz_seeds` rewrites them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use virfed::kit::fuzzing::{self, AnswerTarget, CrlTarget, ExchangeTarget};

fn seed_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = seed_dir(target);
    let mut all: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    all.sort();
    assert!(!all.is_empty(), "no seeds in {}", dir.display());
    all
}

/// Checks that the committed seeds of `target` are the ones the kit builds (or, with
/// `VIRFED_BLESS_SEEDS=1`, writes them).
fn committed(target: &str, built: &[(&str, Vec<u8>)]) {
    let dir = seed_dir(target);
    for (name, bytes) in built {
        let file = dir.join(format!("{name}.bin"));
        if std::env::var_os("VIRFED_BLESS_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, bytes).unwrap();
        }
        let on_disk = std::fs::read(&file).unwrap_or_default();
        assert!(
            on_disk == *bytes,
            "{} is not the seed the kit builds; run `VIRFED_BLESS_SEEDS=1 cargo test --test fuzz_seeds` and commit it",
            file.display()
        );
    }
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
    let parsed = inputs("config", 3000).iter().filter(|i| fuzzing::config(i)).count();
    assert!(parsed >= 2, "not even the seeds parse: the target would test nothing");
}

#[test]
fn fuzz_seeds_certificate_identity_never_panics() {
    let ok = inputs("cert_identity", 3000).iter().filter(|i| fuzzing::cert_identity(i)).count();
    assert!(ok >= 2, "the seed certificates give identities");
}

#[test]
fn invariant9_fuzz_seeds_exchange_request_decode_and_validation_never_panic() {
    let valid: usize = inputs("exchange_request", 5000).iter().map(|i| fuzzing::exchange_request(i)).sum();
    assert!(valid > 0, "some items pass validation");
}

#[test]
fn fuzz_seeds_backup_reader_never_panics_and_restores_the_seed() {
    let restored = inputs("backup_reader", 150).iter().filter(|i| fuzzing::backup_reader(i)).count();
    assert!(restored >= 1, "the seed backup restores");
}

/// The peer `Exchange` applied to a real store: the committed seeds are utrecht's
/// requests for rotterdam's own children and a parent, so they complete a child pair and
/// a family pair (two "match created" notices) and get rotterdam's contacts in the
/// answers, and the mutations of them reach the apply paths of a node with pairs, never
/// panicking nor answering contacts for a child rotterdam does not have.
#[test]
fn invariants3_5_9_fuzz_seeds_exchange_applied_to_a_real_store_forms_pairs_and_answers_contacts_only_for_them() {
    let target = ExchangeTarget::new().unwrap();
    committed("exchange_apply", &target.seeds());
    assert_eq!(target.matches_notified(), (0, 0), "no pair before utrecht publishes");
    let answers: Vec<_> = seeds("exchange_apply").iter().filter_map(|s| target.apply(s)?.ok()).collect();
    assert_eq!(answers.len(), target.seeds().len() - 1, "every seed but the bad point is answered");
    let with_contacts = answers.iter().flat_map(|a| &a.results).filter(|r| !r.contacts.is_empty()).count();
    assert!(with_contacts >= 2, "the matched publishes are answered with contacts (checked in the target)");
    let (child, family) = target.matches_notified();
    assert!(child >= 1 && family >= 1, "the seeds form a child and a family pair: {child} and {family} notices");
    for input in inputs("exchange_apply", 1500) {
        let _ = target.apply(&input);
    }
}

/// The peer's answer to an exchange: utrecht's honest answers (with and without contacts)
/// are accepted, the forgery (two answers swapped under the honest proof) is refused, and
/// no mutation gets a blinded value past the proof that utrecht did not make.
#[test]
fn invariant9_fuzz_seeds_a_peer_answer_is_accepted_only_as_the_honest_one() {
    let target = AnswerTarget::new().unwrap();
    committed("exchange_answer", &target.seeds());
    let seeds = target.seeds();
    let accepted: Vec<&str> = seeds.iter().filter(|(_, b)| target.read(b) == Some(true)).map(|(n, _)| *n).collect();
    assert_eq!(accepted, ["honest", "honest-with-contacts"], "the forgery is refused");
    let accepted = inputs("exchange_answer", 3000).iter().filter(|i| target.read(i) == Some(true)).count();
    assert!(accepted >= 2, "the committed honest answers are accepted among the mutations too");
}

/// The client and admin API requests: the seeds are valid, and no refusal of a mutation
/// quotes the BSN it was sent (checked in the target).
#[test]
fn invariant7_fuzz_seeds_client_request_validation_never_panics_nor_quotes_a_bsn() {
    committed("client_request", &fuzzing::client_request_seeds());
    let valid = seeds("client_request").iter().filter(|s| fuzzing::client_request(s)).count();
    // The built seeds are valid; the committed regression inputs are refusals.
    assert_eq!(valid, fuzzing::client_request_seeds().len(), "every built seed is a valid request");
    let accepted = inputs("client_request", 5000).iter().filter(|i| fuzzing::client_request(i)).count();
    assert!(accepted > valid, "some mutations are valid requests too");
}

#[test]
fn fuzz_seeds_brp_and_token_answers_never_panic_nor_quote_the_answer() {
    let read = seeds("brp_answer").iter().filter(|s| fuzzing::brp_answer(s)).count();
    assert_eq!(read, 4, "found, not found and invalid parents read; two persons refused; the token read");
    let _ = inputs("brp_answer", 5000).iter().filter(|i| fuzzing::brp_answer(i)).count();
}

#[test]
fn fuzz_seeds_crl_loading_never_panics_and_loads_a_real_crl() {
    let target = CrlTarget::new().unwrap();
    let pem = target.sample_crl().unwrap();
    assert!(target.load(&[[0].as_slice(), pem.as_bytes()].concat()), "a CRL of the CA loads as a file");
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert!(target.load(&[[1].as_slice(), der.as_ref()].concat()), "and as DER in a PEM block");
    assert!(!target.load(b"\0not a CRL"), "a file without a CRL is refused");
    let loaded = inputs("crl", 1500).iter().filter(|i| target.load(i)).count();
    assert!(loaded >= 2, "the committed seeds load");
}

/// Found by `client_request` (2026-12-04): a registration whose BSN was all zeros was
/// refused with "the BSN 000000000 is not ...": a constant, not the sender's number, but a
/// 9-digit run in an error message reaches logs, where a log scanner for BSNs (and the
/// target's check) rightly flags it. No BSN refusal prints a run of digits now.
#[test]
fn privacy_fuzz_regression_no_bsn_refusal_prints_a_nine_digit_run() {
    let crash = seed_dir("client_request").join("regression-all-zeros-bsn.bin");
    assert!(!fuzzing::client_request(&std::fs::read(crash).unwrap()), "the input is refused, without a panic");
    for input in ["000000000", "00000000", "0", "123456789", "12345678x", "1234567890", ""] {
        let message = virfed::domain::Bsn::parse(input).unwrap_err().to_string();
        assert!(fuzzing::longest_digit_run(&message) < 8, "{input:?}: {message}");
    }
}
