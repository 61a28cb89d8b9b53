//! Every supported command through redis-rs: replies, Redis's error texts, expiry
//! computed from the server's clock, pipelining and the consistency switch.

use redis::Value;
use redis_protocol::resp2::types::OwnedFrame;
use sealkv_node::resp::ReadConsistency;

use super::support::{Mode, Server, T0, redis_error};

fn q(con: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let (name, rest) = args.split_first().expect("a command name");
    let mut cmd = redis::cmd(name);
    for arg in rest {
        cmd.arg(*arg);
    }
    cmd.query(con)
}

/// The reply to a command that must succeed.
fn ok(con: &mut redis::Connection, args: &[&str]) -> Value {
    q(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error line (`CODE detail`) of a command that must fail.
fn err(con: &mut redis::Connection, args: &[&str]) -> String {
    match q(con, args) {
        Err(e) => redis_error(&e),
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
    }
}

fn bulk(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

fn simple(text: &str) -> Value {
    Value::SimpleString(text.to_string())
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";
const RESERVED: &str = "ERR key is in the reserved keyspace !encryption|";

#[test]
fn ping_echo_select_and_quit() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["PING"]), simple("PONG"));
    assert_eq!(ok(&mut con, &["ping", "hi there"]), bulk("hi there"));
    assert_eq!(ok(&mut con, &["ECHO", "\r\nx"]), bulk("\r\nx"));
    assert_eq!(ok(&mut con, &["SELECT", "0"]), Value::Okay);
    assert_eq!(
        err(&mut con, &["SELECT", "1"]),
        "ERR DB index is out of range"
    );
    assert_eq!(
        err(&mut con, &["SELECT", "-1"]),
        "ERR DB index is out of range"
    );
    assert_eq!(err(&mut con, &["SELECT", "zero"]), NOT_INTEGER);
    assert_eq!(err(&mut con, &["SELECT", "4294967296"]), NOT_INTEGER);
    assert_eq!(
        err(&mut con, &["AUTH", "secret"]),
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
    );

    let mut raw = server.raw();
    assert_eq!(
        raw.call(&["QUIT"]),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    assert!(raw.closed(), "QUIT must close the connection");
}

#[test]
fn strings_keys_and_multi_key_commands() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["GET", "k"]), Value::Nil);
    assert_eq!(ok(&mut con, &["SET", "k", "v1"]), Value::Okay);
    assert_eq!(ok(&mut con, &["get", "k"]), bulk("v1"));
    assert_eq!(ok(&mut con, &["gEt", "k"]), bulk("v1"));
    assert_eq!(ok(&mut con, &["SET", "k", ""]), Value::Okay);
    assert_eq!(ok(&mut con, &["GET", "k"]), bulk(""));

    // Binary keys and values survive, CRLF and NUL included.
    let binary: Vec<u8> = (0..=255u8).chain(*b"\r\n\0").collect();
    let set: Value = redis::cmd("SET")
        .arg(&binary[..])
        .arg(&binary[..])
        .query(&mut con)
        .expect("binary set");
    assert_eq!(set, Value::Okay);
    let got: Vec<u8> = redis::cmd("GET")
        .arg(&binary[..])
        .query(&mut con)
        .expect("binary get");
    assert_eq!(got, binary);

    assert_eq!(ok(&mut con, &["MSET", "a", "1", "b", "2"]), Value::Okay);
    assert_eq!(
        ok(&mut con, &["MGET", "a", "missing", "b", "a"]),
        Value::Array(vec![bulk("1"), Value::Nil, bulk("2"), bulk("1")])
    );
    // EXISTS counts a key once per mention, as Redis does.
    assert_eq!(
        ok(&mut con, &["EXISTS", "a", "a", "missing", "b"]),
        Value::Int(3)
    );
    assert_eq!(ok(&mut con, &["DEL", "a", "missing", "a"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["EXISTS", "a"]), Value::Int(0));
    assert_eq!(ok(&mut con, &["DEL", "b", "k"]), Value::Int(2));
    assert_eq!(ok(&mut con, &["DEL", "b"]), Value::Int(0));
}

