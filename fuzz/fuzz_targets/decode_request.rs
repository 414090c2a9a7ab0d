//! Arbitrary bytes through the server's request-body decoding into every
//! request and log type; what decodes must round-trip and apply without a
//! panic. Body: `baton_jepsen::fuzz::decode_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_jepsen::fuzz::decode_request(data));
