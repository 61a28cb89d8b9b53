//! Fuzz target `fsmwire_rotation`: the fsmwire rotation payload (entry 0x05). The body is
//! `sealkv_fuzz_targets::fsmwire_rotation`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::fsmwire_rotation(data));
