#![no_main]
//! `cargo xtask fuzz ebpf_values`: see `plumb::fuzzing::ebpf_values`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::ebpf_values(data));
