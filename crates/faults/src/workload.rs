//! Redis clients that record a Jepsen-style history of every operation.
//!
//! Each operation is recorded as invoked before its command is sent, then as one of:
//!
//! * **ok** with what the node answered;
//! * **fail** when the reply says the command was not applied: `NOTLEADER` (refused
//!   before proposing), `TRYAGAIN` (no leader, busy, not ready, or a proposal a new
//!   leader overwrote), `HALTED`;
//! * **unknown** for anything else: a timeout, a dropped connection, `TIMEOUT`, an
//!   internal error. The write may have applied or may still apply. The client then
//!   takes a new client id, as a Jepsen process does after an indeterminate
//!   operation, so each client id has at most one operation pending.
//!
//! Write values are unique (`<client>-<seq>`), so a read names the write it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sealkv_linearizability::{Input, Output, Recorder};

/// How long a client waits for a reply before calling the outcome unknown. Longer
/// than a node's own request timeout would make a paused node stall a client for
/// that long; shorter makes more outcomes unknown. Either is correct.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(4);

/// Hands out client ids, unique within a test.
#[derive(Debug, Default, Clone)]
pub struct ClientIds(Arc<AtomicU64>);

impl ClientIds {
    /// The next id.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// What became of one operation, for the caller's own bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, with this result.
    Ok(Output),
    /// Not applied.
    Fail(String),
    /// May or may not have applied.
    Unknown(String),
}

/// Counts of what the operations of a run came to.
#[derive(Debug, Default)]
pub struct Tally {
    /// Operations invoked.
    pub ops: AtomicU64,
    /// Operations answered ok.
    pub ok: AtomicU64,
    /// Operations that failed (not applied).
    pub fail: AtomicU64,
    /// Operations whose outcome is unknown.
    pub unknown: AtomicU64,
    /// Writes (SET, SET NX, INCR) answered ok.
    pub acked_writes: AtomicU64,
    /// Replies `HALTED`: a fault run must never see one.
    pub halted: AtomicU64,
    /// The latest failures and unknown outcomes, newest last, for a test that
    /// stalls to show what its clients were told.
    recent: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Tally {
    /// Keeps the last this many failures and unknown outcomes.
    const RECENT: usize = 12;

    fn count(&self, target: &str, input: &Input, outcome: &Outcome) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        if let Outcome::Fail(why) | Outcome::Unknown(why) = outcome
            && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() == Self::RECENT {
                recent.pop_front();
            }
            let kind = if matches!(outcome, Outcome::Fail(_)) {
                "fail"
            } else {
                "unknown"
            };
            recent.push_back(format!("{target} {input:?}: {kind}: {why}"));
        }
        match outcome {
            Outcome::Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if !matches!(input, Input::Get) {
                    self.acked_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Fail(why) => {
                self.fail.fetch_add(1, Ordering::Relaxed);
                if why.starts_with("HALTED") {
                    self.halted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Unknown(_) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The latest failures and unknown outcomes, one per line.
    pub fn recent(&self) -> String {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// A value of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A client of a cluster's Redis endpoints that records every operation.
pub struct Client {
    id: u64,
    ids: ClientIds,
    endpoints: Vec<String>,
    target: usize,
    conn: Option<redis::Connection>,
    seq: u64,
    recorder: Recorder,
    tally: Arc<Tally>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("target", &self.endpoints.get(self.target))
            .finish()
    }
}

impl Client {
    /// A client of the nodes whose Redis addresses are `endpoints`, starting with
    /// the first.
    pub fn new(
        endpoints: Vec<String>,
        ids: ClientIds,
        recorder: Recorder,
        tally: Arc<Tally>,
    ) -> Client {
        Client {
            id: ids.next(),
            ids,
            endpoints,
            target: 0,
            conn: None,
            seq: 0,
            recorder,
            tally,
        }
    }

    /// The client's current id in the history.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A value no other write of the run uses.
    pub fn unique_value(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("{}-{}", self.id, self.seq).into_bytes()
    }

    /// `GET key`.
    pub fn get(&mut self, key: &str) -> Outcome {
        self.op(key, Input::Get)
    }

    /// `SET key value`.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Outcome {
        self.op(key, Input::Set(value))
    }

    /// `SET key value NX`.
    pub fn set_nx(&mut self, key: &str, value: Vec<u8>) -> Outcome {
        self.op(key, Input::SetNx(value))
    }

    /// `INCR key`.
    pub fn incr(&mut self, key: &str) -> Outcome {
        self.op(key, Input::Incr)
    }

    /// Runs one operation and records it. When no node accepts a connection, the
    /// operation is not invoked at all and the outcome is a failure.
    pub fn op(&mut self, key: &str, input: Input) -> Outcome {
        let Some(mut conn) = self.connect() else {
            self.next_target();
            return Outcome::Fail("no connection".to_string());
        };
        let target = self.endpoints[self.target].clone();
        let op = self.recorder.invoke(self.id, key, input.clone());
        let outcome = classify(
            &input,
            command(key, &input).query::<redis::Value>(&mut conn),
        );
        match &outcome {
            Outcome::Ok(out) => {
                self.recorder.ok(op, out.clone());
                self.conn = Some(conn);
            }
            Outcome::Fail(why) => {
                self.recorder.fail(op);
                self.conn = Some(conn);
                self.follow(why);
            }
            Outcome::Unknown(_) => {
                self.recorder.unknown(op);
                self.id = self.ids.next();
                self.next_target();
            }
        }
        self.tally.count(&target, &input, &outcome);
        outcome
    }

    /// The open connection, or a new one to the current target.
    fn connect(&mut self) -> Option<redis::Connection> {
        if let Some(conn) = self.conn.take() {
            return Some(conn);
        }
        let addr = &self.endpoints[self.target];
        let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT)).ok()?;
        conn.set_write_timeout(Some(REPLY_TIMEOUT)).ok()?;
        Some(conn)
    }

    fn next_target(&mut self) {
        self.target = (self.target + 1) % self.endpoints.len();
        self.conn = None;
    }

    /// After a refusal: go where `NOTLEADER` points, or else to the next node, as a
    /// cluster-aware client does. A client that kept retrying a node cut off from the
    /// rest would be told `TRYAGAIN` for as long as the partition lasts.
    fn follow(&mut self, why: &str) {
        if let Some(addr) = why
            .split_once("the leader is at ")
            .map(|(_, a)| a.trim())
            .and_then(|a| self.endpoints.iter().position(|e| e == a))
        {
            if addr != self.target {
                self.target = addr;
                self.conn = None;
            }
        } else {
            // NOTLEADER without an address, TRYAGAIN (no leader here: this node may
            // be cut off and will say so until it heals), HALTED: try another node.
            self.next_target();
        }
    }
}

fn command(key: &str, input: &Input) -> redis::Cmd {
    match input {
        Input::Get => {
            let mut c = redis::cmd("GET");
            c.arg(key);
            c
        }
        Input::Set(v) => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(v.as_slice());
            c
        }
        Input::SetNx(v) => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(v.as_slice()).arg("NX");
            c
        }
        Input::Incr => {
            let mut c = redis::cmd("INCR");
            c.arg(key);
            c
        }
    }
}

