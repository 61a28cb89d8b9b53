//! The checker against a brute-force oracle on small random histories.

use std::cell::Cell;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sealkv_linearizability::{
    Event, EventKind, History, Input, KeyResult, Operation, Output, check,
};

use crate::sim::{Script, Sim};

/// An INCR's view of a value, written independently of the crate's model: the
/// canonical decimal form of an `i64` and nothing else.
fn as_counter(value: &Option<Vec<u8>>) -> Option<i64> {
    let Some(bytes) = value else {
        return Some(0);
    };
    let text = std::str::from_utf8(bytes).ok()?;
    let n: i64 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// Replays `order` from an empty key; true if every known output matches.
fn replay(order: &[&Operation<Input, Output>]) -> bool {
    let mut value: Option<Vec<u8>> = None;
    for op in order {
        let output = match &op.input {
            Input::Get => Output::Value(value.clone()),
            Input::Set(v) => {
                value = Some(v.clone());
                Output::Ok
            }
            Input::SetNx(v) => {
                let set = value.is_none();
                if set {
                    value = Some(v.clone());
                }
                Output::Bool(set)
            }
            Input::Incr => match as_counter(&value).and_then(|n| n.checked_add(1)) {
                Some(n) => {
                    value = Some(n.to_string().into_bytes());
                    Output::Int(n)
                }
                None => Output::NotAnInteger,
            },
        };
        if op
            .output
            .as_ref()
            .is_some_and(|expected| *expected != output)
        {
            return false;
        }
    }
    true
}

/// Extends `order` in every way real time allows, with any of `rest`, and returns
/// true as soon as an order that holds every operation that returned replays
/// correctly.
///
/// `x` may follow everything in `order` unless it returned before one of them was
/// called. That alone keeps real time: an operation that must precede `x` but is
/// not placed yet is caught when it is placed after `x`, and an unknown one may
/// simply never be placed.
fn extend<'a>(
    order: &mut Vec<&'a Operation<Input, Output>>,
    rest: &mut Vec<&'a Operation<Input, Output>>,
) -> bool {
    if rest.iter().all(|op| op.ret.is_none()) && replay(order) {
        return true;
    }
    for i in 0..rest.len() {
        let x = rest[i];
        let fits = order
            .iter()
            .all(|a| x.ret.is_none_or(|ret| ret.seq > a.call.seq));
        if !fits {
            continue;
        }
        rest.remove(i);
        order.push(x);
        let found = extend(order, rest);
        order.pop();
        rest.insert(i, x);
        if found {
            return true;
        }
    }
    false
}

/// Brute force: is there an order of all the operations that returned and any
/// subset of the unknown ones that respects real time and the model?
pub fn oracle(ops: &[Operation<Input, Output>]) -> bool {
    extend(&mut Vec::new(), &mut ops.iter().collect())
}

/// Renumbers events after a mutation reordered them.
fn renumber(events: &mut [Event]) {
    for (i, event) in events.iter_mut().enumerate() {
        event.seq = i as u64;
        event.time_ns = 10 * i as u64;
    }
}

/// A different output of the same kind.
fn other_output(output: &Output, pick: u8) -> Option<Output> {
    let values: [Option<&[u8]>; 4] = [None, Some(b"1"), Some(b"a"), Some(b"2")];
    Some(match output {
        Output::Value(v) => {
            let others: Vec<_> = values
                .iter()
                .filter(|c| c.map(<[u8]>::to_vec) != *v)
                .collect();
            Output::Value(others[usize::from(pick) % others.len()].map(<[u8]>::to_vec))
        }
        Output::Bool(b) => Output::Bool(!b),
        Output::Int(_) if pick.is_multiple_of(3) => Output::NotAnInteger,
        Output::Int(n) => Output::Int(if pick.is_multiple_of(2) { n + 1 } else { n - 1 }),
        Output::NotAnInteger => Output::Int(1),
        Output::Ok => return None,
    })
}

