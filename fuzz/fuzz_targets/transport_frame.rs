//! Fuzz target `transport_frame`: the Raft transport's frames (raft-rs messages). The body is
//! `sealkv_fuzz_targets::transport_frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::transport_frame(data));
