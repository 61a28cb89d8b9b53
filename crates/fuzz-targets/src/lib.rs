//! The bodies of sealkv's fuzz targets: one plain function per decoder that reads
//! bytes from disk or the network.
//!
//! Each function takes arbitrary bytes, runs the decoder on them and panics if an
//! invariant fails. "No panic" is the floor; where the format allows, each also
//! checks that
//!
//! * a decoded value re-encodes to exactly the input (canonical encodings) or to an
//!   encoding that decodes to the same value (the others),
//! * what was decoded is justified by the input's length (no row, blob or argument
//!   the bytes could not hold),
//! * a refusal is the decoder's typed error with the class the input calls for.
//!
//! The same functions run in two harnesses: `fuzz/fuzz_targets/<name>.rs` (cargo-fuzz,
//! libFuzzer) and this crate's tests, which replay every file of
//! `fuzz/corpus/<name>/` and run a short property test of each, so CI exercises the
//! targets without a fuzzer. [`TARGETS`] lists them by name; the name is also the
//! cargo-fuzz target's and the corpus directory's.
//!
//! | target | decoder |
//! |---|---|
//! | `fsmwire_registration` | [`RegistrationPayload::decode`] (entry `0x03`) |
//! | `fsmwire_bootstrap` | [`BootstrapPayload::decode`] (entry `0x04`) |
//! | `fsmwire_rotation` | [`RotationPayload::decode`] (entry `0x05`) |
//! | `registry_key` | [`WriterKey::decode`] |
//! | `registry_value` | [`WriterRecord::decode`] |
//! | `envelope` | [`Envelope::decode`] and [`Keystore::open_envelope`] |
//! | `sidecar` | [`sidecar::from_json`] (`keys.json`) |
//! | `kv_command` | [`KvRequest::decode`] (entries `0x00`/`0x01`) |
//! | `snapshot_dump` | [`sealkv_store::decode_snapshot_dump`] and the streaming [`sealkv_store::verify_snapshot_dump`] (same verdicts) |
//! | `snapshot_stream` | [`snapstream::read_snap_frame`] and [`snapstream::Incoming`]: the snapshot lane's chunk framing and transfer checks |
//! | `transport_hello` | [`transport::Hello::read`] (version 5, with the lane byte) |
//! | `transport_frame` | [`transport::read_frame`] (keepalives and raft-rs protobuf messages, under each lane's limit) |
//! | `resp` | [`CommandCodec`]'s `Decoder` (the Redis-protocol entry point) |
//! | `resp_commands` | [`sealkv_node::resp::run_commands`]: the codec, then each command's argument parsing and execution against an in-memory backend |

mod resp_commands;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use protobuf::{Message as _, UnknownFields};
use raft::prelude::Message;
use redis_protocol::bytes::{Bytes, BytesMut};
use redis_protocol::tokio_util::codec::Decoder as _;
use sealkv_encryption::envelope::{
    AadMode, Dek, Envelope, EnvelopeError, KEY_LEN, Keystore, OVERHEAD, TAG_LEN,
};
use sealkv_encryption::registry::{self, RegistryCodecError, WriterKey, WriterRecord};
use sealkv_encryption::sidecar;
use sealkv_fsmwire::{BootstrapPayload, RegistrationPayload, RotationPayload};
use sealkv_kv::{Command, KvRequest, OP_KV, OP_KV_BATCH};
use sealkv_node::consensus::snapstream::{self, SnapFrame, SnapFrameError};
use sealkv_node::consensus::transport::{self, Hello, HelloError, Received};
use sealkv_node::resp::{CommandCodec, Limits, ProtocolError};
use sealkv_store::StoreError;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz target and corpus directory share.
pub const TARGETS: &[(&str, Target)] = &[
    ("fsmwire_registration", fsmwire_registration),
    ("fsmwire_bootstrap", fsmwire_bootstrap),
    ("fsmwire_rotation", fsmwire_rotation),
    ("registry_key", registry_key),
    ("registry_value", registry_value),
    ("envelope", envelope),
    ("sidecar", sidecar),
    ("kv_command", kv_command),
    ("snapshot_dump", snapshot_dump),
    ("snapshot_stream", snapshot_stream),
    ("transport_hello", transport_hello),
    ("transport_frame", transport_frame),
    ("resp", resp),
    ("resp_commands", resp_commands),
];

