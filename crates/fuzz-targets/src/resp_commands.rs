//! The `resp_commands` target: a client's bytes through the codec and the command
//! table, against an in-memory backend, as one connection runs them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use redis_protocol::tokio_util::codec::Encoder as _;
use sealkv_kv::{Command, KvRequest, PutCondition, Reply, UserError};
use sealkv_node::resp::{
    ApiError, Backend, Clock, CommandCodec, Config, Frame, InfoSnapshot, Limits, Protocol,
    ReadConsistency, ValueRead,
};

/// The fixed wall clock of the server and the backend: 2023-11-14T22:13:20Z.
const NOW_MS: u64 = 1_700_000_000_000;

/// The reserved keyspace the state machine refuses writes to.
const RESERVED: &[u8] = b"!encryption|";

/// A key's value and absolute expiry (0: none).
type Row = (Vec<u8>, u64);

/// A backend that applies writes to a map as the state machine would (conditions,
/// integer parsing and overflow, expiry against the request's clock), and checks
/// what the RESP layer must guarantee of every request it proposes.
#[derive(Default)]
struct MemoryBackend {
    rows: Mutex<BTreeMap<Vec<u8>, Row>>,
}

fn live(rows: &BTreeMap<Vec<u8>, Row>, key: &[u8], now: u64) -> Option<Row> {
    rows.get(key)
        .filter(|(_, expire)| *expire == 0 || *expire > now)
        .cloned()
}

fn apply(rows: &mut BTreeMap<Vec<u8>, Row>, now: u64, command: Command) -> Reply {
    let reserved = match &command {
        Command::Put { key, .. } | Command::IncrBy { key, .. } | Command::Expire { key, .. } => {
            key.starts_with(RESERVED)
        }
        Command::Delete { keys } => keys.iter().any(|k| k.starts_with(RESERVED)),
        Command::Maintain(m) => {
            panic!("the RESP layer proposed a maintenance command: {m:?}")
        }
    };
    if reserved {
        return Reply::Error(UserError::ReservedKey);
    }
    match command {
        Command::Put {
            key,
            value,
            expire_at_ms,
            condition,
        } => {
            let exists = live(rows, &key, now).is_some();
            let applies = match condition {
                PutCondition::Always => true,
                PutCondition::IfAbsent => !exists,
                PutCondition::IfPresent => exists,
            };
            if !applies {
                return Reply::Nil;
            }
            rows.insert(key, (value, expire_at_ms));
            Reply::Ok
        }
        Command::Delete { keys } => {
            let mut count = 0;
            for key in keys {
                if live(rows, &key, now).is_some() {
                    count += 1;
                }
                rows.remove(&key);
            }
            Reply::Int(count)
        }
        Command::IncrBy { key, delta } => {
            let (current, expire) = live(rows, &key, now).unwrap_or((b"0".to_vec(), 0));
            let Some(n) = std::str::from_utf8(&current)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                return Reply::Error(UserError::NotAnInteger);
            };
            let Some(n) = n.checked_add(delta) else {
                return Reply::Error(UserError::Overflow);
            };
            rows.insert(key, (n.to_string().into_bytes(), expire));
            Reply::Int(n)
        }
        Command::Expire { key, expire_at_ms } => {
            let Some((value, _)) = live(rows, &key, now) else {
                return Reply::Int(0);
            };
            if expire_at_ms <= now {
                rows.remove(&key);
            } else {
                rows.insert(key, (value, expire_at_ms));
            }
            Reply::Int(1)
        }
        Command::Maintain(_) => Reply::Ok,
    }
}

