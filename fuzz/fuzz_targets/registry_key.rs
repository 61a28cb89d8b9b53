//! Fuzz target `registry_key`: the writer-registry key. The body is
//! `sealkv_fuzz_targets::registry_key`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::registry_key(data));
