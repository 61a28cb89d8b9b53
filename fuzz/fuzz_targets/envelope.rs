//! Fuzz target `envelope`: the AES-GCM envelope, decoded and opened. The body is
//! `sealkv_fuzz_targets::envelope`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::envelope(data));
