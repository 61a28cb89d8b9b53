//! The search with another model: a FIFO queue, through `check_operations`.

use std::collections::VecDeque;

use sealkv_linearizability::{Model, OpId, Operation, Stamp, Verdict, check_operations};

/// A queue of numbers: `Some(n)` enqueues n (output `None`), `None` dequeues
/// (output the head, `None` when empty).
struct Queue;

impl Model for Queue {
    type State = VecDeque<u32>;
    type Input = Option<u32>;
    type Output = Option<u32>;

    fn init(&self) -> Self::State {
        VecDeque::new()
    }

    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output) {
        let mut next = state.clone();
        match input {
            Some(n) => {
                next.push_back(*n);
                (next, None)
            }
            None => {
                let head = next.pop_front();
                (next, head)
            }
        }
    }
}

type Op = Operation<Option<u32>, Option<u32>>;

/// An operation from call to return, as positions in one timeline.
fn op(id: u64, input: Option<u32>, output: Option<Option<u32>>, call: u64, ret: Option<u64>) -> Op {
    let stamp = |seq| Stamp { seq, time_ns: seq };
    Operation {
        id: OpId(id),
        client: id,
        input,
        output,
        call: stamp(call),
        ret: ret.map(stamp),
    }
}

#[test]
fn queue_histories() {
    let cases: Vec<(&str, Vec<Op>, bool)> = vec![
        (
            "concurrent enqueues, dequeued in either order",
            vec![
                op(0, Some(1), Some(None), 0, Some(3)),
                op(1, Some(2), Some(None), 1, Some(2)),
                op(2, None, Some(Some(2)), 4, Some(5)),
                op(3, None, Some(Some(1)), 6, Some(7)),
            ],
            true,
        ),
        (
            "sequential enqueues dequeued out of order",
            vec![
                op(0, Some(1), Some(None), 0, Some(1)),
                op(1, Some(2), Some(None), 2, Some(3)),
                op(2, None, Some(Some(2)), 4, Some(5)),
            ],
            false,
        ),
        (
            "an unknown enqueue explains a dequeue",
            vec![
                op(0, Some(7), None, 0, None),
                op(1, None, Some(Some(7)), 4, Some(5)),
            ],
            true,
        ),
    ];
    for (name, ops, linearizable) in cases {
        let verdict = check_operations(&Queue, &ops, None);
        match verdict {
            Verdict::Linearizable => assert!(linearizable, "{name}: accepted"),
            Verdict::NotLinearizable(explanation) => {
                assert!(!linearizable, "{name}: rejected: {explanation:?}");
                assert_eq!(explanation.stuck.map(|o| o.id), Some(OpId(2)), "{name}");
            }
            Verdict::Timeout => panic!("{name}: timeout"),
        }
    }
}
