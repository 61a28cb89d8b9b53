//! Fuzz target `snapshot_dump`: the state-machine snapshot dump. The body is
//! `sealkv_fuzz_targets::snapshot_dump`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::snapshot_dump(data));
