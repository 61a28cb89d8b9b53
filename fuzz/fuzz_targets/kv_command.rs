//! Fuzz target `kv_command`: the KV command codec (entries 0x00/0x01). The body is
//! `sealkv_fuzz_targets::kv_command`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealkv_fuzz_targets::kv_command(data));
