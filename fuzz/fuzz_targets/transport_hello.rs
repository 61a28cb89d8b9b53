//! Fuzz target `transport_hello`: the Raft transport's hello. The body is
//! `sealkv_fuzz_targets::transport_hello`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::transport_hello(data));
