//! The WGL search for a linearization, per key, with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::history::{History, Input, OpId, Output};
use crate::model::{KvModel, Model};

/// A point in a history's order: its sequence number and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The order key. Real-time order is decided by `seq` alone.
    pub seq: u64,
    /// Nanoseconds since the recording started; only shown in explanations.
    pub time_ns: u64,
}

/// One operation as the checker sees it.
///
/// Operation `a` precedes operation `b` in real time when `a` returned before `b`
/// was called: `a.ret.seq < b.call.seq`. A call and a return with equal `seq` are
/// taken as concurrent, and a return at or before its own call as a return right
/// after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The operation's id in its history.
    pub id: OpId,
    /// The client that sent it.
    pub client: u64,
    /// What it asked for.
    pub input: I,
    /// What it returned; `None` when unknown: any output matches.
    pub output: Option<O>,
    /// When it was called.
    pub call: Stamp,
    /// When it returned; `None` when it never did (unknown outcome): it may take
    /// effect at any time after its call, or never.
    pub ret: Option<Stamp>,
}

impl<I: fmt::Display, O: fmt::Display> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} client {}: {} -> ", self.id, self.client, self.input)?;
        match &self.output {
            Some(output) => write!(f, "{output}")?,
            None => f.write_str("?")?,
        }
        let at = |stamp: &Stamp| Duration::from_nanos(stamp.time_ns);
        write!(f, " [seq {} @{:?} .. ", self.call.seq, at(&self.call))?;
        match &self.ret {
            Some(ret) => write!(f, "seq {} @{:?}]", ret.seq, at(ret)),
            None => f.write_str("never]"),
        }
    }
}

/// Why a key's operations are not linearizable: where the deepest attempt got
/// stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<I, O> {
    /// The longest linearizable prefix the search found, in linearization order.
    pub linearized: Vec<Operation<I, O>>,
    /// The model's state after `linearized`.
    pub state: String,
    /// The operation that had to go next (its return is the first one left) and
    /// could not. Always `Some` in a [`Verdict::NotLinearizable`]: an operation
    /// that returned and is not linearized always has such a return.
    pub stuck: Option<Operation<I, O>>,
    /// The other operations called by then and not linearized: none of them could
    /// be placed next either (the unknown ones could, but did not help).
    pub pending: Vec<Operation<I, O>>,
}

/// How many operations of a prefix [`Explanation`]'s `Display` shows.
const SHOWN_PREFIX: usize = 20;

impl<I: fmt::Display, O: fmt::Display> fmt::Display for Explanation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skipped = self.linearized.len().saturating_sub(SHOWN_PREFIX);
        write!(
            f,
            "longest linearizable prefix: {} ops",
            self.linearized.len()
        )?;
        if skipped > 0 {
            write!(f, " (the first {skipped} not shown)")?;
        }
        for op in self.linearized.iter().skip(skipped) {
            write!(f, "\n    {op}")?;
        }
        write!(f, "\n  state after it: {}", self.state)?;
        match &self.stuck {
            Some(op) => write!(f, "\n  cannot place: {op}")?,
            None => f.write_str("\n  cannot place anything")?,
        }
        if !self.pending.is_empty() {
            f.write_str("\n  nor any other op pending then:")?;
            for op in &self.pending {
                write!(f, "\n    {op}")?;
            }
        }
        Ok(())
    }
}

/// The outcome of checking one object's operations against a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<I, O> {
    /// There is a linearization.
    Linearizable,
    /// There is none.
    NotLinearizable(Explanation<I, O>),
    /// The deadline passed before the search finished.
    Timeout,
}

/// The outcome of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyResult {
    /// The key's operations are linearizable.
    Linearizable,
    /// They are not.
    NotLinearizable {
        /// The key.
        key: String,
        /// Where the search got stuck.
        explanation: Explanation<Input, Output>,
    },
    /// The deadline passed before the key was decided. Callers treat it as a
    /// failure.
    Timeout {
        /// The key.
        key: String,
    },
}

/// The outcome of checking a history: one [`KeyResult`] per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Each key's result.
    pub keys: BTreeMap<String, KeyResult>,
}

impl CheckResult {
    /// Whether every key is linearizable (a timeout is not).
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .values()
            .all(|result| matches!(result, KeyResult::Linearizable))
    }

    /// The keys that are not linearizable or timed out.
    pub fn failures(&self) -> impl Iterator<Item = &KeyResult> {
        self.keys
            .values()
            .filter(|result| !matches!(result, KeyResult::Linearizable))
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        if failed == 0 {
            return write!(f, "linearizable ({} keys)", self.keys.len());
        }
        write!(f, "{failed} of {} keys failed", self.keys.len())?;
        for failure in self.failures() {
            match failure {
                KeyResult::NotLinearizable { key, explanation } => {
                    write!(f, "\nkey {key:?} is not linearizable: {explanation}")?;
                }
                KeyResult::Timeout { key } => write!(f, "\nkey {key:?} timed out")?,
                KeyResult::Linearizable => {}
            }
        }
        Ok(())
    }
}

