//! The backend seam: each `ApiError` becomes its documented error reply, promptly,
//! and the connection stays usable.

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sealkv_node::resp::ApiError;

use super::support::{Mode, PATIENCE, Server, error_text};

#[test]
fn api_errors_become_clear_error_replies() {
    let server = Server::start();
    let mut raw = server.raw();
    let cases = [
        (
            ApiError::NotLeader {
                leader: Some("10.0.0.2:6379".into()),
            },
            "NOTLEADER this node is not the leader; the leader is at 10.0.0.2:6379",
        ),
        (
            ApiError::NotLeader { leader: None },
            "NOTLEADER this node is not the leader; the leader is unknown",
        ),
        (
            ApiError::NoLeader,
            "TRYAGAIN no leader: an election is in progress",
        ),
        (
            ApiError::Halted("entry 9: unknown opcode 0x02".into()),
            "HALTED the state machine is halted: entry 9: unknown opcode 0x02",
        ),
        (
            ApiError::Timeout,
            "TIMEOUT the request timed out; a write may or may not have been applied",
        ),
        (
            ApiError::Integrity("bad tag\r\non key k".into()),
            "INTEGRITY stored data failed an integrity check: bad tag  on key k",
        ),
        (
            ApiError::Internal("disk on fire".into()),
            "ERR internal error: disk on fire",
        ),
    ];
    for (failure, want) in cases {
        server.backend.set_mode(Mode {
            fail: Some(failure.clone()),
            ..Mode::default()
        });
        for command in [
            &["SET", "k", "v"][..],
            &["GET", "k"],
            &["MGET", "a", "b"],
            &["INCR", "n"],
            &["DBSIZE"],
            &["TTL", "k"],
        ] {
            let reply = raw.call(command);
            assert_eq!(error_text(&reply), want, "{failure:?} on {command:?}");
        }
        // Commands that need no backend still work, on the same connection.
        assert_eq!(
            raw.call(&["PING"]),
            OwnedFrame::SimpleString(b"PONG".to_vec())
        );
    }
    server.backend.set_mode(Mode::default());
    assert_eq!(
        raw.call(&["SET", "k", "v"]),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
}

#[test]
fn a_backend_that_never_answers_times_out() {
    let server = Server::start_with(|config| {
        config.request_timeout = Duration::from_millis(200);
    });
    server.backend.set_mode(Mode {
        delay: Some(PATIENCE * 2),
        ..Mode::default()
    });
    let mut raw = server.raw();
    let started = Instant::now();
    let reply = raw.call(&["GET", "k"]);
    assert_eq!(
        error_text(&reply),
        "TIMEOUT the request timed out; a write may or may not have been applied"
    );
    assert!(started.elapsed() < PATIENCE, "the timeout did not fire");
    let reply = raw.call(&["INFO"]);
    assert!(
        matches!(reply, OwnedFrame::BulkString(_)),
        "INFO needs no delayed call: {reply:?}"
    );
    server.backend.set_mode(Mode::default());
    assert_eq!(raw.call(&["GET", "k"]), OwnedFrame::Null);
}
