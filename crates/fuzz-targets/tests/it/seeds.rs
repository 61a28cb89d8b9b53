//! The seed corpus: inputs derived from the golden vectors in `vectors/` and from
//! encoding real values, and the check that `fuzz/corpus/` holds every one of them.
//!
//! After a format or generator change, rewrite the seeds with
//! `SEALKV_FUZZ_BLESS=1 cargo test -p sealkv-fuzz-targets --test it fuzz_seeds`
//! and commit `fuzz/corpus/`. Files the generator does not produce (inputs a fuzzer
//! found, minimized crashes named `regression-*`) are kept: only missing or stale
//! generated seeds are written.

use std::collections::BTreeMap;

use sealkv_encryption::envelope::{AadMode, Dek, KEY_LEN, Keystore};
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::sidecar::{self, ActiveKeys, Sidecar, SidecarKey};
use sealkv_fsmwire::RegistrationPayload;
use sealkv_kv::{Command, KvRequest, PutCondition};
use sealkv_node::consensus::transport::{Announce, Hello, Lane};
use sealkv_store::mvcc::{StoredValue, physical_key};
use sealkv_testkit::{Value, cases, hex, load, name};

use crate::fuzz_dir;

/// Seeds per target, by file name.
type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// A file name from a vector case's name: `[A-Za-z0-9_-]` kept, the rest `_`.
fn file_name(prefix: &str, case: &Value) -> String {
    let clean: String = name(case)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}-{clean}")
}

/// Adds the `field` bytes of every case of `list` as seeds of `target`.
fn from_vectors(seeds: &mut Seeds, target: &'static str, doc: &Value, list: &str, field: &str) {
    for case in cases(doc, list) {
        let bytes = match &case[field] {
            Value::String(s) if field == "json" => s.as_bytes().to_vec(),
            v => hex(v),
        };
        seeds
            .entry(target)
            .or_default()
            .insert(file_name(&format!("vector-{list}"), case), bytes);
    }
}

fn add(seeds: &mut Seeds, target: &'static str, name: &str, bytes: Vec<u8>) {
    seeds
        .entry(target)
        .or_default()
        .insert(name.to_string(), bytes);
}

fn vector_seeds(seeds: &mut Seeds) {
    let fsmwire = load("fsmwire.json");
    for (target, payload) in [
        ("fsmwire_registration", "registration"),
        ("fsmwire_bootstrap", "bootstrap"),
        ("fsmwire_rotation", "rotation"),
    ] {
        from_vectors(seeds, target, &fsmwire[payload], "valid", "hex");
        from_vectors(seeds, target, &fsmwire[payload], "invalid", "hex");
    }
    let registry = load("registry.json");
    from_vectors(seeds, "registry_key", &registry, "keys", "hex");
    from_vectors(seeds, "registry_key", &registry, "dek_prefixes", "hex");
    from_vectors(seeds, "registry_key", &registry, "invalid_keys", "hex");
    from_vectors(seeds, "registry_value", &registry, "values", "hex");
    from_vectors(seeds, "registry_value", &registry, "invalid_values", "hex");
    let envelope = load("envelope.json");
    from_vectors(seeds, "envelope", &envelope, "envelope_encode", "hex");
    from_vectors(
        seeds,
        "envelope",
        &envelope,
        "envelope_decode_invalid",
        "hex",
    );
    from_vectors(seeds, "envelope", &envelope, "encrypt", "envelope_hex");
    from_vectors(
        seeds,
        "envelope",
        &envelope,
        "decrypt_invalid",
        "envelope_hex",
    );
    let sidecar = load("sidecar.json");
    for list in [
        "documents",
        "accepted",
        "go_json_quirks_accepted",
        "rejected",
    ] {
        from_vectors(seeds, "sidecar", &sidecar, list, "json");
    }
}

/// Envelopes that open under the envelope target's keystore (key ids 1 to 3, each
/// key its id repeated), so the fuzzer starts from the success path too.
fn envelope_seeds(seeds: &mut Seeds) {
    let mut keystore = Keystore::new();
    keystore
        .insert(1, Dek::from_bytes([1; KEY_LEN]))
        .expect("insert key");
    let sealed = [
        ("sealed-raft", AadMode::Raft, &b"raft payload"[..]),
        ("sealed-empty", AadMode::Raft, b""),
    ];
    for (name, mode, plaintext) in sealed {
        let bytes = keystore
            .seal_envelope(0, 1, [7; 12], plaintext, mode)
            .expect("seal");
        add(seeds, "envelope", name, bytes);
    }
}