/// What a reply means for the history.
fn classify(input: &Input, reply: redis::RedisResult<redis::Value>) -> Outcome {
    let value = match reply {
        Ok(v) => v,
        Err(e) => return classify_error(input, &e),
    };
    use redis::Value;
    let output = match (input, value) {
        (Input::Get, Value::Nil) => Output::Value(None),
        (Input::Get, Value::BulkString(b)) => Output::Value(Some(b)),
        (Input::Set(_), Value::Okay) => Output::Ok,
        (Input::Set(_), Value::SimpleString(s)) if s == "OK" => Output::Ok,
        (Input::SetNx(_), Value::Okay) => Output::Bool(true),
        (Input::SetNx(_), Value::SimpleString(s)) if s == "OK" => Output::Bool(true),
        (Input::SetNx(_), Value::Nil) => Output::Bool(false),
        (Input::Incr, Value::Int(n)) => Output::Int(n),
        (_, other) => return Outcome::Unknown(format!("unexpected reply {other:?}")),
    };
    Outcome::Ok(output)
}

fn classify_error(input: &Input, e: &redis::RedisError) -> Outcome {
    let text = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    };
    match e.code() {
        Some("NOTLEADER" | "TRYAGAIN" | "HALTED") => Outcome::Fail(text),
        Some("ERR") if matches!(input, Input::Incr) && text.contains("not an integer") => {
            Outcome::Ok(Output::NotAnInteger)
        }
        _ => Outcome::Unknown(text),
    }
}

/// A stop flag shared by workload threads.
#[derive(Debug, Default, Clone)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the threads to finish their current operation and return.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A mix of operations on a few shared keys: GET, SET, SET NX and INCR, each key used
/// either as a register (GET, SET, SET NX) or as a counter (GET, INCR), so that
/// writes of both kinds race on the same key.
///
/// Runs until `stop`, with a random stream seeded by `seed`.
pub fn mixed(
    client: &mut Client,
    registers: &[String],
    counters: &[String],
    stop: &Stop,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.stopped() {
        let outcome = if !counters.is_empty() && (registers.is_empty() || rng.bool()) {
            let key = &counters[rng.usize(..counters.len())];
            if rng.u8(..3) == 0 {
                client.get(key)
            } else {
                client.incr(key)
            }
        } else {
            let key = &registers[rng.usize(..registers.len())];
            match rng.u8(..6) {
                0 | 1 => client.get(key),
                2..=4 => {
                    let v = client.unique_value();
                    client.set(key, v)
                }
                _ => {
                    let v = client.unique_value();
                    client.set_nx(key, v)
                }
            }
        };
        pace(&outcome);
    }
}

/// A short pause after a refusal, so a client does not spin while a cluster elects
/// a leader. This paces the load; no test waits on it.
pub fn pace(outcome: &Outcome) {
    if matches!(outcome, Outcome::Fail(_)) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
