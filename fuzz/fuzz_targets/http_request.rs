#![no_main]
//! `cargo xtask fuzz http_request`: see `plumb::fuzzing::http_request`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::http_request(data));
