//! Fuzz target `sidecar`: the keys.json sidecar loader. The body is
//! `sealkv_fuzz_targets::sidecar`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::sidecar(data));
