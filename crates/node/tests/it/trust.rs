//! Who may talk to a node without TLS (DESIGN.md §11, "Trust"), through real
//! processes: a stranger on the Raft port sends crafted messages (each used to
//! panic raft-rs, stop the node or reach Raft unchecked) and abuses connections;
//! every one is dropped or closed and counted, and the cluster keeps serving. A
//! non-loopback address needs `--insecure`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use redis::{Commands, RedisResult};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);
const NORMAL: u8 = 0;
const SNAPSHOT: u8 = 1;

/// A raw connection to a Raft port, speaking the transport's wire format.
struct Wire(TcpStream);

impl Wire {
    fn connect(addr: &str) -> Wire {
        let s = TcpStream::connect(addr).expect("connect raft port");
        s.set_read_timeout(Some(LONG)).expect("read timeout");
        Wire(s)
    }

    /// Connects and sends a version-5 hello claiming `sender` on `lane`, announcing
    /// no addresses.
    fn hello(addr: &str, sender: u64, lane: u8) -> Wire {
        let mut w = Wire::connect(addr);
        let mut hello = b"SKVR\x05".to_vec();
        hello.extend(sender.to_be_bytes());
        hello.push(lane);
        hello.extend([0, 0]);
        w.raw(&hello);
        w
    }

