//! The recorder from many threads, history validation errors, JSON round trips.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use sealkv_linearizability::{
    Counts, Event, EventKind, History, HistoryError, Input, KvModel, Model, OpId, Output, Recorder,
    check,
};

fn invoke(seq: u64, op: u64, client: u64, input: Input) -> Event {
    Event {
        seq,
        time_ns: seq * 10,
        op: OpId(op),
        kind: EventKind::Invoke {
            client,
            key: "x".to_owned(),
            input,
        },
    }
}

fn done(seq: u64, op: u64, kind: EventKind) -> Event {
    Event {
        seq,
        time_ns: seq * 10,
        op: OpId(op),
        kind,
    }
}

fn ok(seq: u64, op: u64, output: Output) -> Event {
    done(seq, op, EventKind::Ok { output })
}

/// Each malformed history and the error it must give.
#[test]
fn malformed_histories_are_typed_errors() {
    type Expect = fn(&HistoryError) -> bool;
    let cases: Vec<(&str, Vec<Event>, Expect)> = vec![
        (
            "seq repeats",
            vec![invoke(0, 0, 1, Input::Get), ok(0, 0, Output::Value(None))],
            |e| {
                matches!(
                    e,
                    HistoryError::SeqNotIncreasing {
                        seq: 0,
                        previous: 0
                    }
                )
            },
        ),
        (
            "time goes back",
            vec![
                Event {
                    time_ns: 20,
                    ..invoke(0, 0, 1, Input::Get)
                },
                ok(1, 0, Output::Value(None)),
            ],
            |e| {
                matches!(
                    e,
                    HistoryError::TimeWentBack {
                        seq: 1,
                        time_ns: 10,
                        previous_ns: 20
                    }
                )
            },
        ),
        (
            "op id reused",
            vec![
                invoke(0, 0, 1, Input::Get),
                ok(1, 0, Output::Value(None)),
                invoke(2, 0, 2, Input::Get),
            ],
            |e| {
                matches!(
                    e,
                    HistoryError::DuplicateOp {
                        op: OpId(0),
                        seq: 2
                    }
                )
            },
        ),
        (
            "two pending ops on one client",
            vec![invoke(0, 0, 1, Input::Get), invoke(1, 1, 1, Input::Incr)],
            |e| {
                matches!(
                    e,
                    HistoryError::ClientBusy {
                        client: 1,
                        op: OpId(1),
                        pending: OpId(0),
                        seq: 1
                    }
                )
            },
        ),
        (
            "completion without invocation",
            vec![invoke(0, 0, 1, Input::Get), done(1, 7, EventKind::Fail)],
            |e| {
                matches!(
                    e,
                    HistoryError::NotInvoked {
                        op: OpId(7),
                        seq: 1
                    }
                )
            },
        ),
        (
            "completed twice",
            vec![
                invoke(0, 0, 1, Input::Incr),
                ok(1, 0, Output::Int(1)),
                done(2, 0, EventKind::Unknown),
            ],
            |e| {
                matches!(
                    e,
                    HistoryError::AlreadyCompleted {
                        op: OpId(0),
                        seq: 2
                    }
                )
            },
        ),
        (
            "GET answered OK",
            vec![invoke(0, 0, 1, Input::Get), ok(1, 0, Output::Ok)],
            |e| {
                matches!(
                    e,
                    HistoryError::OutputMismatch {
                        op: OpId(0),
                        seq: 1,
                        ..
                    }
                )
            },
        ),
        (
            "INCR answered with a value",
            vec![invoke(0, 0, 1, Input::Incr), ok(1, 0, Output::Value(None))],
            |e| matches!(e, HistoryError::OutputMismatch { .. }),
        ),
        (
            "SET NX answered OK",
            vec![
                invoke(0, 0, 1, Input::SetNx(b"a".to_vec())),
                ok(1, 0, Output::Ok),
            ],
            |e| matches!(e, HistoryError::OutputMismatch { .. }),
        ),
    ];
    for (name, events, expect) in cases {
        match History::new(events) {
            Ok(_) => panic!("{name}: accepted"),
            Err(error) => assert!(expect(&error), "{name}: wrong error {error:?}"),
        }
    }
}