/// Applies one of a few mutations to a linearizable history: change an answer,
/// complete an operation earlier, turn an unknown or an ok into a failure. The
/// result may or may not still be linearizable; that is the oracle's call.
fn mutate(history: History, mutation: u8, target: u8) -> History {
    let mut events = history.events().to_vec();
    let nth = |events: &[Event], pred: &dyn Fn(&Event) -> bool| -> Option<usize> {
        let hits: Vec<usize> = (0..events.len()).filter(|&i| pred(&events[i])).collect();
        (!hits.is_empty()).then(|| hits[usize::from(target) % hits.len()])
    };
    let is_ok = |e: &Event| matches!(e.kind, EventKind::Ok { ref output } if *output != Output::Ok);
    match mutation {
        0..=2 => {
            if let Some(i) = nth(&events, &is_ok)
                && let EventKind::Ok { output } = &events[i].kind
                && let Some(other) = other_output(output, target / 7)
            {
                events[i].kind = EventKind::Ok { output: other };
            }
        }
        3 => {
            let completes_after_other = |i: usize| {
                i > 0
                    && !matches!(events[i].kind, EventKind::Invoke { .. })
                    && events[i - 1].op != events[i].op
            };
            let hits: Vec<usize> = (0..events.len())
                .filter(|&i| completes_after_other(i))
                .collect();
            if !hits.is_empty() {
                let i = hits[usize::from(target) % hits.len()];
                events.swap(i - 1, i);
            }
        }
        4 => {
            if let Some(i) = nth(&events, &|e| matches!(e.kind, EventKind::Unknown)) {
                events[i].kind = EventKind::Fail;
            }
        }
        _ => {
            if let Some(i) = nth(&events, &|e| matches!(e.kind, EventKind::Ok { .. })) {
                events[i].kind = EventKind::Fail;
            }
        }
    }
    renumber(&mut events);
    // A swap can make a client's next invocation precede its completion; keep the
    // original history then.
    History::new(events).unwrap_or(history)
}

fn small_history() -> impl Strategy<Value = History> {
    (
        2..=4u64,
        2..=7usize,
        vec(any::<u8>(), 64..160),
        prop::option::weighted(0.95, (0..6u8, any::<u8>())),
    )
        .prop_map(|(clients, ops, script, mutation)| {
            let sim = Sim {
                clients,
                keys: vec!["k".to_owned()],
                ops,
                values: vec![b"1".to_vec(), b"a".to_vec()],
                fail_percent: 10,
                unknown_percent: 30,
                late_percent: 30,
            };
            let history = sim.run(&mut Script(&script));
            match mutation {
                Some((kind, target)) => mutate(history, kind, target),
                None => history,
            }
        })
}

const CASES: u32 = 2000;

#[test]
fn checker_agrees_with_brute_force() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let (yes, no, with_unknown) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&small_history(), |history| {
        let ops = history.operations_by_key().remove("k").unwrap_or_default();
        let expected = oracle(&ops);
        let result = check(&history, Duration::from_secs(60));
        let json = history.to_json().unwrap();
        for key_result in result.keys.values() {
            prop_assert!(
                !matches!(key_result, KeyResult::Timeout { .. }),
                "timeout on\n{json}"
            );
        }
        prop_assert_eq!(
            result.is_linearizable(),
            expected,
            "checker says {}\non\n{}",
            result,
            json
        );
        let counter = if expected { &yes } else { &no };
        counter.set(counter.get() + 1);
        if ops.iter().any(|op| op.ret.is_none()) {
            with_unknown.set(with_unknown.get() + 1);
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (yes, no, with_unknown) = (yes.get(), no.get(), with_unknown.get());
    eprintln!("{yes} linearizable, {no} not, {with_unknown} with unknown ops, of {CASES}");
    assert!(
        yes >= CASES / 4 && no >= CASES / 4,
        "want both kinds often: {yes} linearizable, {no} not, of {CASES}"
    );
    assert!(
        with_unknown >= CASES / 5,
        "want unknown ops often: {with_unknown} of {CASES}"
    );
}

/// The oracle itself on the fixture shapes it must get right.
#[test]
fn oracle_sees_the_obvious() {
    let stale = History::from_json(include_str!("../fixtures/bad/stale_read.json")).unwrap();
    let ops = stale.operations_by_key().remove("x").unwrap();
    assert!(!oracle(&ops));
    let late =
        History::from_json(include_str!("../fixtures/good/unknown_write_late.json")).unwrap();
    let ops = late.operations_by_key().remove("x").unwrap();
    assert!(oracle(&ops));
}
