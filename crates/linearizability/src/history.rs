//! Histories: the events a test recorded, their validation, JSON form and summary.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bytes::{self, Quoted};
use crate::checker::{Operation, Stamp};

/// What a client asked for. Every operation touches exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// `GET key`; answered by [`Output::Value`].
    Get,
    /// `SET key value`; answered by [`Output::Ok`].
    Set(#[serde(with = "bytes::vec")] Vec<u8>),
    /// `SET key value NX`; answered by [`Output::Bool`] (`true`: it set the value).
    SetNx(#[serde(with = "bytes::vec")] Vec<u8>),
    /// `INCR key`; answered by [`Output::Int`] or [`Output::NotAnInteger`].
    Incr,
}

/// What the server answered to a completed operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The value a `GET` read; `None` when the key did not exist.
    Value(#[serde(with = "bytes::option")] Option<Vec<u8>>),
    /// A `SET` was acknowledged.
    Ok,
    /// Whether a `SET ... NX` set the value.
    Bool(bool),
    /// The value an `INCR` stored and returned.
    Int(i64),
    /// An `INCR` found a value that is not an integer (or would overflow) and changed
    /// nothing.
    NotAnInteger,
}

impl Input {
    /// Whether `output` is an answer of the kind this input gets (a `GET` is
    /// answered by a value, an `INCR` by an integer or an error, ...).
    pub fn accepts(&self, output: &Output) -> bool {
        matches!(
            (self, output),
            (Input::Get, Output::Value(_))
                | (Input::Set(_), Output::Ok)
                | (Input::SetNx(_), Output::Bool(_))
                | (Input::Incr, Output::Int(_) | Output::NotAnInteger)
        )
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Get => f.write_str("GET"),
            Input::Set(value) => write!(f, "SET {}", Quoted(value)),
            Input::SetNx(value) => write!(f, "SET {} NX", Quoted(value)),
            Input::Incr => f.write_str("INCR"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Value(Some(value)) => write!(f, "{}", Quoted(value)),
            Output::Value(None) => f.write_str("nil"),
            Output::Ok => f.write_str("OK"),
            Output::Bool(set) => write!(f, "{set}"),
            Output::Int(n) => write!(f, "{n}"),
            Output::NotAnInteger => f.write_str("ERR not an integer"),
        }
    }
}

/// Identifies one operation of a history: its invocation and its completion
/// carry the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}", self.0)
    }
}

/// One event of a history.
///
/// In JSON an event is one flat object, for example
/// `{"seq":0,"time_ns":0,"op":0,"type":"invoke","client":1,"key":"x","input":{"set":"a"}}`
/// then `{"seq":1,"time_ns":900,"op":0,"type":"ok","output":"ok"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history's total order; strictly increasing.
    pub seq: u64,
    /// Nanoseconds since the recorder started (monotonic clock); never decreasing.
    pub time_ns: u64,
    /// The operation this event belongs to.
    pub op: OpId,
    /// Invocation or completion.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened at an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A client sent an operation.
    Invoke {
        /// The client (one connection, one thread) that sent it.
        client: u64,
        /// The key it touches.
        key: String,
        /// What it asked for.
        input: Input,
    },
    /// The operation completed with this answer.
    Ok {
        /// The answer.
        output: Output,
    },
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is not known (timeout, dropped connection): the operation may
    /// take effect at any time after its invocation, or never.
    Unknown,
}