#[test]
fn set_conditions_expiry_and_option_errors() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["SET", "k", "v", "XX"]), Value::Nil);
    assert_eq!(ok(&mut con, &["GET", "k"]), Value::Nil);
    assert_eq!(ok(&mut con, &["SET", "k", "v", "NX"]), Value::Okay);
    assert_eq!(ok(&mut con, &["SET", "k", "w", "nx"]), Value::Nil);
    assert_eq!(ok(&mut con, &["GET", "k"]), bulk("v"));
    assert_eq!(ok(&mut con, &["SET", "k", "w", "XX"]), Value::Okay);
    assert_eq!(ok(&mut con, &["GET", "k"]), bulk("w"));

    // Relative expiries become absolute times from the server's clock.
    assert_eq!(ok(&mut con, &["SET", "e", "v", "EX", "10"]), Value::Okay);
    assert_eq!(server.backend.stored_expiry(b"e"), Some(T0 + 10_000));
    assert_eq!(ok(&mut con, &["TTL", "e"]), Value::Int(10));
    assert_eq!(ok(&mut con, &["PTTL", "e"]), Value::Int(10_000));
    assert_eq!(
        ok(&mut con, &["SET", "p", "v", "PX", "1500", "NX"]),
        Value::Okay
    );
    assert_eq!(server.backend.stored_expiry(b"p"), Some(T0 + 1_500));
    // TTL rounds to the nearest second, as Redis does.
    assert_eq!(ok(&mut con, &["TTL", "p"]), Value::Int(2));
    let at = (T0 / 1000 + 100).to_string();
    assert_eq!(ok(&mut con, &["SET", "a", "v", "EXAT", &at]), Value::Okay);
    assert_eq!(server.backend.stored_expiry(b"a"), Some(T0 + 100_000));
    let at = (T0 + 5).to_string();
    assert_eq!(ok(&mut con, &["SET", "pa", "v", "PXAT", &at]), Value::Okay);
    assert_eq!(ok(&mut con, &["PTTL", "pa"]), Value::Int(5));
    // A plain SET drops the expiry.
    assert_eq!(ok(&mut con, &["SET", "a", "v"]), Value::Okay);
    assert_eq!(ok(&mut con, &["TTL", "a"]), Value::Int(-1));

    server.advance(1_499);
    assert_eq!(ok(&mut con, &["PTTL", "p"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["GET", "p"]), bulk("v"));
    server.advance(1);
    assert_eq!(ok(&mut con, &["GET", "p"]), Value::Nil);
    assert_eq!(ok(&mut con, &["TTL", "p"]), Value::Int(-2));
    assert_eq!(ok(&mut con, &["EXISTS", "p", "pa"]), Value::Int(0));
    // NX sees an expired key as absent.
    assert_eq!(ok(&mut con, &["SET", "p", "again", "NX"]), Value::Okay);

    let invalid_expire = "ERR invalid expire time in 'set' command";
    let cases: &[(&[&str], &str)] = &[
        (&["NX", "XX"], SYNTAX),
        (&["XX", "NX"], SYNTAX),
        (&["EX", "1", "PX", "1"], SYNTAX),
        (&["EX"], SYNTAX),
        (&["PX", "10", "BOGUS"], SYNTAX),
        (&["EX", "ten"], NOT_INTEGER),
        (&["EX", "0"], invalid_expire),
        (&["PX", "-1"], invalid_expire),
        (&["EX", "9223372036854775807"], invalid_expire),
        (&["KEEPTTL"], "ERR SET KEEPTTL is not supported by sealkv"),
        (&["GET"], "ERR SET GET is not supported by sealkv"),
    ];
    for (options, want) in cases {
        let mut args = vec!["SET", "k", "nope"];
        args.extend_from_slice(options);
        assert_eq!(err(&mut con, &args), *want, "{args:?}");
    }
    // None of the refused SETs wrote anything.
    assert_eq!(ok(&mut con, &["GET", "k"]), bulk("w"));
}

