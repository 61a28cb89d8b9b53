//! The wire: hostile and malformed input closes only the offending connection with
//! `-ERR Protocol error: ...`, partial commands are reassembled, connection limits
//! and shutdown behave.

use std::io::Write;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;

use super::support::{PATIENCE, Server, encode, error_text, small_limits};

fn pong() -> OwnedFrame {
    OwnedFrame::SimpleString(b"PONG".to_vec())
}

/// Sends `input`, expects `-ERR Protocol error: <want>` and a closed connection,
/// then checks that a new client is still served.
fn refused(server: &Server, input: &[u8], want: &str) {
    let mut raw = server.raw();
    raw.send_bytes(input);
    let reply = raw.reply().expect("an error reply before the close");
    assert_eq!(
        error_text(&reply),
        format!("ERR Protocol error: {want}"),
        "input {}",
        input.escape_ascii()
    );
    assert!(raw.closed(), "connection left open after {want}");
    assert_eq!(server.raw().call(&["PING"]), pong());
}

#[test]
fn default_limits_refuse_huge_declarations_before_any_body() {
    let server = Server::start();
    // Just over Redis's 512 MiB bulk limit: refused on the header alone.
    refused(
        &server,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870913\r\n",
        "invalid bulk length",
    );
    // Just over the argument-count cap.
    refused(&server, b"*1048577\r\n", "invalid multibulk length");
    // Exactly 512 MiB is allowed: the server waits for the body instead of failing.
    let mut raw = server.raw();
    raw.send_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nx");
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    let waiting = matches!(
        std::io::Read::read(&mut raw.stream, &mut probe),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    assert!(waiting, "a 512 MiB bulk header must be accepted");
}

#[test]
fn malformed_input_is_refused_with_redis_texts() {
    let server = Server::start_with(|config| config.limits = small_limits());
    let big = "x".repeat(65);
    let cases: Vec<(Vec<u8>, String)> = vec![
        (b"PING\r\n".to_vec(), "expected '*', got 'P'".into()),
        (
            b"\x16\x03\x01\x02\x00".to_vec(),
            "expected '*', got '\\x16'".into(),
        ),
        (b"*1\r\n:1\r\n".to_vec(), "expected '$', got ':'".into()),
        (b"*one\r\n".to_vec(), "invalid multibulk length".into()),
        (b"*9\r\n".to_vec(), "invalid multibulk length".into()),
        (b"*1\r\n$-1\r\n".to_vec(), "invalid bulk length".into()),
        (b"*1\r\n$1x\r\n".to_vec(), "invalid bulk length".into()),
        (
            b"*1\r\n$4\r\nPINGxx".to_vec(),
            "bulk string of 4 bytes is not followed by CRLF".into(),
        ),
        (
            format!("*{}", "1".repeat(40)).into_bytes(),
            "too big mbulk count string".into(),
        ),
        (
            format!("*1\r\n${}", "1".repeat(40)).into_bytes(),
            "too big bulk count string".into(),
        ),
        (
            encode(&[b"SET", b"k", big.as_bytes()]),
            "invalid bulk length".into(),
        ),
        (
            encode(&[b"MSET", &[b'a'; 60], &[b'b'; 60], &[b'c'; 60], &[b'd'; 60]]),
            "command of at least 282 bytes exceeds the limit of 256 bytes".into(),
        ),
        // Nested arrays would overflow a recursive parser's stack; they are refused at
        // the first nested header.
        (b"*1\r\n".repeat(100_000), "expected '$', got '*'".into()),
    ];
    for (input, want) in cases {
        refused(&server, &input, &want);
    }
}

#[test]
fn replies_before_a_protocol_error_are_delivered() {
    let server = Server::start();
    let mut raw = server.raw();
    let mut input = encode(&[b"PING"]);
    input.extend(encode(&[b"SET", b"k", b"v"]));
    input.extend_from_slice(b"*1\r\n+PING\r\n");
    input.extend(encode(&[b"GET", b"k"]));
    raw.send_bytes(&input);
    assert_eq!(raw.reply(), Some(pong()));
    assert_eq!(raw.reply(), Some(OwnedFrame::SimpleString(b"OK".to_vec())));
    let reply = raw.reply().expect("protocol error");
    assert_eq!(
        error_text(&reply),
        "ERR Protocol error: expected '$', got '+'"
    );
    assert_eq!(raw.reply(), None, "nothing after the protocol error runs");
    assert_eq!(
        server.raw().call(&["GET", "k"]),
        OwnedFrame::BulkString(b"v".to_vec())
    );
}

#[test]
fn commands_split_across_many_writes_are_reassembled() {
    let server = Server::start();
    let mut raw = server.raw();
    raw.stream.set_nodelay(true).expect("nodelay");
    let mut input = encode(&[b"SET", b"key", b"a value\r\nwith CRLF"]);
    input.extend_from_slice(b"*0\r\n*-1\r\n");
    input.extend(encode(&[b"GET", b"key"]));
    for byte in &input {
        raw.stream.write_all(&[*byte]).expect("write");
        raw.stream.flush().expect("flush");
    }
    assert_eq!(raw.reply(), Some(OwnedFrame::SimpleString(b"OK".to_vec())));
    // Empty arrays get no reply, as in Redis: the next reply is GET's.
    assert_eq!(
        raw.reply(),
        Some(OwnedFrame::BulkString(b"a value\r\nwith CRLF".to_vec()))
    );
}

#[test]
fn clients_over_the_limit_are_told_and_closed() {
    let server = Server::start_with(|config| config.max_clients = 1);
    let mut first = server.raw();
    assert_eq!(first.call(&["PING"]), pong());
    let mut second = server.raw();
    let reply = second.reply().expect("a refusal");
    assert_eq!(error_text(&reply), "ERR max number of clients reached");
    assert!(second.closed());
    drop(first);
    // The slot frees once the server sees the close; retry for a bounded time.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut third = server.raw();
        third.send_bytes(&encode(&[b"PING"]));
        match third.reply() {
            Some(reply) if reply == pong() => break,
            other => {
                assert!(Instant::now() < deadline, "slot never freed: {other:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn shutdown_closes_connections_and_returns() {
    let server = Server::start();
    let addr = server.addr;
    let mut raw = server.raw();
    assert_eq!(raw.call(&["PING"]), pong());
    server.stop().expect("serve returns Ok after shutdown");
    assert!(raw.closed(), "open connection survived shutdown");
    let refused = std::net::TcpStream::connect_timeout(&addr, PATIENCE);
    assert!(refused.is_err(), "listener still accepting");
}

/// Found by the `resp_commands` fuzz target (corpus file
/// `regression-integer-below-power-of-ten`): an integer reply just below a power
/// of ten went out followed by a NUL byte, so the client misread the next reply.
#[test]
fn fuzz_regression_large_integer_reply_is_followed_by_nothing() {
    let server = Server::start();
    let mut raw = server.raw();
    for n in ["999999999999999", "-999999999999999202"] {
        let reply = raw.call(&["INCRBY", &format!("k{n}"), n]);
        assert_eq!(reply, OwnedFrame::Integer(n.parse().expect("an i64")));
        assert_eq!(raw.call(&["PING"]), pong());
    }
}

/// The same over RESP3 (`HELLO 3`): redis-protocol's RESP3 encoder miscounted the
/// same integers, so the connection's own writer covers both protocols.
#[test]
fn fuzz_regression_large_integer_reply_is_followed_by_nothing_in_resp3() {
    let server = Server::start();
    let mut raw = server.raw();
    raw.call3(&["HELLO", "3"]);
    for n in ["999999999999999", "-999999999999999202"] {
        let reply = raw.call_bytes(3, &["INCRBY", &format!("k{n}"), n]);
        assert_eq!(reply, format!(":{n}\r\n"));
        assert_eq!(raw.call_bytes(3, &["PING"]), "+PONG\r\n");
    }
}
