//! No acknowledged write is lost when nodes die: SIGKILL of a random node (the leader
//! included) again and again under continuous writes from several clients, then of
//! the whole cluster, with encryption on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sealkv_faults::workload::{self, ClientIds, Outcome, Stop, Tally};
use sealkv_linearizability::{Output, Recorder};

use crate::cluster::{FaultCluster, RECOVERY};
use crate::scale::{Scale, assert_linearizable, report};
use crate::support::{assert_no_nonce_repeats, eventually, serial};

/// Writer threads.
const WRITERS: u64 = 4;
/// Keys each writer owns (only it writes them, so its last acknowledged write is
/// the value each must hold at the end).
const OWN_KEYS: u64 = 3;
/// Acknowledged writes to wait for between two faults.
const PROGRESS: u64 = 30;

/// What one writer knows of a key it owns: its last acknowledged value, and the
/// values it wrote after that with an unknown outcome (any of which may have won).
#[derive(Debug, Default, Clone)]
struct Expect {
    acked: Option<Vec<u8>>,
    maybe: Vec<Vec<u8>>,
}

fn own_key(writer: u64, k: u64) -> String {
    format!("own:{writer}:{k}")
}

#[test]
fn kill_cycles_lose_no_acknowledged_write() {
    let _serial = serial();
    let scale = Scale::from_env();
    let mut rng = fastrand::Rng::with_seed(scale.seed);
    let mut c = FaultCluster::start(3, true, &[]);
    let recorder = Recorder::new();
    let ids = ClientIds::default();
    let tally = Arc::new(Tally::default());
    let stop = Stop::default();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = c.client(&ids, &recorder, &tally);
            let stop = stop.clone();
            let seed = scale.seed.wrapping_add(w);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut expect: BTreeMap<String, Expect> = BTreeMap::new();
                let shared = ["shared:r".to_string()];
                let counters = ["shared:c".to_string()];
                while !stop.stopped() {
                    // Mostly writes to the writer's own keys; now and then a racing
                    // write or read on the shared keys.
                    if rng.u8(..4) == 0 {
                        let outcome = match rng.u8(..3) {
                            0 => client.incr(&counters[0]),
                            1 => client.get(&shared[0]),
                            _ => {
                                let v = client.unique_value();
                                client.set(&shared[0], v)
                            }
                        };
                        workload::pace(&outcome);
                        continue;
                    }
                    let key = own_key(w, rng.u64(..OWN_KEYS));
                    let value = client.unique_value();
                    let outcome = client.set(&key, value.clone());
                    let e = expect.entry(key).or_default();
                    match &outcome {
                        Outcome::Ok(_) => {
                            e.acked = Some(value);
                            e.maybe.clear();
                        }
                        Outcome::Unknown(_) => e.maybe.push(value),
                        Outcome::Fail(_) => {}
                    }
                    workload::pace(&outcome);
                }
                expect
            })
        })
        .collect();

    let mut cycles = 0;
    let mut leaders_killed = 0;
    while cycles < scale.kill_cycles || Tally::get(&tally.ops) < scale.min_ops {
        let leader = c.leader();
        // Every other cycle kills the leader; the others a random follower.
        let victim = if cycles % 2 == 0 {
            leader
        } else {
            let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
            followers[rng.usize(..followers.len())]
        };
        if victim == leader {
            leaders_killed += 1;
        }
        let before = Tally::get(&tally.acked_writes);
        c.kill(victim);
        let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != victim).collect();
        c.leader_among(&rest);
        c.progress(
            &tally,
            before,
            PROGRESS,
            &format!("with node {victim} down"),
        );
        c.restart(victim);
        c.leader();
        cycles += 1;
    }
    for _ in 0..scale.cluster_kills {
        let before = Tally::get(&tally.acked_writes);
        for id in c.ids() {
            c.kill(id);
        }
        for id in c.ids() {
            c.restart(id);
        }
        c.leader();
        c.progress(&tally, before, PROGRESS, "after a whole-cluster restart");
    }
    stop.stop();
    let expected: Vec<BTreeMap<String, Expect>> = writers
        .into_iter()
        .map(|t| t.join().expect("writer thread"))
        .collect();
    c.caught_up();
    c.assert_healthy();

    // Every key a writer owns holds its last acknowledged value (or a later write
    // whose outcome it never learned), read linearizably through the leader.
    let mut reader = c.client(&ids, &recorder, &tally);
    let mut checked = 0;
    let mut lost = Vec::new();
    for (w, keys) in expected.iter().enumerate() {
        for (key, e) in keys {
            let got = eventually(&format!("GET {key}"), RECOVERY, || match reader.get(key) {
                Outcome::Ok(Output::Value(v)) => Some(v),
                _ => None,
            });
            checked += 1;
            let fine = got == e.acked || got.as_ref().is_some_and(|g| e.maybe.contains(g));
            if !fine {
                lost.push(format!(
                    "writer {w} key {key}: read {:?}, last acknowledged {:?}",
                    got.map(|g| String::from_utf8_lossy(&g).into_owned()),
                    e.acked
                        .as_ref()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                ));
            }
        }
    }
    // Every replica holds the same values.
    for key in expected.iter().flat_map(|k| k.keys()) {
        let values: Vec<Option<String>> = c.nodes.iter().map(|n| read_local(n, key)).collect();
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "replicas disagree on {key}: {values:?}"
        );
    }
    assert!(
        lost.is_empty(),
        "acknowledged writes lost:\n{}",
        lost.join("\n")
    );
    assert_eq!(Tally::get(&tally.halted), 0, "a client was answered HALTED");
    assert!(checked >= WRITERS, "only {checked} keys were written");

    let history = assert_linearizable(&recorder, "kill_cycles");
    let nonce_pairs = assert_no_nonce_repeats(c.ledger_dir());
    report(
        "kill_cycles",
        serde_json::json!({
            "kill_cycles": cycles,
            "leaders_killed": leaders_killed,
            "cluster_kills": scale.cluster_kills,
            "ops": Tally::get(&tally.ops),
            "ok": Tally::get(&tally.ok),
            "fail": Tally::get(&tally.fail),
            "unknown": Tally::get(&tally.unknown),
            "acked_writes": Tally::get(&tally.acked_writes),
            "keys_checked": checked,
            "lost_writes": lost.len(),
            "histories": [history],
            "nonce_pairs": nonce_pairs,
            "nonce_repeats": 0,
        }),
    );
}

/// What node `node` has applied for `key` (a `READONLY` read), retried until the
/// node answers.
pub fn read_local(node: &crate::support::Node, key: &str) -> Option<String> {
    eventually(
        &format!("READONLY GET {key} on node {}", node.id),
        Duration::from_secs(30),
        || {
            let mut conn = node.try_redis()?;
            redis::cmd("READONLY").query::<()>(&mut conn).ok()?;
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut conn)
                .ok()
        },
    )
}
