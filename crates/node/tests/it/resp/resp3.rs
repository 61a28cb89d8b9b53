//! RESP3: `HELLO 2|3` switches a connection's protocol, replies take the RESP3 types
//! Redis 7 sends (checked byte for byte), RESP2 stays the default and unchanged, and
//! `CLIENT SETINFO` is kept. Then redis-rs in RESP3 mode.

use redis::{Commands, Value};
use redis_protocol::resp3::types::{OwnedFrame as Resp3Frame, Resp3Frame as _};

use super::support::{Raw, Server, redis_error};

/// `HELLO`'s map, as Redis 7 writes it in RESP3.
fn hello_map(id: i64, proto: u8) -> String {
    format!(
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
         $5\r\nproto\r\n:{proto}\r\n$2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
         $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    )
}

/// The same map flattened into an array, as RESP2 carries it.
fn hello_array(id: i64) -> String {
    hello_map(id, 2).replacen("%7", "*14", 1)
}

fn client_id(raw: &mut Raw, version: u8) -> i64 {
    let reply = raw.call_bytes(version, &["CLIENT", "ID"]);
    reply
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("CLIENT ID answered {reply:?}"))
}

/// `(command, RESP2 reply, RESP3 reply)`: every reply shape that differs between the
/// protocols, and some that do not. Run in order on one connection.
const SHAPES: &[(&[&str], &str, &str)] = &[
    (&["GET", "k"], "$-1\r\n", "_\r\n"),
    (&["SET", "k", "v"], "+OK\r\n", "+OK\r\n"),
    (&["SET", "k", "w", "NX"], "$-1\r\n", "_\r\n"),
    (&["GET", "k"], "$1\r\nv\r\n", "$1\r\nv\r\n"),
    (
        &["MGET", "k", "missing"],
        "*2\r\n$1\r\nv\r\n$-1\r\n",
        "*2\r\n$1\r\nv\r\n_\r\n",
    ),
    (&["INCR", "n"], ":1\r\n", ":1\r\n"),
    (&["EXISTS", "k", "missing"], ":1\r\n", ":1\r\n"),
    (&["TTL", "k"], ":-1\r\n", ":-1\r\n"),
    (&["CLIENT", "GETNAME"], "$-1\r\n", "_\r\n"),
    (&["CONFIG", "GET", "save"], "*0\r\n", "%0\r\n"),
    (&["COMMAND", "DOCS"], "*0\r\n", "%0\r\n"),
    (&["COMMAND", "INFO", "nope"], "*1\r\n$-1\r\n", "*1\r\n_\r\n"),
    (
        &["COMMAND", "INFO", "get"],
        "*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
        "*1\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n~0\r\n~0\r\n~0\r\n~0\r\n",
    ),
    (&["PING"], "+PONG\r\n", "+PONG\r\n"),
    (
        &["INCR", "k"],
        "-ERR value is not an integer or out of range\r\n",
        "-ERR value is not an integer or out of range\r\n",
    ),
    (&["DEL", "k", "n"], ":2\r\n", ":2\r\n"),
];

fn check_shapes(raw: &mut Raw, version: u8) {
    for (args, resp2, resp3) in SHAPES {
        let want = if version == 3 { resp3 } else { resp2 };
        assert_eq!(
            raw.call_bytes(version, args),
            *want,
            "{args:?} in RESP{version}"
        );
    }
}

/// A connection that never says HELLO speaks RESP2 exactly as before RESP3 existed.
#[test]
fn resp2_is_the_default_and_unchanged() {
    let server = Server::start();
    let mut raw = server.raw();
    check_shapes(&mut raw, 2);
    let id = client_id(&mut raw, 2);
    assert_eq!(raw.call_bytes(2, &["HELLO"]), hello_array(id));
    assert_eq!(raw.call_bytes(2, &["HELLO", "2"]), hello_array(id));
    let info = raw.call_bytes(2, &["INFO", "server"]);
    assert!(info.starts_with('$') && info.contains("# Server"), "{info}");
}

