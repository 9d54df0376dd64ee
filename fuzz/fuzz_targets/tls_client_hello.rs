#![no_main]
//! `cargo xtask fuzz tls_client_hello`: see `plumb::fuzzing::tls_client_hello`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plumb::fuzzing::tls_client_hello(data));