#[test]
fn well_formed_edge_cases_are_accepted() {
    // Empty; a client reusing itself after completion; a pending op at the end.
    History::new(Vec::new()).unwrap();
    History::new(vec![
        invoke(0, 0, 1, Input::Get),
        ok(1, 0, Output::Value(None)),
        invoke(2, 1, 1, Input::Set(b"a".to_vec())),
        done(3, 1, EventKind::Fail),
        invoke(4, 2, 1, Input::Incr),
    ])
    .unwrap();
}

#[test]
fn bad_json_is_a_typed_error() {
    let cases = [
        "",
        "{",
        "{\"events\": 3}",
        "{\"events\": [{\"seq\": 0}]}",
        "{\"events\": [{\"seq\":0,\"time_ns\":0,\"op\":0,\"type\":\"explode\"}]}",
        "{\"events\": [{\"seq\":0,\"time_ns\":0,\"op\":0,\"type\":\"invoke\",\"client\":1,\"key\":\"x\",\"input\":{\"set\":[300]}}]}",
    ];
    for text in cases {
        match History::from_json(text) {
            Err(HistoryError::Json(_)) => {}
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Well-formed JSON, malformed history: the validation error, typed.
    let busy = "{\"events\": [
        {\"seq\":0,\"time_ns\":0,\"op\":0,\"type\":\"invoke\",\"client\":1,\"key\":\"x\",\"input\":\"get\"},
        {\"seq\":1,\"time_ns\":0,\"op\":1,\"type\":\"invoke\",\"client\":1,\"key\":\"x\",\"input\":\"get\"}
    ]}";
    assert!(matches!(
        History::from_json(busy),
        Err(HistoryError::ClientBusy { .. })
    ));
    // Through serde's `Deserialize` the validation still runs (as a message).
    assert!(serde_json::from_str::<History>(busy).is_err());
}

#[test]
fn missing_file_is_an_io_error() {
    let path = std::env::temp_dir().join("sealkv-linearizability-no-such-file.json");
    assert!(matches!(
        History::read_file(&path),
        Err(HistoryError::Io { action: "read", .. })
    ));
}

#[test]
fn recorder_misuse_is_reported_by_history() {
    let rec = Recorder::new();
    let a = rec.invoke(1, "x", Input::Get);
    rec.ok(a, Output::Value(None));
    rec.ok(a, Output::Value(None));
    assert!(matches!(
        rec.history(),
        Err(HistoryError::AlreadyCompleted { .. })
    ));

    let rec = Recorder::new();
    rec.invoke(1, "x", Input::Get);
    rec.invoke(1, "x", Input::Get);
    assert!(matches!(
        rec.history(),
        Err(HistoryError::ClientBusy { client: 1, .. })
    ));

    let rec = Recorder::new();
    rec.fail(OpId(3));
    assert!(matches!(
        rec.history(),
        Err(HistoryError::NotInvoked { .. })
    ));

    let rec = Recorder::new();
    let a = rec.invoke(1, "x", Input::Incr);
    rec.ok(a, Output::Ok);
    assert!(matches!(
        rec.history(),
        Err(HistoryError::OutputMismatch { .. })
    ));
}

/// Threads share a recorder and a store behind a lock (so the store is
/// linearizable); the history checks out and its counts add up.
#[test]
fn recorder_from_many_threads() {
    const THREADS: u64 = 8;
    const OPS: u64 = 200;
    let rec = Recorder::new();
    let store: Mutex<HashMap<String, Option<Vec<u8>>>> = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for client in 0..THREADS {
            let rec = rec.clone();
            let store = &store;
            scope.spawn(move || {
                for i in 0..OPS {
                    let key = format!("k{}", (client + i) % 3);
                    let input = match (client * 7 + i) % 4 {
                        0 => Input::Get,
                        1 => Input::Set(format!("{client}-{i}").into_bytes()),
                        2 => Input::SetNx(b"nx".to_vec()),
                        _ => Input::Incr,
                    };
                    let id = rec.invoke(client, &key, input.clone());
                    // Every 17th op fails before reaching the store, every 13th
                    // reaches it and the answer is lost.
                    if i % 17 == 16 {
                        rec.fail(id);
                        continue;
                    }
                    let output = {
                        let mut store = store.lock().unwrap();
                        let state = store.entry(key).or_insert(None);
                        let (next, output) = KvModel.step(state, &input);
                        *state = next;
                        output
                    };
                    if i % 13 == 12 {
                        rec.unknown(id);
                    } else {
                        rec.ok(id, output);
                    }
                }
            });
        }
    });
    let history = rec.history().unwrap();
    let summary = history.summary();
    let total = (THREADS * OPS) as usize;
    let fail = THREADS as usize * (0..OPS).filter(|i| i % 17 == 16).count();
    let unknown = THREADS as usize * (0..OPS).filter(|i| i % 17 != 16 && i % 13 == 12).count();
    assert_eq!(
        summary.total,
        Counts {
            ops: total,
            ok: total - fail - unknown,
            fail,
            unknown,
            pending: 0,
        }
    );
    assert_eq!(summary.per_key.len(), 3);
    assert_eq!(
        summary.per_key.values().map(|c| c.ops).sum::<usize>(),
        total
    );
    // Sequence numbers and times come out ordered (History::new checked it).
    assert_eq!(history.events().len(), 2 * total);
    let result = check(&history, Duration::from_secs(60));
    assert!(result.is_linearizable(), "{result}");
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9]{0,4}".prop_map(String::into_bytes),
        vec(any::<u8>(), 0..6),
    ]
}

