//! The thread-safe recorder that client threads write their operations to.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::history::{Event, EventKind, History, Input, OpId, Output, Result};

/// Records a history from many client threads at once.
///
/// A client calls [`invoke`](Recorder::invoke) just before it sends an operation and
/// exactly one of [`ok`](Recorder::ok), [`fail`](Recorder::fail) or
/// [`unknown`](Recorder::unknown) once it knows the outcome. Cloning is cheap and
/// every clone records into the same history.
///
/// Each event takes its sequence number and its timestamp (a monotonic clock,
/// nanoseconds since the recorder was created) under one lock, so the sequence
/// order is a total order consistent with real time: an operation that completed
/// before another was invoked has a smaller completion seq than the other's
/// invocation seq.
///
/// The recorder does not refuse misuse (a client with two pending operations, an
/// operation completed twice); it records it, and [`history`](Recorder::history)
/// reports it as a [`HistoryError`](crate::HistoryError).
#[derive(Clone, Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    start: Instant,
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    next_op: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            shared: Arc::new(Shared {
                start: Instant::now(),
                log: Mutex::new(Log::default()),
            }),
        }
    }

    /// Records that `client` sends `input` on `key`; returns the id to complete.
    pub fn invoke(&self, client: u64, key: &str, input: Input) -> OpId {
        let mut log = self.lock();
        let op = OpId(log.next_op);
        log.next_op += 1;
        self.push(
            &mut log,
            op,
            EventKind::Invoke {
                client,
                key: key.to_owned(),
                input,
            },
        );
        op
    }

    /// Records that `op` completed with `output`.
    pub fn ok(&self, op: OpId, output: Output) {
        self.complete(op, EventKind::Ok { output });
    }

    /// Records that `op` definitely did not take effect (the server refused it).
    pub fn fail(&self, op: OpId) {
        self.complete(op, EventKind::Fail);
    }

    /// Records that the outcome of `op` is not known (timeout, dropped connection):
    /// it may take effect at any time after its invocation, or never.
    pub fn unknown(&self, op: OpId) {
        self.complete(op, EventKind::Unknown);
    }

    /// The history recorded so far, validated. Operations still pending are
    /// included and checked as unknown.
    pub fn history(&self) -> Result<History> {
        let events = self.lock().events.clone();
        History::new(events)
    }

    fn complete(&self, op: OpId, kind: EventKind) {
        let mut log = self.lock();
        self.push(&mut log, op, kind);
    }

    /// Appends an event, reading the clock while the lock is held so that time
    /// never decreases along the sequence.
    fn push(&self, log: &mut Log, op: OpId, kind: EventKind) {
        let elapsed = self.shared.start.elapsed().as_nanos();
        let event = Event {
            seq: log.events.len() as u64,
            time_ns: u64::try_from(elapsed).unwrap_or(u64::MAX),
            op,
            kind,
        };
        log.events.push(event);
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A client thread that panicked cannot have left the log half-written: each
        // critical section is one push. Keep recording.
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
