//! The storage envelope in the state machine: after the storage switch every value
//! is sealed on disk and opens on read; a tampered, moved or re-headed ciphertext is
//! an integrity error, never wrong bytes; INCR and EXPIRE work through it; values
//! written before the switch stay readable.

use std::sync::Arc;

use sealkv_encryption::applier::{Applier, EnvelopeSwitch};
use sealkv_encryption::kek::{EnvKekProvider, Kek, wrap_dek};
use sealkv_encryption::keyring::Keyring;
use sealkv_fsmwire::{BootstrapPayload, OP_BOOTSTRAP, OP_ROTATION, RegistrationPayload};
use sealkv_kv::{KvFsm, Outcome, ReadError, Reply};
use sealkv_store::mvcc::EncryptionState;
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, RocksWriterRegistry, WriteBatch};

use crate::support::{NOW, apply_each, incr, request, set};

const NODE: u64 = 7;
const KEK: [u8; 32] = [0x5a; 32];
const MARKER: &str = "marker-7c1f0e";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn KvStore>,
    fsm: KvFsm,
}

fn kek_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(KEK)
}

/// A node with encryption bootstrapped (storage key 1, raft key 2, this node
/// registered at epoch 1) and, when `storage_on`, the storage envelope switched on.
fn encrypted(storage_on: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = Arc::new(
        RocksStore::open(dir.path().join("db"), RocksStoreOptions::default()).expect("open"),
    );
    let registry = RocksWriterRegistry::from_store(&rocks).expect("glue");
    let store: Arc<dyn KvStore> = rocks;
    let kek = Arc::new(EnvKekProvider::from_base64(&kek_b64()).expect("kek"));
    let keyring = Arc::new(Keyring::open(dir.path(), NODE, kek).expect("keyring"));
    let mut fsm = KvFsm::new(Arc::clone(&store))
        .expect("fsm")
        .with_encryption(Applier::with_keyring(Arc::new(registry), keyring));
    let kek = Kek::from_bytes(KEK);
    let row = |dek_id| RegistrationPayload {
        dek_id,
        full_node_id: NODE,
        local_epoch: 1,
    };
    let boot = BootstrapPayload {
        storage_dek_id: 1,
        wrapped_storage: wrap_dek(&kek, &[0x01; 32]).expect("wrap").to_vec(),
        raft_dek_id: 2,
        wrapped_raft: wrap_dek(&kek, &[0x02; 32]).expect("wrap").to_vec(),
        batch_registry: vec![row(1), row(2)],
    };
    let mut boot_entry = vec![OP_BOOTSTRAP];
    boot_entry.extend(boot.encode().expect("encode"));
    let mut entries = vec![boot_entry];
    if storage_on {
        let mut switch = vec![OP_ROTATION];
        switch.extend(EnvelopeSwitch::Storage.encode());
        entries.push(switch);
    }
    apply_each(&mut fsm, &entries).expect("bootstrap");
    Fixture {
        _dir: dir,
        store,
        fsm,
    }
}

