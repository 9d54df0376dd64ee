#![no_main]
//! `cargo xtask fuzz http_response`: see `plumb::fuzzing::http_response`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::http_response(data));
