//! A short property test of each target: a few hundred arbitrary inputs, then a few
//! hundred mutations (flipped bits, cut or grown inputs, overwritten length fields)
//! of its corpus files, which are mostly valid encodings.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use sealkv_fuzz_targets::target;

use crate::corpus;

/// One edit of a seed; positions are taken modulo the input's length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
    /// Overwrites four bytes with a big-endian u32 (length fields are u32 BE).
    SetU32(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Remove),
        (
            any::<usize>(),
            prop_oneof![any::<u32>(), 0..64u32, Just(u32::MAX)]
        )
            .prop_map(|(at, v)| Mutation::SetU32(at, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::FlipBit(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
        Mutation::SetByte(at, b) if len > 0 => bytes[at % len] = b,
        Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
        Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
        Mutation::Remove(at) if len > 0 => {
            bytes.remove(at % len);
        }
        Mutation::SetU32(at, v) if len >= 4 => {
            let at = at % (len - 3);
            bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        _ => {}
    }
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    })
}

fn check(name: &str) {
    let run = target(name).expect("a target of this name");
    runner()
        .run(&vec(any::<u8>(), 0..512), |bytes| {
            run(&bytes);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name} on arbitrary bytes: {e}"));
    let seeds = corpus(name);
    runner()
        .run(
            &(0..seeds.len(), vec(mutation(), 1..4)),
            |(seed, mutations)| {
                let mut bytes = seeds[seed].1.clone();
                for m in &mutations {
                    apply(&mut bytes, m);
                }
                run(&bytes);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{name} on mutated corpus files: {e}"));
}

pub mod fuzz_props {
    use super::check;
    crate::per_target!(
        fsmwire_registration fsmwire_bootstrap fsmwire_rotation registry_key registry_value
        envelope sidecar kv_command snapshot_dump snapshot_stream transport_hello transport_frame resp
        resp_commands
    );
}
