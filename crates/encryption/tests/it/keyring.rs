//! Keyring tests: the startup path (DESIGN.md §8), the registry check, nonces, and
//! sealing and opening with tamper detection.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use sealkv_encryption::WriterRegistryStore;
use sealkv_encryption::envelope::{BODY_OFFSET, HEADER_LEN};
use sealkv_encryption::kek::{FileKekProvider, KekError};
use sealkv_encryption::keyring::{
    EPOCH_WARNING_THRESHOLD, EpochWarning, Keyring, KeyringError, VALUE_HEADER_LEN, nonce,
};
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::sidecar::{ActiveKeys, sidecar_path};
use sealkv_encryption::testing::MemoryRegistry;
use sealkv_fsmwire::{Purpose, RegistrationPayload};

use crate::keyfixture::{
    COLLIDER, KEK_BYTES, NODE, Node, provider, row, sidecar_bytes, sidecar_on_disk, write_sidecar,
};

const HEADER: [u8; VALUE_HEADER_LEN] = [0x02, 0, 0, 0, 0, 0, 0, 0, 0];

fn active(storage: u32, raft: u32) -> ActiveKeys {
    ActiveKeys { storage, raft }
}

fn open(dir: &std::path::Path) -> Result<Keyring, KeyringError> {
    Keyring::open(dir, NODE, provider(KEK_BYTES))
}

/// A node whose sidecar holds storage key 1 and raft key 2 (active) and old storage
/// key 3, at the given epochs, opened and registered.
fn registered_node(epochs: [u16; 3]) -> (tempfile::TempDir, Keyring, MemoryRegistry) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        40,
        active(1, 2),
        &[
            (1, Purpose::Storage, epochs[0]),
            (2, Purpose::Raft, epochs[1]),
            (3, Purpose::Storage, epochs[2]),
        ],
    );
    let keyring = open(dir.path()).expect("open");
    let registry = MemoryRegistry::new();
    register(&keyring, &registry);
    (dir, keyring, registry)
}

/// Applies what the startup check asks for: the registry rows, then the marks.
fn register(keyring: &Keyring, registry: &MemoryRegistry) {
    for reg in keyring.check_registry(registry).expect("check registry") {
        let key = WriterKey::for_node(reg.dek_id, reg.full_node_id);
        let first = registry
            .get_writer(key)
            .expect("get")
            .map_or(reg.local_epoch, |r| r.first_seen_local_epoch);
        registry
            .put_writers(&[(key, record(reg.full_node_id, first, reg.local_epoch))])
            .expect("put");
        assert!(keyring.mark_registered(reg.dek_id, reg.full_node_id, reg.local_epoch));
    }
}

fn record(full_node_id: u64, first: u16, last: u16) -> WriterRecord {
    WriterRecord {
        full_node_id,
        first_seen_local_epoch: first,
        last_seen_local_epoch: last,
    }
}

/// The nonce of an encoded envelope.
fn nonce_of(envelope: &[u8]) -> [u8; 12] {
    envelope
        .get(HEADER_LEN..BODY_OFFSET)
        .expect("envelope has a nonce")
        .try_into()
        .expect("12 bytes")
}

#[test]
fn open_without_sidecar_is_empty_and_creates_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = open(dir.path()).expect("open");
    let enc = dir.path().join("encryption");
    let mode = std::fs::metadata(&enc)
        .expect("dir created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(!sidecar_path(dir.path()).exists(), "sidecar created");
    assert!(!keyring.is_bootstrapped());
    assert!(!keyring.has_sidecar());
    assert_eq!(keyring.sidecar_applied_index(), 0);
    assert!(keyring.key_ids().is_empty());
    assert!(keyring.local_epochs().is_empty());
    assert_eq!(keyring.active_key_id(Purpose::Storage), None);
    assert!(!keyring.storage_envelope_active());
    assert_eq!(keyring.raft_envelope_cutover_index(), 0);
    assert!(keyring.epoch_warnings().is_empty());
    let status = keyring.status();
    assert!(!status.sidecar_present && !status.bootstrapped && status.keys.is_empty());
    assert!(matches!(
        keyring.seal_storage(b"v", &HEADER, b"k"),
        Err(KeyringError::NoActiveKey(Purpose::Storage))
    ));
    assert!(
        keyring
            .check_registry(&MemoryRegistry::new())
            .expect("check")
            .is_empty()
    );
    // Opening again is the same: still no file.
    drop(keyring);
    open(dir.path()).expect("reopen");
    assert!(!sidecar_path(dir.path()).exists());
}