/// The target called `name`, if there is one.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The error classes the fsmwire vectors name.
const FSMWIRE_CLASSES: &[&str] = &["malformed", "version", "subtag"];

fn check_fsmwire_error(e: &sealkv_fsmwire::Error) {
    assert!(
        FSMWIRE_CLASSES.contains(&e.class()),
        "unknown fsmwire error class {:?}: {e}",
        e.class()
    );
}

/// The `0x03` payload: exactly 15 bytes, so a decode is the input byte for byte.
pub fn fsmwire_registration(data: &[u8]) {
    match RegistrationPayload::decode(data) {
        Ok(p) => assert_eq!(p.encode(), data, "registration re-encodes differently"),
        Err(e) => {
            check_fsmwire_error(&e);
            // The length is checked before the version.
            if data.len() != RegistrationPayload::LEN {
                assert_eq!(e.class(), "malformed", "{e}");
            }
        }
    }
}

/// The `0x04` payload: canonical, and its blobs and rows account for every byte.
pub fn fsmwire_bootstrap(data: &[u8]) {
    match BootstrapPayload::decode(data) {
        Ok(p) => {
            assert!(p.batch_registry.len() <= sealkv_fsmwire::MAX_BATCH_REGISTRY as usize);
            assert_eq!(
                BootstrapPayload::MIN_LEN
                    + p.wrapped_storage.len()
                    + p.wrapped_raft.len()
                    + p.batch_registry.len() * RegistrationPayload::ROW_LEN,
                data.len(),
                "bootstrap fields do not account for the input"
            );
            let encoded = p.encode().expect("a decoded bootstrap encodes");
            assert_eq!(encoded, data, "bootstrap re-encodes differently");
        }
        Err(e) => check_fsmwire_error(&e),
    }
}

/// The `0x05` payload: canonical, `25 + W` bytes, and an unknown subtag is reported
/// as such even with nothing after it.
pub fn fsmwire_rotation(data: &[u8]) {
    match RotationPayload::decode(data) {
        Ok(p) => {
            assert_eq!(RotationPayload::MIN_LEN + p.wrapped.len(), data.len());
            let encoded = p.encode().expect("a decoded rotation encodes");
            assert_eq!(encoded, data, "rotation re-encodes differently");
        }
        Err(e) => {
            check_fsmwire_error(&e);
            if let [sealkv_fsmwire::VERSION_V1, subtag, ..] = data
                && sealkv_fsmwire::RotationSubtag::from_byte(*subtag).is_none()
            {
                assert_eq!(e.class(), "subtag", "{e}");
            }
        }
    }
}

/// A writer-registry key: canonical, exactly [`registry::KEY_LEN`] bytes.
pub fn registry_key(data: &[u8]) {
    match WriterKey::decode(data) {
        Ok(key) => {
            assert_eq!(key.encode(), data, "registry key re-encodes differently");
            assert!(registry::is_reserved_key(data));
        }
        Err(e) => assert_eq!(
            e,
            RegistryCodecError::KeyMalformed { len: data.len() },
            "registry key error"
        ),
    }
}

/// A writer-registry value: canonical, exactly [`registry::VALUE_LEN`] bytes, and
/// any other length is a corrupt row (never a missing one).
pub fn registry_value(data: &[u8]) {
    match WriterRecord::decode(data) {
        Ok(record) => assert_eq!(record.encode(), data, "registry value re-encodes"),
        Err(e) => {
            assert_ne!(data.len(), registry::VALUE_LEN);
            assert_eq!(e, RegistryCodecError::ValueMalformed { len: data.len() });
        }
    }
}

/// The keystore the envelope target opens with: three fixed keys, so an envelope
/// naming key 1, 2 or 3 reaches AES-GCM (and fails its tag check).
fn fuzz_keystore() -> Keystore {
    let mut keystore = Keystore::new();
    for id in 1..=3u8 {
        keystore
            .insert(u32::from(id), Dek::from_bytes([id; KEY_LEN]))
            .expect("a fixed non-zero key id inserts");
    }
    keystore
}