fn written_sidecar() -> Sidecar {
    let key = |purpose: &str| SidecarKey {
        purpose: purpose.to_string(),
        wrapped: Some(vec![0xA5; 60]),
        created: "2026-01-02T03:04:05Z <&>\u{2028}".to_string(),
        local_epoch: 3,
    };
    Sidecar {
        raft_applied_index: u64::MAX,
        storage_envelope_active: true,
        raft_envelope_cutover_index: 42,
        active: ActiveKeys {
            storage: 1,
            raft: 10,
        },
        keys: Some(BTreeMap::from([
            ("1".to_string(), key("storage")),
            ("10".to_string(), key("raft")),
            (
                "2".to_string(),
                SidecarKey {
                    wrapped: None,
                    ..key("storage")
                },
            ),
        ])),
        ..Sidecar::default()
    }
}

fn sidecar_seeds(seeds: &mut Seeds) {
    let text = sidecar::to_json(&written_sidecar()).expect("write sidecar");
    add(seeds, "sidecar", "written-three-keys", text.into_bytes());
    let empty = sidecar::to_json(&Sidecar::default()).expect("write sidecar");
    add(seeds, "sidecar", "written-default", empty.into_bytes());
}

fn put(key: &[u8], value: &[u8], expire_at_ms: u64, condition: PutCondition) -> Command {
    Command::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        expire_at_ms,
        condition,
    }
}

fn kv_seeds(seeds: &mut Seeds) {
    let requests = [
        ("put", vec![put(b"k", b"v", 0, PutCondition::Always)]),
        (
            "put-nx-expiry",
            vec![put(b"key", &[0xFF; 300], u64::MAX, PutCondition::IfAbsent)],
        ),
        ("put-xx", vec![put(b"", b"", 1, PutCondition::IfPresent)]),
        (
            "delete",
            vec![Command::Delete {
                keys: vec![b"a".to_vec(), b"bb".to_vec(), Vec::new()],
            }],
        ),
        (
            "incrby",
            vec![Command::IncrBy {
                key: b"counter".to_vec(),
                delta: i64::MIN,
            }],
        ),
        (
            "expire",
            vec![Command::Expire {
                key: b"k".to_vec(),
                expire_at_ms: 1_700_000_000_000,
            }],
        ),
        (
            "batch",
            vec![
                put(b"a", b"1", 0, PutCondition::Always),
                put(b"b", b"2", 0, PutCondition::Always),
                Command::IncrBy {
                    key: b"a".to_vec(),
                    delta: -7,
                },
                Command::Delete {
                    keys: vec![b"b".to_vec()],
                },
            ],
        ),
    ];
    for (name, commands) in requests {
        let request = KvRequest {
            issued_at_ms: 1_700_000_000_000,
            commands,
        };
        let entry = request.to_entry().expect("encode kv request");
        add(seeds, "kv_command", name, entry);
    }
    // A wrapped entry's marker, which the codec itself does not open.
    add(
        seeds,
        "kv_command",
        "wrapped-marker",
        vec![0x00, 0x80, 1, 0, 0, 0],
    );
}