#[test]
fn open_raises_active_epochs_by_one_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        40,
        active(1, 2),
        &[
            (1, Purpose::Storage, 5),
            (2, Purpose::Raft, 0),
            (3, Purpose::Storage, 9),
        ],
    );
    for (load, want) in [(1, [(1, 6), (2, 1), (3, 9)]), (2, [(1, 7), (2, 2), (3, 9)])] {
        let keyring = open(dir.path()).expect("open");
        assert_eq!(keyring.local_epochs(), want, "load {load}");
        let disk = sidecar_on_disk(dir.path()).expect("sidecar exists");
        let on_disk: Vec<(u32, u16)> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, disk.key(id).expect("key").local_epoch))
            .collect();
        assert_eq!(on_disk, want, "load {load}: on disk");
        assert_eq!(disk.raft_applied_index, 40, "index unchanged");
        assert_eq!(keyring.sidecar(), Some(disk));
        assert_eq!(keyring.key_ids(), [1, 2, 3]);
        assert!(keyring.is_bootstrapped());
        assert_eq!(keyring.active_key_id(Purpose::Storage), Some(1));
        assert_eq!(keyring.active_key_id(Purpose::Raft), Some(2));
        assert_eq!(keyring.sidecar_applied_index(), 40);
        let mode = std::fs::metadata(sidecar_path(dir.path()))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn wrong_kek_does_not_unwrap_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 1), (2, Purpose::Raft, 1)],
    );
    let before = sidecar_bytes(dir.path());
    match Keyring::open(dir.path(), NODE, provider([0x22; 32])) {
        Err(KeyringError::KekDoesNotUnwrap { key_id, source }) => {
            assert_eq!(key_id, 1);
            assert_eq!(source.class(), "integrity");
        }
        other => panic!("wrong kek: {other:?}"),
    }
    assert_eq!(sidecar_bytes(dir.path()), before, "sidecar changed");
}

#[test]
fn unloadable_kek_is_kek_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 1), (2, Purpose::Raft, 1)],
    );
    let missing = Arc::new(FileKekProvider::new(dir.path().join("no-kek")));
    match Keyring::open(dir.path(), NODE, missing) {
        Err(KeyringError::KekUnavailable {
            kind: "file",
            source: KekError::Io { .. },
        }) => {}
        other => panic!("missing kek file: {other:?}"),
    }
}

#[test]
fn exhausted_active_epoch_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 4), (2, Purpose::Raft, 0xFFFF)],
    );
    let before = sidecar_bytes(dir.path());
    assert!(matches!(
        open(dir.path()),
        Err(KeyringError::EpochExhausted { key_id: 2 })
    ));
    assert_eq!(sidecar_bytes(dir.path()), before, "sidecar changed");

    // An exhausted key that is no longer active never seals again: it does not block.
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[
            (1, Purpose::Storage, 4),
            (2, Purpose::Raft, 7),
            (3, Purpose::Raft, 0xFFFF),
        ],
    );
    let keyring = open(dir.path()).expect("inactive exhausted key");
    assert_eq!(keyring.local_epochs(), [(1, 5), (2, 8), (3, 0xFFFF)]);
}

