//! Opcode dispatch and halt semantics (DESIGN.md §3): what applies, what halts, and
//! that a halt survives a restart and is never skipped.

use sealkv_encryption::applier::{Applied, ApplyError, RegistrationOutcome};
use sealkv_encryption::registry::WriterKey;
use sealkv_fsmwire::RegistrationPayload;
use sealkv_kv::{Entry, HaltCause, Halted, KvFsm, Outcome};

use crate::support::*;

const NODE: u64 = 0x0000_0001_0000_0009;
const TWIN: u64 = 0x0000_0002_0000_0009;

fn registration(dek_id: u32, full_node_id: u64, local_epoch: u16) -> Vec<u8> {
    RegistrationPayload {
        dek_id,
        full_node_id,
        local_epoch,
    }
    .to_entry()
}

/// What an entry should do when applied after the table's earlier rows.
enum Want {
    Applies,
    Halts(fn(&HaltCause) -> bool),
}

/// Each row runs on a fresh FSM that first applies `prefix` (all of which must
/// apply), then the row's entry, then checks the halt, the applied index, and that the
/// halt survives a reopen.
fn check(name: &str, prefix: &[Vec<u8>], entry: Vec<u8>, want: Want) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    apply_each(&mut fsm, prefix).unwrap_or_else(|h| panic!("{name}: prefix halted: {h}"));
    let before = fsm.applied_index();
    let result = apply_each(&mut fsm, std::slice::from_ref(&entry));
    match (&want, result) {
        (Want::Applies, Ok(_)) => assert_eq!(fsm.applied_index(), before + 1, "{name}"),
        (Want::Halts(pred), Err(Halted { halt, .. })) => {
            assert!(pred(&halt.cause), "{name}: wrong cause {halt}");
            assert_eq!(halt.index, before + 1, "{name}");
            assert_eq!(
                fsm.applied_index(),
                before,
                "{name}: halting entry marked applied"
            );
            // A later entry is not applied either.
            let later = request(vec![set("later", "x")]);
            let again = fsm
                .apply(&[Entry {
                    index: before + 2,
                    data: &later,
                }])
                .expect_err("still halted");
            assert_eq!(again.halt.index, halt.index, "{name}");
            assert_eq!(get(&fsm, "later"), None, "{name}");
            // Restart: the same entry is replayed and halts again.
            drop(fsm);
            let mut reopened = open_fsm(dir.path());
            assert_eq!(
                reopened.applied_index(),
                before,
                "{name}: persisted applied index"
            );
            let replay = reopened
                .apply(&[Entry {
                    index: before + 1,
                    data: &entry,
                }])
                .expect_err("halts again");
            assert!(
                pred(&replay.halt.cause),
                "{name}: replay cause {}",
                replay.halt
            );
            return;
        }
        (_, Ok(_)) => panic!("{name}: applied, want a halt"),
        (_, Err(h)) => panic!("{name}: halted: {h}"),
    }
    // Applied entries survive a reopen.
    drop(fsm);
    assert_eq!(
        open_fsm(dir.path()).applied_index(),
        before + 1,
        "{name}: reopen"
    );
}