/// An envelope (stored value or Raft payload): canonical, any flag byte carried;
/// opening it in each AAD mode either fails with a typed error or returns a
/// plaintext exactly [`OVERHEAD`] bytes shorter than the input.
pub fn envelope(data: &[u8]) {
    match Envelope::decode(data) {
        Ok(env) => {
            assert!(env.body.len() >= TAG_LEN);
            assert_eq!(env.encode().expect("a decoded envelope encodes"), data);
        }
        Err(EnvelopeError::Short { len, min, .. }) => {
            assert_eq!((len, min), (data.len(), OVERHEAD));
        }
        Err(EnvelopeError::Version { version }) => {
            assert!(data.len() >= OVERHEAD);
            assert_eq!(Some(&version), data.first());
        }
        Err(e) => panic!("envelope decode failed with {e:?}"),
    }
    let keystore = fuzz_keystore();
    let context = data.get(..data.len().min(8)).unwrap_or_default();
    for mode in [
        AadMode::Raft,
        AadMode::Storage { context },
        AadMode::Verbatim(context),
    ] {
        match keystore.open_envelope(data, mode) {
            Ok(opened) => assert_eq!(opened.plaintext.len() + OVERHEAD, data.len()),
            Err(e) => assert!(
                matches!(
                    e,
                    EnvelopeError::Short { .. }
                        | EnvelopeError::Version { .. }
                        | EnvelopeError::ReservedKeyId
                        | EnvelopeError::UnknownKeyId { .. }
                        | EnvelopeError::Integrity { .. }
                ),
                "open_envelope failed with {e:?}"
            ),
        }
    }
}

/// The `keys.json` sidecar: every refusal has a vector class, and an accepted
/// document writes back (Go's `MarshalIndent` layout) to a fixed point that loads
/// to the same value.
pub fn sidecar(data: &[u8]) {
    match sidecar::from_json(data) {
        Ok(doc) => {
            let text = sidecar::to_json(&doc).expect("a loaded sidecar writes");
            let again = sidecar::from_json(text.as_bytes()).expect("a written sidecar loads");
            assert_eq!(again, doc, "sidecar changed through write and load");
            let text2 = sidecar::to_json(&again).expect("a loaded sidecar writes");
            assert_eq!(text2, text, "sidecar writer is not a fixed point");
        }
        Err(e) => assert!(
            e.class().is_some(),
            "sidecar load failed without a class: {e}"
        ),
    }
}

/// Bytes a KV command carries (keys and values), which the payload must hold.
fn carried_bytes(request: &KvRequest) -> usize {
    request
        .commands
        .iter()
        .map(|c| match c {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { keys } => keys.iter().map(Vec::len).sum(),
            Command::IncrBy { key, .. } | Command::Expire { key, .. } => key.len(),
            Command::Maintain(_) => 0,
        })
        .sum()
}

/// A KV entry: the first byte is the opcode, the rest the payload. A decoded request
/// carries no more key and value bytes than the payload has, re-encodes to an entry
/// of the length `entry_len` predicts, and decodes back to itself.
pub fn kv_command(data: &[u8]) {
    let Some((&opcode, payload)) = data.split_first() else {
        return;
    };
    let Ok(request) = KvRequest::decode(opcode, payload) else {
        // Every failure is a `CommandError` by type; there is nothing more to check.
        return;
    };
    assert!(!request.commands.is_empty());
    if opcode == OP_KV {
        assert_eq!(request.commands.len(), 1);
    }
    assert!(carried_bytes(&request) <= payload.len());
    let entry = request.to_entry().expect("a decoded request encodes");
    assert_eq!(entry.len(), request.entry_len());
    assert!(entry.len() <= data.len() + 1);
    let (&new_opcode, new_payload) = entry.split_first().expect("an entry has an opcode");
    assert!(new_opcode == OP_KV || new_opcode == OP_KV_BATCH);
    let again = KvRequest::decode(new_opcode, new_payload).expect("an encoded request decodes");
    assert_eq!(
        again, request,
        "kv request changed through encode and decode"
    );
}