    /// Writes bytes; a write to a connection the node closed may fail, which the
    /// callers' checks then show.
    fn raw(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes).and_then(|()| self.0.flush());
    }

    fn send(&mut self, m: &Message) {
        let bytes = m.write_to_bytes().expect("encode");
        let mut frame = u32::try_from(bytes.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        frame.extend(bytes);
        self.raw(&frame);
    }

    /// Waits until the node closes the connection (up to [`LONG`]); whether it did.
    fn closed_by_node(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Ends the connection and waits for the node to close its side: the node has
    /// then read every frame sent and freed the connection's (peer, lane) slot.
    fn close(mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
        assert!(self.closed_by_node(), "the node kept the connection open");
    }
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn dropped(node: &Node, reason: &str) -> u64 {
    node.metric(&format!(
        "sealkv_peer_messages_dropped_total{{reason=\"{reason}\"}}"
    ))
}

fn closed(node: &Node, reason: &str) -> u64 {
    node.metric(&format!(
        "sealkv_peer_connections_closed_total{{reason=\"{reason}\"}}"
    ))
}

/// Sends `m` to `node`'s Raft port over a connection claiming `sender` until the
/// node counts a drop for `reason` (a claim can be refused while the node still
/// holds a connection of the same peer and lane that just closed).
fn crafted(node: &Node, sender: u64, m: &Message, reason: &str) {
    let before = dropped(node, reason);
    eventually(&format!("node {} to drop: {reason}", node.id), LONG, || {
        if dropped(node, reason) > before {
            return Some(());
        }
        let mut w = Wire::hello(&node.raft, sender, NORMAL);
        w.send(m);
        w.close();
        (dropped(node, reason) > before).then_some(())
    });
}

/// `node` runs, has not halted or stopped, and the cluster takes a write that
/// `node` applies.
fn still_serving(c: &Cluster, node: u64, key: &str) {
    let n = &c.nodes[(node - 1) as usize];
    let status = n.status().expect("status");
    assert!(
        status["halted"].is_null() && status["fatal"].is_null(),
        "node {node}: {status}"
    );
    let leader = &c.nodes[(c.leader() - 1) as usize];
    eventually(&format!("SET {key}"), LONG, || {
        let r: RedisResult<String> = leader.try_redis()?.set(key, "v");
        r.ok()
    });
    eventually(&format!("node {node} to apply {key}"), LONG, || {
        let mut conn = n.try_redis()?;
        redis::cmd("READONLY").query::<()>(&mut conn).ok()?;
        let v: Option<String> = conn.get(key).ok()?;
        (v.as_deref() == Some("v")).then_some(())
    });
}

#[test]
fn crafted_peer_messages_are_dropped_and_the_node_keeps_serving() {
    let _serial = serial();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader();
    let victim = c.other_than(leader);
    let third = (1..=3)
        .find(|id| *id != leader && *id != victim)
        .expect("third node");
    // The stranger speaks for the third node, which is stopped so that no
    // connection of its own holds its slots; the other two keep a quorum.
    assert!(c.node(third).terminate().success());
    still_serving(&c, victim, "before");
    let term = c.node(victim).status().expect("status")["term"]
        .as_u64()
        .expect("term");
    let v = &c.nodes[(victim - 1) as usize];
    let l = &c.nodes[(leader - 1) as usize];

    // A heartbeat whose commit index is far past the follower's log: raft-rs
    // panics on it, and from the leader it would mean lost state.
    let mut hb = message(MessageType::MsgHeartbeat, third, victim, term);
    hb.commit = 1_000_000;
    crafted(v, third, &hb, "commit_past_log");
    still_serving(&c, victim, "after-heartbeat");

    // An empty proposal: raft-rs's leader panics ("stepped empty MsgProp").
    let empty = message(MessageType::MsgPropose, third, leader, 0);
    crafted(l, third, &empty, "empty_proposal");
    let mut no_data = empty.clone();
    no_data.set_entries(vec![Entry::default()].into());
    crafted(l, third, &no_data, "empty_proposal");
    still_serving(&c, leader, "after-empty-proposal");

    // A sender that is not the node the hello claimed.
    let forged = message(MessageType::MsgHeartbeat, leader, victim, term);
    crafted(v, third, &forged, "from_mismatch");

    // A type raft-rs only makes for itself (MsgHup would start an election).
    let hup = message(MessageType::MsgHup, third, victim, 0);
    crafted(v, third, &hup, "local_only");

    // An append past the log with a previous-entry term of 0, which raft-rs takes
    // as a match.
    let mut append = message(MessageType::MsgAppend, third, victim, term);
    append.index = 1_000_000;
    append.commit = 1_000_000;
    crafted(v, third, &append, "malformed_append");
    still_serving(&c, victim, "after-crafted-messages");

    // A stranger claiming the leader's id while the leader is connected is refused
    // at its hello: its heartbeat past the log (which would stop the follower as
    // lost state) never reaches Raft.
    let lane_in_use = closed(v, "lane_in_use");
    let mut lost = message(MessageType::MsgHeartbeat, leader, victim, term);
    lost.commit = 1_000_000;
    eventually("the leader's lane to be in use", LONG, || {
        let mut w = Wire::hello(&v.raft, leader, NORMAL);
        w.send(&lost);
        assert!(
            w.closed_by_node(),
            "a second connection as the leader stayed open"
        );
        (closed(v, "lane_in_use") > lane_in_use).then_some(())
    });
    still_serving(&c, victim, "after-claiming-the-leader");

    // Garbage instead of a hello, and a frame above the normal lane's limit.
    let bad_hello = closed(v, "bad_hello");
    let mut garbage = Wire::connect(&v.raft);
    garbage.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(garbage.closed_by_node());
    eventually("bad_hello", LONG, || {
        (closed(v, "bad_hello") > bad_hello).then_some(())
    });
    let too_large = closed(v, "frame_too_large");
    eventually("frame_too_large", LONG, || {
        let mut w = Wire::hello(&v.raft, third, NORMAL);
        w.raw(&0x7fff_ffffu32.to_be_bytes());
        assert!(w.closed_by_node());
        (closed(v, "frame_too_large") > too_large).then_some(())
    });

    // A hello then silence, and silence without a hello: each closed after its
    // deadline (the idle timeout is 5 election timeouts, 2.5 s here; a hello has 5 s).
    let (idle, hello_timeout) = (closed(v, "idle_timeout"), closed(v, "hello_timeout"));
    let opened = Instant::now();
    let mut silent = Wire::hello(&v.raft, third, SNAPSHOT);
    let mut mute = Wire::connect(&v.raft);
    assert!(silent.closed_by_node(), "an idle connection stayed open");
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "closed before the idle timeout"
    );
    assert!(
        mute.closed_by_node(),
        "a connection without a hello stayed open"
    );
    assert!(opened.elapsed() >= Duration::from_secs(4));
    eventually("idle_timeout and hello_timeout", LONG, || {
        (closed(v, "idle_timeout") > idle && closed(v, "hello_timeout") > hello_timeout)
            .then_some(())
    });

    // Many connections at once: at most 8 from one address wait for their hello.
    let pending = closed(v, "too_many_pending");
    let mut many: Vec<Wire> = (0..24).map(|_| Wire::connect(&v.raft)).collect();
    eventually("too_many_pending", LONG, || {
        (closed(v, "too_many_pending") >= pending + 16).then_some(())
    });
    let refused = many
        .iter_mut()
        .map(Wire::closed_by_node_now)
        .filter(|closed| *closed)
        .count();
    assert!(refused >= 16, "{refused} of 24 closed");
    drop(many);
    still_serving(&c, victim, "after-many-connections");

    let log = v.log_text();
    assert!(
        log.contains(
            "dropped a raft message from a peer: commit index 1000000 is past this node's log"
        ),
        "{log}"
    );

    // The third node comes back under its own id and catches up.
    let peers = c.peers.clone();
    c.node(third).start(&peers);
    still_serving(&c, third, "third-is-back");
    for n in &c.nodes {
        assert!(n.status().is_some(), "node {} is down", n.id);
        assert!(
            !n.log_text().contains("panicked"),
            "node {}:\n{}",
            n.id,
            n.log_text()
        );
    }
}

impl Wire {
    /// Whether the node has already closed the connection (a read that does not
    /// wait).
    fn closed_by_node_now(&mut self) -> bool {
        self.0
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("read timeout");
        self.closed_by_node()
    }
}

/// A `--raft-addr`, `--redis-addr` or `--admin-addr` that is not loopback is
/// refused without `--insecure`, in one line naming the flag, before the data dir
/// is touched; with it the node starts, warns once, and still checks its peers.
#[test]
fn a_non_loopback_address_needs_insecure() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), 1, &[]);
    let any = |addr: &str| addr.replace("127.0.0.1", "0.0.0.0");
    for flag in ["--raft-addr", "--redis-addr", "--admin-addr"] {
        let mut cmd = sealkv();
        cmd.args(["start", "--data-dir"]).arg(&node.data_dir);
        for (f, addr) in [
            ("--raft-addr", &node.raft),
            ("--redis-addr", &node.redis),
            ("--admin-addr", &node.admin),
        ] {
            let addr = if f == flag { any(addr) } else { addr.clone() };
            cmd.args([f, &addr]);
        }
        let (ok, _, stderr) = run(&mut cmd);
        assert!(!ok, "{flag}: started");
        let last = stderr.lines().last().expect("an error line");
        assert!(
            last.starts_with(&format!("sealkv: {flag} 0.0.0.0:"))
                && last.contains("not a loopback address")
                && last.contains("--insecure"),
            "{stderr}"
        );
        assert!(!node.data_dir.exists(), "{flag}: the data dir was created");
    }

    node.raft = any(&node.raft);
    node.redis = any(&node.redis);
    node.set_flags(&["--insecure"]);
    node.start("");
    let status = eventually("a leader", LONG, || {
        node.status().filter(|s| s["role"] == "leader")
    });
    assert_eq!(status["id"], 1);
    let log = node.log_text();
    assert_eq!(
        log.matches("--insecure: serving on non-loopback").count(),
        1,
        "{log}"
    );
    assert!(log.contains("--raft-addr 0.0.0.0:") && log.contains("--redis-addr 0.0.0.0:"));

    // Its Raft port still checks who speaks: node 2 is not in its address book.
    let raft = node.raft.replace("0.0.0.0", "127.0.0.1");
    let mut w = Wire::hello(&raft, 2, NORMAL);
    let mut hb = message(MessageType::MsgHeartbeat, 2, 1, 99);
    hb.commit = 1_000_000;
    w.send(&hb);
    assert!(w.closed_by_node());
    eventually("unknown_peer", LONG, || {
        (closed(&node, "unknown_peer") == 1).then_some(())
    });
    assert!(node.exited().is_none(), "{}", node.log_text());
    assert_eq!(node.status().expect("status")["role"], "leader");
}