#[test]
fn epoch_warnings_list_active_keys_near_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[
            (1, Purpose::Storage, EPOCH_WARNING_THRESHOLD - 2),
            (2, Purpose::Raft, EPOCH_WARNING_THRESHOLD - 1),
            (3, Purpose::Storage, 0xFFF0),
        ],
    );
    let keyring = open(dir.path()).expect("open");
    assert_eq!(
        keyring.epoch_warnings(),
        [EpochWarning {
            key_id: 2,
            purpose: Purpose::Raft,
            local_epoch: EPOCH_WARNING_THRESHOLD,
        }]
    );
    drop(keyring);
    let keyring = open(dir.path()).expect("open again");
    let ids: Vec<u32> = keyring.epoch_warnings().iter().map(|w| w.key_id).collect();
    assert_eq!(ids, [1, 2]);

    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 0xFFFE), (2, Purpose::Raft, 0)],
    );
    let keyring = open(dir.path()).expect("last usable epoch");
    assert_eq!(
        keyring.epoch_warnings(),
        [EpochWarning {
            key_id: 1,
            purpose: Purpose::Storage,
            local_epoch: 0xFFFF,
        }]
    );
    drop(keyring);
    assert!(matches!(
        open(dir.path()),
        Err(KeyringError::EpochExhausted { key_id: 1 })
    ));
}

#[test]
fn corrupt_or_hand_edited_sidecars_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("encryption")).expect("mkdir");
    let path = sidecar_path(dir.path());
    std::fs::write(&path, b"{\"version\": 2}").expect("write");
    match open(dir.path()) {
        Err(KeyringError::LoadSidecar { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.class(), Some("version"));
        }
        other => panic!("bad version: {other:?}"),
    }

    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 1), (2, Purpose::Raft, 1)],
    );
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(
        &path,
        text.replace("\"1\": {", "\"01\": {")
            .replace("\"storage\": 1", "\"storage\": 0"),
    )
    .expect("write");
    assert!(matches!(
        open(dir.path()),
        Err(KeyringError::NonCanonicalKeyId { key_id }) if key_id == "01"
    ));

    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 1), (2, Purpose::Raft, 1)],
    );
    let mut doc = sidecar_on_disk(dir.path()).expect("doc");
    if let Some(key) = doc.keys.as_mut().and_then(|k| k.get_mut("2")) {
        key.wrapped = None;
    }
    doc.write(&path).expect("write");
    assert!(matches!(
        open(dir.path()),
        Err(KeyringError::WrappedKeyMissing { key_id: 2 })
    ));
}

#[test]
fn check_registry_rules() {
    // (name, row for key 1 at this node's slot, want): this load's epoch is 6.
    enum Want {
        Register,
        NotAbove(u16),
        Collision,
    }
    let cases = [
        ("no row", None, Want::Register),
        ("lower epoch", Some(record(NODE, 1, 5)), Want::Register),
        ("equal epoch", Some(record(NODE, 1, 6)), Want::NotAbove(6)),
        (
            "higher epoch",
            Some(record(NODE, 1, 900)),
            Want::NotAbove(900),
        ),
        (
            "another node16 owner",
            Some(record(COLLIDER, 1, 1)),
            Want::Collision,
        ),
    ];
    for (name, existing, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write_sidecar(dir.path(), 3, active(1, 0), &[(1, Purpose::Storage, 5)]);
        let keyring = open(dir.path()).expect("open");
        let registry = MemoryRegistry::new();
        if let Some(r) = existing {
            registry
                .put_writers(&[(WriterKey::for_node(1, NODE), r)])
                .expect("put");
        }
        let rows_before = registry.list_writers().expect("list");
        match (want, keyring.check_registry(&registry)) {
            (Want::Register, Ok(regs)) => assert_eq!(regs, [row(1, NODE, 6)], "{name}"),
            (
                Want::NotAbove(registered),
                Err(KeyringError::EpochNotAboveRegistry {
                    key_id: 1,
                    epoch: 6,
                    registered: got,
                }),
            ) => assert_eq!(got, registered, "{name}"),
            (
                Want::Collision,
                Err(KeyringError::NodeIdCollision {
                    key_id: 1,
                    node_id16: 7,
                    registered_full_node_id: COLLIDER,
                    full_node_id: NODE,
                }),
            ) => {}
            (_, got) => panic!("{name}: {got:?}"),
        }
        assert_eq!(
            registry.list_writers().expect("list"),
            rows_before,
            "{name}: wrote"
        );
    }
}