/// The SHA-256 a snapshot dump ends with.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Size of a dump's fixed parts: magic and version (5), end marker and count (9),
/// checksum (32).
const DUMP_FIXED_LEN: usize = 5 + 9 + 32;
/// Size of a dump record's fixed part: cf_id and two u32 lengths.
const DUMP_RECORD_LEN: usize = 9;

fn check_dump(dump: &[u8]) {
    let streamed = sealkv_store::verify_snapshot_dump(dump, dump.len() as u64);
    match sealkv_store::decode_snapshot_dump(dump) {
        Ok(records) => {
            let (_, count) = streamed.expect("the streaming decoder accepts what decode does");
            assert_eq!(
                count,
                records.len() as u64,
                "the decoders count differently"
            );
            let range = dump.as_ptr_range();
            let mut total = DUMP_FIXED_LEN;
            for (cf, key, value) in &records {
                assert!(
                    ["data", "meta", "registry"].contains(cf),
                    "column family {cf}"
                );
                for part in [key, value] {
                    let r = part.as_ptr_range();
                    assert!(
                        part.is_empty() || (range.start <= r.start && r.end <= range.end),
                        "a record does not borrow from the dump"
                    );
                }
                total += DUMP_RECORD_LEN + key.len() + value.len();
            }
            assert_eq!(
                total,
                dump.len(),
                "dump records do not account for the input"
            );
        }
        Err(e) => {
            assert!(
                matches!(e, StoreError::Corrupt { .. }),
                "dump refused with a non-corruption error: {e:?}"
            );
            match streamed {
                Ok(_) => panic!("the streaming decoder accepts a dump decode refuses: {e}"),
                Err(e) => assert!(
                    matches!(e, StoreError::Corrupt { .. }),
                    "streaming decoder refused with a non-corruption error: {e:?}"
                ),
            }
        }
    }
}

/// The snapshot lane after the hello: frames read one by one (no idle timeout),
/// each handed to a receiver keeping transfers in memory. A frame read fails only
/// as malformed, too large or where the input ends; a transfer completes only with
/// exactly the bytes its sealed descriptor names (length and SHA-256); the bytes
/// completed are no more than the input; a refused transfer is discarded.
pub fn snapshot_stream(data: &[u8]) {
    let mut files = snapstream::MemoryFiles::default();
    let mut messages = Vec::new();
    {
        let mut incoming = snapstream::Incoming::new(&mut files);
        let mut rest = data;
        loop {
            match ready(snapstream::read_snap_frame(&mut rest, None)) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    if let SnapFrame::Chunk { data, .. } = &frame {
                        assert!(data.len() <= snapstream::MAX_CHUNK_BYTES);
                    }
                    match incoming.handle(frame) {
                        Ok(Some((message, _))) => messages.push(message),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                Err(SnapFrameError::Io(e)) => {
                    check_io_error(&e);
                    break;
                }
                Err(SnapFrameError::Malformed(_) | SnapFrameError::TooLarge { .. }) => break,
                Err(SnapFrameError::Idle) => panic!("idle without an idle timeout"),
            }
        }
    }
    assert_eq!(messages.len(), files.complete.len());
    let completed: usize = files.complete.iter().map(|(_, b)| b.len()).sum();
    assert!(completed <= data.len(), "more bytes completed than input");
    for (message, (id, bytes)) in messages.iter().zip(&files.complete) {
        let d = sealkv_store::SnapshotDescriptor::decode(message.get_snapshot().get_data())
            .expect("a completed transfer's message has a descriptor");
        assert_eq!(d.id, *id);
        assert_eq!(d.total_bytes, bytes.len() as u64);
        assert_eq!(
            d.digest,
            sha256(bytes),
            "a transfer completed with other bytes"
        );
        assert_eq!(d.applied_index, message.get_snapshot().get_metadata().index);
    }
}