/// Errors of this crate: a malformed history, or a history file that could not be
/// read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// Sequence numbers must strictly increase along the history.
    #[error("event seq {seq} does not follow seq {previous}")]
    SeqNotIncreasing {
        /// The offending sequence number.
        seq: u64,
        /// The sequence number of the event before it.
        previous: u64,
    },
    /// Timestamps must not decrease along the history.
    #[error("event seq {seq} has time {time_ns} ns, before the previous event's {previous_ns} ns")]
    TimeWentBack {
        /// The offending event.
        seq: u64,
        /// Its time.
        time_ns: u64,
        /// The time of the event before it.
        previous_ns: u64,
    },
    /// An invocation reused the id of an earlier operation.
    #[error("{op} is invoked twice (seq {seq})")]
    DuplicateOp {
        /// The reused id.
        op: OpId,
        /// The second invocation.
        seq: u64,
    },
    /// A client invoked an operation while its previous one was still pending.
    #[error("client {client} invokes {op} (seq {seq}) while {pending} is pending")]
    ClientBusy {
        /// The client.
        client: u64,
        /// The new operation.
        op: OpId,
        /// The operation still pending.
        pending: OpId,
        /// The invocation of the new operation.
        seq: u64,
    },
    /// A completion names an operation that was never invoked.
    #[error("{op} completes (seq {seq}) but was never invoked")]
    NotInvoked {
        /// The id.
        op: OpId,
        /// The completion.
        seq: u64,
    },
    /// An operation completed more than once.
    #[error("{op} completes a second time (seq {seq})")]
    AlreadyCompleted {
        /// The id.
        op: OpId,
        /// The second completion.
        seq: u64,
    },
    /// An operation completed with an answer of the wrong kind for its input.
    #[error("{op} ({input}) cannot complete with {output} (seq {seq})")]
    OutputMismatch {
        /// The id.
        op: OpId,
        /// What it asked for.
        input: Input,
        /// The answer recorded.
        output: Output,
        /// The completion.
        seq: u64,
    },
    /// The JSON text is not a history.
    #[error("parse history json: {0}")]
    Json(#[from] serde_json::Error),
    /// A history file could not be read or written.
    #[error("{action} history file {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result type of this crate's history functions.
pub type Result<T, E = HistoryError> = std::result::Result<T, E>;

/// A validated history: events in sequence order where every client has at most one
/// pending operation, every completion follows its invocation, every operation
/// completes at most once and every answer fits its input.
///
/// Operations still pending at the end (the test stopped before it recorded their
/// outcome) are allowed and are checked as unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistoryRepr")]
pub struct History {
    events: Vec<Event>,
}

/// The unvalidated JSON shape of a [`History`].
#[derive(Deserialize)]
struct HistoryRepr {
    events: Vec<Event>,
}

impl TryFrom<HistoryRepr> for History {
    type Error = HistoryError;

    fn try_from(repr: HistoryRepr) -> Result<Self> {
        History::new(repr.events)
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End<'a> {
    Pending,
    Ok(&'a Output),
    Fail,
    Unknown,
}

/// An invocation and what became of it, as validation pairs them.
struct Paired<'a> {
    id: OpId,
    client: u64,
    key: &'a str,
    input: &'a Input,
    call: Stamp,
    ret: Option<Stamp>,
    end: End<'a>,
}

impl History {
    /// Validates `events` (in sequence order) as a history.
    pub fn new(events: Vec<Event>) -> Result<Self> {
        pair(&events)?;
        Ok(History { events })
    }

    /// Parses and validates a history from its JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let repr: HistoryRepr = serde_json::from_str(text)?;
        History::new(repr.events)
    }

    /// The history as JSON text, one event per line.
    pub fn to_json(&self) -> Result<String> {
        let mut out = String::from("{\"events\": [\n");
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n");
            }
            out.push_str("  ");
            out.push_str(&serde_json::to_string(event)?);
        }
        out.push_str("\n]}\n");
        Ok(out)
    }

    /// Reads and validates a history from a JSON file.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        History::from_json(&text)
    }

    /// Writes the history to a JSON file (for example when a test fails, so that
    /// the history can be checked again or turned into a fixture).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()?).map_err(|source| HistoryError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
    }

    /// The events, in sequence order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Counts of operations and outcomes, overall and per key.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for op in self.paired() {
            let per_key = summary.per_key.entry(op.key.to_owned()).or_default();
            for counts in [&mut summary.total, per_key] {
                counts.ops += 1;
                match op.end {
                    End::Pending => counts.pending += 1,
                    End::Ok(_) => counts.ok += 1,
                    End::Fail => counts.fail += 1,
                    End::Unknown => counts.unknown += 1,
                }
            }
        }
        summary
    }

    /// The operations the checker sees, split by key, each key's in invocation
    /// order: failed operations are left out (they never happened); unknown and
    /// still pending ones have neither return nor output.
    pub fn operations_by_key(&self) -> BTreeMap<String, Vec<Operation<Input, Output>>> {
        let mut by_key: BTreeMap<String, Vec<Operation<Input, Output>>> = BTreeMap::new();
        for op in self.paired() {
            let output = match op.end {
                End::Fail => continue,
                End::Ok(output) => Some(output.clone()),
                End::Pending | End::Unknown => None,
            };
            let ret = if output.is_some() { op.ret } else { None };
            by_key
                .entry(op.key.to_owned())
                .or_default()
                .push(Operation {
                    id: op.id,
                    client: op.client,
                    input: op.input.clone(),
                    output,
                    call: op.call,
                    ret,
                });
        }
        by_key
    }

    fn paired(&self) -> Vec<Paired<'_>> {
        // `new` validated the events, so pairing them again cannot fail; an empty
        // list is the harmless answer should it ever.
        pair(&self.events).unwrap_or_default()
    }
}