/// The check a node runs against the leader's record of it before it applies
/// anything: this load's epochs are 6 (key 1, active) and 1 (key 2, active); key 3
/// is held and inactive; keys 4 and 9 are not held (recorded at 0 or 1 before the
/// node installs them; at 2 or more only if it held them in a load that restarted).
#[test]
fn check_cluster_record_rules() {
    // (name, the record: (key, last epoch), the refusal: (key, epoch, recorded))
    type Case<'a> = (&'a str, &'a [(u32, u16)], Option<(u32, u16, u16)>);
    let cases: [Case<'_>; 9] = [
        ("no rows", &[], None),
        ("every key below", &[(1, 5), (2, 0)], None),
        ("active key at the epoch", &[(1, 6)], Some((1, 6, 6))),
        ("active key above", &[(1, 5), (2, 9)], Some((2, 1, 9))),
        ("inactive key above", &[(3, 40)], None),
        ("key not held, admitted at 0", &[(4, 0)], None),
        (
            "key not held, sealed under before",
            &[(4, 2)],
            Some((4, 0, 2)),
        ),
        ("a key not held, bootstrapped at 1", &[(9, 1)], None),
        ("fine then not", &[(1, 0), (4, 3)], Some((4, 0, 3))),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[
            (1, Purpose::Storage, 5),
            (2, Purpose::Raft, 0),
            (3, Purpose::Storage, 30),
        ],
    );
    let keyring = open(dir.path()).expect("open");
    for (name, rows, want) in cases {
        match (keyring.check_cluster_record(rows), want) {
            (Ok(()), None) => {}
            (
                Err(KeyringError::EarlierCopy {
                    key_id,
                    epoch,
                    recorded,
                }),
                Some(w),
            ) => assert_eq!((key_id, epoch, recorded), w, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

/// A key retired after this node sealed under it in an earlier load (recorded at
/// epoch 2 or more) is not held any more, and is no sign of an earlier copy: its id
/// is below a key the node holds. A key above every held id still is.
#[test]
fn check_cluster_record_skips_retired_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        9,
        active(3, 2),
        &[(2, Purpose::Raft, 4), (3, Purpose::Storage, 1)],
    );
    let keyring = open(dir.path()).expect("open");
    keyring
        .check_cluster_record(&[(1, 7), (2, 3), (3, 0)])
        .expect("retired key 1 is skipped");
    match keyring.check_cluster_record(&[(1, 7), (4, 2)]) {
        Err(KeyringError::EarlierCopy {
            key_id: 4,
            epoch: 0,
            recorded: 2,
        }) => {}
        other => panic!("a key above every held id is still checked: {other:?}"),
    }
}

#[test]
fn check_registry_covers_both_active_keys_and_skips_registered_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[
            (1, Purpose::Storage, 0),
            (2, Purpose::Raft, 3),
            (3, Purpose::Storage, 0),
        ],
    );
    let keyring = open(dir.path()).expect("open");
    let registry = MemoryRegistry::new();
    let regs = keyring.check_registry(&registry).expect("check");
    assert_eq!(regs, [row(1, NODE, 1), row(2, NODE, 4)]);
    assert_eq!(keyring.pending_registrations(), regs);
    register(&keyring, &registry);
    assert!(keyring.check_registry(&registry).expect("check").is_empty());
    assert!(keyring.pending_registrations().is_empty());
}

#[test]
fn seal_waits_for_registration_of_this_node_at_this_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        3,
        active(1, 2),
        &[(1, Purpose::Storage, 1), (2, Purpose::Raft, 1)],
    );
    let keyring = open(dir.path()).expect("open");
    let refused = |keyring: &Keyring| {
        matches!(
            keyring.seal_storage(b"v", &HEADER, b"k"),
            Err(KeyringError::NotRegistered {
                key_id: 1,
                epoch: 2
            })
        )
    };
    assert!(refused(&keyring));
    // Another node, another epoch or another key do not count.
    assert!(!keyring.mark_registered(1, COLLIDER, 2));
    assert!(!keyring.mark_registered(1, NODE, 1));
    assert!(!keyring.mark_registered(1, NODE, 3));
    assert!(!keyring.mark_registered(9, NODE, 2));
    assert!(keyring.mark_registered(2, NODE, 2));
    assert!(refused(&keyring));
    assert!(keyring.mark_registered(1, NODE, 2));
    let sealed = keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("registered");
    assert_eq!(
        keyring.open_storage(&sealed, &HEADER, b"k").expect("open"),
        b"v"
    );
    let status = keyring.status();
    let key1 = status.keys.iter().find(|k| k.key_id == 1).expect("key 1");
    assert!(key1.registered && key1.active && key1.encryptions == 1);
}