/// A snapshot dump. The input is decoded as it is (which mostly exercises the
/// checksum check), then as the body of a dump with its correct checksum appended,
/// which reaches the record parser; the seeds are dump bodies for that reason.
/// An accepted dump's records borrow from it and account for every byte.
pub fn snapshot_dump(data: &[u8]) {
    check_dump(data);
    let mut sealed = Vec::with_capacity(data.len() + 32);
    sealed.extend_from_slice(data);
    sealed.extend_from_slice(&sha256(data));
    check_dump(&sealed);
}

/// Polls `future` once. The transport's readers are async, but over a byte slice
/// they never wait, so one poll finishes them; anything else is a bug.
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from a byte slice returned Pending"),
    }
}

/// A read from a byte slice fails only where the bytes end.
fn check_io_error(e: &std::io::Error) {
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "transport read failed with {:?}: {e}",
        e.kind()
    );
}

/// A Raft peer's hello: an accepted hello re-encodes to exactly the bytes it was
/// read from, and a refused one names what was wrong (a version other than 5, a
/// lane byte other than 0 or 1) or ends where the input does.
pub fn transport_hello(data: &[u8]) {
    let mut rest = data;
    match ready(Hello::read(&mut rest)) {
        Ok(hello) => {
            let used = data.len() - rest.len();
            assert_eq!(
                hello.encode(),
                data.get(..used).expect("used is at most the input"),
                "hello re-encodes differently"
            );
        }
        Err(HelloError::Io(e)) => check_io_error(&e),
        Err(HelloError::Magic(magic)) => assert_ne!(&magic, b"SKVR"),
        Err(HelloError::Version(version)) => assert_ne!(version, 5),
        Err(HelloError::Lane(lane)) => assert!(lane > 1, "lane {lane} refused"),
        Err(HelloError::Address) => {}
    }
}

/// `message` without the unknown fields it carries at any depth.
///
/// rust-protobuf 2 keeps unknown fields in a `HashMap`, so it writes them back in
/// an order that changes from one process to the next; and it replaces (rather than
/// merges) a repeated singular sub-message by clearing the first, which leaves an
/// allocated but empty unknown-field set that `==` tells apart from none. Neither
/// changes what raft-rs reads, so the round trip compares the known fields (corpus:
/// `regression-repeated-submessage-*`, `regression-unknown-fields-order`).
fn known_fields(mut message: Message) -> Message {
    *message.mut_unknown_fields() = UnknownFields::new();
    for entry in message.mut_entries().iter_mut() {
        *entry.mut_unknown_fields() = UnknownFields::new();
    }
    if message.has_snapshot() {
        let snapshot = message.mut_snapshot();
        *snapshot.mut_unknown_fields() = UnknownFields::new();
        if snapshot.has_metadata() {
            let metadata = snapshot.mut_metadata();
            *metadata.mut_unknown_fields() = UnknownFields::new();
            if metadata.has_conf_state() {
                *metadata.mut_conf_state().mut_unknown_fields() = UnknownFields::new();
            }
        }
    }
    message
}

/// What reading a stream of frames under one limit yields: the frames (`None` for
/// a keepalive) and the error that ended it, if one did.
type Frames = (Vec<Option<Message>>, Option<transport::FrameError>);

