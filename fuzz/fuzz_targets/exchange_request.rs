//! A peer's `Exchange` request as bytes off the wire: protobuf decode, then the item and
//! party validation the peer service runs before anything is applied. Any bytes give
//! items or a refusal, never a panic.
#![no_main]
use prost::Message;
use virfed::domain::RegionId;
use virfed::pb::federation::ExchangeRequest;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = ExchangeRequest::decode(bytes) else { return };
    let from = RegionId::parse("utrecht").expect("a valid region");
    for item in request.items {
        let _ = virfed::federation::convert::item_in(item.body, &from, request.protocol_minor > 1);
    }
});