fn any_op() -> impl Strategy<Value = (Input, Option<Output>)> {
    prop_oneof![
        prop::option::of(prop::option::of(any_bytes()))
            .prop_map(|out| (Input::Get, out.map(Output::Value))),
        (any_bytes(), any::<bool>()).prop_map(|(v, ok)| (Input::Set(v), ok.then_some(Output::Ok))),
        (any_bytes(), prop::option::of(any::<bool>()))
            .prop_map(|(v, out)| (Input::SetNx(v), out.map(Output::Bool))),
        prop::option::of(prop_oneof![
            any::<i64>().prop_map(Output::Int),
            Just(Output::NotAnInteger)
        ])
        .prop_map(|out| (Input::Incr, out)),
    ]
}

proptest! {
    /// Any values (valid UTF-8 or not) and outcomes survive JSON.
    #[test]
    fn json_round_trip(ops in vec((any_op(), "[a-c]{1,2}", 0..4u8), 0..20)) {
        let rec = Recorder::new();
        for (client, ((input, output), key, how)) in ops.into_iter().enumerate() {
            let id = rec.invoke(client as u64, &key, input);
            match (output, how) {
                (_, 0) => rec.fail(id),
                (_, 1) => {} // left pending
                (Some(output), _) => rec.ok(id, output),
                (None, _) => rec.unknown(id),
            }
        }
        let history = rec.history().unwrap();
        let json = history.to_json().unwrap();
        prop_assert_eq!(&History::from_json(&json).unwrap(), &history);
        prop_assert_eq!(&serde_json::from_str::<History>(&json).unwrap(), &history);
        prop_assert_eq!(&serde_json::from_str::<History>(&serde_json::to_string(&history).unwrap()).unwrap(), &history);

        let path = std::env::temp_dir().join(format!("sealkv-lin-rt-{}.json", std::process::id()));
        history.write_file(&path).unwrap();
        let read = History::read_file(&path);
        std::fs::remove_file(&path).unwrap();
        prop_assert_eq!(&read.unwrap(), &history);
    }
}
