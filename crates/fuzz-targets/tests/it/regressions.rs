//! Inputs a fuzzer found, each a named test. When the fault was in a decoder, its
//! regression test lives in the crate that owns that decoder; these are the faults
//! the targets' own invariants had. Each input is also a `regression-*` corpus file.

use sealkv_fuzz_targets::transport_frame;

/// A message whose `snapshot` field appears twice, the first time with an unknown
/// field: rust-protobuf 2 keeps the second by clearing the first, leaving an empty
/// unknown-field set that `==` tells apart from none.
#[test]
fn fuzz_regression_transport_frame_repeated_submessage() {
    transport_frame(b"\x00\x00\x00\x06\x4a\x02\x28\x01\x4a\x00");
}

/// A message with two unknown fields: rust-protobuf 2 writes them back in
/// `HashMap` order, which differs between processes, so re-encoded bytes differ.
#[test]
fn fuzz_regression_transport_frame_unknown_fields_order() {
    transport_frame(b"\x00\x00\x00\x06\xa0\x06\x01\xa8\x06\x02");
}
