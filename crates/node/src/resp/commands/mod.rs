//! The command table and what each command does: argument checks with Redis's
//! error texts, then reads, one [`KvRequest`] or a local answer.
//!
//! This module holds the table, the dispatch and what every command shares (reads,
//! writes, errors); each family's commands live in a submodule.

mod auth;
mod keys;
mod server;
mod strings;

use std::future::Future;

use redis_protocol::bytes::Bytes;
use sealkv_encryption::registry::is_reserved_key;
use sealkv_kv::{Command, KvRequest, Reply};

use self::server::command;
use super::Shared;
use super::args::parse_i64;
use super::backend::{ApiError, Backend, ReadConsistency, ValueRead};
use super::connection::Session;
use super::reply::{self, Frame, array, bulk, error, int, nil, ok, simple};

/// What the connection does after sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Close the connection (`QUIT`).
    Close,
}

/// One command's entry in the table `COMMAND` reports and arity is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity, the name included: `n > 0` means exactly `n` arguments, `n < 0`
    /// at least `-n`.
    pub arity: i64,
    /// Redis command flags.
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: none).
    pub first_key: i64,
    /// Position of the last key argument (-1: the last argument).
    pub last_key: i64,
    /// Step between key arguments.
    pub step: i64,
}

impl Spec {
    const fn new(
        name: &'static str,
        arity: i64,
        flags: &'static [&'static str],
        keys: (i64, i64, i64),
    ) -> Spec {
        Spec {
            name,
            arity,
            flags,
            first_key: keys.0,
            last_key: keys.1,
            step: keys.2,
        }
    }

    fn accepts(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Whether an unauthenticated client may run the command (Redis's `no_auth`).
    fn no_auth(&self) -> bool {
        self.flags.contains(&"no_auth")
    }

    /// The 10-element `COMMAND` entry of Redis 7 (ACL categories, tips, key specs
    /// and subcommands left empty). Flags, categories, tips, key specs and an empty
    /// subcommand list are sets, as in Redis 7 (RESP3 `~`, RESP2 arrays).
    fn frame(&self) -> Frame {
        array(vec![
            bulk(self.name),
            int(self.arity),
            Frame::Set(self.flags.iter().copied().map(simple).collect()),
            int(self.first_key),
            int(self.last_key),
            int(self.step),
            Frame::Set(vec![]),
            Frame::Set(vec![]),
            Frame::Set(vec![]),
            Frame::Set(vec![]),
        ])
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom", "fast"];
const CONNECTION: &[&str] = &["noscript", "loading", "stale", "fast"];
/// The flags of the commands an unauthenticated client may run.
const NO_AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

/// Every command this server knows, sorted by name.
pub const COMMANDS: &[Spec] = &[
    Spec::new("auth", -2, NO_AUTH, NO_KEYS),
    Spec::new("client", -2, &["noscript", "loading", "stale"], NO_KEYS),
    Spec::new("command", -1, &["loading", "stale"], NO_KEYS),
    Spec::new(
        "config",
        -2,
        &["admin", "noscript", "loading", "stale"],
        NO_KEYS,
    ),
    Spec::new("dbsize", 1, READ, NO_KEYS),
    Spec::new("decr", 2, WRITE, ONE_KEY),
    Spec::new("decrby", 3, WRITE, ONE_KEY),
    Spec::new("del", -2, &["write"], ALL_KEYS),
    Spec::new("echo", 2, &["fast"], NO_KEYS),
    Spec::new("exists", -2, READ, ALL_KEYS),
    Spec::new("expire", 3, &["write", "fast"], ONE_KEY),
    Spec::new("get", 2, READ, ONE_KEY),
    Spec::new("hello", -1, NO_AUTH, NO_KEYS),
    Spec::new("incr", 2, WRITE, ONE_KEY),
    Spec::new("incrby", 3, WRITE, ONE_KEY),
    Spec::new("info", -1, &["loading", "stale"], NO_KEYS),
    Spec::new("mget", -2, READ, ALL_KEYS),
    Spec::new("mset", -3, &["write", "denyoom"], (1, -1, 2)),
    Spec::new("ping", -1, &["fast"], NO_KEYS),
    Spec::new("pttl", 2, READ, ONE_KEY),
    Spec::new("quit", -1, NO_AUTH, NO_KEYS),
    Spec::new("readonly", 1, CONNECTION, NO_KEYS),
    Spec::new("readwrite", 1, CONNECTION, NO_KEYS),
    Spec::new("select", 2, CONNECTION, NO_KEYS),
    Spec::new("set", -3, &["write", "denyoom"], ONE_KEY),
    Spec::new("ttl", 2, READ, ONE_KEY),
];

const ERR_SYNTAX: &str = "ERR syntax error";
/// Redis's reply to a command before authentication.
const ERR_NOAUTH: &str = "NOAUTH Authentication required.";
const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// The state machine's text for the reserved keyspace (`sealkv_kv`), repeated here
/// for the reads and the `MSET` refused before reaching it. A test checks the two
/// stay the same.
const ERR_RESERVED: &str = "ERR key is in the reserved keyspace !encryption|";

/// A reply that ends the command early.
type Early = Frame;

fn arity_error(name: &str) -> Frame {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn unknown_subcommand(sub: &[u8], command: &str) -> Frame {
    error(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(truncate(sub, 128)),
        command.to_ascii_uppercase()
    ))
}

fn truncate(bytes: &[u8], max: usize) -> &[u8] {
    bytes.get(..max).unwrap_or(bytes)
}

/// Redis's reply to an unknown command: the name and the first arguments, quoted,
/// each followed by a space, at most about 128 bytes of them.
fn unknown_command(name: &[u8], rest: &[Bytes]) -> Frame {
    let mut listed = Vec::new();
    for arg in rest {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push(b'\'');
        listed.extend_from_slice(truncate(arg, room));
        listed.extend_from_slice(b"' ");
    }
    error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(truncate(name, 128)),
        String::from_utf8_lossy(&listed)
    ))
}

/// Whether any key is under the reserved `!encryption|` prefix.
fn any_reserved<'a>(mut keys: impl Iterator<Item = &'a Bytes>) -> bool {
    keys.any(|k| is_reserved_key(k))
}

