//! A peer's `Exchange` request applied to a real store: protobuf decode, validation,
//! budget, blinding, apply, answer and proof, on a node with children and pairs to reach
//! (see `virfed::kit::fuzzing::ExchangeTarget`; `tests/fuzz_seeds.rs` runs the committed
//! seeds, `fuzz/seeds/exchange_apply/`, on stable). The store lives across inputs, as a
//! node's does across exchanges.
#![no_main]
use std::sync::OnceLock;
use virfed::kit::fuzzing::ExchangeTarget;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static TARGET: OnceLock<ExchangeTarget> = OnceLock::new();
    TARGET.get_or_init(|| ExchangeTarget::new().expect("the exchange target's node")).apply(bytes);
});