#[test]
fn incr_and_decr() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["INCR", "n"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["INCRBY", "n", "10"]), Value::Int(11));
    assert_eq!(ok(&mut con, &["DECR", "n"]), Value::Int(10));
    assert_eq!(ok(&mut con, &["DECRBY", "n", "3"]), Value::Int(7));
    assert_eq!(ok(&mut con, &["DECRBY", "n", "-3"]), Value::Int(10));
    assert_eq!(ok(&mut con, &["GET", "n"]), bulk("10"));
    assert_eq!(ok(&mut con, &["DECR", "fresh"]), Value::Int(-1));

    assert_eq!(err(&mut con, &["INCRBY", "n", "1.5"]), NOT_INTEGER);
    assert_eq!(err(&mut con, &["INCRBY", "n", "+1"]), NOT_INTEGER);
    assert_eq!(err(&mut con, &["DECRBY", "n", "x"]), NOT_INTEGER);
    assert_eq!(
        err(&mut con, &["DECRBY", "n", "-9223372036854775808"]),
        "ERR decrement would overflow"
    );
    assert_eq!(ok(&mut con, &["SET", "s", "hello"]), Value::Okay);
    assert_eq!(err(&mut con, &["INCR", "s"]), NOT_INTEGER);
    assert_eq!(
        ok(&mut con, &["SET", "m", "9223372036854775807"]),
        Value::Okay
    );
    assert_eq!(
        err(&mut con, &["INCR", "m"]),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(ok(&mut con, &["GET", "n"]), bulk("10"));

    // INCR keeps the key's expiry.
    assert_eq!(ok(&mut con, &["SET", "t", "5", "EX", "100"]), Value::Okay);
    assert_eq!(ok(&mut con, &["INCR", "t"]), Value::Int(6));
    assert_eq!(ok(&mut con, &["TTL", "t"]), Value::Int(100));
}

#[test]
fn expire_ttl_and_pttl() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["TTL", "k"]), Value::Int(-2));
    assert_eq!(ok(&mut con, &["PTTL", "k"]), Value::Int(-2));
    assert_eq!(ok(&mut con, &["EXPIRE", "k", "10"]), Value::Int(0));
    assert_eq!(ok(&mut con, &["SET", "k", "v"]), Value::Okay);
    assert_eq!(ok(&mut con, &["TTL", "k"]), Value::Int(-1));
    assert_eq!(ok(&mut con, &["PTTL", "k"]), Value::Int(-1));
    assert_eq!(ok(&mut con, &["EXPIRE", "k", "100"]), Value::Int(1));
    assert_eq!(server.backend.stored_expiry(b"k"), Some(T0 + 100_000));
    server.advance(30_400);
    assert_eq!(ok(&mut con, &["TTL", "k"]), Value::Int(70));
    assert_eq!(ok(&mut con, &["PTTL", "k"]), Value::Int(69_600));

    // A TTL of zero or less deletes, as in Redis.
    assert_eq!(ok(&mut con, &["EXPIRE", "k", "0"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["EXISTS", "k"]), Value::Int(0));
    assert_eq!(ok(&mut con, &["SET", "k", "v"]), Value::Okay);
    assert_eq!(ok(&mut con, &["EXPIRE", "k", "-5"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["GET", "k"]), Value::Nil);
    assert_eq!(ok(&mut con, &["EXPIRE", "k", "-5"]), Value::Int(0));

    assert_eq!(ok(&mut con, &["SET", "k", "v"]), Value::Okay);
    assert_eq!(err(&mut con, &["EXPIRE", "k", "soon"]), NOT_INTEGER);
    assert_eq!(
        err(&mut con, &["EXPIRE", "k", "9223372036854775807"]),
        "ERR invalid expire time in 'expire' command"
    );
    // Redis 6 EXPIRE takes no options.
    assert_eq!(
        err(&mut con, &["EXPIRE", "k", "10", "NX"]),
        "ERR wrong number of arguments for 'expire' command"
    );
    assert_eq!(ok(&mut con, &["TTL", "k"]), Value::Int(-1));
}

#[test]
fn dbsize_counts_live_keys() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["DBSIZE"]), Value::Int(0));
    assert_eq!(ok(&mut con, &["MSET", "a", "1", "b", "2"]), Value::Okay);
    assert_eq!(ok(&mut con, &["SET", "c", "3", "PX", "100"]), Value::Okay);
    assert_eq!(ok(&mut con, &["DBSIZE"]), Value::Int(3));
    server.advance(100);
    assert_eq!(ok(&mut con, &["DBSIZE"]), Value::Int(2));
    assert_eq!(ok(&mut con, &["DEL", "a"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["DBSIZE"]), Value::Int(1));
}

fn info_text(con: &mut redis::Connection, args: &[&str]) -> String {
    match ok(con, args) {
        Value::BulkString(b) => String::from_utf8(b).expect("utf8 info"),
        other => panic!("INFO replied {other:?}"),
    }
}