/// Runs one command and returns its reply.
pub async fn execute<B: Backend>(
    shared: &Shared<B>,
    session: &mut Session,
    args: Vec<Bytes>,
) -> (Frame, Flow) {
    let Some((name, rest)) = args.split_first() else {
        // The codec never yields an empty command; answer as Redis would a bad one.
        return (error("ERR empty command"), Flow::Continue);
    };
    let lower = name.to_ascii_lowercase();
    let Some(spec) = COMMANDS.iter().find(|s| s.name.as_bytes() == lower) else {
        return (unknown_command(name, rest), Flow::Continue);
    };
    if !spec.accepts(args.len()) {
        return (arity_error(spec.name), Flow::Continue);
    }
    // After the name and arity checks, as in Redis.
    if !session.authenticated && !spec.no_auth() {
        return (error(ERR_NOAUTH), Flow::Continue);
    }
    let mut cx = Cx { shared, session };
    // The arity check above makes every pattern below match its command; the last
    // arm is a safety net for a table entry without a handler.
    let frame = match (spec.name, rest) {
        ("auth", _) => cx.auth(rest),
        ("client", _) => cx.client(rest),
        ("command", _) => command(rest),
        // sealkv is configured by flags, not CONFIG: GET reports no parameters (so
        // tools such as redis-benchmark that probe it carry on), SET and the rest
        // are refused.
        ("config", [sub, _, ..]) if sub.eq_ignore_ascii_case(b"get") => Frame::Map(Vec::new()),
        ("config", _) => error(
            "ERR sealkv is configured by its command-line flags; only CONFIG GET is answered, and it reports no parameters",
        ),
        ("dbsize", []) => cx.dbsize().await,
        ("decr", [key]) => cx.incr_by(key, Ok(-1)).await,
        ("decrby", [key, delta]) => {
            let delta = match parse_i64(delta) {
                Some(i64::MIN) => Err(error("ERR decrement would overflow")),
                Some(n) => Ok(-n),
                None => Err(error(ERR_NOT_INTEGER)),
            };
            cx.incr_by(key, delta).await
        }
        ("del", keys) => cx.del(keys).await,
        ("echo", [message]) => bulk(message.clone()),
        ("exists", keys) => cx.exists(keys).await,
        ("expire", [key, seconds]) => cx.expire(key, seconds).await,
        ("get", [key]) => cx.get(key).await,
        ("hello", _) => cx.hello(rest).await,
        ("incr", [key]) => cx.incr_by(key, Ok(1)).await,
        ("incrby", [key, delta]) => {
            let delta = parse_i64(delta).ok_or_else(|| error(ERR_NOT_INTEGER));
            cx.incr_by(key, delta).await
        }
        ("info", sections) => cx.info(sections).await,
        ("mget", keys) => cx.mget(keys).await,
        ("mset", pairs) => cx.mset(pairs).await,
        ("ping", []) => simple("PONG"),
        ("ping", [message]) => bulk(message.clone()),
        ("ping", _) => arity_error("ping"),
        ("pttl", [key]) => cx.ttl(key, 1).await,
        ("quit", _) => return (ok(), Flow::Close),
        ("readonly", []) => {
            cx.session.consistency = ReadConsistency::Stale;
            ok()
        }
        ("readwrite", []) => {
            cx.session.consistency = ReadConsistency::Linearizable;
            ok()
        }
        ("select", [index]) => match parse_i64(index).and_then(|n| i32::try_from(n).ok()) {
            None => error(ERR_NOT_INTEGER),
            Some(0) => ok(),
            Some(_) => error("ERR DB index is out of range"),
        },
        ("set", args) => cx.set(args).await,
        ("ttl", [key]) => cx.ttl(key, 1000).await,
        (name, _) => {
            tracing::error!(command = name, "command in the table has no handler");
            arity_error(name)
        }
    };
    (frame, Flow::Continue)
}