fn raw_body(store: &dyn KvStore, key: &str) -> (EncryptionState, Vec<u8>, u64) {
    let v = store
        .get_at(key.as_bytes(), u64::MAX)
        .expect("get")
        .expect("present");
    (v.value.header.encryption, v.value.body, v.commit_version)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn values_are_sealed_on_disk_and_open_on_read() {
    let mut f = encrypted(true);
    apply_each(&mut f.fsm, &[request(vec![set("k", MARKER)])]).expect("set");
    let (state, body, _) = raw_body(f.store.as_ref(), "k");
    assert_eq!(state, EncryptionState::Encrypted);
    assert!(!contains(&body, MARKER), "marker in the stored body");
    assert_eq!(body.len(), MARKER.len() + 34);
    assert_eq!(
        f.fsm.get(b"k", NOW).expect("get"),
        Some(MARKER.as_bytes().to_vec())
    );
    // A reader handed to another thread opens it too.
    let reader = f.fsm.reader();
    let got = std::thread::spawn(move || reader.get(b"k", NOW).expect("get"))
        .join()
        .expect("thread");
    assert_eq!(got.map(|v| v.value), Some(MARKER.as_bytes().to_vec()));
}

#[test]
fn incr_and_expire_work_through_the_envelope() {
    let mut f = encrypted(true);
    let out = apply_each(
        &mut f.fsm,
        &[
            request(vec![incr("n", 5)]),
            request(vec![incr("n", 2)]),
            request(vec![sealkv_kv::Command::Expire {
                key: b"n".to_vec(),
                expire_at_ms: NOW + 60_000,
            }]),
        ],
    )
    .expect("apply");
    assert_eq!(out[1].outcome, Outcome::Kv(vec![Reply::Int(7)]));
    assert_eq!(out[2].outcome, Outcome::Kv(vec![Reply::Int(1)]));
    let live = f.fsm.reader().get(b"n", NOW).expect("get").expect("live");
    assert_eq!(live.value, b"7");
    assert_eq!(live.expire_at_ms, NOW + 60_000);
    assert_eq!(
        raw_body(f.store.as_ref(), "n").0,
        EncryptionState::Encrypted
    );
}

#[test]
fn cleartext_values_from_before_the_switch_stay_readable() {
    let mut f = encrypted(false);
    apply_each(&mut f.fsm, &[request(vec![set("old", "before")])]).expect("set");
    assert_eq!(raw_body(f.store.as_ref(), "old").0, EncryptionState::Clear);
    let mut switch = vec![OP_ROTATION];
    switch.extend(EnvelopeSwitch::Storage.encode());
    apply_each(&mut f.fsm, &[switch, request(vec![set("new", "after")])]).expect("apply");
    assert_eq!(
        raw_body(f.store.as_ref(), "new").0,
        EncryptionState::Encrypted
    );
    assert_eq!(
        f.fsm.get(b"old", NOW).expect("old"),
        Some(b"before".to_vec())
    );
    assert_eq!(
        f.fsm.get(b"new", NOW).expect("new"),
        Some(b"after".to_vec())
    );
}

/// Rewrites `key`'s newest version with `edit` applied to its stored value.
fn tamper(
    store: &dyn KvStore,
    key: &str,
    to_key: &str,
    edit: impl FnOnce(&mut sealkv_store::mvcc::StoredValue),
) {
    let v = store
        .get_at(key.as_bytes(), u64::MAX)
        .expect("get")
        .expect("present");
    let mut value = v.value;
    edit(&mut value);
    let mut batch = WriteBatch::new();
    batch
        .put(to_key.as_bytes(), v.commit_version, value)
        .expect("put");
    batch.set_applied_index(store.applied_index().expect("applied"));
    store.commit(batch).expect("commit");
}

fn assert_integrity_error(fsm: &KvFsm, key: &str) {
    match fsm.reader().get(key.as_bytes(), NOW) {
        Err(e @ ReadError::Integrity { .. }) => {
            assert!(e.decrypt_failure_reason().is_some(), "{e}");
        }
        other => panic!("{key}: expected an integrity error, got {other:?}"),
    }
}

#[test]
fn tampered_ciphertexts_are_integrity_errors() {
    let mut f = encrypted(true);
    let keys = ["body", "envhdr", "valhdr", "tomb", "past", "src"];
    let sets = keys
        .iter()
        .map(|k| request(vec![set(k, MARKER)]))
        .collect::<Vec<_>>();
    apply_each(&mut f.fsm, &sets).expect("set");
    let store = f.store.as_ref();
    // A flipped ciphertext byte.
    tamper(store, "body", "body", |v| {
        let last = v.body.len() - 20;
        v.body[last] ^= 0x01;
    });
    // A flipped envelope-header byte (the flag).
    tamper(store, "envhdr", "envhdr", |v| v.body[1] ^= 0x01);
    // A changed value header (the expiry) with the ciphertext untouched.
    tamper(store, "valhdr", "valhdr", |v| {
        v.header.expire_at_ms = NOW + 1
    });
    // The tombstone bit flipped on: not a silent delete.
    tamper(store, "tomb", "tomb", |v| v.header.tombstone = true);
    // The expiry moved into the past: not a silent expiry.
    tamper(store, "past", "past", |v| v.header.expire_at_ms = NOW - 1);
    // The ciphertext moved to another key at the same version.
    tamper(store, "src", "moved", |_| {});
    for key in ["body", "envhdr", "valhdr", "tomb", "past", "moved"] {
        assert_integrity_error(&f.fsm, key);
    }
    // The untouched original still opens.
    assert_eq!(
        f.fsm.get(b"src", NOW).expect("src"),
        Some(MARKER.as_bytes().to_vec())
    );
}

#[test]
fn a_reader_without_a_keyring_refuses_encrypted_values() {
    let mut f = encrypted(true);
    apply_each(&mut f.fsm, &[request(vec![set("k", MARKER)])]).expect("set");
    let bare = sealkv_kv::Reader::new(Arc::clone(&f.store));
    assert!(matches!(bare.get(b"k", NOW), Err(ReadError::Encrypted(_))));
}

fn keyring(fsm: &KvFsm) -> Arc<Keyring> {
    Arc::clone(
        fsm.encryption()
            .and_then(Applier::keyring)
            .expect("keyring"),
    )
}

fn raft_switch() -> Vec<u8> {
    let mut switch = vec![OP_ROTATION];
    switch.extend(EnvelopeSwitch::Raft.encode());
    switch
}

#[test]
fn wrapped_entries_apply_and_cleartext_after_the_cutover_is_refused() {
    let mut f = encrypted(true);
    let ring = keyring(&f.fsm);
    let req = |key: &str| sealkv_kv::KvRequest {
        issued_at_ms: NOW,
        commands: vec![set(key, MARKER)],
    };
    let wrapped = req("w").to_wrapped_entry(&ring).expect("wrap");
    assert_eq!(wrapped[1], sealkv_kv::WRAPPED);
    assert!(!contains(&wrapped, MARKER), "marker in a wrapped entry");

    // Before the cutover both forms apply.
    apply_each(&mut f.fsm, &[wrapped, request(vec![set("c", "clear")])]).expect("apply");
    assert_eq!(
        f.fsm.get(b"w", NOW).expect("w"),
        Some(MARKER.as_bytes().to_vec())
    );
    assert_eq!(f.fsm.get(b"c", NOW).expect("c"), Some(b"clear".to_vec()));

    // After it, a cleartext entry is refused deterministically and changes nothing.
    let out = apply_each(
        &mut f.fsm,
        &[
            raft_switch(),
            request(vec![set("late", "x"), set("late2", "y")]),
            req("w2").to_wrapped_entry(&ring).expect("wrap"),
        ],
    )
    .expect("apply");
    let refusal = Reply::Error(sealkv_kv::UserError::NotWrapped);
    assert_eq!(out[1].outcome, Outcome::Kv(vec![refusal.clone(), refusal]));
    assert_eq!(f.fsm.get(b"late", NOW).expect("late"), None);
    assert_eq!(
        f.fsm.get(b"w2", NOW).expect("w2"),
        Some(MARKER.as_bytes().to_vec())
    );
}

#[test]
fn a_wrapped_entry_that_does_not_open_halts() {
    let mut f = encrypted(true);
    let ring = keyring(&f.fsm);
    let mut wrapped = sealkv_kv::KvRequest {
        issued_at_ms: NOW,
        commands: vec![set("k", "v")],
    }
    .to_wrapped_entry(&ring)
    .expect("wrap");
    let last = wrapped.len() - 1;
    wrapped[last] ^= 0x01;
    let before = f.fsm.applied_index();
    let halted = apply_each(&mut f.fsm, &[wrapped]).expect_err("halt");
    assert_eq!(halted.halt.index, before + 1);
    assert!(matches!(
        halted.halt.cause.as_ref(),
        sealkv_kv::HaltCause::Unwrap(_)
    ));
    assert_eq!(f.fsm.applied_index(), before);
}

/// Deletes under the storage envelope are sealed tombstones, and no cleartext
/// version above the switch is believed: flipping one header byte on disk never
/// silently deletes a value, resurrects one, or returns ciphertext as the value.
#[test]
fn tombstones_are_sealed_and_cleartext_after_the_switch_is_an_integrity_error() {
    let mut f = encrypted(true);
    let del = |k: &str| {
        request(vec![sealkv_kv::Command::Delete {
            keys: vec![k.as_bytes().to_vec()],
        }])
    };
    let writes = vec![
        request(vec![set("gone", MARKER)]),
        del("gone"),
        request(vec![set("kept", MARKER)]),
        request(vec![set("flat", MARKER)]),
        request(vec![set("back", MARKER)]),
        del("back"),
    ];
    apply_each(&mut f.fsm, &writes).expect("writes");
    let store = f.store.as_ref();
    let tombstone = store
        .get_at(b"gone", u64::MAX)
        .expect("get")
        .expect("tombstone");
    assert!(tombstone.value.header.tombstone);
    assert_eq!(
        tombstone.value.header.encryption,
        EncryptionState::Encrypted,
        "a tombstone after the switch is sealed"
    );
    assert_eq!(f.fsm.reader().get(b"gone", NOW).expect("read"), None);

    // The tombstone bit flipped off a sealed tombstone: not a resurrection.
    tamper(store, "back", "back", |v| v.header.tombstone = false);
    assert_integrity_error(&f.fsm, "back");
    // A sealed value relabelled cleartext: not its ciphertext as the value.
    tamper(store, "flat", "flat", |v| {
        v.header.encryption = EncryptionState::Clear
    });
    // A cleartext tombstone written over a live value: not a silent delete.
    tamper(store, "kept", "kept", |v| {
        v.header.encryption = EncryptionState::Clear;
        v.header.tombstone = true;
        v.body.clear();
    });
    for key in ["flat", "kept"] {
        match f.fsm.reader().get(key.as_bytes(), NOW) {
            Err(e @ ReadError::ClearAfterSwitch { .. }) => {
                assert_eq!(e.decrypt_failure_reason(), Some("cleartext_after_switch"));
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    // The switch index is in the store: a reader opened later refuses the same.
    let later = sealkv_kv::Reader::new(Arc::clone(&f.store));
    assert!(matches!(
        later.get(b"kept", NOW),
        Err(ReadError::ClearAfterSwitch { .. })
    ));
}

/// The rewrite's decision: a cleartext value from before the switch is resealed
/// under the active key at the same version and reads the same; a value already
/// under the active key and a cleartext tombstone are kept; a version that does
/// not open is refused, never laundered into a sealed one.
#[test]
fn reseal_moves_cleartext_under_the_active_key_and_refuses_what_does_not_open() {
    let mut f = encrypted(false);
    apply_each(
        &mut f.fsm,
        &[
            request(vec![set("old", MARKER)]),
            request(vec![set("gone", "x")]),
            request(vec![sealkv_kv::Command::Delete {
                keys: vec![b"gone".to_vec()],
            }]),
        ],
    )
    .expect("cleartext writes");
    let mut switch = vec![OP_ROTATION];
    switch.extend(EnvelopeSwitch::Storage.encode());
    apply_each(&mut f.fsm, &[switch, request(vec![set("new", "after")])]).expect("apply");
    let reader = f.fsm.reader();
    let version = |key: &str| {
        f.store
            .get_at(key.as_bytes(), u64::MAX)
            .expect("get")
            .expect("present")
    };

    let old = version("old");
    let sealkv_store::gc::Rewrite::Replace(sealed) = reader
        .reseal(b"old", old.commit_version, old.value.clone())
        .expect("reseal")
    else {
        panic!("a cleartext value must be resealed");
    };
    assert_eq!(sealed.header.encryption, EncryptionState::Encrypted);
    assert_eq!(sealed.header.expire_at_ms, old.value.header.expire_at_ms);
    assert!(!contains(&sealed.body, MARKER));
    assert_eq!(sealkv_kv::envelope_key_id(&sealed.body), Some(1));
    let mut batch = WriteBatch::new();
    batch.put(b"old", old.commit_version, sealed).expect("put");
    f.store.commit(batch).expect("commit");
    assert_eq!(
        f.fsm.get(b"old", NOW).expect("read"),
        Some(MARKER.as_bytes().to_vec())
    );
    // Now under the active key: kept.
    let resealed = version("old");
    assert!(matches!(
        reader.reseal(b"old", resealed.commit_version, resealed.value),
        Ok(sealkv_store::gc::Rewrite::Keep)
    ));
    let new = version("new");
    assert!(matches!(
        reader.reseal(b"new", new.commit_version, new.value),
        Ok(sealkv_store::gc::Rewrite::Keep)
    ));
    let gone = version("gone");
    assert!(gone.value.header.tombstone);
    assert!(matches!(
        reader.reseal(b"gone", gone.commit_version, gone.value),
        Ok(sealkv_store::gc::Rewrite::Keep)
    ));
    // A cleartext version above the switch was not written by the state machine.
    let planted = sealkv_store::mvcc::StoredValue::clear(b"planted".to_vec(), 0);
    assert!(matches!(
        reader.reseal(b"new", new.commit_version + 100, planted),
        Err(sealkv_kv::ResealError::Read(
            ReadError::ClearAfterSwitch { .. }
        ))
    ));
}