#[test]
fn nonces_are_node16_epoch_counter_and_distinct() {
    let (_dir, keyring, _registry) = registered_node([5, 9, 2]);
    let mut seen = HashSet::new();
    for (i, (purpose, epoch)) in [(Purpose::Storage, 6u16), (Purpose::Raft, 10)]
        .into_iter()
        .enumerate()
    {
        for counter in 0..500u64 {
            let sealed = match purpose {
                Purpose::Storage => keyring
                    .seal_storage(&counter.to_be_bytes(), &HEADER, b"key")
                    .expect("seal storage"),
                Purpose::Raft => keyring
                    .seal_raft(&counter.to_be_bytes())
                    .expect("seal raft"),
            };
            let n = nonce_of(&sealed);
            assert_eq!(n, nonce(NODE, epoch, counter), "{purpose} #{counter}");
            assert_eq!(n.get(..2), Some(&[0x00, 0x07][..]), "node16");
            assert_eq!(n.get(2..4), Some(&epoch.to_be_bytes()[..]), "epoch");
            assert!(seen.insert((i, n)), "{purpose}: nonce repeated");
        }
    }
    let enc: Vec<(u32, u64)> = keyring
        .status()
        .keys
        .iter()
        .map(|k| (k.key_id, k.encryptions))
        .collect();
    assert_eq!(enc, [(1, 500), (2, 500), (3, 0)]);
}

#[test]
fn concurrent_seals_never_share_a_nonce() {
    let (_dir, keyring, _registry) = registered_node([0, 0, 0]);
    let keyring = Arc::new(keyring);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let keyring = keyring.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| nonce_of(&keyring.seal_raft(b"p").expect("seal")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for n in t.join().expect("thread") {
            assert!(all.insert(n), "nonce repeated across threads");
        }
    }
    assert_eq!(all.len(), 1000);
}

#[test]
fn two_loads_of_one_directory_never_share_a_key_nonce_pair() {
    let (dir, first, registry) = registered_node([0, 0, 0]);
    let mut seen = HashSet::new();
    let mut seal_some = |k: &Keyring, load: usize| {
        for _ in 0..100 {
            let s = k.seal_storage(b"v", &HEADER, b"k").expect("seal storage");
            assert!(
                seen.insert((1u32, nonce_of(&s))),
                "load {load}: storage nonce reused"
            );
            let r = k.seal_raft(b"p").expect("seal raft");
            assert!(
                seen.insert((2u32, nonce_of(&r))),
                "load {load}: raft nonce reused"
            );
        }
    };
    seal_some(&first, 0);
    drop(first);
    for load in 1..3 {
        let k = open(dir.path()).expect("reopen");
        register(&k, &registry);
        seal_some(&k, load);
    }
    assert_eq!(seen.len(), 600);
}

#[test]
fn nonce_counter_refuses_to_wrap() {
    let (_dir, keyring, _registry) = registered_node([0, 0, 0]);
    assert!(keyring.set_nonce_counter(2, u64::MAX - 1));
    let last = keyring.seal_raft(b"p").expect("last counter");
    assert_eq!(nonce_of(&last), nonce(NODE, 1, u64::MAX - 1));
    for _ in 0..2 {
        assert!(matches!(
            keyring.seal_raft(b"p"),
            Err(KeyringError::NonceExhausted {
                key_id: 2,
                epoch: 1
            })
        ));
    }
    // The storage key has its own counter.
    keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("storage still seals");
}