impl MemoryBackend {
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Row>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemoryBackend {
    async fn write(&self, request: KvRequest) -> Result<Vec<Reply>, ApiError> {
        assert_eq!(
            request.issued_at_ms, NOW_MS,
            "a write is stamped with the server's clock"
        );
        assert!(!request.commands.is_empty(), "a write with no command");
        let entry = request.to_entry().expect("a proposed request encodes");
        let (&opcode, payload) = entry.split_first().expect("an entry has an opcode");
        let decoded = KvRequest::decode(opcode, payload).expect("and decodes");
        assert_eq!(decoded, request, "a proposed request round-trips");
        let mut rows = self.rows();
        Ok(request
            .commands
            .into_iter()
            .map(|c| apply(&mut rows, NOW_MS, c))
            .collect())
    }

    async fn read(
        &self,
        keys: Vec<Vec<u8>>,
        _consistency: ReadConsistency,
    ) -> Result<Vec<Option<ValueRead>>, ApiError> {
        let rows = self.rows();
        Ok(keys
            .iter()
            .map(|k| {
                live(&rows, k, NOW_MS).map(|(value, expire_at_ms)| ValueRead {
                    value,
                    expire_at_ms,
                })
            })
            .collect())
    }

    async fn dbsize(&self, _consistency: ReadConsistency) -> Result<u64, ApiError> {
        let rows = self.rows();
        Ok(rows
            .keys()
            .filter(|k| live(&rows, k, NOW_MS).is_some())
            .count() as u64)
    }

    async fn info(&self) -> InfoSnapshot {
        InfoSnapshot {
            node_id: 1,
            leader_id: Some(1),
            leader_addr: Some("127.0.0.1:6379".to_string()),
            ..InfoSnapshot::default()
        }
    }
}

thread_local! {
    /// One runtime per fuzzing thread: the command table runs backend calls under
    /// `tokio::time::timeout`, which needs the time driver.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("build a current-thread tokio runtime");
}

/// Whether a reply frame survives the wire: simple strings and errors hold no CR or
/// LF, and aggregates nest only replies that do.
fn check_frame(frame: &Frame) {
    match frame {
        Frame::Simple(text) => assert!(
            !text.iter().any(|b| *b == b'\r' || *b == b'\n'),
            "simple string with a line break: {frame:?}"
        ),
        Frame::Error(text) => assert!(
            !text.contains(['\r', '\n']),
            "error with a line break: {frame:?}"
        ),
        Frame::Array(items) | Frame::Set(items) => items.iter().for_each(check_frame),
        Frame::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            check_frame(k);
            check_frame(v);
        }),
        Frame::Int(_) | Frame::Bulk(_) | Frame::Null | Frame::Verbatim(_) => {}
    }
}

/// Encodes `frame` as the connection would in `protocol`, and checks that
/// redis-protocol's decoder for that protocol reads back exactly the frame the
/// reply table maps it to, with nothing after it.
fn check_wire(frame: &Frame, protocol: Protocol, limits: Limits) {
    let mut encoder = CommandCodec::new(limits);
    encoder.set_protocol(protocol);
    let mut wire = redis_protocol::bytes::BytesMut::new();
    encoder
        .encode(frame.clone(), &mut wire)
        .expect("a reply encodes");
    match protocol {
        Protocol::Resp2 => {
            let decoded = redis_protocol::resp2::decode::decode_bytes_mut(&mut wire)
                .expect("an encoded reply decodes")
                .expect("an encoded reply is complete");
            assert_eq!(
                decoded.0,
                frame.clone().into_resp2(),
                "a RESP2 reply changed on the wire"
            );
        }
        Protocol::Resp3 => {
            let decoded = redis_protocol::resp3::decode::complete::decode_bytes_mut(&mut wire)
                .expect("an encoded reply decodes")
                .expect("an encoded reply is complete");
            assert_eq!(
                decoded.0,
                frame.clone().into_resp3(),
                "a RESP3 reply changed on the wire"
            );
        }
    }
    assert!(
        wire.is_empty(),
        "the encoded {protocol:?} reply {frame:?} has trailing bytes {wire:?}"
    );
}

/// See [`resp_commands`](fn@crate::resp_commands).
pub fn run(data: &[u8]) {
    let limits = Limits {
        max_bulk_len: 1024,
        max_args: 64,
        max_command_len: 8192,
    };
    let config = Config {
        limits,
        clock: Clock::from_fn(|| NOW_MS),
        ..Config::default()
    };
    let backend = Arc::new(MemoryBackend::default());
    let replies =
        RUNTIME.with(|rt| rt.block_on(sealkv_node::resp::run_commands(backend, config, data)));
    let (commands, error) = crate::decode_commands(data, data.len(), limits);
    let quit = commands.iter().position(|args| {
        args.first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"quit"))
    });
    let expected = match quit {
        Some(at) => at + 1,
        None => commands.len() + usize::from(error.is_some()),
    };
    assert_eq!(replies.len(), expected, "one reply per command");
    // Each reply goes through the connection's own encoder, in the protocol the
    // connection spoke when it answered, and back through redis-protocol's decoder
    // for that protocol, as a client would read it.
    for (protocol, frame) in &replies {
        check_frame(frame);
        check_wire(frame, *protocol, limits);
    }
}