fn read_frames(data: &[u8], limit: u32) -> Frames {
    let mut rest = data;
    let mut frames = Vec::new();
    loop {
        match ready(transport::read_frame(&mut rest, limit, None)) {
            Ok(Some(Received::Keepalive)) => frames.push(None),
            Ok(Some(Received::Message(message))) => frames.push(Some(message)),
            Ok(None) => {
                assert!(rest.is_empty());
                return (frames, None);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// A Raft peer's stream of frames after the hello, read under the largest limit a
/// normal lane may have (`MAX_NORMAL_FRAME`, 1 GiB), the normal lane's (for the
/// default entry size) and a small one: each
/// message re-encodes to bytes of the same size that decode to the same known
/// fields, there are no more frames (keepalives included) than length headers fit
/// in the input, and a smaller limit reads the same frames up to the first one
/// above it, refused as too large.
pub fn transport_frame(data: &[u8]) {
    let normal = transport::normal_frame_limit(sealkv_kv::SizeLimits::default().max_entry_bytes);
    let (all, end) = read_frames(data, transport::MAX_NORMAL_FRAME);
    assert!(all.len() * 4 <= data.len());
    match &end {
        None => {}
        Some(transport::FrameError::Io(e)) => check_io_error(e),
        Some(transport::FrameError::NotAMessage(_)) => {}
        Some(transport::FrameError::TooLarge { len }) => {
            assert!(*len > transport::MAX_NORMAL_FRAME);
        }
        Some(e) => panic!("a frame read without an idle timeout failed with {e}"),
    }
    for message in all.iter().flatten() {
        let bytes = message.write_to_bytes().expect("a decoded message encodes");
        let again = Message::parse_from_bytes(&bytes).expect("an encoded message decodes");
        let again_bytes = again.write_to_bytes().expect("a decoded message encodes");
        assert_eq!(
            again_bytes.len(),
            bytes.len(),
            "re-encoding changed the size"
        );
        assert_eq!(
            known_fields(again),
            known_fields(message.clone()),
            "raft message changed through encode and decode"
        );
    }
    for limit in [normal, 64] {
        let (some, small_end) = read_frames(data, limit);
        assert_eq!(
            some,
            all.get(..some.len())
                .expect("no more frames under a smaller limit"),
            "under a limit of {limit}"
        );
        match small_end {
            Some(transport::FrameError::TooLarge { len }) => assert!(len > limit),
            small_end => {
                assert_eq!(some.len(), all.len(), "under a limit of {limit}");
                assert_eq!(
                    small_end.is_some(),
                    end.is_some(),
                    "under a limit of {limit}"
                );
            }
        }
    }
}

/// What a connection's codec made of its input: the commands, then the error that
/// closed it, if one did.
type Decoded = (Vec<Vec<Bytes>>, Option<String>);

/// Feeds `input` to a fresh codec `chunk` bytes at a time, as reads would arrive.
fn decode_commands(input: &[u8], chunk: usize, limits: Limits) -> Decoded {
    let mut codec = CommandCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(args)) => commands.push(args),
                Ok(None) => break,
                Err(e) => {
                    // The guard frames a command only when redis-protocol will decode
                    // it the same way; these two mean they disagree.
                    assert!(
                        !matches!(
                            e,
                            ProtocolError::Decode(_) | ProtocolError::FrameMismatch { .. }
                        ),
                        "the guard accepted what redis-protocol refused: {e}"
                    );
                    return (commands, Some(e.to_string()));
                }
            }
        }
    }
    (commands, None)
}

/// The Redis-protocol entry point: the codec every client connection reads through.
/// The input is decoded at once and in small reads, under the default limits and
/// under small ones: the commands and the error must not depend on how the bytes
/// arrived, no command is empty, the arguments never hold more bytes than the
/// input, and the guard never frames a command redis-protocol decodes otherwise.
pub fn resp(data: &[u8]) {
    let small = Limits {
        max_bulk_len: 64,
        max_args: 8,
        max_command_len: 256,
    };
    for limits in [Limits::default(), small] {
        let whole = decode_commands(data, data.len(), limits);
        for args in &whole.0 {
            assert!(!args.is_empty(), "the codec yielded an empty command");
            assert!(args.len() <= limits.max_args);
            assert!(args.iter().all(|a| a.len() <= limits.max_bulk_len));
        }
        let carried: usize = whole.0.iter().flatten().map(Bytes::len).sum();
        assert!(carried <= data.len());
        for chunk in [1, 3] {
            let split = decode_commands(data, chunk, limits);
            assert_eq!(split, whole, "decoding in reads of {chunk} bytes differs");
        }
    }
}

/// The Redis commands behind the codec: a client's bytes framed and run one command
/// after another against an in-memory backend, as a connection runs them. Every
/// command gets exactly one reply (up to `QUIT`), every reply survives encoding and
/// decoding and carries no line break in a status or error text, and every write
/// proposed is stamped with the server's clock and round-trips through the KV
/// codec.
pub fn resp_commands(data: &[u8]) {
    resp_commands::run(data);
}
