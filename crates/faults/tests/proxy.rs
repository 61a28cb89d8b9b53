//! The link proxy over real TCP: it forwards, delays, cuts (closing what was open
//! and holding new connections without forwarding) and heals, one direction at a
//! time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sealkv_faults::proxy::{Mode, Network};

/// An echo server standing in for node 2's Raft port; it reports each connection.
fn echo_server() -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = tx.send(());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn network() -> (Network, mpsc::Receiver<()>) {
    let (echo, accepted) = echo_server();
    let unused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    (Network::new(&[(1, unused), (2, echo)]), accepted)
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Whether the peer closed `s` (EOF or reset) within a few seconds.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn a_passing_link_forwards_both_ways() {
    let (net, _accepted) = network();
    let mut s = net.dial(1, 2).unwrap();
    assert_eq!(round_trip(&mut s, b"hello").unwrap(), b"hello");
    assert!(net.faults().is_empty());
    assert_eq!(
        net.peers_for(
            1,
            &[
                (1, "127.0.0.1:7001".parse().unwrap()),
                (2, "127.0.0.1:7002".parse().unwrap())
            ]
        )
        .split(',')
        .next(),
        Some("1=127.0.0.1:7001"),
        "a node reaches itself directly"
    );
}

#[test]
fn a_cut_closes_open_connections_and_holds_new_ones_until_healed() {
    let (mut net, accepted) = network();
    let mut open = net.dial(1, 2).unwrap();
    assert_eq!(round_trip(&mut open, b"a").unwrap(), b"a");
    accepted.recv_timeout(Duration::from_secs(5)).unwrap();

    net.cut_one_way(1, 2);
    assert!(
        closed(&mut open),
        "the open connection is closed by the cut"
    );
    assert_eq!(net.faults(), vec![((1, 2), Mode::Cut)]);
    assert_eq!(net.cuts(), 1);

    // A new connection is accepted but goes nowhere: nothing reaches the peer, and
    // nothing comes back.
    let mut held = net.dial(1, 2).unwrap();
    held.write_all(b"lost").unwrap();
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4];
    let e = held
        .read(&mut buf)
        .expect_err("nothing comes back while cut");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert!(
        accepted.try_recv().is_err(),
        "the peer never saw the held connection"
    );

    net.heal();
    assert!(closed(&mut held), "healing closes the held connection");
    let mut fresh = net.dial(1, 2).unwrap();
    assert_eq!(round_trip(&mut fresh, b"again").unwrap(), b"again");
    assert!(net.faults().is_empty());
}

#[test]
fn a_partition_cuts_both_directions_and_isolate_cuts_every_link_of_a_node() {
    let (mut net, _accepted) = network();
    net.partition(&[1], &[2]);
    assert_eq!(net.faults(), vec![((1, 2), Mode::Cut), ((2, 1), Mode::Cut)]);
    net.heal();
    net.isolate(2);
    assert_eq!(net.faults().len(), 2);
    net.heal();
    assert!(net.faults().is_empty());
}

#[test]
fn a_delayed_link_forwards_in_order_and_no_sooner_than_the_delay() {
    let (mut net, _accepted) = network();
    let delay = Duration::from_millis(200);
    net.delay_all(delay);
    let mut s = net.dial(1, 2).unwrap();
    let started = Instant::now();
    s.write_all(b"one").unwrap();
    s.write_all(b"two").unwrap();
    let mut got = vec![0u8; 6];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"onetwo");
    // Both directions are delayed: the echo comes back after two delays at least.
    assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());
}
