#![no_main]
//! `cargo xtask fuzz bootstrap`: see `plumb::fuzzing::bootstrap`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::bootstrap(data));