/// A dump body (no checksum: the target appends it) of `records`.
fn dump_body(records: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
    let mut out = b"SKVS\x02".to_vec();
    for (cf, key, value) in records {
        out.push(*cf);
        for part in [key, value] {
            out.extend_from_slice(&u32::try_from(part.len()).expect("small").to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.push(0);
    out.extend_from_slice(&(records.len() as u64).to_be_bytes());
    out
}

fn dump_seeds(seeds: &mut Seeds) {
    let applied = 17u64.to_be_bytes();
    let data_key = physical_key(b"user-key", 9);
    let data_value = StoredValue::clear(b"value".to_vec(), 0).encode();
    let tombstone_key = physical_key(b"gone", 12);
    let tombstone = StoredValue::tombstone().encode();
    let writer_key = WriterKey::for_node(1, 0x1_0002).encode();
    let writer = WriterRecord {
        full_node_id: 0x1_0002,
        first_seen_local_epoch: 0,
        last_seen_local_epoch: 4,
    }
    .encode();
    let sidecar_doc = sidecar::to_json(&written_sidecar()).expect("write sidecar");
    add(
        seeds,
        "snapshot_dump",
        "applied-index-only",
        dump_body(&[(2, b"applied_index", &applied)]),
    );
    add(
        seeds,
        "snapshot_dump",
        "every-column-family",
        dump_body(&[
            (1, &data_key, &data_value),
            (1, &tombstone_key, &tombstone),
            (2, b"applied_index", &applied),
            (2, b"encryption", sidecar_doc.as_bytes()),
            (3, &writer_key, &writer),
        ]),
    );
    add(seeds, "snapshot_dump", "empty", Vec::new());
}

fn announce(redis: &str, admin: &str) -> Announce {
    Announce {
        redis: redis.to_string(),
        admin: admin.to_string(),
    }
}

fn hello_seeds(seeds: &mut Seeds) {
    let hellos = [
        (
            "hello",
            1,
            Lane::Normal,
            announce("127.0.0.1:6379", "127.0.0.1:9090"),
        ),
        (
            "hello-snapshot-lane",
            3,
            Lane::Snapshot,
            announce("127.0.0.1:6381", "127.0.0.1:9092"),
        ),
        (
            "hello-no-addresses",
            u64::MAX,
            Lane::Normal,
            announce("", ""),
        ),
        (
            "hello-long-address",
            2,
            Lane::Snapshot,
            announce(&"a".repeat(255), "[::1]:1"),
        ),
    ];
    for (name, sender, lane, announce) in hellos {
        let hello = Hello {
            sender,
            lane,
            announce,
        };
        add(seeds, "transport_hello", name, hello.encode());
    }
    // Refusals: the version before lanes, and a lane byte that names none.
    let mut v3 = Hello {
        sender: 1,
        lane: Lane::Normal,
        announce: announce("127.0.0.1:6379", ""),
    }
    .encode();
    v3[4] = 3;
    add(seeds, "transport_hello", "refused-version-3", v3.clone());
    v3[4] = 5;
    v3[13] = 2;
    add(seeds, "transport_hello", "refused-lane-2", v3);
}

/// Snapshot-lane streams: whole transfers (one chunk, several, an empty dump,
/// keepalives between), a flipped byte in a chunk, a sequence gap, a transfer cut
/// short, and two transfers back to back.
fn stream_seeds(seeds: &mut Seeds) {
    use raft::prelude::{ConfState, Message, MessageType};
    use sealkv_node::consensus::snapstream::{SnapFrame, transfer_frames};
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    message.set_from(1);
    message.set_to(2);
    message.set_term(3);
    let mut conf_state = ConfState::default();
    conf_state.set_voters(vec![1, 2, 3]);
    message
        .mut_snapshot()
        .mut_metadata()
        .set_conf_state(conf_state);
    message.mut_snapshot().mut_metadata().set_term(2);
    let dump = dump_body(&[(2, b"applied_index", &7u64.to_be_bytes())]);
    let bytes = |frames: &[SnapFrame]| -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| f.encode().expect("encode frame"))
            .collect()
    };
    let whole = transfer_frames(0x11, 7, &dump, 1 << 20, message.clone());
    add(seeds, "snapshot_stream", "one-chunk", bytes(&whole));
    let small = transfer_frames(0x12, 7, &dump, 8, message.clone());
    add(seeds, "snapshot_stream", "chunks-of-8", bytes(&small));
    add(
        seeds,
        "snapshot_stream",
        "empty-dump",
        bytes(&transfer_frames(0x13, 7, &[], 8, message.clone())),
    );
    let mut with_keepalives = Vec::new();
    for frame in &small {
        with_keepalives.extend(SnapFrame::Keepalive.encode().expect("keepalive"));
        with_keepalives.extend(frame.encode().expect("frame"));
    }
    add(seeds, "snapshot_stream", "keepalives", with_keepalives);
    let mut flipped = small.clone();
    if let Some(SnapFrame::Chunk { data, .. }) = flipped.get_mut(2) {
        data[0] ^= 1;
    }
    add(
        seeds,
        "snapshot_stream",
        "refused-flipped-byte",
        bytes(&flipped),
    );
    let mut gap = small.clone();
    gap.remove(2);
    add(seeds, "snapshot_stream", "refused-gap", bytes(&gap));
    let all = bytes(&small);
    add(
        seeds,
        "snapshot_stream",
        "refused-cut-short",
        all[..all.len() - 10].to_vec(),
    );
    let mut two = bytes(&whole);
    two.extend(bytes(&small));
    add(seeds, "snapshot_stream", "two-transfers", two);
}

fn frame(message: &raft::prelude::Message) -> Vec<u8> {
    use protobuf::Message as _;
    let bytes = message.write_to_bytes().expect("encode message");
    let mut out = u32::try_from(bytes.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&bytes);
    out
}

fn frame_seeds(seeds: &mut Seeds) {
    use raft::prelude::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.set_to(2);
    heartbeat.set_from(1);
    heartbeat.set_term(5);
    heartbeat.set_commit(40);
    heartbeat.set_context(vec![1; 24].into());

    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    append.set_to(2);
    append.set_from(1);
    append.set_term(5);
    append.set_log_term(4);
    append.set_index(40);
    append.set_commit(40);
    let mut entries = Vec::new();
    let kv = KvRequest {
        issued_at_ms: 1,
        commands: vec![put(b"k", b"v", 0, PutCondition::Always)],
    };
    for (i, data) in [
        kv.to_entry().expect("encode kv"),
        RegistrationPayload {
            dek_id: 1,
            full_node_id: 2,
            local_epoch: 3,
        }
        .to_entry(),
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.set_term(5);
        e.set_index(41 + i as u64);
        e.set_data(data.into());
        e.set_context(vec![9; 24].into());
        entries.push(e);
    }
    let mut conf = Entry::default();
    conf.set_entry_type(EntryType::EntryConfChangeV2);
    conf.set_index(44);
    conf.set_data(vec![0x0a, 0x02, 0x08, 0x03].into());
    entries.push(conf);
    append.set_entries(entries.into());

    let mut snapshot_msg = Message::default();
    snapshot_msg.set_msg_type(MessageType::MsgSnapshot);
    snapshot_msg.set_to(3);
    snapshot_msg.set_from(1);
    snapshot_msg.set_term(5);
    let mut snapshot = Snapshot::default();
    snapshot.set_data(dump_body(&[(2, b"applied_index", &7u64.to_be_bytes())]).into());
    let meta = snapshot.mut_metadata();
    meta.set_index(7);
    meta.set_term(2);
    let mut conf_state = ConfState::default();
    conf_state.set_voters(vec![1, 2, 3]);
    conf_state.set_learners(vec![4]);
    meta.set_conf_state(conf_state);
    snapshot_msg.set_snapshot(snapshot);

    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.set_to(1);
    vote.set_from(3);
    vote.set_term(6);
    vote.set_reject(true);
    vote.set_reject_hint(12);

    add(seeds, "transport_frame", "heartbeat", frame(&heartbeat));
    add(seeds, "transport_frame", "append", frame(&append));
    add(seeds, "transport_frame", "snapshot", frame(&snapshot_msg));
    let mut stream = frame(&vote);
    stream.extend(frame(&heartbeat));
    stream.extend(frame(&append));
    add(seeds, "transport_frame", "three-frames", stream);
    add(
        seeds,
        "transport_frame",
        "empty-message",
        frame(&Message::default()),
    );
    // Version 4's keepalives (frames of length 0) between messages.
    let keepalive = [0u8; 4];
    let mut stream = keepalive.to_vec();
    stream.extend(frame(&heartbeat));
    stream.extend(keepalive);
    stream.extend(keepalive);
    stream.extend(frame(&vote));
    add(seeds, "transport_frame", "keepalives", stream);
}

fn resp_seeds(seeds: &mut Seeds) {
    let inputs: &[(&str, &[u8])] = &[
        ("ping", b"*1\r\n$4\r\nPING\r\n"),
        (
            "set-options",
            b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nPX\r\n$3\r\n100\r\n$2\r\nNX\r\n",
        ),
        (
            "pipeline",
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*0\r\n*-1\r\n*3\r\n$4\r\nMSET\r\n$1\r\na\r\n$0\r\n\r\n",
        ),
        ("binary-argument", b"*1\r\n$4\r\n\r\n\0\xff\r\n"),
        ("nested-array", b"*1\r\n*1\r\n$1\r\nx\r\n"),
        ("inline", b"PING\r\n"),
        ("bad-bulk-length", b"*1\r\n$-1\r\n"),
        (
            "long-header",
            b"*1\r\n$111111111111111111111111111111111\r\n",
        ),
        ("partial", b"*3\r\n$3\r\nDEL\r\n$1\r\n"),
    ];
    for (name, bytes) in inputs {
        add(seeds, "resp", name, bytes.to_vec());
    }
}

/// One command as a client sends it: an array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn resp_command_seeds(seeds: &mut Seeds) {
    let sessions: &[(&str, &[&[&str]])] = &[
        (
            "strings",
            &[
                &["SET", "k", "v"],
                &["SET", "k", "v", "EX", "10", "NX"],
                &["SET", "k", "v", "PX", "9223372036854775807", "XX"],
                &["SET", "k", "v", "EXAT", "1700000000", "KEEPTTL"],
                &["SET", "k", "v", "PXAT", "-1", "GET"],
                &["GET", "k"],
                &["MSET", "a", "1", "b", "2"],
                &["MGET", "a", "b", "c"],
                &["EXISTS", "a", "a", "z"],
                &["DEL", "a", "b"],
            ],
        ),
        (
            "counters",
            &[
                &["INCR", "n"],
                &["INCRBY", "n", "9223372036854775806"],
                &["INCRBY", "n", "1"],
                &["DECRBY", "n", "-9223372036854775808"],
                &["DECR", "n"],
                &["SET", "s", "abc"],
                &["INCR", "s"],
            ],
        ),
        (
            "expiry",
            &[
                &["SET", "k", "v"],
                &["EXPIRE", "k", "100"],
                &["TTL", "k"],
                &["PTTL", "k"],
                &["EXPIRE", "k", "9223372036854775807"],
                &["EXPIRE", "k", "-1"],
                &["TTL", "k"],
                &["DBSIZE"],
            ],
        ),
        (
            "server",
            &[
                &["PING"],
                &["PING", "hi"],
                &["ECHO", "x"],
                &["INFO"],
                &["INFO", "replication", "server", "everything"],
                &["COMMAND", "COUNT"],
                &["COMMAND", "INFO", "get", "nosuch"],
                &["COMMAND", "DOCS"],
                &["CLIENT", "SETNAME", "me"],
                &["CLIENT", "GETNAME"],
                &["CLIENT", "ID"],
                &["HELLO", "2", "SETNAME", "x"],
                &["HELLO", "3"],
                &["SELECT", "0"],
                &["SELECT", "1"],
                &["READONLY"],
                &["GET", "k"],
                &["READWRITE"],
                &["CONFIG", "GET", "maxmemory"],
                &["AUTH", "pw"],
                &["NOSUCH", "a\r\nb"],
                &["QUIT"],
                &["PING"],
            ],
        ),
        (
            "resp3",
            &[
                &["HELLO", "3"],
                &["INCRBY", "n", "999999999999999"],
                &["GET", "missing"],
                &["MGET", "n", "missing"],
                &["CONFIG", "GET", "maxmemory"],
                &["COMMAND", "INFO", "get"],
                &["INFO", "server"],
                &["CLIENT", "INFO"],
                &["HELLO"],
                &["HELLO", "2"],
                &["GET", "missing"],
            ],
        ),
        (
            "reserved",
            &[
                &["SET", "!encryption|writers|x", "v"],
                &["GET", "!encryption|x"],
                &["MSET", "a", "1", "!encryption|b", "2"],
            ],
        ),
    ];
    for (name, commands) in sessions {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| command(c)).collect();
        add(seeds, "resp_commands", name, bytes);
    }
}

