//! Large generated histories: 10,000 operations, 10 clients, 5 keys, a few percent
//! unknown.

use std::time::{Duration, Instant};

use sealkv_linearizability::{EventKind, History, KeyResult, Output, check};

use crate::sim::{Sim, SplitMix};

fn busy_history(seed: u64) -> History {
    Sim::busy(10_000).run(&mut SplitMix(seed))
}

#[test]
fn busy_history_is_linearizable() {
    for seed in [1, 2] {
        let history = busy_history(seed);
        let summary = history.summary();
        assert_eq!(summary.total.ops, 10_000);
        assert_eq!(summary.per_key.len(), 5);
        assert!(summary.total.unknown >= 100, "{summary}");
        let start = Instant::now();
        let result = check(&history, Duration::from_secs(120));
        // A number for the notes, never an assertion.
        eprintln!("seed {seed}: {summary}\nchecked in {:?}", start.elapsed());
        assert!(result.is_linearizable(), "{result}");
    }
}

/// One read late in the history changed to a value nobody wrote: the checker
/// rejects the history and names that read.
#[test]
fn busy_history_with_one_bad_read_is_rejected() {
    let history = busy_history(3);
    let mut events = history.events().to_vec();
    let (index, event) = events
        .iter()
        .enumerate()
        .rev()
        .skip(events.len() / 4)
        .find(|(_, e)| {
            matches!(
                e.kind,
                EventKind::Ok {
                    output: Output::Value(_)
                }
            )
        })
        .unwrap();
    let op = event.op;
    events[index].kind = EventKind::Ok {
        output: Output::Value(Some(b"never written".to_vec())),
    };
    let history = History::new(events).unwrap();
    let start = Instant::now();
    let result = check(&history, Duration::from_secs(120));
    eprintln!("bad read: checked in {:?}", start.elapsed());
    let failures: Vec<&KeyResult> = result.failures().collect();
    assert_eq!(failures.len(), 1, "{result}");
    let KeyResult::NotLinearizable { explanation, .. } = failures[0] else {
        panic!("{result}");
    };
    assert_eq!(
        explanation.stuck.as_ref().map(|o| o.id),
        Some(op),
        "{result}"
    );
}

/// A deadline already passed: every key is a timeout, never a verdict.
#[test]
fn passed_deadline_is_a_timeout() {
    let history = busy_history(4);
    let result = check(&history, Duration::ZERO);
    assert!(!result.is_linearizable());
    assert_eq!(result.keys.len(), 5);
    for (key, key_result) in &result.keys {
        assert_eq!(key_result, &KeyResult::Timeout { key: key.clone() });
    }
    assert!(result.to_string().contains("timed out"), "{result}");
}