/// One command's view of the server and its connection.
struct Cx<'a, B> {
    shared: &'a Shared<B>,
    session: &'a mut Session,
}

impl<B: Backend> Cx<'_, B> {
    fn now(&self) -> u64 {
        self.shared.config.clock.now_ms()
    }

    /// Runs a backend call under the request timeout.
    async fn call<T>(&self, call: impl Future<Output = Result<T, ApiError>>) -> Result<T, Early> {
        let result = tokio::time::timeout(self.shared.config.request_timeout, call)
            .await
            .unwrap_or(Err(ApiError::Timeout));
        result.map_err(|e| error(e.redis_error()))
    }

    /// Reads `keys` at the connection's consistency; refuses reserved keys.
    async fn read(&self, keys: &[Bytes]) -> Result<Vec<Option<ValueRead>>, Early> {
        if any_reserved(keys.iter()) {
            return Err(error(ERR_RESERVED));
        }
        let wanted = keys.len();
        let keys = keys.iter().map(|k| k.to_vec()).collect();
        let values = self
            .call(self.shared.backend.read(keys, self.session.consistency))
            .await?;
        if values.len() != wanted {
            return Err(error(
                ApiError::Internal(format!(
                    "backend returned {} values for {wanted} keys",
                    values.len()
                ))
                .redis_error(),
            ));
        }
        Ok(values)
    }

    /// Proposes `commands` as one request stamped `now`.
    async fn write(&self, now: u64, commands: Vec<Command>) -> Result<Vec<Reply>, Early> {
        let wanted = commands.len();
        let request = KvRequest {
            issued_at_ms: now,
            commands,
        };
        // Refused here, before it is proposed: an entry no replica could apply must
        // never reach the log.
        if let Err(e) = self.shared.config.sizes.check(&request) {
            return Err(error(format!("ERR {e}")));
        }
        let replies = self.call(self.shared.backend.write(request)).await?;
        if replies.len() != wanted {
            return Err(error(
                ApiError::Internal(format!(
                    "backend returned {} replies for {wanted} commands",
                    replies.len()
                ))
                .redis_error(),
            ));
        }
        Ok(replies)
    }

    /// Proposes one command and returns its reply frame.
    async fn write_one(&self, now: u64, command: Command) -> Frame {
        match self.write(now, vec![command]).await {
            Ok(mut replies) => replies.pop().map_or_else(nil, reply::from_kv),
            Err(frame) => frame,
        }
    }
}