/// `HELLO 3` answers its map in RESP3 and every later reply is RESP3; `HELLO 2`
/// switches back; `HELLO` alone keeps the protocol.
#[test]
fn hello_3_switches_the_connection_to_resp3() {
    let server = Server::start();
    let mut raw = server.raw();
    let id = client_id(&mut raw, 2);
    assert_eq!(raw.call_bytes(3, &["HELLO", "3"]), hello_map(id, 3));
    check_shapes(&mut raw, 3);
    assert_eq!(raw.call_bytes(3, &["HELLO"]), hello_map(id, 3));
    // INFO is a verbatim text, as Redis 7 sends it.
    let info = raw.call_bytes(3, &["INFO", "server"]);
    assert!(info.starts_with('='), "{info}");
    assert!(info.contains("\r\ntxt:# Server\r\n"), "{info}");
    let Resp3Frame::VerbatimString { data, .. } = raw.call3(&["INFO", "replication"]) else {
        panic!("INFO is not a verbatim string in RESP3");
    };
    assert!(String::from_utf8_lossy(&data).contains("role:master"));
    let client = raw.call_bytes(3, &["CLIENT", "INFO"]);
    assert!(
        client.starts_with('=') && client.contains(" resp=3 "),
        "{client}"
    );
    // Back to RESP2: its own reply is already RESP2.
    assert_eq!(raw.call_bytes(2, &["HELLO", "2"]), hello_array(id));
    check_shapes(&mut raw, 2);
}