#[test]
fn info_reports_server_and_replication() {
    let server = Server::start();
    let mut con = server.redis();
    let all = info_text(&mut con, &["INFO"]);
    for want in [
        "# Server\r\n",
        "redis_version:7.0.0\r\n",
        &format!("sealkv_version:{}\r\n", env!("CARGO_PKG_VERSION")),
        &format!("tcp_port:{}\r\n", server.addr.port()),
        "sealkv_node_id:7\r\n",
        "\r\n\r\n# Replication\r\n",
        "role:master\r\n",
        "sealkv_raft_role:leader\r\n",
        "sealkv_term:3\r\n",
    ] {
        assert!(all.contains(want), "missing {want:?} in {all}");
    }
    let replication = info_text(&mut con, &["INFO", "replication"]);
    assert!(
        replication.starts_with("# Replication\r\n"),
        "{replication}"
    );
    assert!(!replication.contains("# Server"), "{replication}");
    let server_only = info_text(&mut con, &["info", "SERVER"]);
    assert!(!server_only.contains("# Replication"), "{server_only}");
    assert_eq!(info_text(&mut con, &["INFO", "keyspace"]), "");
    let both = info_text(&mut con, &["INFO", "server", "replication"]);
    assert!(both.starts_with("# Server\r\n"), "{both}");
    assert!(both.contains("\r\n\r\n# Replication\r\n"), "{both}");

    server.backend.set_mode(Mode {
        follower: true,
        ..Mode::default()
    });
    let follower = info_text(&mut con, &["INFO", "replication"]);
    for want in [
        "role:slave\r\n",
        "master_host:127.0.0.1\r\n",
        "master_port:7001\r\n",
        "master_link_status:up\r\n",
        "sealkv_leader_id:1\r\n",
    ] {
        assert!(follower.contains(want), "missing {want:?} in {follower}");
    }
}