#[test]
fn flipped_bytes_fail_as_integrity_errors() {
    let (_dir, keyring, _registry) = registered_node([0, 0, 0]);
    let key = b"user-key\xff\xff\xff\xff\xff\xff\xff\xfe";
    let sealed = keyring
        .seal_storage(b"hello world", &HEADER, key)
        .expect("seal");
    assert_eq!(sealed.len(), 11 + 34);
    assert_eq!(
        keyring.open_storage(&sealed, &HEADER, key).expect("open"),
        b"hello world"
    );

    // Every byte of the envelope.
    for pos in 0..sealed.len() {
        let mut bad = sealed.clone();
        *bad.get_mut(pos).expect("in range") ^= 0x01;
        let err = keyring
            .open_storage(&bad, &HEADER, key)
            .expect_err("flipped byte");
        let want = match pos {
            0 => "version",
            // Key id 1 flipped in its last byte is 0, which is reserved.
            5 => "reserved_key_id",
            2..=4 => "unknown_key_id",
            _ => "integrity",
        };
        assert!(
            matches!(err, KeyringError::Integrity { .. }),
            "pos {pos}: {err:?}"
        );
        assert_eq!(err.reason(), Some(want), "pos {pos}");
    }
    // Every byte of the value header (the tombstone bit included) and the key.
    for pos in 0..VALUE_HEADER_LEN {
        let mut header = HEADER;
        *header.get_mut(pos).expect("in range") ^= 0x01;
        let err = keyring
            .open_storage(&sealed, &header, key)
            .expect_err("header");
        assert_eq!(err.reason(), Some("integrity"), "header byte {pos}");
    }
    for pos in 0..key.len() {
        let mut other = key.to_vec();
        *other.get_mut(pos).expect("in range") ^= 0x80;
        let err = keyring
            .open_storage(&sealed, &HEADER, &other)
            .expect_err("key");
        assert_eq!(err.reason(), Some("integrity"), "key byte {pos}");
    }
    // Truncated, and opened as the other layer.
    for len in [0, 10, 33, sealed.len() - 1] {
        let err = keyring
            .open_storage(sealed.get(..len).expect("prefix"), &HEADER, key)
            .expect_err("truncated");
        assert!(
            matches!(err.reason(), Some("short" | "integrity")),
            "len {len}"
        );
    }
    let err = keyring
        .open_raft(&sealed)
        .expect_err("storage envelope as raft");
    assert_eq!(err.reason(), Some("integrity"));

    let raft = keyring.seal_raft(b"proposal").expect("seal raft");
    assert_eq!(keyring.open_raft(&raft).expect("open raft"), b"proposal");
    let err = keyring
        .open_storage(&raft, &HEADER, key)
        .expect_err("raft as storage");
    assert_eq!(err.reason(), Some("integrity"));
    // The raft AAD does not bind the flag; an envelope with a flag this keyring never
    // writes is refused rather than handed back as if it were plain.
    let mut flagged = raft.clone();
    *flagged.get_mut(1).expect("flag byte") = 0x01;
    match keyring.open_raft(&flagged) {
        Err(e @ KeyringError::UnsupportedFlag { key_id: 2, flag: 1 }) => {
            assert_eq!(e.reason(), Some("unsupported_flag"))
        }
        other => panic!("flagged raft envelope: {other:?}"),
    }
    for pos in HEADER_LEN..raft.len() {
        let mut bad = raft.clone();
        *bad.get_mut(pos).expect("in range") ^= 0x40;
        let err = keyring.open_raft(&bad).expect_err("flipped raft byte");
        assert_eq!(err.reason(), Some("integrity"), "raft pos {pos}");
    }
}

#[test]
fn status_and_debug_carry_no_key_bytes() {
    let (_dir, keyring, _registry) = registered_node([0, 0, 0]);
    let texts = [format!("{keyring:?}"), format!("{:?}", keyring.status())];
    for id in [1, 2, 3] {
        let bytes = crate::keyfixture::dek_bytes(id);
        let hex = ::hex::encode(bytes);
        let decimal = format!("{:?}", &bytes[..4]);
        for text in &texts {
            assert!(!text.contains(&hex[..8]), "{text}");
            assert!(!text.contains(decimal.trim_matches(['[', ']'])), "{text}");
        }
    }
    let kek_hex = ::hex::encode(KEK_BYTES);
    for text in &texts {
        assert!(!text.contains(&kek_hex[..8]), "{text}");
    }
}

