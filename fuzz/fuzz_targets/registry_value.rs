//! Fuzz target `registry_value`: the writer-registry value. The body is
//! `sealkv_fuzz_targets::registry_value`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::registry_value(data));
