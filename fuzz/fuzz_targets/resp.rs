//! Fuzz target `resp`: the Redis-protocol codec every client connection reads through. The body is
//! `sealkv_fuzz_targets::resp`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::resp(data));