/// Checks `history` against [`KvModel`], each key on its own, within `timeout` for
/// the whole history. Keys not decided when it runs out are
/// [`KeyResult::Timeout`].
pub fn check(history: &History, timeout: Duration) -> CheckResult {
    let deadline = Instant::now().checked_add(timeout);
    let keys = history
        .operations_by_key()
        .into_iter()
        .map(|(key, ops)| {
            let result = match check_operations(&KvModel, &ops, deadline) {
                Verdict::Linearizable => KeyResult::Linearizable,
                Verdict::NotLinearizable(explanation) => KeyResult::NotLinearizable {
                    key: key.clone(),
                    explanation,
                },
                Verdict::Timeout => KeyResult::Timeout { key: key.clone() },
            };
            (key, result)
        })
        .collect();
    CheckResult { keys }
}

/// How many search steps run between two looks at the clock.
const CLOCK_EVERY: u32 = 256;

/// No entry (end of a link).
const NONE: usize = usize::MAX;

/// Checks the operations of one object against `model`, giving up at `deadline`
/// (`None`: never).
///
/// This is the algorithm of Wing and Gong as improved by Lowe (WGL), the one
/// porcupine implements: the calls and returns sit in one doubly linked list in
/// real-time order; the search walks it, *lifts* (unlinks) a call and its return
/// when the model accepts the call's operation next, restarts from the head, and
/// when it reaches a return whose operation is not yet linearized, pops the last
/// lifted operation off an undo stack, unlifts it and tries the next call after it.
/// Every (linearized set, state) pair it reaches is memoized, so no configuration
/// is explored twice.
///
/// Operations without a return never force anything: they have no return entry,
/// so the search succeeds as soon as every operation that returned is linearized,
/// with the others left out (they never took effect). Three refinements keep them
/// cheap, each of which leaves the verdict unchanged:
///
/// - they are kept out of the list, in call order, and at each configuration the
///   search tries the operations that returned before those that did not (the
///   ones called before the first return still in the list), so it only places an
///   unknown operation when it must;
/// - of several unknown operations with equal inputs that are all pending it only
///   tries the first: they are interchangeable;
/// - the memo drops a configuration when one with the same state, the same
///   returned operations linearized and a subset of the unknown ones was reached
///   before: whatever completes the new one completes the old one too. Without
///   this, proving a history with many unknown writes wrong would explore every
///   subset of them.
///
/// Reads without a return are dropped up front: they change nothing and need not
/// be placed.
pub fn check_operations<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
) -> Verdict<M::Input, M::Output> {
    let ops: Vec<&Operation<M::Input, M::Output>> = ops
        .iter()
        .filter(|op| op.ret.is_some() || !model.is_read_only(&op.input))
        .collect();
    let mut search = Search::new(model, &ops, deadline);
    match search.run() {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::Timeout => Verdict::Timeout,
        Outcome::NotLinearizable => Verdict::NotLinearizable(search.explain()),
    }
}

enum Outcome {
    Linearizable,
    NotLinearizable,
    Timeout,
}

/// Where the search stands in one configuration: walking the list for the next
/// call of an operation that returned, or, once it met the first return still in
/// the list (the *boundary*), walking the operations that never returned and were
/// called before it.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this node of the list.
    Returned(usize),
    /// At this position of `open`, with the boundary's node (`tail` if none).
    Open { pos: usize, boundary: usize },
}

struct Frame<S> {
    /// The operation linearized.
    op: usize,
    /// Where the search stood when it linearized it, to resume after it.
    at: Cursor,
    /// The state before it.
    state: S,
}

/// Records a configuration in the memo; false if it is dominated by one already
/// there: the same linearized operations that returned, the same state, and a
/// subset of its optional operations linearized.
///
/// Such a configuration cannot succeed where the other failed (or is still being
/// explored): whatever completes it also completes the other, which may simply
/// leave out the extra optional operations. This is what keeps unknown operations
/// from multiplying the configurations of a history that is not linearizable by
/// every subset of them.
fn first_visit<S: Clone + Eq + std::hash::Hash>(
    seen: &mut HashMap<(Bitset, S), Vec<Bitset>>,
    known: &Bitset,
    optional: &Bitset,
    state: &S,
) -> bool {
    let reached = seen.entry((known.clone(), state.clone())).or_default();
    if reached.iter().any(|other| other.is_subset_of(optional)) {
        return false;
    }
    // Those it dominates need no keeping.
    reached.retain(|other| !optional.is_subset_of(other));
    reached.push(optional.clone());
    true
}

