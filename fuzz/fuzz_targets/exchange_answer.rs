//! A peer's answer to this node's `Exchange`: protobuf decode, pairing with the items
//! sent, contacts validation and the DLEQ proof under the pinned key (see
//! `virfed::kit::fuzzing::AnswerTarget`; `tests/fuzz_seeds.rs` runs the committed seeds,
//! `fuzz/seeds/exchange_answer/`, on stable). An accepted answer that is not utrecht's
//! honest one is a finding.
#![no_main]
use std::sync::OnceLock;
use virfed::kit::fuzzing::AnswerTarget;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static TARGET: OnceLock<AnswerTarget> = OnceLock::new();
    TARGET.get_or_init(|| AnswerTarget::new().expect("the answer target's node")).read(bytes);
});