/// Every generated seed.
fn seeds() -> Seeds {
    let mut seeds = Seeds::new();
    vector_seeds(&mut seeds);
    envelope_seeds(&mut seeds);
    sidecar_seeds(&mut seeds);
    kv_seeds(&mut seeds);
    dump_seeds(&mut seeds);
    hello_seeds(&mut seeds);
    stream_seeds(&mut seeds);
    frame_seeds(&mut seeds);
    resp_seeds(&mut seeds);
    resp_command_seeds(&mut seeds);
    seeds
}

#[test]
fn fuzz_seeds_are_in_the_corpus() {
    let bless = std::env::var_os("SEALKV_FUZZ_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (target, files) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        for (name, bytes) in files {
            let path = dir.join(&name);
            if std::fs::read(&path).is_ok_and(|on_disk| on_disk == bytes) {
                continue;
            }
            if bless {
                std::fs::create_dir_all(&dir).expect("create corpus dir");
                std::fs::write(&path, &bytes).expect("write seed");
            } else {
                stale.push(format!("{target}/{name}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} seeds missing or stale in fuzz/corpus (rewrite them with SEALKV_FUZZ_BLESS=1 \
         cargo test -p sealkv-fuzz-targets --test it fuzz_seeds): {stale:?}",
        stale.len()
    );
}

#[test]
fn fuzz_seeds_pass_their_targets() {
    for (target, files) in seeds() {
        let run = sealkv_fuzz_targets::target(target).expect("a target of this name");
        for (name, bytes) in files {
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "seed {target}/{name} fails its target");
        }
    }
}