/// Validates `events` and pairs each invocation with its completion, in invocation
/// order.
fn pair(events: &[Event]) -> Result<Vec<Paired<'_>>> {
    let mut ops: Vec<Paired<'_>> = Vec::new();
    let mut index: HashMap<OpId, usize> = HashMap::new();
    let mut busy: HashMap<u64, OpId> = HashMap::new();
    let mut previous: Option<&Event> = None;
    for event in events {
        let seq = event.seq;
        if let Some(prev) = previous {
            if seq <= prev.seq {
                return Err(HistoryError::SeqNotIncreasing {
                    seq,
                    previous: prev.seq,
                });
            }
            if event.time_ns < prev.time_ns {
                return Err(HistoryError::TimeWentBack {
                    seq,
                    time_ns: event.time_ns,
                    previous_ns: prev.time_ns,
                });
            }
        }
        previous = Some(event);
        let stamp = Stamp {
            seq,
            time_ns: event.time_ns,
        };
        let op = event.op;
        let end = match &event.kind {
            EventKind::Invoke { client, key, input } => {
                if index.contains_key(&op) {
                    return Err(HistoryError::DuplicateOp { op, seq });
                }
                if let Some(&pending) = busy.get(client) {
                    return Err(HistoryError::ClientBusy {
                        client: *client,
                        op,
                        pending,
                        seq,
                    });
                }
                busy.insert(*client, op);
                index.insert(op, ops.len());
                ops.push(Paired {
                    id: op,
                    client: *client,
                    key,
                    input,
                    call: stamp,
                    ret: None,
                    end: End::Pending,
                });
                continue;
            }
            EventKind::Ok { output } => End::Ok(output),
            EventKind::Fail => End::Fail,
            EventKind::Unknown => End::Unknown,
        };
        let Some(paired) = index.get(&op).and_then(|&i| ops.get_mut(i)) else {
            return Err(HistoryError::NotInvoked { op, seq });
        };
        if paired.end != End::Pending {
            return Err(HistoryError::AlreadyCompleted { op, seq });
        }
        if let End::Ok(output) = end
            && !paired.input.accepts(output)
        {
            return Err(HistoryError::OutputMismatch {
                op,
                input: paired.input.clone(),
                output: output.clone(),
                seq,
            });
        }
        paired.end = end;
        paired.ret = Some(stamp);
        busy.remove(&paired.client);
    }
    Ok(ops)
}

/// Counts of operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations invoked.
    pub ops: usize,
    /// Completed with an answer.
    pub ok: usize,
    /// Definitely did not take effect.
    pub fail: usize,
    /// Outcome unknown.
    pub unknown: usize,
    /// Never completed (checked as unknown).
    pub pending: usize,
}

/// What a history holds, overall and per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// All keys together.
    pub total: Counts,
    /// Each key.
    pub per_key: BTreeMap<String, Counts>,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops: {} ok, {} fail, {} unknown, {} pending",
            self.ops, self.ok, self.fail, self.unknown, self.pending
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.total)?;
        for (key, counts) in &self.per_key {
            write!(f, "\n  key {:?}: {counts}", key)?;
        }
        Ok(())
    }
}