#[cfg(test)]
mod tests {
    use sealkv_kv::PutCondition;

    use super::strings::set_options;
    use super::*;

    #[test]
    fn table_is_sorted_and_lowercase() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(
            COMMANDS
                .iter()
                .all(|s| s.name == s.name.to_ascii_lowercase())
        );
    }

    fn opts(text: &str) -> Vec<Bytes> {
        text.split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn err_text(frame: Frame) -> String {
        match frame {
            Frame::Error(s) => s.to_string(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn set_options_follow_redis() {
        const NOW: u64 = 1_000_000;
        let ok_cases: &[(&str, (u64, PutCondition))] = &[
            ("", (0, PutCondition::Always)),
            ("nx", (0, PutCondition::IfAbsent)),
            ("NX NX", (0, PutCondition::IfAbsent)),
            ("xx", (0, PutCondition::IfPresent)),
            ("EX 10", (NOW + 10_000, PutCondition::Always)),
            ("px 10 NX", (NOW + 10, PutCondition::IfAbsent)),
            ("XX PX 10", (NOW + 10, PutCondition::IfPresent)),
            ("EX 1 EX 2", (NOW + 2_000, PutCondition::Always)),
            ("EXAT 5", (5_000, PutCondition::Always)),
            ("PXAT 5", (5, PutCondition::Always)),
        ];
        for (text, want) in ok_cases {
            assert_eq!(set_options(&opts(text), NOW).ok(), Some(*want), "{text}");
        }
        let err_cases: &[(&str, &str)] = &[
            ("NX XX", ERR_SYNTAX),
            ("XX NX", ERR_SYNTAX),
            ("EX 1 PX 1", ERR_SYNTAX),
            ("EX", ERR_SYNTAX),
            ("FOO", ERR_SYNTAX),
            ("EX 1 FOO", ERR_SYNTAX),
            ("EX x", ERR_NOT_INTEGER),
            ("EX 0", "ERR invalid expire time in 'set' command"),
            ("PX -5", "ERR invalid expire time in 'set' command"),
            (
                "EX 9223372036854775807",
                "ERR invalid expire time in 'set' command",
            ),
            (
                "PX 9223372036854775807",
                "ERR invalid expire time in 'set' command",
            ),
            ("EX x FOO", ERR_SYNTAX),
            ("KEEPTTL", "ERR SET KEEPTTL is not supported by sealkv"),
            ("GET", "ERR SET GET is not supported by sealkv"),
        ];
        for (text, want) in err_cases {
            let got = set_options(&opts(text), NOW).map(|_| ()).map_err(err_text);
            assert_eq!(got, Err((*want).to_string()), "{text}");
        }
    }

    #[test]
    fn unknown_command_text_matches_redis() {
        let frame = unknown_command(b"FOO", &opts("a b"));
        assert_eq!(
            err_text(frame),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        let frame = unknown_command(b"foo", &[]);
        assert_eq!(
            err_text(frame),
            "ERR unknown command 'foo', with args beginning with: "
        );
        let long = Bytes::from(vec![b'x'; 300]);
        let text = err_text(unknown_command(b"foo", &[long.clone(), long]));
        let listed = text
            .split_once("with: ")
            .map(|(_, l)| l.to_string())
            .unwrap_or_default();
        assert_eq!(listed, format!("'{}' ", "x".repeat(128)));
    }
}
