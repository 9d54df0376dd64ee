#![no_main]
//! `cargo xtask fuzz xds_response`: see `plumb::fuzzing::xds_response`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::xds_response(data));
