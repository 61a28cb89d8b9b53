//! Entry sizes: whatever a front end accepts under [`SizeLimits`] becomes an entry
//! that every replica decodes, and the decoder takes every entry up to
//! [`MAX_ENTRY_BYTES`].

use proptest::prelude::*;
use sealkv_kv::{
    Command, CommandError, ENTRY_HEADROOM, Entry, KvRequest, MAX_ENTRY_BYTES, OP_KV, Outcome,
    PutCondition, Reply, SizeError, SizeLimits,
};

use crate::support::open_fsm;

fn put(key: &[u8], value: Vec<u8>) -> Command {
    Command::Put {
        key: key.to_vec(),
        value,
        expire_at_ms: 0,
        condition: PutCondition::Always,
    }
}

fn request(commands: Vec<Command>) -> KvRequest {
    KvRequest {
        issued_at_ms: 1,
        commands,
    }
}

fn decode(entry: &[u8]) -> Result<KvRequest, CommandError> {
    let (&opcode, payload) = entry.split_first().expect("opcode");
    KvRequest::decode(opcode, payload)
}

/// The value that halted every replica before the decoder took entries above 16 MiB:
/// 17 MiB, accepted by a front end configured for it, applied by the state machine.
#[test]
fn a_17_mib_value_accepted_by_the_limits_applies() {
    let limits = SizeLimits {
        max_value_bytes: 17 << 20,
        max_entry_bytes: (17 << 20) + ENTRY_HEADROOM,
    };
    limits.validate().expect("limits");
    let req = request(vec![put(b"big", vec![0xA5; 17 << 20])]);
    limits.check(&req).expect("accepted");
    let entry = req.to_entry().expect("encode");
    assert_eq!(entry.len(), req.entry_len());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let out = fsm
        .apply(&[Entry {
            index: 1,
            data: &entry,
        }])
        .expect("a 17 MiB value applies");
    assert!(matches!(&out[0].outcome, Outcome::Kv(r) if r == &[Reply::Ok]));
    let live = fsm.reader().get(b"big", 1).expect("read").expect("live");
    assert_eq!(live.value.len(), 17 << 20);
}

/// The largest entry a proposer builds decodes; one byte more is refused when it is
/// built, so it never reaches the log.
#[test]
fn the_ceiling_is_the_same_for_proposer_and_decoder() {
    let probe = request(vec![put(b"k", Vec::new())]);
    let overhead = probe.entry_len();
    // The value's length prefix grows from 1 to 5 bytes at this size.
    let value_len = MAX_ENTRY_BYTES - overhead - 4;
    let req = request(vec![put(b"k", vec![7; value_len])]);
    assert_eq!(req.entry_len(), MAX_ENTRY_BYTES);
    let entry = req.to_entry().expect("the ceiling itself is built");
    assert_eq!(decode(&entry).expect("and decoded"), req);
    drop(entry);
    let over = request(vec![put(b"k", vec![7; value_len + 1])]);
    assert_eq!(
        over.to_entry(),
        Err(CommandError::TooLarge(MAX_ENTRY_BYTES + 1))
    );
}

#[test]
fn the_decoder_refuses_a_body_above_the_ceiling_without_reading_it() {
    let mut payload = vec![sealkv_kv::COMMAND_VERSION];
    // With the opcode, an entry of one byte over the ceiling.
    payload.resize(MAX_ENTRY_BYTES, 0);
    assert!(matches!(
        KvRequest::decode(OP_KV, &payload),
        Err(CommandError::TooLarge(_))
    ));
}

#[test]
fn limits_name_the_flag_that_refused() {
    let limits = SizeLimits {
        max_value_bytes: 10,
        max_entry_bytes: 10 + ENTRY_HEADROOM,
    };
    let err = limits
        .check(&request(vec![put(b"k", vec![0; 11])]))
        .expect_err("value over the limit");
    assert_eq!(
        err,
        SizeError::Value {
            bytes: 11,
            limit: 10
        }
    );
    assert!(err.to_string().contains("--max-value-bytes"), "{err}");
    let many: Vec<Command> = (0..(ENTRY_HEADROOM / 10))
        .map(|i| put(format!("key{i}").as_bytes(), vec![0; 10]))
        .collect();
    let err = limits
        .check(&request(many))
        .expect_err("entry over the limit");
    assert!(matches!(err, SizeError::Entry { .. }), "{err:?}");
    assert!(err.to_string().contains("--max-entry-bytes"), "{err}");
}

#[test]
fn unusable_limits_are_refused() {
    let ok = SizeLimits::default();
    ok.validate().expect("the defaults are usable");
    for bad in [
        SizeLimits {
            max_value_bytes: 0,
            ..ok
        },
        SizeLimits {
            max_value_bytes: ok.max_entry_bytes,
            ..ok
        },
        SizeLimits {
            max_value_bytes: 1,
            max_entry_bytes: MAX_ENTRY_BYTES + 1,
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

fn any_command(max_value: usize) -> impl Strategy<Value = Command> {
    let bytes = |max: usize| proptest::collection::vec(any::<u8>(), 0..=max);
    prop_oneof![
        (bytes(16), bytes(max_value), any::<u64>(), 0..3u8).prop_map(|(key, value, exp, c)| {
            Command::Put {
                key,
                value,
                expire_at_ms: exp,
                condition: match c {
                    0 => PutCondition::Always,
                    1 => PutCondition::IfAbsent,
                    _ => PutCondition::IfPresent,
                },
            }
        }),
        proptest::collection::vec(bytes(8), 0..64).prop_map(|keys| Command::Delete { keys }),
        (bytes(16), any::<i64>()).prop_map(|(key, delta)| Command::IncrBy { key, delta }),
        (bytes(16), any::<u64>()).prop_map(|(key, exp)| Command::Expire {
            key,
            expire_at_ms: exp
        }),
    ]
}

proptest! {
    /// Any request the limits accept becomes an entry of the length they measured,
    /// which decodes to the same request.
    #[test]
    fn what_the_limits_accept_decodes(
        max_value in 1usize..512,
        extra in 0usize..16384,
        commands in proptest::collection::vec(any_command(600), 1..24),
        issued_at_ms in any::<u64>(),
    ) {
        let limits = SizeLimits { max_value_bytes: max_value, max_entry_bytes: max_value + extra };
        let req = KvRequest { issued_at_ms, commands };
        if limits.check(&req).is_ok() {
            let entry = req.to_entry().expect("an accepted request encodes");
            prop_assert!(entry.len() <= limits.max_entry_bytes);
            prop_assert_eq!(entry.len(), req.entry_len());
            prop_assert_eq!(decode(&entry).expect("and decodes"), req);
        }
    }
}
