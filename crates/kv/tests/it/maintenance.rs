//! The maintenance command: the GC safe point only moves forward and never past
//! its own entry, expiry is judged no earlier than the safe point's time (so what
//! GC may remove reads as absent on every replica already), and the compaction and
//! rewrite requests land in the metadata every node's worker reads.

use sealkv_kv::{
    COMPACT_REQUEST_META_KEY, Command, Entry, KvRequest, Maintenance, PutCondition,
    REWRITE_REQUEST_META_KEY, Reply, gc_horizon, meta_u64,
};
use sealkv_store::gc::Horizon;

use crate::support::*;

fn maintain(horizon: Option<(u64, u64)>, compact: bool, rewrite: bool) -> Command {
    Command::Maintain(Maintenance {
        horizon,
        compact,
        rewrite,
    })
}

fn at(issued_at_ms: u64, commands: Vec<Command>) -> Vec<u8> {
    KvRequest {
        issued_at_ms,
        commands,
    }
    .to_entry()
    .expect("encode")
}

#[test]
fn the_safe_point_moves_forward_only_and_never_past_its_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let horizon = |fsm: &sealkv_kv::KvFsm| gc_horizon(fsm.store().as_ref()).expect("horizon");
    // Entry 1 names index 500: clamped to 1.
    assert_eq!(
        apply_kv(
            &mut fsm,
            &at(NOW, vec![maintain(Some((500, NOW - 10)), false, false)])
        ),
        vec![Reply::Ok]
    );
    assert_eq!(
        horizon(&fsm),
        Horizon {
            index: 1,
            at_ms: NOW - 10
        }
    );
    // Older bounds change nothing; each bound moves on its own.
    apply_kv(
        &mut fsm,
        &at(NOW, vec![maintain(Some((0, NOW - 20)), false, false)]),
    );
    assert_eq!(
        horizon(&fsm),
        Horizon {
            index: 1,
            at_ms: NOW - 10
        }
    );
    apply_kv(
        &mut fsm,
        &at(NOW, vec![maintain(Some((2, NOW - 30)), false, false)]),
    );
    assert_eq!(
        horizon(&fsm),
        Horizon {
            index: 2,
            at_ms: NOW - 10
        }
    );
    // Two in one apply call: the second sees the first, whatever the batching.
    let a = at(NOW, vec![maintain(Some((4, NOW)), false, false)]);
    let b = at(NOW, vec![maintain(Some((3, NOW - 1)), false, false)]);
    fsm.apply(&[Entry { index: 4, data: &a }, Entry { index: 5, data: &b }])
        .expect("apply");
    assert_eq!(
        horizon(&fsm),
        Horizon {
            index: 4,
            at_ms: NOW
        }
    );
    assert_eq!(
        fsm.reader().horizon(),
        Horizon {
            index: 4,
            at_ms: NOW
        }
    );
    // Requests record their entry's index.
    apply_kv(&mut fsm, &at(NOW, vec![maintain(None, true, false)]));
    apply_kv(&mut fsm, &at(NOW, vec![maintain(None, false, true)]));
    let store = fsm.store().as_ref();
    assert_eq!(
        meta_u64(store, COMPACT_REQUEST_META_KEY).expect("compact"),
        6
    );
    assert_eq!(
        meta_u64(store, REWRITE_REQUEST_META_KEY).expect("rewrite"),
        7
    );
    // A restart reads the same safe point back.
    drop(fsm);
    let fsm = open_fsm(dir.path());
    assert_eq!(
        fsm.reader().horizon(),
        Horizon {
            index: 4,
            at_ms: NOW
        }
    );
}

#[test]
fn expiry_is_never_judged_before_the_safe_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fsm = open_fsm(dir.path());
    let expires = NOW + 1_000;
    let put = |value: &str, condition| Command::Put {
        key: b"k".to_vec(),
        value: value.as_bytes().to_vec(),
        expire_at_ms: 0,
        condition,
    };
    apply_kv(
        &mut fsm,
        &at(
            NOW,
            vec![Command::Put {
                key: b"k".to_vec(),
                value: b"ttl".to_vec(),
                expire_at_ms: expires,
                condition: PutCondition::Always,
            }],
        ),
    );
    // A proposer whose clock says the value is live: SET NX is refused.
    assert_eq!(
        apply_kv(&mut fsm, &at(NOW, vec![put("nx", PutCondition::IfAbsent)])),
        vec![Reply::Nil]
    );
    // Once the safe point's time is past the expiry, the same lagging clock sees it
    // expired (GC may already have removed it on some replica).
    apply_kv(
        &mut fsm,
        &at(NOW, vec![maintain(Some((1, expires)), false, false)]),
    );
    assert_eq!(
        apply_kv(&mut fsm, &at(NOW, vec![put("nx", PutCondition::IfAbsent)])),
        vec![Reply::Ok]
    );
    assert_eq!(fsm.get(b"k", NOW).expect("read"), Some(b"nx".to_vec()));
    // Reads clamp the same way.
    apply_kv(
        &mut fsm,
        &at(
            NOW,
            vec![Command::Put {
                key: b"t".to_vec(),
                value: b"v".to_vec(),
                expire_at_ms: expires,
                condition: PutCondition::Always,
            }],
        ),
    );
    assert_eq!(fsm.get(b"t", NOW).expect("read"), None);
}
