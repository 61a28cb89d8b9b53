//! Histories of GET, SET, SET NX and INCR on a few keys, recorded by concurrent
//! clients while a nemesis kills and pauses the leader, partitions the cluster
//! (the leader on the minority side, or a follower alone), cuts one link one way
//! and delays every link, are linearizable. Encryption on.

use std::sync::Arc;
use std::time::Duration;

use sealkv_faults::workload::{self, ClientIds, Stop, Tally};
use sealkv_linearizability::Recorder;

use crate::cluster::FaultCluster;
use crate::scale::{Scale, assert_linearizable, report};
use crate::support::{assert_no_nonce_repeats, serial};

/// Client threads.
const CLIENTS: u64 = 5;
/// Acknowledged writes to wait for while a fault holds.
const PROGRESS: u64 = 15;

/// One kind of fault a round injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The leader alone on the minority side; the rest elect a new leader.
    IsolateLeader,
    /// A follower alone on the minority side; the leader keeps its majority.
    IsolateFollower,
    /// The leader cannot send to one follower; that follower still sends to it.
    OneWayCut,
    /// SIGSTOP of the leader, SIGCONT after the others moved on.
    PauseLeader,
    /// SIGKILL of the leader, then a restart.
    KillLeader,
    /// Every link delayed by 20 ms.
    Delay,
}

const ROUNDS: &[Fault] = &[
    Fault::IsolateLeader,
    Fault::PauseLeader,
    Fault::OneWayCut,
    Fault::IsolateFollower,
    Fault::KillLeader,
    Fault::Delay,
];

#[test]
fn histories_under_partitions_pauses_and_kills_are_linearizable() {
    let _serial = serial();
    let scale = Scale::from_env();
    let mut rng = fastrand::Rng::with_seed(scale.seed);
    let mut c = FaultCluster::start(3, true, &[]);
    let recorder = Recorder::new();
    let ids = ClientIds::default();
    let tally = Arc::new(Tally::default());
    let stop = Stop::default();
    let registers: Vec<String> = (0..2).map(|i| format!("reg:{i}")).collect();
    let counters = vec!["ctr:0".to_string()];

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = c.client(&ids, &recorder, &tally);
            let (stop, registers, counters) = (stop.clone(), registers.clone(), counters.clone());
            let seed = scale.seed.wrapping_add(i);
            std::thread::spawn(move || {
                workload::mixed(&mut client, &registers, &counters, &stop, seed)
            })
        })
        .collect();

    let mut partitions = 0;
    let mut kinds = Vec::new();
    let mut round = 0;
    // Consecutive rounds take consecutive kinds, from a random first one, so any
    // run of ROUNDS.len() rounds injects every kind.
    let first = rng.usize(..ROUNDS.len());
    // Every kind of fault at least once, then until the run has partitioned the
    // cluster and performed as many operations as asked.
    while round < ROUNDS.len()
        || partitions < scale.partitions
        || Tally::get(&tally.ops) < scale.min_ops
    {
        let fault = ROUNDS[(first + round) % ROUNDS.len()];
        let leader = c.leader();
        let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
        match fault {
            Fault::IsolateLeader => {
                c.net.isolate(leader);
                partitions += 1;
                c.leader_among(&followers);
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    &format!("with old leader {leader} cut off"),
                );
                c.net.heal();
            }
            Fault::IsolateFollower => {
                let f = followers[rng.usize(..followers.len())];
                c.net.isolate(f);
                partitions += 1;
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    &format!("with follower {f} cut off"),
                );
                c.net.heal();
            }
            Fault::OneWayCut => {
                let f = followers[rng.usize(..followers.len())];
                c.net.cut_one_way(leader, f);
                partitions += 1;
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    &format!("with link {leader} -> {f} cut"),
                );
                c.net.heal();
            }
            Fault::PauseLeader => {
                c.pause(leader);
                c.leader_among(&followers);
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    &format!("with leader {leader} paused"),
                );
                c.resume(leader);
            }
            Fault::KillLeader => {
                c.kill(leader);
                c.leader_among(&followers);
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    &format!("with leader {leader} killed"),
                );
                c.restart(leader);
            }
            Fault::Delay => {
                c.net.delay_all(Duration::from_millis(20));
                c.progress(
                    &tally,
                    Tally::get(&tally.acked_writes),
                    PROGRESS,
                    "with every link delayed",
                );
                c.net.heal();
            }
        }
        kinds.push(format!("{fault:?}"));
        c.leader();
        round += 1;
    }
    stop.stop();
    for t in clients {
        t.join().expect("client thread");
    }
    c.caught_up();
    c.assert_healthy();
    assert_eq!(Tally::get(&tally.halted), 0, "a client was answered HALTED");

    let history = assert_linearizable(&recorder, "partitions");
    let nonce_pairs = assert_no_nonce_repeats(c.ledger_dir());
    report(
        "partitions",
        serde_json::json!({
            "rounds": round,
            "partitions": partitions,
            "link_cuts": c.net.cuts(),
            "faults": kinds,
            "ops": Tally::get(&tally.ops),
            "ok": Tally::get(&tally.ok),
            "fail": Tally::get(&tally.fail),
            "unknown": Tally::get(&tally.unknown),
            "acked_writes": Tally::get(&tally.acked_writes),
            "histories": [history],
            "nonce_pairs": nonce_pairs,
            "nonce_repeats": 0,
        }),
    );
}
