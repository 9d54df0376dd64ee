#![no_main]
//! `cargo xtask fuzz admin_request`: see `plumb::fuzzing::admin_request`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::admin_request(data));
