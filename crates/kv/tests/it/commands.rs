//! KV command semantics through the state machine: replies, conditions, expiry and
//! user errors that are replies, not halts.

use sealkv_kv::{Command, CommandError, KvRequest, OP_KV, PutCondition, Reply, UserError};

use crate::support::*;

fn replies(fsm: &mut sealkv_kv::KvFsm, commands: Vec<Command>) -> Vec<Reply> {
    apply_kv(fsm, &request(commands))
}

#[test]
fn command_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let int = |n| Reply::Int(n);
    let err = |m: &str| {
        Reply::Error(match m {
            "ERR value is not an integer or out of range" => UserError::NotAnInteger,
            "ERR increment or decrement would overflow" => UserError::Overflow,
            "ERR key is in the reserved keyspace !encryption|" => UserError::ReservedKey,
            other => panic!("no user error reads {other:?}"),
        })
    };
    let cases: Vec<(&str, Vec<Command>, Vec<Reply>)> = vec![
        ("set", vec![set("a", "1")], vec![Reply::Ok]),
        (
            "nx on live key",
            vec![put("a", "x", 0, PutCondition::IfAbsent)],
            vec![Reply::Nil],
        ),
        (
            "xx on missing key",
            vec![put("b", "x", 0, PutCondition::IfPresent)],
            vec![Reply::Nil],
        ),
        (
            "nx on missing key",
            vec![put("b", "2", 0, PutCondition::IfAbsent)],
            vec![Reply::Ok],
        ),
        ("incr", vec![incr("a", 41)], vec![int(42)]),
        ("decr below zero", vec![incr("c", -5)], vec![int(-5)]),
        (
            "incr non-integer",
            vec![set("s", "abc"), incr("s", 1)],
            vec![
                Reply::Ok,
                err("ERR value is not an integer or out of range"),
            ],
        ),
        (
            "incr padded integer",
            vec![set("p", " 1"), incr("p", 1)],
            vec![
                Reply::Ok,
                err("ERR value is not an integer or out of range"),
            ],
        ),
        (
            "incr overflow",
            vec![set("m", &i64::MAX.to_string()), incr("m", 1)],
            vec![Reply::Ok, err("ERR increment or decrement would overflow")],
        ),
        (
            "batch reads its own writes",
            vec![set("d", "5"), incr("d", 1), incr("d", 1)],
            vec![Reply::Ok, int(6), int(7)],
        ),
        (
            "del counts live keys",
            vec![Command::Delete {
                keys: vec!["a".into(), "nope".into(), "b".into()],
            }],
            vec![int(2)],
        ),
        (
            "del again",
            vec![Command::Delete {
                keys: vec!["a".into()],
            }],
            vec![int(0)],
        ),
        (
            "reserved key is a user error",
            vec![set("!encryption|writers|x", "v")],
            vec![err("ERR key is in the reserved keyspace !encryption|")],
        ),
        (
            "expire missing",
            vec![Command::Expire {
                key: "zz".into(),
                expire_at_ms: NOW + 10,
            }],
            vec![int(0)],
        ),
        (
            "expire live",
            vec![Command::Expire {
                key: "d".into(),
                expire_at_ms: NOW + 10_000,
            }],
            vec![int(1)],
        ),
        (
            "expire in the past deletes",
            vec![
                set("e", "1"),
                Command::Expire {
                    key: "e".into(),
                    expire_at_ms: NOW,
                },
            ],
            vec![Reply::Ok, int(1)],
        ),
        (
            "already expired value is absent",
            vec![
                put("t", "1", NOW - 1, PutCondition::Always),
                put("t", "2", 0, PutCondition::IfAbsent),
            ],
            vec![Reply::Ok, Reply::Ok],
        ),
        ("incr keeps ttl", vec![incr("d", 1)], vec![int(8)]),
    ];
    for (name, commands, want) in cases {
        assert_eq!(replies(&mut fsm, commands), want, "{name}");
    }
    assert_eq!(get(&fsm, "a"), None);
    assert_eq!(get(&fsm, "b"), None);
    assert_eq!(get(&fsm, "c").as_deref(), Some("-5"));
    assert_eq!(get(&fsm, "e"), None);
    assert_eq!(get(&fsm, "t").as_deref(), Some("2"));
    assert_eq!(get(&fsm, "!encryption|writers|x"), None);
    // INCR kept the expiry EXPIRE set on "d": it is gone once that time has passed.
    assert_eq!(fsm.get(b"d", NOW).expect("get"), Some(b"8".to_vec()));
    assert_eq!(fsm.get(b"d", NOW + 10_000).expect("get"), None);
    assert!(fsm.halted().is_none());
}

