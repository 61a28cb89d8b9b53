//! AUTH: with a password, nothing but `AUTH`, `HELLO` and `QUIT` runs before the
//! client authenticates (`NOAUTH`), a wrong password is `WRONGPASS` and counted,
//! `AUTH pw`, `AUTH default pw` and `HELLO 3 AUTH default pw` let it in, and an
//! unauthenticated client cannot make the server buffer large commands. Without a
//! password, `AUTH` behaves as Redis's does for a `nopass` default user.

use redis::Commands;

use super::support::{Raw, Server, redis_error};

const PASSWORD: &str = "s3cret pass";
const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const HELLO_NOAUTH: &str = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";

/// `(command, reply)` on a connection that has not authenticated.
const UNAUTHENTICATED: &[(&[&str], &str)] = &[
    (&["PING"], NOAUTH),
    (&["GET", "k"], NOAUTH),
    (&["SET", "k", "v"], NOAUTH),
    (&["CLIENT", "SETINFO", "LIB-NAME", "x"], NOAUTH),
    (&["COMMAND"], NOAUTH),
    (&["INFO"], NOAUTH),
    // Name and arity are checked first, as in Redis.
    (
        &["FLUSHALL"],
        "-ERR unknown command 'FLUSHALL', with args beginning with: \r\n",
    ),
    (
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    ),
    (&["HELLO"], HELLO_NOAUTH),
    (&["HELLO", "3"], HELLO_NOAUTH),
    (&["HELLO", "2", "SETNAME", "x"], HELLO_NOAUTH),
    (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
    (&["AUTH", "wrong"], WRONGPASS),
    (&["AUTH", "default", "wrong"], WRONGPASS),
    (&["AUTH", "bob", PASSWORD], WRONGPASS),
    (&["AUTH", "default", PASSWORD, "x"], "-ERR syntax error\r\n"),
    (&["HELLO", "3", "AUTH", "default", "wrong"], WRONGPASS),
];

#[test]
fn nothing_runs_before_authentication() {
    let (server, failures) = Server::with_password(PASSWORD);
    let mut raw = server.raw();
    for (args, want) in UNAUTHENTICATED {
        assert_eq!(raw.call_bytes(2, args), *want, "{args:?}");
    }
    // The wrong passwords and the unknown user, no other refusal.
    assert_eq!(failures.get(), 4);
    // Still RESP2 after the refused HELLO 3 ... AUTH.
    assert_eq!(raw.call_bytes(2, &["AUTH", PASSWORD]), "+OK\r\n");
    assert_eq!(raw.call_bytes(2, &["GET", "missing"]), "$-1\r\n");
    assert_eq!(raw.call_bytes(2, &["PING"]), "+PONG\r\n");
    // A wrong password later is refused and counted, and leaves the connection
    // authenticated, as Redis does.
    assert_eq!(raw.call_bytes(2, &["AUTH", "wrong"]), WRONGPASS);
    assert_eq!(failures.get(), 5);
    assert_eq!(raw.call_bytes(2, &["SET", "k", "v"]), "+OK\r\n");
    // Other connections are not authenticated by this one.
    let mut other = server.raw();
    assert_eq!(other.call_bytes(2, &["GET", "k"]), NOAUTH);
    // QUIT needs no password.
    assert_eq!(other.call_bytes(2, &["QUIT"]), "+OK\r\n");
    assert!(other.closed(), "QUIT must close the connection");
}

/// `AUTH default pw` and `HELLO 3 AUTH default pw [SETNAME n]` authenticate; the
/// latter also switches to RESP3.
#[test]
fn auth_default_and_hello_auth() {
    let (server, failures) = Server::with_password(PASSWORD);
    let mut raw = server.raw();
    assert_eq!(raw.call_bytes(2, &["auth", "default", PASSWORD]), "+OK\r\n");
    assert_eq!(raw.call_bytes(2, &["SET", "k", "v"]), "+OK\r\n");

    let mut raw = server.raw();
    let hello = raw.call_bytes(
        3,
        &["HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "app"],
    );
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(raw.call_bytes(3, &["GET", "missing"]), "_\r\n");
    assert_eq!(raw.call_bytes(3, &["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(raw.call_bytes(3, &["CLIENT", "GETNAME"]), "$3\r\napp\r\n");

    // HELLO 2 AUTH also authenticates; the protocol stays RESP2.
    let mut raw = server.raw();
    let hello = raw.call_bytes(2, &["HELLO", "2", "AUTH", "default", PASSWORD]);
    assert!(hello.starts_with("*14\r\n"), "{hello}");
    assert_eq!(raw.call_bytes(2, &["GET", "missing"]), "$-1\r\n");
    assert_eq!(failures.get(), 0);
}

/// Before authentication Redis's small limits apply (at most 10 arguments of at
/// most 16 KiB); after it, the configured ones.
#[test]
fn unauthenticated_clients_cannot_send_large_commands() {
    let (server, _) = Server::with_password(PASSWORD);
    let refused = |input: &[u8], want: &str| {
        let mut raw = server.raw();
        raw.send_bytes(input);
        assert_eq!(
            raw.reply(),
            Some(redis_protocol::resp2::types::OwnedFrame::Error(format!(
                "ERR Protocol error: {want}"
            )))
        );
        assert!(raw.closed(), "connection left open after {want}");
    };
    refused(b"*11\r\n", "unauthenticated multibulk length");
    refused(
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16385\r\n",
        "unauthenticated bulk length",
    );
    let big = "x".repeat(64 * 1024);
    let mut raw = server.raw();
    assert_eq!(raw.call_bytes(2, &["AUTH", PASSWORD]), "+OK\r\n");
    assert_eq!(raw.call_bytes(2, &["SET", "big", &big]), "+OK\r\n");
    assert_eq!(
        raw.call_bytes(
            2,
            &["DEL", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
        ),
        ":0\r\n"
    );
}

/// Without a password the default user has none (Redis's `nopass`): `AUTH pw` is
/// Redis's configuration error, `AUTH default anything` is OK, another user is
/// refused.
#[test]
fn without_a_password_auth_behaves_like_redis() {
    let server = Server::start();
    let mut raw = server.raw();
    assert_eq!(
        raw.call_bytes(2, &["AUTH", "secret"]),
        "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"
    );
    assert_eq!(
        raw.call_bytes(2, &["AUTH", "default", "anything"]),
        "+OK\r\n"
    );
    assert_eq!(raw.call_bytes(2, &["AUTH", "bob", "x"]), WRONGPASS);
    assert_eq!(raw.call_bytes(2, &["PING"]), "+PONG\r\n");
    // No unauthenticated limits without a password.
    let mut raw = Raw::connect(server.addr);
    let args: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let mut del = vec!["DEL"];
    del.extend(args.iter().map(String::as_str));
    assert_eq!(raw.call_bytes(2, &del), ":0\r\n");
}

/// redis-rs with a password in its URL, in RESP2 (`AUTH pw`) and RESP3 (`HELLO 3
/// AUTH default pw`); without one or with a wrong one it cannot connect, or its
/// commands are refused.
#[test]
fn redis_rs_authenticates() {
    let (server, failures) = Server::with_password(PASSWORD);
    let credentials = format!(":{}@", PASSWORD.replace(' ', "%20"));
    for query in ["", "?protocol=resp3"] {
        let mut con = server
            .redis_url(&credentials, query)
            .unwrap_or_else(|e| panic!("connect {query}: {e}"));
        let _: () = con.set("k", query).expect("SET");
        let (got, n): (String, i64) = redis::pipe()
            .get("k")
            .incr("n", 1)
            .query(&mut con)
            .expect("pipeline");
        assert_eq!(got, query);
        assert!(n > 0);
    }
    let default_user = format!("default:{}@", PASSWORD.replace(' ', "%20"));
    let mut con = server
        .redis_url(&default_user, "?protocol=resp3")
        .expect("connect as default");
    let _: () = con.set("k", "v").expect("SET");
    assert_eq!(failures.get(), 0);

    let err = server
        .redis_url(":wrong@", "?protocol=resp3")
        .err()
        .expect("a wrong password must not connect");
    assert_eq!(
        redis_error(&err),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    // redis-rs reports a refused RESP2 `AUTH` without the server's text.
    let err = server.redis_url(":wrong@", "").err().expect("RESP2 too");
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
    assert_eq!(failures.get(), 2);
    let mut con = server.redis_url("", "").expect("no password: connects");
    let err = con.get::<_, Option<String>>("k").expect_err("NOAUTH");
    assert_eq!(redis_error(&err), "NOAUTH Authentication required.");
}
