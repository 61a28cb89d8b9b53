//! Fuzz target `snapshot_stream`: the snapshot lane's chunk framing and transfer
//! checks. The body is `sealkv_fuzz_targets::snapshot_stream`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::snapshot_stream(data));
