//! A simulated key-value store and its clients, recording linearizable histories.
//!
//! Each step picks a client: an idle one invokes an operation, a pending one either
//! takes effect (its linearization point, applied to the store) or completes. Some
//! operations fail before taking effect and some end unknown, either after taking
//! effect, or before it and then take effect later (at a random step) or never.
//! Every history it records is linearizable by construction.

use std::collections::HashMap;

use sealkv_linearizability::{History, Input, KvModel, Model, OpId, Output, Recorder};

/// Where the simulation's random choices come from.
pub trait Choices {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64;

    /// True with probability `percent`%.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// SplitMix64: a small deterministic generator, so a seed names a history.
pub struct SplitMix(pub u64);

impl Choices for SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Choices read from a byte script (0 once it runs out), so that proptest can
/// shrink a history by shrinking its script.
pub struct Script<'a>(pub &'a [u8]);

impl Choices for Script<'_> {
    fn below(&mut self, n: u64) -> u64 {
        match self.0.split_first() {
            Some((&byte, rest)) => {
                self.0 = rest;
                u64::from(byte) % n
            }
            None => 0,
        }
    }
}

/// What to simulate.
pub struct Sim {
    pub clients: u64,
    pub keys: Vec<String>,
    pub ops: usize,
    /// Values SET and SET NX write (some integers, so INCR both works and fails).
    pub values: Vec<Vec<u8>>,
    /// Chance in percent that an operation fails before taking effect.
    pub fail_percent: u64,
    /// Chance in percent that an operation ends unknown.
    pub unknown_percent: u64,
    /// Chance in percent that a step takes a floating unknown write into effect.
    pub late_percent: u64,
}

impl Sim {
    /// The "10 clients, 5 keys, a few percent unknown" workload.
    pub fn busy(ops: usize) -> Self {
        Sim {
            clients: 10,
            keys: (0..5).map(|k| format!("k{k}")).collect(),
            ops,
            values: ["1", "7", "a", "b", "c", "d", "e", "f"]
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect(),
            fail_percent: 1,
            unknown_percent: 3,
            late_percent: 2,
        }
    }

    /// Runs the simulation, recording into a fresh recorder.
    pub fn run(&self, rng: &mut impl Choices) -> History {
        let rec = Recorder::new();
        let mut store: HashMap<&str, Option<Vec<u8>>> = HashMap::new();
        let mut pending: Vec<Option<Pending<'_>>> = (0..self.clients).map(|_| None).collect();
        // Unknown operations that have not taken effect yet and may later.
        let mut floating: Vec<(&str, Input)> = Vec::new();
        let mut invoked = 0;
        while invoked < self.ops || pending.iter().any(Option::is_some) {
            if !floating.is_empty() && rng.percent(self.late_percent) {
                let i = pick(rng, floating.len());
                let (key, input) = floating.swap_remove(i);
                apply(&mut store, key, &input);
            }
            // Only clients that can act: a pending one, or an idle one while
            // operations are left to invoke.
            let active: Vec<usize> = (0..pending.len())
                .filter(|&c| pending[c].is_some() || invoked < self.ops)
                .collect();
            let client = active[pick(rng, active.len())];
            let slot = &mut pending[client];
            match slot.take() {
                None => {
                    let key = self.keys[pick(rng, self.keys.len())].as_str();
                    let input = self.input(rng);
                    let id = rec.invoke(client as u64, key, input.clone());
                    invoked += 1;
                    *slot = Some(Pending {
                        id,
                        key,
                        input,
                        output: None,
                    });
                }
                Some(mut op) => match op.output.take() {
                    None => {
                        if rng.percent(self.fail_percent) {
                            rec.fail(op.id);
                        } else if rng.percent(self.unknown_percent / 2) {
                            rec.unknown(op.id);
                            if rng.percent(50) {
                                floating.push((op.key, op.input));
                            }
                        } else {
                            op.output = Some(apply(&mut store, op.key, &op.input));
                            *slot = Some(op);
                        }
                    }
                    Some(output) => {
                        if rng.percent(self.unknown_percent / 2 + self.unknown_percent % 2) {
                            rec.unknown(op.id);
                        } else {
                            rec.ok(op.id, output);
                        }
                    }
                },
            }
        }
        rec.history()
            .expect("the simulation records well-formed histories")
    }

    fn input(&self, rng: &mut impl Choices) -> Input {
        match rng.below(10) {
            0..=3 => Input::Get,
            4..=5 => Input::Set(self.values[pick(rng, self.values.len())].clone()),
            6 => Input::SetNx(self.values[pick(rng, self.values.len())].clone()),
            _ => Input::Incr,
        }
    }
}

struct Pending<'a> {
    id: OpId,
    key: &'a str,
    input: Input,
    /// Set once the operation took effect.
    output: Option<Output>,
}

fn pick(rng: &mut impl Choices, len: usize) -> usize {
    rng.below(len as u64) as usize
}

fn apply<'a>(store: &mut HashMap<&'a str, Option<Vec<u8>>>, key: &'a str, input: &Input) -> Output {
    let state = store.entry(key).or_insert(None);
    let (next, output) = KvModel.step(state, input);
    *state = next;
    output
}