#[test]
fn entry_table() {
    let kv = request(vec![set("k", "v")]);
    check("kv command", &[], kv.clone(), Want::Applies);
    check(
        "kv batch",
        &[],
        request(vec![set("a", "1"), incr("n", 1)]),
        Want::Applies,
    );
    check("empty entry", &[], Vec::new(), Want::Applies);
    check(
        "user error is not a halt",
        &[request(vec![set("s", "x")])],
        request(vec![incr("s", 1)]),
        Want::Applies,
    );
    check(
        "reserved 0x02",
        &[],
        vec![0x02, 1, 2],
        Want::Halts(|c| matches!(c, HaltCause::UnknownOpcode(0x02))),
    );
    for op in [0x08u8, 0x52, 0xFF] {
        check(
            "unknown opcode",
            &[],
            vec![op, 1],
            Want::Halts(|c| matches!(c, HaltCause::UnknownOpcode(0x08 | 0x52 | 0xFF))),
        );
    }
    check(
        "malformed kv",
        &[],
        vec![0x00, 1, 0xFF],
        Want::Halts(|c| matches!(c, HaltCause::Command(_))),
    );
    check(
        "kv version",
        &[],
        vec![0x00, 7],
        Want::Halts(|c| matches!(c, HaltCause::Command(_))),
    );
    check(
        "registration insert",
        &[],
        registration(1, NODE, 1),
        Want::Applies,
    );
    check(
        "registration advance",
        &[registration(1, NODE, 1)],
        registration(1, NODE, 2),
        Want::Applies,
    );
    check(
        "registration replay",
        &[registration(1, NODE, 2)],
        registration(1, NODE, 2),
        Want::Applies,
    );
    check(
        "registration rollback",
        &[registration(1, NODE, 5)],
        registration(1, NODE, 4),
        Want::Halts(|c| {
            matches!(
                c,
                HaltCause::Encryption(ApplyError::EpochRollback {
                    epoch: 4,
                    last_seen_local_epoch: 5,
                    ..
                })
            )
        }),
    );
    check(
        "registration collision",
        &[registration(1, NODE, 5)],
        registration(1, TWIN, 5),
        Want::Halts(|c| matches!(c, HaltCause::Encryption(ApplyError::NodeIdCollision { .. }))),
    );
    check(
        "malformed registration",
        &[],
        vec![0x03, 1, 2, 3],
        Want::Halts(|c| {
            matches!(
                c,
                HaltCause::Encryption(ApplyError::Decode { opcode: 0x03, .. })
            )
        }),
    );
    let boot = sealkv_fsmwire::BootstrapPayload::default()
        .to_entry()
        .expect("bootstrap");
    check(
        "bootstrap without kek",
        &[],
        boot,
        Want::Halts(|c| {
            matches!(
                c,
                HaltCause::Encryption(ApplyError::KekNotConfigured { opcode: 0x04 })
            )
        }),
    );
    check(
        "reserved 0x06",
        &[],
        vec![0x06],
        Want::Halts(|c| {
            matches!(
                c,
                HaltCause::Encryption(ApplyError::UnsupportedOpcode(0x06))
            )
        }),
    );
    check(
        "reserved 0x07",
        &[],
        vec![0x07, 0],
        Want::Halts(|c| {
            matches!(
                c,
                HaltCause::Encryption(ApplyError::UnsupportedOpcode(0x07))
            )
        }),
    );
}

/// Without the applier installed every opcode of the band halts, registrations
/// included.
#[test]
fn without_encryption_the_whole_band_halts() {
    for op in 0x03..=0x07u8 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fsm = open_plain_fsm(dir.path());
        let data = if op == 0x03 {
            registration(1, NODE, 1)
        } else {
            vec![op]
        };
        let halted = fsm
            .apply(&[Entry {
                index: 1,
                data: &data,
            }])
            .expect_err("halts");
        assert!(
            matches!(*halted.halt.cause, HaltCause::NoEncryption(o) if o == op),
            "{op:#x}: {}",
            halted.halt
        );
        assert_eq!(fsm.applied_index(), 0);
    }
}

/// In one call: entries before the halting one are applied and durable, with their
/// outcomes returned; the halting one and those after it are not.
#[test]
fn halt_mid_batch_commits_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let datas = [
        request(vec![set("a", "1")]),
        registration(3, NODE, 1),
        request(vec![set("b", "2")]),
        vec![0x09],
        request(vec![set("c", "3")]),
    ];
    let entries: Vec<Entry<'_>> = datas
        .iter()
        .zip(1..)
        .map(|(data, index)| Entry { index, data })
        .collect();
    let halted = fsm.apply(&entries).expect_err("halts at 4");
    assert_eq!(halted.halt.index, 4);
    assert_eq!(
        halted.applied.iter().map(|o| o.index).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        halted.applied[1].outcome,
        Outcome::Encryption(Applied::Registration(RegistrationOutcome::Inserted))
    );
    assert_eq!(fsm.applied_index(), 3);
    assert_eq!(
        halted.halt.to_string(),
        "state machine halted at index 4: unknown opcode 0x09"
    );
    drop(fsm);
    let fsm = open_fsm(dir.path());
    assert_eq!(fsm.applied_index(), 3);
    assert_eq!(
        (
            get(&fsm, "a").as_deref(),
            get(&fsm, "b").as_deref(),
            get(&fsm, "c")
        ),
        (Some("1"), Some("2"), None)
    );
    let row = fsm
        .encryption()
        .expect("applier")
        .registry()
        .get_writer(WriterKey::for_node(3, NODE))
        .expect("row");
    assert!(row.is_some());
}

/// Entries already applied are skipped; a gap halts.
#[test]
fn replays_are_skipped_and_gaps_halt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm: KvFsm = open_fsm(dir.path());
    let one = request(vec![incr("n", 1)]);
    fsm.apply(&[Entry {
        index: 1,
        data: &one,
    }])
    .expect("apply 1");
    let again = fsm
        .apply(&[Entry {
            index: 1,
            data: &one,
        }])
        .expect("replay of 1");
    assert!(again.is_empty());
    assert_eq!(get(&fsm, "n").as_deref(), Some("1"));
    let gap = fsm
        .apply(&[Entry {
            index: 3,
            data: &one,
        }])
        .expect_err("gap");
    assert!(matches!(
        *gap.halt.cause,
        HaltCause::OutOfOrder { applied: 1, got: 3 }
    ));
}