#[test]
fn set_envelopes_needs_keys_and_ignores_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = open(dir.path()).expect("open");
    assert!(matches!(
        keyring.set_envelopes(5, true, 6),
        Err(KeyringError::NotBootstrapped)
    ));
    assert!(!sidecar_path(dir.path()).exists());
    drop(keyring);

    write_sidecar(
        dir.path(),
        10,
        active(1, 2),
        &[(1, Purpose::Storage, 0), (2, Purpose::Raft, 0)],
    );
    let keyring = open(dir.path()).expect("open");
    keyring.set_envelopes(12, true, 13).expect("set");
    assert!(keyring.storage_envelope_active());
    assert_eq!(keyring.raft_envelope_cutover_index(), 13);
    assert_eq!(keyring.sidecar_applied_index(), 12);
    let disk = sidecar_on_disk(dir.path()).expect("doc");
    assert!(disk.storage_envelope_active);
    assert_eq!(
        (disk.raft_applied_index, disk.raft_envelope_cutover_index),
        (12, 13)
    );
    // A replay of an index the sidecar reflects changes nothing.
    let before = sidecar_bytes(dir.path());
    keyring.set_envelopes(11, false, 0).expect("replay");
    keyring.set_envelopes(12, false, 0).expect("replay");
    assert_eq!(sidecar_bytes(dir.path()), before);
    assert!(keyring.storage_envelope_active());
    drop(keyring);
    let keyring = open(dir.path()).expect("reopen");
    assert!(keyring.storage_envelope_active());
    assert_eq!(keyring.raft_envelope_cutover_index(), 13);
}

#[test]
fn registration_payloads_name_this_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(
        dir.path(),
        1,
        active(4, 5),
        &[(4, Purpose::Storage, 0), (5, Purpose::Raft, 0)],
    );
    let keyring = open(dir.path()).expect("open");
    let regs: Vec<RegistrationPayload> = keyring.pending_registrations();
    assert!(
        regs.iter()
            .all(|r| r.full_node_id == NODE && r.local_epoch == 1)
    );
    let node = Node::fresh();
    assert!(node.keyring.pending_registrations().is_empty());
}

/// The startup path in one call: a missing sidecar is refused when the caller's
/// store holds key state and the registry records this node above epoch 0, and
/// nothing is written until the caller commits the epochs.
#[test]
fn start_is_the_startup_path_in_one_call() {
    // A sidecar with an active key at epoch 5: raised to 6, checked, marked.
    let dir = tempfile::tempdir().expect("tempdir");
    write_sidecar(dir.path(), 3, active(1, 0), &[(1, Purpose::Storage, 5)]);
    let registry = MemoryRegistry::new();
    let started =
        Keyring::start(dir.path(), NODE, provider(KEK_BYTES), &registry, true).expect("start");
    assert_eq!(started.to_register, [row(1, NODE, 6)]);
    let on_disk = |d: &std::path::Path| {
        sidecar_on_disk(d)
            .expect("sidecar")
            .key(1)
            .map(|k| k.local_epoch)
    };
    assert_eq!(
        on_disk(dir.path()),
        Some(5),
        "nothing is written before commit_epochs"
    );
    started.keyring.commit_epochs().expect("commit");
    assert_eq!(on_disk(dir.path()), Some(6));

    // No sidecar, a store with key state, and this node registered at epoch 2.
    let empty = tempfile::tempdir().expect("tempdir");
    let registry = MemoryRegistry::new();
    registry
        .put_writers(&[(WriterKey::for_node(1, NODE), record(NODE, 1, 2))])
        .expect("put");
    let err = Keyring::start(empty.path(), NODE, provider(KEK_BYTES), &registry, true)
        .expect_err("a lost sidecar");
    assert!(
        matches!(
            err,
            KeyringError::SidecarMissing {
                key_id: 1,
                epoch: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // Without key state in the store (a new node), it starts empty.
    let started = Keyring::start(empty.path(), NODE, provider(KEK_BYTES), &registry, false)
        .expect("a new node");
    assert!(!started.keyring.is_bootstrapped());
    assert!(started.to_register.is_empty());
}