#[test]
fn requests_round_trip_and_refuse_bad_shapes() {
    let one = KvRequest {
        issued_at_ms: 5,
        commands: vec![set("k", "v")],
    };
    let entry = one.to_entry().expect("encode");
    assert_eq!(entry[0], OP_KV);
    assert_eq!(KvRequest::decode(entry[0], &entry[1..]), Ok(one));
    let two = KvRequest {
        issued_at_ms: 5,
        commands: vec![set("k", "v"), incr("n", 1)],
    };
    let entry = two.to_entry().expect("encode");
    assert_eq!(entry[0], sealkv_kv::OP_KV_BATCH);
    // A batch in a single-command entry is refused.
    assert!(matches!(
        KvRequest::decode(OP_KV, &entry[1..]),
        Err(CommandError::BadCount { count: 2, .. })
    ));
    assert!(matches!(
        KvRequest {
            issued_at_ms: 0,
            commands: vec![]
        }
        .to_entry(),
        Err(CommandError::BadCount { .. })
    ));
    assert_eq!(
        KvRequest::decode(OP_KV, &[]),
        Err(CommandError::Truncated(0))
    );
    assert_eq!(
        KvRequest::decode(OP_KV, &[9]),
        Err(CommandError::UnknownVersion(9))
    );
    let mut trailing = one_entry();
    trailing.push(0);
    assert!(matches!(
        KvRequest::decode(OP_KV, &trailing[1..]),
        Err(CommandError::Malformed(_))
    ));
}

fn one_entry() -> Vec<u8> {
    request(vec![set("k", "v")])
}

/// Truncating a valid entry anywhere, or claiming a huge length, is a typed error and
/// allocates nothing near the claimed size.
#[test]
fn truncations_and_lying_lengths_are_malformed() {
    let entry = request(vec![set("key", "a value of some length"), incr("n", 3)]);
    for cut in 1..entry.len() {
        assert!(
            KvRequest::decode(entry[0], &entry[1..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // Version, issued_at (varint 0), command count (varint u64 marker 0xFD + 8 bytes).
    let mut lying = vec![1, 0, 0xFD];
    lying.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        KvRequest::decode(0x01, &lying),
        Err(CommandError::Malformed(_))
    ));
}

/// The reader sees committed values with their expiry, counts live keys the way
/// DBSIZE does, and follows the store after its applied index is reloaded.
#[test]
fn reader_gets_and_counts_live_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let reader = fsm.reader();
    replies(
        &mut fsm,
        vec![
            set("a", "1"),
            put("b", "2", NOW + 1_000, PutCondition::Always),
            set("c", "3"),
            Command::Delete {
                keys: vec![b"c".to_vec()],
            },
        ],
    );
    let a = reader.get(b"a", NOW).expect("get a").expect("a is live");
    assert_eq!((a.value.as_slice(), a.expire_at_ms), (&b"1"[..], 0));
    let b = reader.get(b"b", NOW).expect("get b").expect("b is live");
    assert_eq!(b.expire_at_ms, NOW + 1_000);
    assert_eq!(
        reader.get(b"b", NOW + 1_000).expect("get b"),
        None,
        "expired"
    );
    assert_eq!(reader.get(b"c", NOW).expect("get c"), None, "deleted");
    assert_eq!(reader.count_live(NOW).expect("count"), 2);
    assert_eq!(reader.count_live(NOW + 1_000).expect("count"), 1);

    let applied = fsm.applied_index();
    assert_eq!(fsm.reload_applied_index().expect("reload"), applied);
}