/// Versions other than 2 and 3, bad options and names are refused as Redis refuses
/// them, and a refused `HELLO` switches nothing.
#[test]
fn hello_refusals_and_options() {
    let server = Server::start();
    let mut raw = server.raw();
    let cases: &[(&[&str], &str)] = &[
        (&["HELLO", "4"], "NOPROTO unsupported protocol version"),
        (&["HELLO", "1"], "NOPROTO unsupported protocol version"),
        (&["HELLO", "-3"], "NOPROTO unsupported protocol version"),
        (
            &["HELLO", "three"],
            "ERR Protocol version is not an integer or out of range",
        ),
        (
            &["HELLO", "03"],
            "ERR Protocol version is not an integer or out of range",
        ),
        (
            &["HELLO", "3", "BOGUS"],
            "ERR Syntax error in HELLO option 'BOGUS'",
        ),
        (
            &["HELLO", "3", "AUTH", "default"],
            "ERR Syntax error in HELLO option 'AUTH'",
        ),
        (
            &["HELLO", "3", "SETNAME"],
            "ERR Syntax error in HELLO option 'SETNAME'",
        ),
        (
            &["HELLO", "3", "SETNAME", "two words"],
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ),
        (
            &["HELLO", "3", "AUTH", "bob", "x"],
            "WRONGPASS invalid username-password pair or user is disabled.",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(raw.call_bytes(2, args), format!("-{want}\r\n"), "{args:?}");
    }
    // None of them switched the protocol or named the connection.
    assert_eq!(raw.call_bytes(2, &["GET", "missing"]), "$-1\r\n");
    assert_eq!(raw.call_bytes(2, &["CLIENT", "GETNAME"]), "$-1\r\n");
    // With no password configured, `default` has none (Redis's nopass): any
    // password is accepted, as Redis accepts it.
    let Resp3Frame::Map { data, .. } = raw.call3(&[
        "hello", "3", "auth", "default", "anything", "setname", "app",
    ]) else {
        panic!("HELLO 3 did not answer a map");
    };
    let proto = data
        .iter()
        .find_map(|(k, v)| (k.as_str() == Some("proto")).then_some(v.clone()));
    assert_eq!(
        proto,
        Some(Resp3Frame::Number {
            data: 3,
            attributes: None
        })
    );
    assert_eq!(raw.call_bytes(3, &["CLIENT", "GETNAME"]), "$3\r\napp\r\n");
    // HELLO's reply is the map only after every option passed.
    assert_eq!(
        raw.call_bytes(3, &["HELLO", "2", "SETNAME", "bad name"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(raw.call_bytes(3, &["GET", "missing"]), "_\r\n");
}

/// `CLIENT SETINFO` keeps the library name and version on the connection, and
/// `CLIENT INFO` shows them; the maintenance-notification handshake redis-py tries
/// gets Redis 7's unknown-subcommand error, which redis-py accepts.
#[test]
fn client_setinfo_is_kept_per_connection() {
    let server = Server::start();
    let mut raw = server.raw();
    assert_eq!(
        raw.call_bytes(2, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        "+OK\r\n"
    );
    assert_eq!(
        raw.call_bytes(2, &["client", "setinfo", "lib-ver", "8.1.0"]),
        "+OK\r\n"
    );
    let id = client_id(&mut raw, 2);
    let info = raw.call_bytes(2, &["CLIENT", "INFO"]);
    let line = info.split("\r\n").nth(1).expect("a bulk string");
    let line = line.strip_suffix('\n').expect("CLIENT INFO ends its line");
    assert!(
        line.starts_with(&format!("id={id} addr=127.0.0.1:")),
        "{line}"
    );
    assert!(
        line.ends_with(" db=0 user=default resp=2 lib-name=redis-py lib-ver=8.1.0"),
        "{line}"
    );
    assert!(line.contains(&format!(" laddr={} ", server.addr)), "{line}");
    // Another connection has its own.
    let mut other = Raw::connect(server.addr);
    let theirs = other.call_bytes(2, &["CLIENT", "INFO"]);
    assert!(theirs.contains(" lib-name= lib-ver=\n"), "{theirs}");
    assert_eq!(
        raw.call_bytes(
            2,
            &[
                "CLIENT",
                "MAINT_NOTIFICATIONS",
                "ON",
                "moving-endpoint-type",
                "internal-ip"
            ]
        ),
        "-ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.\r\n"
    );
}

/// redis-rs in RESP3 mode (it opens with `HELLO 3` and two `CLIENT SETINFO`s in
/// one pipeline): strings, nulls, pipelines and the maps it receives.
#[test]
fn redis_rs_speaks_resp3() {
    let server = Server::start();
    let mut con = server
        .redis_url("", "?protocol=resp3")
        .expect("connect with RESP3");
    let _: () = con.set("k", "v").expect("SET");
    let got: Option<String> = con.get("k").expect("GET");
    assert_eq!(got.as_deref(), Some("v"));
    let missing: Value = redis::cmd("GET")
        .arg("missing")
        .query(&mut con)
        .expect("GET");
    assert_eq!(missing, Value::Nil);
    let (a, n, all): (String, i64, Vec<Option<String>>) = redis::pipe()
        .set("a", "1")
        .ignore()
        .get("a")
        .incr("n", 5)
        .mget(&["a", "missing"])
        .query(&mut con)
        .expect("pipeline");
    assert_eq!((a.as_str(), n), ("1", 5));
    assert_eq!(all, vec![Some("1".to_string()), None]);
    let hello: Value = redis::cmd("HELLO").query(&mut con).expect("HELLO");
    let Value::Map(fields) = hello else {
        panic!("HELLO is not a map in RESP3: {hello:?}");
    };
    assert!(fields.contains(&(Value::BulkString(b"proto".to_vec()), Value::Int(3))));
    let client: Value = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut con)
        .expect("CLIENT INFO");
    let Value::VerbatimString { text, .. } = client else {
        panic!("CLIENT INFO is not verbatim in RESP3: {client:?}");
    };
    assert!(text.contains("resp=3 lib-name=redis-rs lib-ver="), "{text}");
    let err = redis::cmd("INCR")
        .arg("k")
        .query::<i64>(&mut con)
        .expect_err("INCR on a string");
    assert_eq!(
        redis_error(&err),
        "ERR value is not an integer or out of range"
    );
}
