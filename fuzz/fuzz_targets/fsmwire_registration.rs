//! Fuzz target `fsmwire_registration`: the fsmwire registration payload (entry 0x03). The body is
//! `sealkv_fuzz_targets::fsmwire_registration`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::fsmwire_registration(data));