/// A fixed-size set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize, on: bool) {
        if let Some(word) = self.0.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    fn get(&self, i: usize) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|word| word & (1u64 << (i % 64)) != 0)
    }

    fn is_subset_of(&self, other: &Bitset) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}

struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
    /// The calls and returns of the operations that returned, one node each, in
    /// real-time order: per node its operation, whether it is a call, its order
    /// key, and for a call its return node.
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    node_seq: Vec<u64>,
    node_match: Vec<usize>,
    /// Per operation that returned, its call node.
    call_node: Vec<usize>,
    /// The doubly linked list over those nodes; `head` and `tail` are sentinels.
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
    /// The operations that never returned, by call. They stay out of the list:
    /// they would sit at its front for good and slow every walk down.
    open: Vec<usize>,
    /// Per operation: the unknown operations with an equal input called before it
    /// (for an unknown operation; empty otherwise).
    twins_before: Vec<Vec<usize>>,
    /// The deepest point the search backtracked from: linearization order and the
    /// operation whose return stopped it.
    best: Option<(Vec<usize>, Option<usize>)>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(
        model: &'a M,
        ops: &'a [&'a Operation<M::Input, M::Output>],
        deadline: Option<Instant>,
    ) -> Self {
        // Entries sort by (seq, return after call, operation): a call and a return
        // with equal keys are concurrent.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        let mut open: Vec<(u64, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op.ret {
                Some(ret) => {
                    entries.push((op.call.seq, false, i));
                    entries.push((ret.seq.max(op.call.seq), true, i));
                }
                None => open.push((op.call.seq, i)),
            }
        }
        entries.sort_unstable();
        open.sort_unstable();
        let n = entries.len();
        let (head, tail) = (n, n + 1);
        let mut node_op = vec![NONE; n];
        let mut node_is_call = vec![false; n];
        let mut node_seq = vec![u64::MAX; n + 2];
        let mut node_match = vec![NONE; n];
        let mut call_node = vec![NONE; ops.len()];
        for (node, &(seq, is_return, op)) in entries.iter().enumerate() {
            node_op[node] = op;
            node_is_call[node] = !is_return;
            node_seq[node] = seq;
            if is_return {
                node_match[call_node[op]] = node;
            } else {
                call_node[op] = node;
            }
        }
        let mut next = vec![NONE; n + 2];
        let mut prev = vec![NONE; n + 2];
        // The list: head, 0, 1, ..., n - 1, tail.
        let chain: Vec<usize> = std::iter::once(head).chain(0..n).chain([tail]).collect();
        for pair in chain.windows(2) {
            if let [p, q] = *pair {
                next[p] = q;
                prev[q] = p;
            }
        }

        // Unknown operations with equal inputs, ordered by (call, index): of those
        // pending at once only the first is tried.
        let unknown = |i: usize| ops[i].ret.is_none() && ops[i].output.is_none();
        let twins_before = (0..ops.len())
            .map(|i| {
                if !unknown(i) {
                    return Vec::new();
                }
                (0..ops.len())
                    .filter(|&j| {
                        unknown(j)
                            && ops[j].input == ops[i].input
                            && (ops[j].call.seq, j) < (ops[i].call.seq, i)
                    })
                    .collect()
            })
            .collect();

        Search {
            model,
            ops,
            deadline,
            node_op,
            node_is_call,
            node_seq,
            node_match,
            call_node,
            next,
            prev,
            head,
            tail,
            open: open.into_iter().map(|(_, i)| i).collect(),
            twins_before,
            best: None,
        }
    }

    /// Unlinks a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.node_match[call]);
    }

    /// Relinks what [`lift`](Self::lift) unlinked, in reverse order.
    fn unlift(&mut self, call: usize) {
        self.relink(self.node_match[call]);
        self.relink(call);
    }

    fn unlink(&mut self, node: usize) {
        let (p, q) = (self.prev[node], self.next[node]);
        self.next[p] = q;
        self.prev[q] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, q) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[q] = node;
    }

    fn run(&mut self) -> Outcome {
        let ops = self.ops;
        let returned: Vec<bool> = ops.iter().map(|op| op.ret.is_some()).collect();
        let mut unplaced = returned.iter().filter(|&&r| r).count();
        // The linearized operations: those that returned, and the optional ones
        // (no return: they may be left out).
        let mut known = Bitset::new(ops.len());
        let mut optional = Bitset::new(ops.len());
        let mut order: Vec<usize> = Vec::new();
        let mut state = self.model.init();
        let mut stack: Vec<Frame<M::State>> = Vec::new();
        // The memo: per (known, state), the optional sets reached with them.
        let mut seen: HashMap<(Bitset, M::State), Vec<Bitset>> = HashMap::new();
        let mut at = Cursor::Returned(self.next[self.head]);
        // Starting one short of a look at the clock: a deadline already passed
        // is noticed at once.
        let mut steps = CLOCK_EVERY - 1;
        loop {
            if unplaced == 0 {
                return Outcome::Linearizable;
            }
            steps = steps.wrapping_add(1);
            if steps.is_multiple_of(CLOCK_EVERY)
                && self.deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Outcome::Timeout;
            }
            // The operation to try at this cursor, or where to move it.
            let op = match at {
                Cursor::Returned(node) if node == self.tail || !self.node_is_call[node] => {
                    // The first return still in the list: every call that may go
                    // next is before it.
                    at = Cursor::Open {
                        pos: 0,
                        boundary: node,
                    };
                    continue;
                }
                Cursor::Returned(node) => self.node_op[node],
                Cursor::Open { pos, boundary } => {
                    let Some(&op) = self
                        .open
                        .get(pos)
                        .filter(|&&op| ops[op].call.seq <= self.node_seq[boundary])
                    else {
                        // Nothing fits here: backtrack.
                        if self
                            .best
                            .as_ref()
                            .is_none_or(|(b, _)| order.len() > b.len())
                        {
                            let stuck = (boundary != self.tail).then(|| self.node_op[boundary]);
                            self.best = Some((order.clone(), stuck));
                        }
                        let Some(frame) = stack.pop() else {
                            return Outcome::NotLinearizable;
                        };
                        order.pop();
                        state = frame.state;
                        at = match frame.at {
                            Cursor::Returned(node) => {
                                known.set(frame.op, false);
                                unplaced += 1;
                                self.unlift(node);
                                Cursor::Returned(self.next[node])
                            }
                            Cursor::Open { pos, boundary } => {
                                optional.set(frame.op, false);
                                Cursor::Open {
                                    pos: pos + 1,
                                    boundary,
                                }
                            }
                        };
                        continue;
                    };
                    if optional.get(op) || self.has_pending_twin(op, &optional) {
                        at = Cursor::Open {
                            pos: pos + 1,
                            boundary,
                        };
                        continue;
                    }
                    op
                }
            };
            let (next_state, output) = self.model.step(&state, &ops[op].input);
            if ops[op].output.as_ref().is_none_or(|o| *o == output) {
                let set = if returned[op] {
                    &mut known
                } else {
                    &mut optional
                };
                set.set(op, true);
                if first_visit(&mut seen, &known, &optional, &next_state) {
                    stack.push(Frame {
                        op,
                        at,
                        state: std::mem::replace(&mut state, next_state),
                    });
                    order.push(op);
                    if returned[op] {
                        unplaced -= 1;
                        self.lift(self.call_node[op]);
                    }
                    at = Cursor::Returned(self.next[self.head]);
                    continue;
                }
                let set = if returned[op] {
                    &mut known
                } else {
                    &mut optional
                };
                set.set(op, false);
            }
            at = match at {
                Cursor::Returned(node) => Cursor::Returned(self.next[node]),
                Cursor::Open { pos, boundary } => Cursor::Open {
                    pos: pos + 1,
                    boundary,
                },
            };
        }
    }

    /// Whether an unknown operation with the same input as `op`, called before it,
    /// is still pending: then trying `op` would only repeat trying that one.
    fn has_pending_twin(&self, op: usize, optional: &Bitset) -> bool {
        self.twins_before
            .get(op)
            .is_some_and(|twins| twins.iter().any(|&j| !optional.get(j)))
    }

    /// Describes the deepest point the search reached.
    fn explain(&self) -> Explanation<M::Input, M::Output> {
        let (order, stuck) = self.best.clone().unwrap_or_default();
        let mut state = self.model.init();
        let mut placed = vec![false; self.ops.len()];
        for &op in &order {
            state = self.model.step(&state, &self.ops[op].input).0;
            placed[op] = true;
        }
        // Everything called before the stuck operation's return was pending then.
        let horizon = stuck
            .and_then(|op| self.ops[op].ret)
            .map_or(u64::MAX, |ret| ret.seq);
        let pending = (0..self.ops.len())
            .filter(|&op| !placed[op] && Some(op) != stuck && self.ops[op].call.seq < horizon)
            .map(|op| self.ops[op].clone())
            .collect();
        Explanation {
            linearized: order.iter().map(|&op| self.ops[op].clone()).collect(),
            state: self.model.describe(&state),
            stuck: stuck.map(|op| self.ops[op].clone()),
            pending,
        }
    }
}