#[test]
fn command_client_and_hello() {
    let server = Server::start();
    let mut con = server.redis();
    // redis-benchmark probes CONFIG GET: it answers, with no parameters.
    assert_eq!(
        ok(&mut con, &["CONFIG", "GET", "save"]),
        Value::Array(Vec::new())
    );
    assert!(
        err(&mut con, &["CONFIG", "SET", "save", ""]).contains("command-line flags"),
        "CONFIG SET"
    );
    let Value::Int(count) = ok(&mut con, &["COMMAND", "COUNT"]) else {
        panic!("COMMAND COUNT is not an integer");
    };
    let Value::Array(list) = ok(&mut con, &["COMMAND", "LIST"]) else {
        panic!("COMMAND LIST is not an array");
    };
    let Value::Array(all) = ok(&mut con, &["COMMAND"]) else {
        panic!("COMMAND is not an array");
    };
    assert_eq!(list.len(), usize::try_from(count).expect("count"));
    assert_eq!(all.len(), list.len());
    for name in [
        "get", "set", "mset", "expire", "readonly", "client", "hello",
    ] {
        assert!(list.contains(&bulk(name)), "COMMAND LIST lacks {name}");
    }
    let Value::Array(info) = ok(&mut con, &["COMMAND", "INFO", "GET", "nope", "mset"]) else {
        panic!("COMMAND INFO is not an array");
    };
    let Some(Value::Array(get)) = info.first() else {
        panic!("no entry for get: {info:?}");
    };
    assert_eq!(
        &get[..6],
        &[
            bulk("get"),
            Value::Int(2),
            Value::Array(vec![simple("readonly"), simple("fast")]),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
        ]
    );
    assert_eq!(info.get(1), Some(&Value::Nil));
    let Some(Value::Array(mset)) = info.get(2) else {
        panic!("no entry for mset: {info:?}");
    };
    assert_eq!(
        &mset[1..6],
        &[
            Value::Int(-3),
            Value::Array(vec![simple("write"), simple("denyoom")]),
            Value::Int(1),
            Value::Int(-1),
            Value::Int(2),
        ]
    );
    assert_eq!(ok(&mut con, &["COMMAND", "DOCS"]), Value::Array(vec![]));
    assert_eq!(
        ok(&mut con, &["COMMAND", "DOCS", "get"]),
        Value::Array(vec![])
    );
    assert_eq!(
        err(&mut con, &["COMMAND", "bogus"]),
        "ERR unknown subcommand 'bogus'. Try COMMAND HELP."
    );
    assert!(matches!(ok(&mut con, &["COMMAND", "HELP"]), Value::Array(lines) if lines.len() > 4));

    assert_eq!(ok(&mut con, &["CLIENT", "GETNAME"]), Value::Nil);
    assert_eq!(
        ok(&mut con, &["CLIENT", "SETNAME", "worker-1"]),
        Value::Okay
    );
    assert_eq!(ok(&mut con, &["client", "getname"]), bulk("worker-1"));
    assert_eq!(
        err(&mut con, &["CLIENT", "SETNAME", "two words"]),
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(ok(&mut con, &["CLIENT", "SETNAME", ""]), Value::Okay);
    assert_eq!(ok(&mut con, &["CLIENT", "GETNAME"]), Value::Nil);
    assert_eq!(
        ok(&mut con, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]),
        Value::Okay
    );
    assert_eq!(
        ok(&mut con, &["CLIENT", "SETINFO", "lib-ver", "1.2.3"]),
        Value::Okay
    );
    assert_eq!(
        err(&mut con, &["CLIENT", "SETINFO", "color", "blue"]),
        "ERR Unrecognized option 'color'"
    );
    assert_eq!(
        err(&mut con, &["CLIENT", "SETINFO", "LIB-VER", "1 2"]),
        "ERR LIB-VER cannot contain spaces, newlines or special characters."
    );
    assert!(matches!(ok(&mut con, &["CLIENT", "ID"]), Value::Int(id) if id > 0));
    assert_eq!(
        err(&mut con, &["CLIENT", "SETNAME"]),
        "ERR wrong number of arguments for 'client|setname' command"
    );
    assert_eq!(
        err(&mut con, &["CLIENT", "KILL", "x"]),
        "ERR unknown subcommand 'KILL'. Try CLIENT HELP."
    );
    assert_eq!(
        err(&mut con, &["CLIENT"]),
        "ERR wrong number of arguments for 'client' command"
    );

    let Value::Array(hello) = ok(&mut con, &["HELLO"]) else {
        panic!("HELLO is not an array");
    };
    let fields: Vec<(Value, Value)> = hello
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    assert!(
        fields.contains(&(bulk("proto"), Value::Int(2))),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(bulk("server"), bulk("redis"))),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(bulk("role"), bulk("master"))),
        "{fields:?}"
    );
    assert!(matches!(
        ok(&mut con, &["HELLO", "2", "SETNAME", "named"]),
        Value::Array(_)
    ));
    assert_eq!(ok(&mut con, &["CLIENT", "GETNAME"]), bulk("named"));
    assert_eq!(
        err(&mut con, &["HELLO", "4"]),
        "NOPROTO unsupported protocol version"
    );
    assert_eq!(
        err(&mut con, &["HELLO", "two"]),
        "ERR Protocol version is not an integer or out of range"
    );
    assert_eq!(
        err(&mut con, &["HELLO", "2", "BOGUS"]),
        "ERR Syntax error in HELLO option 'BOGUS'"
    );
    // Still RESP2 after the refused HELLO 4.
    assert_eq!(ok(&mut con, &["PING"]), simple("PONG"));
}

#[test]
fn wrong_arity_and_unknown_commands() {
    let server = Server::start();
    let mut con = server.redis();
    let arity: &[(&[&str], &str)] = &[
        (&["GET"], "get"),
        (&["GET", "a", "b"], "get"),
        (&["set", "k"], "set"),
        (&["DEL"], "del"),
        (&["EXISTS"], "exists"),
        (&["MGET"], "mget"),
        (&["MSET", "a"], "mset"),
        (&["MSET", "a", "1", "b"], "mset"),
        (&["INCR"], "incr"),
        (&["INCRBY", "a"], "incrby"),
        (&["DECR", "a", "b"], "decr"),
        (&["DECRBY", "a"], "decrby"),
        (&["EXPIRE", "a"], "expire"),
        (&["TTL"], "ttl"),
        (&["PTTL", "a", "b"], "pttl"),
        (&["DBSIZE", "x"], "dbsize"),
        (&["PING", "a", "b"], "ping"),
        (&["ECHO"], "echo"),
        (&["SELECT"], "select"),
        (&["READONLY", "x"], "readonly"),
        (&["READWRITE", "x"], "readwrite"),
    ];
    for (args, name) in arity {
        assert_eq!(
            err(&mut con, args),
            format!("ERR wrong number of arguments for '{name}' command"),
            "{args:?}"
        );
    }
    assert_eq!(
        err(&mut con, &["FLUSHALL", "ASYNC", "now"]),
        "ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' 'now' "
    );
    assert_eq!(
        err(&mut con, &["multi"]),
        "ERR unknown command 'multi', with args beginning with: "
    );
    // The connection is still good after all those errors.
    assert_eq!(ok(&mut con, &["PING"]), simple("PONG"));
}

