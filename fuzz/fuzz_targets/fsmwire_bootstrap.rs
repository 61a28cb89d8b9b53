//! Fuzz target `fsmwire_bootstrap`: the fsmwire bootstrap payload (entry 0x04). The body is
//! `sealkv_fuzz_targets::fsmwire_bootstrap`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::fsmwire_bootstrap(data));
