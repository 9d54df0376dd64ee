#![no_main]
//! `cargo xtask fuzz handover_message`: see `plumb::fuzzing::handover_message`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::handover_message(data));
