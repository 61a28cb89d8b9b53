//! Fuzz target `resp_commands`: Redis commands framed by the codec and run against
//! an in-memory backend. The body is `sealkv_fuzz_targets::resp_commands`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::resp_commands(data));