#[test]
fn reserved_keyspace_is_refused_consistently() {
    let server = Server::start();
    let mut con = server.redis();
    let key = "!encryption|writers|x";
    // Writes reach the state machine, which refuses them; the RESP layer's own
    // refusals for reads and MSET must use the same text.
    assert_eq!(err(&mut con, &["SET", key, "v"]), RESERVED);
    assert_eq!(err(&mut con, &["DEL", "a", key]), RESERVED);
    assert_eq!(err(&mut con, &["INCR", key]), RESERVED);
    assert_eq!(err(&mut con, &["EXPIRE", key, "10"]), RESERVED);
    assert_eq!(err(&mut con, &["GET", key]), RESERVED);
    assert_eq!(err(&mut con, &["MGET", "a", key]), RESERVED);
    assert_eq!(err(&mut con, &["EXISTS", key]), RESERVED);
    assert_eq!(err(&mut con, &["TTL", key]), RESERVED);
    assert_eq!(err(&mut con, &["PTTL", key]), RESERVED);
    // MSET stays atomic: nothing is written.
    assert_eq!(err(&mut con, &["MSET", "a", "1", key, "2"]), RESERVED);
    assert_eq!(ok(&mut con, &["EXISTS", "a"]), Value::Int(0));
    // A key that merely contains the prefix is ordinary.
    assert_eq!(ok(&mut con, &["SET", "x!encryption|", "v"]), Value::Okay);
}

#[test]
fn a_thousand_pipelined_commands() {
    let server = Server::start();
    let mut con = server.redis();
    let mut pipe = redis::pipe();
    for i in 0..250 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(format!("v{i}"));
        pipe.cmd("GET").arg(format!("k{i}"));
        pipe.cmd("INCR").arg("counter");
        pipe.cmd("EXISTS").arg(format!("k{i}")).arg("nope");
    }
    let replies: Vec<Value> = pipe.query(&mut con).expect("pipeline");
    assert_eq!(replies.len(), 1000);
    for (i, chunk) in replies.chunks(4).enumerate() {
        assert_eq!(
            chunk,
            &[
                Value::Okay,
                bulk(&format!("v{i}")),
                Value::Int(i64::try_from(i).expect("small") + 1),
                Value::Int(1),
            ],
            "commands {}..{}",
            4 * i,
            4 * i + 4
        );
    }

    // The same over raw TCP: one write of a thousand commands, then every reply.
    let mut raw = server.raw();
    let mut batch = Vec::new();
    for i in 0..1000 {
        let message = format!("m{i}");
        batch.extend(super::support::encode(&[b"ECHO", message.as_bytes()]));
    }
    raw.send_bytes(&batch);
    for i in 0..1000 {
        assert_eq!(
            raw.reply(),
            Some(OwnedFrame::BulkString(format!("m{i}").into_bytes()))
        );
    }
}

#[test]
fn readonly_switches_the_connection_to_stale_reads() {
    let server = Server::start();
    let mut con = server.redis();
    assert_eq!(ok(&mut con, &["SET", "k", "v"]), Value::Okay);
    server.backend.set_mode(Mode {
        follower: true,
        ..Mode::default()
    });
    let not_leader = "NOTLEADER this node is not the leader; the leader is at 127.0.0.1:7001";
    assert_eq!(err(&mut con, &["GET", "k"]), not_leader);
    assert_eq!(ok(&mut con, &["READONLY"]), Value::Okay);
    assert_eq!(ok(&mut con, &["GET", "k"]), bulk("v"));
    assert_eq!(ok(&mut con, &["DBSIZE"]), Value::Int(1));
    assert_eq!(ok(&mut con, &["TTL", "k"]), Value::Int(-1));
    // Another connection is not affected.
    let mut other = server.redis();
    assert_eq!(err(&mut other, &["GET", "k"]), not_leader);
    assert_eq!(ok(&mut con, &["READWRITE"]), Value::Okay);
    assert_eq!(err(&mut con, &["MGET", "k"]), not_leader);

    let seen = server.backend.seen.lock().expect("seen").clone();
    use ReadConsistency::{Linearizable as L, Stale as S};
    assert_eq!(seen, [L, S, S, S, L, L]);
}
