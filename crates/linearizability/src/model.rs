//! The sequential specification the checker compares histories with.

use std::fmt::Debug;
use std::hash::Hash;

use crate::bytes::Quoted;
use crate::history::{Input, Output};

/// A deterministic sequential specification of one object (here: one key).
///
/// The checker looks for an order of the operations, consistent with real time, in
/// which applying each operation's input with [`step`](Model::step), starting from
/// [`init`](Model::init), gives back every output the history recorded.
pub trait Model {
    /// The object's state. The checker memoizes states, hence `Eq + Hash`.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input. `PartialEq` lets the checker treat unknown operations
    /// with equal inputs as interchangeable.
    type Input: Clone + PartialEq + Debug;
    /// An operation's output.
    type Output: Clone + PartialEq + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state and the output the operation
    /// returns.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Whether `input` never changes the state. The checker drops unknown
    /// operations of this kind: they constrain nothing. The default is `false`,
    /// which is always correct.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }

    /// The state as text, for explanations.
    fn describe(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}

/// The model of one Redis string key: `GET`, `SET`, `SET NX` and `INCR`.
///
/// The state is the key's value, `None` when it does not exist (the initial state).
/// `INCR` parses the value as Redis does (an optional `-` and decimal digits, no `+`,
/// no leading zeros, no spaces, within `i64`; a missing key counts as 0), stores
/// and returns the value plus one, or returns [`Output::NotAnInteger`] and changes
/// nothing if the value is not such an integer or the sum would overflow.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Vec<u8>>;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &Input) -> (Self::State, Output) {
        match input {
            Input::Get => (state.clone(), Output::Value(state.clone())),
            Input::Set(value) => (Some(value.clone()), Output::Ok),
            Input::SetNx(value) => match state {
                None => (Some(value.clone()), Output::Bool(true)),
                Some(_) => (state.clone(), Output::Bool(false)),
            },
            Input::Incr => {
                let current = match state {
                    None => Some(0),
                    Some(value) => parse_int(value),
                };
                match current.and_then(|n| n.checked_add(1)) {
                    Some(n) => (Some(n.to_string().into_bytes()), Output::Int(n)),
                    None => (state.clone(), Output::NotAnInteger),
                }
            }
        }
    }

    fn is_read_only(&self, input: &Input) -> bool {
        matches!(input, Input::Get)
    }

    fn describe(&self, state: &Self::State) -> String {
        match state {
            Some(value) => Quoted(value).to_string(),
            None => "nil".to_owned(),
        }
    }
}

/// Parses a value as Redis (and sealkv's state machine) does for `INCR`.
fn parse_int(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn step(state: Option<&str>, input: Input) -> (Option<String>, Output) {
        let state = state.map(|s| s.as_bytes().to_vec());
        let (next, out) = KvModel.step(&state, &input);
        (next.map(|v| String::from_utf8(v).unwrap()), out)
    }

    #[test]
    fn steps() {
        let v = |s: &str| s.as_bytes().to_vec();
        let cases: Vec<(Option<&str>, Input, Option<&str>, Output)> = vec![
            (None, Input::Get, None, Output::Value(None)),
            (
                Some("a"),
                Input::Get,
                Some("a"),
                Output::Value(Some(v("a"))),
            ),
            (None, Input::Set(v("a")), Some("a"), Output::Ok),
            (Some("b"), Input::Set(v("a")), Some("a"), Output::Ok),
            (None, Input::SetNx(v("a")), Some("a"), Output::Bool(true)),
            (
                Some("b"),
                Input::SetNx(v("a")),
                Some("b"),
                Output::Bool(false),
            ),
            (None, Input::Incr, Some("1"), Output::Int(1)),
            (Some("41"), Input::Incr, Some("42"), Output::Int(42)),
            (Some("-1"), Input::Incr, Some("0"), Output::Int(0)),
            (Some("-5"), Input::Incr, Some("-4"), Output::Int(-4)),
            (Some("a"), Input::Incr, Some("a"), Output::NotAnInteger),
            (Some(""), Input::Incr, Some(""), Output::NotAnInteger),
            (Some("+1"), Input::Incr, Some("+1"), Output::NotAnInteger),
            (Some("01"), Input::Incr, Some("01"), Output::NotAnInteger),
            (Some("-0"), Input::Incr, Some("-0"), Output::NotAnInteger),
            (Some(" 1"), Input::Incr, Some(" 1"), Output::NotAnInteger),
            (
                Some("9223372036854775807"),
                Input::Incr,
                Some("9223372036854775807"),
                Output::NotAnInteger,
            ),
            (
                Some("-9223372036854775808"),
                Input::Incr,
                Some("-9223372036854775807"),
                Output::Int(-9223372036854775807),
            ),
        ];
        for (state, input, next, out) in cases {
            let got = step(state, input.clone());
            assert_eq!(got, (next.map(str::to_owned), out), "{state:?} {input}");
        }
    }

    #[test]
    fn incr_on_non_utf8_is_not_an_integer() {
        let state = Some(vec![0xff]);
        assert_eq!(
            KvModel.step(&state, &Input::Incr),
            (state.clone(), Output::NotAnInteger)
        );
    }
}
