//! Jepsen-style history recording and a linearizability checker for sealkv's
//! fault-injection tests.
//!
//! # Recording
//!
//! Client threads share a [`Recorder`]. A client calls [`Recorder::invoke`] just
//! before it sends an operation and, once it knows the outcome, exactly one of
//! [`Recorder::ok`] (with the server's answer), [`Recorder::fail`] (the operation
//! definitely did not take effect, e.g. the server refused it with `NOTLEADER`) or
//! [`Recorder::unknown`] (a timeout or a dropped connection). Events get a sequence
//! number and a monotonic timestamp under one lock, so they are totally ordered
//! consistently with real time. [`Recorder::history`] validates the events into a
//! [`History`], which is JSON: a failing test saves it, and fixtures are JSON files.
//!
//! # The model
//!
//! Every operation touches one key, and each key is a Redis string ([`KvModel`]):
//! its state is `Option<Vec<u8>>`, initially `None`. `GET` returns the state, `SET`
//! replaces it, `SET NX` sets it only when it is `None` and says whether it did,
//! `INCR` parses it as a decimal `i64` (`None` is 0), stores and returns the value
//! plus one, or answers [`Output::NotAnInteger`] and changes nothing. The [`Model`]
//! trait lets another deterministic model be checked with [`check_operations`].
//!
//! # Unknown outcomes
//!
//! A failed operation is dropped: it never happened. An unknown one may have taken
//! effect at any moment after its invocation, even long after the client gave up on
//! it, or never; its answer was not seen, so any answer matches. The checker gives it
//! a return time of +infinity: it never forces anything, and a history is
//! linearizable if the operations that returned, plus any subset of the unknown ones,
//! have a linearization. An operation still pending when the history ends counts as
//! unknown.
//!
//! # The algorithm
//!
//! Operations on different keys commute, so linearizability is checked per key
//! (P-compositionality) and a history is linearizable when every key is. Each key is
//! searched with the algorithm of Wing and Gong as improved by Lowe (WGL), the one
//! porcupine implements: calls and returns in one doubly linked list in real-time
//! order, an operation lifted out of the list when the model accepts it next, an
//! undo stack to backtrack, and a memo of every (linearized set, state) pair
//! reached. See [`check_operations`] for the details and the two refinements for
//! unknown operations. The search is exponential in the worst case, so [`check`]
//! takes a timeout and a key not decided in time is [`KeyResult::Timeout`], which a
//! test treats as a failure. A key that is not linearizable comes with an
//! [`Explanation`]: the longest linearizable prefix found and the operations that
//! could not be placed after it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sealkv_linearizability::{check, Input, KeyResult, Output, Recorder};
//!
//! let rec = Recorder::new();
//! // Client 1 writes "a"; client 2 reads while the write is in flight.
//! let w = rec.invoke(1, "x", Input::Set(b"a".to_vec()));
//! let r = rec.invoke(2, "x", Input::Get);
//! rec.ok(r, Output::Value(Some(b"a".to_vec())));
//! rec.ok(w, Output::Ok);
//! // Then client 2 reads the old value: the write had already taken effect.
//! let stale = rec.invoke(2, "x", Input::Get);
//! rec.ok(stale, Output::Value(None));
//!
//! let history = rec.history().expect("well-formed");
//! assert_eq!(history.summary().total.ok, 3);
//! let result = check(&history, Duration::from_secs(10));
//! assert!(!result.is_linearizable());
//! let KeyResult::NotLinearizable { explanation, .. } = &result.keys["x"] else {
//!     panic!("expected a violation, got {result}");
//! };
//! assert_eq!(explanation.stuck.as_ref().map(|op| op.id), Some(stale));
//!
//! // The JSON form round-trips.
//! let json = history.to_json().expect("serialisable");
//! assert_eq!(sealkv_linearizability::History::from_json(&json).expect("valid"), history);
//! ```

mod bytes;
mod checker;
mod history;
mod model;
mod recorder;

pub use checker::{
    CheckResult, Explanation, KeyResult, Operation, Stamp, Verdict, check, check_operations,
};
pub use history::{
    Counts, Event, EventKind, History, HistoryError, Input, OpId, Output, Result, Summary,
};
pub use model::{KvModel, Model};
pub use recorder::Recorder;
