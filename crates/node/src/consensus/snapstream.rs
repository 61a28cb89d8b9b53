//! The snapshot lane's frames (transport version 5): a snapshot's dump travels out
//! of band, as a stream of checksummed chunks, ahead of the `MsgSnapshot` whose
//! data is the small descriptor (`sealkv_store::stream`), and the receiver keeps
//! it in a file.
//!
//! ```text
//! frame, any number of times:
//! +--------------+--------+--------------------+
//! | len u32 BE   | kind   | body (len - 1)     |
//! +--------------+--------+--------------------+
//! a frame of length 0 is a keepalive and has no kind
//!
//! kind 0x01 begin, body 16 bytes: | snapshot id u64 BE | applied index u64 BE |
//! kind 0x02 chunk, body 40 + D:   | seq u64 BE | SHA-256 of data (32) | data (D) |
//! kind 0x03 message:              | raft-rs Message (protobuf): MsgSnapshot, sealed descriptor |
//! ```
//!
//! A transfer is a begin, chunks numbered from 0 (each at most
//! [`MAX_CHUNK_BYTES`]), then the message. The receiver ([`Incoming`]) writes each
//! chunk to `snapshot.recv.<id>.partial` in the data directory as it arrives,
//! after checking its sequence number and SHA-256, and hashes the whole stream;
//! only when the message's sealed descriptor matches what arrived (id, applied
//! index, length, chunk count, SHA-256) is the file synced, renamed to
//! `snapshot.recv.<id>` and the message handed to Raft. Anything else (a chunk
//! whose digest does not match, one out of order, a message that does not match)
//! is a [`StreamError`]: the connection is closed, the partial file removed, and
//! the sender, seeing the connection close, reports the snapshot failed, so Raft
//! sends it again. A connection that ends midway removes its partial file too;
//! a new transfer starts over from chunk 0 (no resume). Startup removes every
//! `snapshot.recv.*` file.
//!
//! Lengths from the network are checked before anything is allocated: a frame
//! above its kind's limit closes the connection, and a frame's buffer grows only
//! as its bytes arrive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use sealkv_store::SnapshotDescriptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest chunk of data a chunk frame carries.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// The default chunk size of a sender (`--snapshot-chunk-bytes`).
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// The largest message frame (a `MsgSnapshot` with its configuration).
const MAX_MESSAGE_FRAME: u32 = 1 << 20;
/// Length of a chunk frame's body before its data.
const CHUNK_HEADER: usize = 8 + 32;

const KIND_BEGIN: u8 = 1;
const KIND_CHUNK: u8 = 2;
const KIND_MESSAGE: u8 = 3;

/// One frame of the snapshot lane. Public for the fuzz targets; not part of the API.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum SnapFrame {
    /// A frame of length 0.
    Keepalive,
    /// A transfer starts.
    Begin {
        /// The snapshot id (the descriptor's).
        id: u64,
        /// The applied index of its dump.
        applied_index: u64,
    },
    /// A piece of the dump.
    Chunk {
        /// Its number in the transfer, from 0.
        seq: u64,
        /// SHA-256 of `data`.
        digest: [u8; 32],
        /// The bytes.
        data: Vec<u8>,
    },
    /// The raft-rs message that ends a transfer.
    Message(Box<Message>),
}

/// Why a frame could not be read. Public for the fuzz targets.
#[doc(hidden)]
#[derive(Debug, thiserror::Error)]
pub enum SnapFrameError {
    /// No header started, or a body read made no progress, within the idle timeout.
    #[error("idle")]
    Idle,
    /// A header announced more than the kind allows.
    #[error("frame of {len} bytes is above its limit")]
    TooLarge {
        /// The announced length.
        len: u32,
    },
    /// The body is not what its kind must be.
    #[error("malformed snapshot frame: {0}")]
    Malformed(String),
    /// The connection failed, or ended inside a frame.
    #[error("read frame: {0}")]
    Io(#[from] std::io::Error),
}

/// The largest frame of any kind.
const MAX_FRAME: u32 = (1 + CHUNK_HEADER + MAX_CHUNK_BYTES) as u32;

impl SnapFrame {
    /// The frame's bytes, its length header included.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        match self {
            SnapFrame::Keepalive => return Ok(vec![0, 0, 0, 0]),
            SnapFrame::Begin { id, applied_index } => {
                body.push(KIND_BEGIN);
                body.extend_from_slice(&id.to_be_bytes());
                body.extend_from_slice(&applied_index.to_be_bytes());
            }
            SnapFrame::Chunk { seq, digest, data } => {
                body.reserve(1 + CHUNK_HEADER + data.len());
                body.push(KIND_CHUNK);
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(digest);
                body.extend_from_slice(data);
            }
            SnapFrame::Message(message) => {
                body.push(KIND_MESSAGE);
                message
                    .write_to_writer(&mut body)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            }
        }
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "snapshot frame too large")
            })?;
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a frame's body (after its length header).
    ///
    /// # Errors
    /// [`SnapFrameError::Malformed`] on an unknown kind or a body of the wrong shape.
    pub fn decode(body: &[u8]) -> Result<SnapFrame, SnapFrameError> {
        let malformed = |s: &str| SnapFrameError::Malformed(s.to_string());
        let Some((&kind, rest)) = body.split_first() else {
            return Ok(SnapFrame::Keepalive);
        };
        let u64_at =
            |b: &[u8]| -> Option<u64> { b.first_chunk::<8>().map(|a| u64::from_be_bytes(*a)) };
        match kind {
            KIND_BEGIN => {
                let (Some(id), Some(applied_index), 16) =
                    (u64_at(rest), rest.get(8..).and_then(u64_at), rest.len())
                else {
                    return Err(malformed("a begin frame is 16 bytes"));
                };
                Ok(SnapFrame::Begin { id, applied_index })
            }
            KIND_CHUNK => {
                let (Some(seq), Some(digest), Some(data)) = (
                    u64_at(rest),
                    rest.get(8..CHUNK_HEADER)
                        .and_then(|d| <[u8; 32]>::try_from(d).ok()),
                    rest.get(CHUNK_HEADER..),
                ) else {
                    return Err(malformed("a chunk frame is shorter than its header"));
                };
                if data.len() > MAX_CHUNK_BYTES {
                    return Err(malformed("a chunk above the largest chunk"));
                }
                Ok(SnapFrame::Chunk {
                    seq,
                    digest,
                    data: data.to_vec(),
                })
            }
            KIND_MESSAGE => Message::parse_from_bytes(rest)
                .map(|m| SnapFrame::Message(Box::new(m)))
                .map_err(|e| SnapFrameError::Malformed(format!("not a raft message: {e}"))),
            other => Err(SnapFrameError::Malformed(format!("unknown kind {other}"))),
        }
    }
}

/// Awaits `read` within `idle`.
async fn within<T>(
    idle: Option<Duration>,
    read: impl Future<Output = T>,
) -> Result<T, SnapFrameError> {
    match idle {
        Some(idle) => tokio::time::timeout(idle, read)
            .await
            .map_err(|_| SnapFrameError::Idle),
        None => Ok(read.await),
    }
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly before a header. The
/// body's buffer grows with the bytes that arrive. Public for the fuzz targets.
///
/// # Errors
/// [`SnapFrameError`].
#[doc(hidden)]
pub async fn read_snap_frame(
    reader: &mut (impl AsyncRead + Unpin),
    idle: Option<Duration>,
) -> Result<Option<SnapFrame>, SnapFrameError> {
    let len = match within(idle, reader.read_u32()).await? {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(SnapFrameError::Io(e)),
        Ok(0) => return Ok(Some(SnapFrame::Keepalive)),
        Ok(len) => len,
    };
    if len > MAX_FRAME {
        return Err(SnapFrameError::TooLarge { len });
    }
    let kind = within(idle, reader.read_u8()).await??;
    if kind == KIND_MESSAGE && len > MAX_MESSAGE_FRAME {
        return Err(SnapFrameError::TooLarge { len });
    }
    let mut buf = Vec::with_capacity((len as usize).min(64 * 1024));
    buf.push(kind);
    let mut body = reader.take(u64::from(len - 1));
    while within(idle, body.read_buf(&mut buf)).await?? != 0 {}
    if buf.len() != len as usize {
        return Err(SnapFrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    SnapFrame::decode(&buf).map(Some)
}

/// Writes one frame.
pub(crate) async fn write_snap_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    frame: &SnapFrame,
) -> std::io::Result<()> {
    writer.write_all(&frame.encode()?).await
}

/// Why a received transfer was refused. Public for the fuzz targets.
#[doc(hidden)]
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A chunk whose SHA-256 does not match its data.
    #[error("snapshot {id:016x}: chunk {seq} does not match its checksum")]
    CorruptChunk {
        /// The snapshot.
        id: u64,
        /// The chunk.
        seq: u64,
    },
    /// A chunk or message out of place (no transfer begun, a sequence gap).
    #[error("snapshot stream out of order: {0}")]
    OutOfOrder(String),
    /// The message does not match what arrived.
    #[error("snapshot {id:016x}: {reason}")]
    Mismatch {
        /// The snapshot.
        id: u64,
        /// What differs.
        reason: String,
    },
    /// Writing the file failed.
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
}

/// Where [`Incoming`] keeps a transfer's bytes: files in the data directory on a
/// node, memory in tests and the fuzz targets.
#[doc(hidden)]
pub trait TransferFiles {
    /// The file of one transfer.
    type File: Write;
    /// Creates (or truncates) the partial file of snapshot `id`.
    fn create(&mut self, id: u64) -> std::io::Result<Self::File>;
    /// Syncs the complete file of snapshot `id` and gives it its final name.
    fn complete(&mut self, id: u64, file: Self::File) -> std::io::Result<()>;
    /// Removes the partial file of snapshot `id`; best effort.
    fn discard(&mut self, id: u64);
}

struct Transfer<F> {
    id: u64,
    applied_index: u64,
    file: F,
    next_seq: u64,
    bytes: u64,
    hasher: aws_lc_rs::digest::Context,
    started: Instant,
}

/// A received transfer's numbers, for the metrics and the log.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes of dump.
    pub bytes: u64,
    /// How long it took from the begin frame.
    pub elapsed: Duration,
}

/// The receiving side of one snapshot-lane connection (see the module docs).
#[doc(hidden)]
pub struct Incoming<T: TransferFiles> {
    files: T,
    current: Option<Transfer<T::File>>,
}

impl<T: TransferFiles> Incoming<T> {
    /// Nothing received yet.
    pub fn new(files: T) -> Incoming<T> {
        Incoming {
            files,
            current: None,
        }
    }

    fn abandon(&mut self) {
        if let Some(t) = self.current.take() {
            drop(t.file);
            self.files.discard(t.id);
        }
    }

    /// Takes one frame. Returns the message when it ends a transfer that checks
    /// out (the file is complete then), and the chunk's length for a chunk.
    ///
    /// # Errors
    /// [`StreamError`]; the transfer is abandoned (its partial file removed).
    pub fn handle(
        &mut self,
        frame: SnapFrame,
    ) -> Result<Option<(Box<Message>, Received)>, StreamError> {
        let result = self.step(frame);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    /// Bytes of the current chunk frame's data, to count as received.
    fn step(&mut self, frame: SnapFrame) -> Result<Option<(Box<Message>, Received)>, StreamError> {
        match frame {
            SnapFrame::Keepalive => Ok(None),
            SnapFrame::Begin { id, applied_index } => {
                self.abandon();
                let file = self.files.create(id)?;
                self.current = Some(Transfer {
                    id,
                    applied_index,
                    file,
                    next_seq: 0,
                    bytes: 0,
                    hasher: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
                    started: Instant::now(),
                });
                Ok(None)
            }
            SnapFrame::Chunk { seq, digest, data } => {
                let Some(t) = self.current.as_mut() else {
                    return Err(StreamError::OutOfOrder(format!(
                        "chunk {seq} before any begin"
                    )));
                };
                if seq != t.next_seq {
                    return Err(StreamError::OutOfOrder(format!(
                        "chunk {seq} of snapshot {:016x}, expected {}",
                        t.id, t.next_seq
                    )));
                }
                let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
                if sum.as_ref() != digest {
                    return Err(StreamError::CorruptChunk { id: t.id, seq });
                }
                t.file.write_all(&data)?;
                t.hasher.update(&data);
                t.bytes += data.len() as u64;
                t.next_seq += 1;
                Ok(None)
            }
            SnapFrame::Message(message) => {
                let Some(t) = self.current.take() else {
                    return Err(StreamError::OutOfOrder(
                        "a message before any begin".to_string(),
                    ));
                };
                let id = t.id;
                // Kept current until it checks out, so a refusal discards the file.
                let check = check_message(&message, &t);
                self.current = Some(t);
                check?;
                let Some(t) = self.current.take() else {
                    return Err(StreamError::OutOfOrder("no transfer".to_string()));
                };
                let received = Received {
                    bytes: t.bytes,
                    elapsed: t.started.elapsed(),
                };
                if let Err(e) = self.files.complete(id, t.file) {
                    self.files.discard(id);
                    return Err(e.into());
                }
                Ok(Some((message, received)))
            }
        }
    }
}

/// Whether `message` seals exactly the transfer `t` received.
fn check_message<F>(message: &Message, t: &Transfer<F>) -> Result<(), StreamError> {
    let mismatch = |reason: String| StreamError::Mismatch { id: t.id, reason };
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Err(mismatch(format!(
            "a {:?} ends the transfer, not a MsgSnapshot",
            message.get_msg_type()
        )));
    }
    let snapshot = message.get_snapshot();
    let d = SnapshotDescriptor::decode(snapshot.get_data())
        .map_err(|e| mismatch(format!("its descriptor: {e}")))?;
    let index = snapshot.get_metadata().index;
    let digest = t.hasher.clone().finish();
    let checks = [
        (d.id == t.id, format!("descriptor id {:016x}", d.id)),
        (
            d.applied_index == t.applied_index && index == t.applied_index,
            format!(
                "applied index {} (descriptor) / {index} (metadata), begun as {}",
                d.applied_index, t.applied_index
            ),
        ),
        (
            d.total_bytes == t.bytes,
            format!("{} bytes sealed, {} received", d.total_bytes, t.bytes),
        ),
        (
            d.chunk_count == t.next_seq,
            format!("{} chunks sealed, {} received", d.chunk_count, t.next_seq),
        ),
        (
            d.digest == digest.as_ref(),
            "the stream's SHA-256 does not match the descriptor's".to_string(),
        ),
    ];
    for (ok, reason) in checks {
        if !ok {
            return Err(mismatch(reason));
        }
    }
    Ok(())
}

impl<T: TransferFiles> Drop for Incoming<T> {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The name of the complete file of snapshot `id` in the data directory.
pub fn received_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("{RECEIVED_PREFIX}{id:016x}"))
}

/// Every received snapshot file starts so.
pub const RECEIVED_PREFIX: &str = "snapshot.recv.";

fn partial_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("{RECEIVED_PREFIX}{id:016x}.partial"))
}

/// Removes received snapshot files in `data_dir`; best effort. With no `min_age`
/// (at startup, before the transport runs) every one, partial or complete; with
/// one (after an install) only complete files at least that old: a partial file
/// belongs to a transfer under way, and a recent complete one may be the file of a
/// message still on its way to raft-rs.
pub fn remove_received(data_dir: &Path, min_age: Option<Duration>) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with(RECEIVED_PREFIX) {
            continue;
        }
        let remove = match min_age {
            None => true,
            Some(min_age) => {
                !name.ends_with(".partial")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= min_age)
            }
        };
        if remove {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How old a received file raft-rs did not take must be before an install removes
/// it.
pub const STALE_RECEIVED: Duration = Duration::from_secs(600);

/// Transfer files in a node's data directory.
#[derive(Debug)]
pub(crate) struct DirFiles {
    pub(crate) dir: PathBuf,
}

impl TransferFiles for DirFiles {
    type File = std::io::BufWriter<std::fs::File>;

    fn create(&mut self, id: u64) -> std::io::Result<Self::File> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            opts.open(partial_path(&self.dir, id))?,
        ))
    }

    fn complete(&mut self, id: u64, file: Self::File) -> std::io::Result<()> {
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(partial_path(&self.dir, id), received_path(&self.dir, id))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn discard(&mut self, id: u64) {
        let _ = std::fs::remove_file(partial_path(&self.dir, id));
    }
}

/// Transfer files in memory: the completed transfers' bytes by id. For tests and
/// the fuzz targets.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct MemoryFiles {
    /// Completed transfers.
    pub complete: Vec<(u64, Vec<u8>)>,
    /// Partial transfers discarded.
    pub discarded: usize,
}

impl TransferFiles for &mut MemoryFiles {
    type File = Vec<u8>;

    fn create(&mut self, _id: u64) -> std::io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn complete(&mut self, id: u64, file: Vec<u8>) -> std::io::Result<()> {
        self.complete.push((id, file));
        Ok(())
    }

    fn discard(&mut self, _id: u64) {
        self.discarded += 1;
    }
}

/// The frames of one transfer of `dump` as snapshot `id` at `applied_index` in
/// chunks of `chunk`, ending with `message` sealed (its snapshot data replaced
/// by the sealed descriptor). For tests and the fuzz targets' seeds.
#[doc(hidden)]
pub fn transfer_frames(
    id: u64,
    applied_index: u64,
    dump: &[u8],
    chunk: usize,
    mut message: Message,
) -> Vec<SnapFrame> {
    let mut frames = vec![SnapFrame::Begin { id, applied_index }];
    let chunks: Vec<&[u8]> = dump.chunks(chunk.max(1)).collect();
    for (seq, data) in chunks.iter().enumerate() {
        let mut digest = [0u8; 32];
        digest
            .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
        frames.push(SnapFrame::Chunk {
            seq: seq as u64,
            digest,
            data: data.to_vec(),
        });
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, dump).as_ref());
    let sealed = SnapshotDescriptor {
        id,
        applied_index,
        total_bytes: dump.len() as u64,
        chunk_count: chunks.len() as u64,
        digest,
    };
    message.mut_snapshot().set_data(sealed.encode().into());
    message.mut_snapshot().mut_metadata().index = applied_index;
    frames.push(SnapFrame::Message(Box::new(message)));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m
    }

    fn dump() -> Vec<u8> {
        (0..3000u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    /// Feeds the frames' bytes through the reader and an [`Incoming`] over memory:
    /// the messages delivered, the files completed, and the error that stopped it.
    fn run(bytes: &[u8]) -> (Vec<Message>, MemoryFiles, Option<String>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut files = MemoryFiles::default();
        let mut delivered = Vec::new();
        let mut error = None;
        {
            let mut incoming = Incoming::new(&mut files);
            let mut rest = bytes;
            loop {
                match runtime.block_on(read_snap_frame(&mut rest, None)) {
                    Ok(None) => break,
                    Ok(Some(frame)) => match incoming.handle(frame) {
                        Ok(Some((m, _))) => delivered.push(*m),
                        Ok(None) => {}
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    },
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        (delivered, files, error)
    }

    fn encode(frames: &[SnapFrame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| f.encode().expect("encode"))
            .collect()
    }

    #[test]
    fn frames_round_trip() {
        let frames = transfer_frames(9, 12, &dump(), 1000, message());
        assert_eq!(frames.len(), 1 + 3 + 1);
        for frame in &frames {
            let bytes = frame.encode().expect("encode");
            let body = bytes.get(4..).expect("header");
            assert_eq!(
                u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize,
                body.len()
            );
            assert_eq!(&SnapFrame::decode(body).expect("decode"), frame);
        }
        assert_eq!(
            SnapFrame::Keepalive.encode().expect("encode"),
            vec![0, 0, 0, 0]
        );
    }

    #[test]
    fn a_whole_transfer_completes_with_the_dump() {
        for chunk in [1, 999, 1000, 3000, 1 << 20] {
            let frames = transfer_frames(9, 12, &dump(), chunk, message());
            let mut bytes = SnapFrame::Keepalive.encode().expect("keepalive");
            bytes.extend(encode(&frames));
            let (delivered, files, error) = run(&bytes);
            assert_eq!(error, None, "chunk {chunk}");
            assert_eq!(delivered.len(), 1);
            assert_eq!(files.complete, vec![(9, dump())]);
            assert_eq!(files.discarded, 0);
            let d = SnapshotDescriptor::decode(delivered[0].get_snapshot().get_data())
                .expect("descriptor");
            assert_eq!((d.id, d.applied_index, d.total_bytes), (9, 12, 3000));
        }
    }

    /// A flipped byte anywhere in any chunk's data or digest is refused as a
    /// corrupt chunk, and nothing completes.
    #[test]
    fn a_flipped_byte_in_any_chunk_is_refused() {
        let frames = transfer_frames(9, 12, &dump(), 1000, message());
        for index in 1..=3 {
            for at in (0..1032usize).step_by(13) {
                let mut bad = frames.clone();
                let Some(SnapFrame::Chunk { data, digest, .. }) = bad.get_mut(index) else {
                    panic!("frame {index} is a chunk");
                };
                match at.checked_sub(32) {
                    None => digest[at] ^= 0x40,
                    Some(i) => data[i] ^= 0x40,
                }
                let (delivered, files, error) = run(&encode(&bad));
                let error = error.expect("refused");
                assert!(
                    error.contains(&format!("chunk {} does not match", index - 1)),
                    "{error}"
                );
                assert!(delivered.is_empty() && files.complete.is_empty());
                assert_eq!(files.discarded, 1);
            }
        }
    }

    /// A stream cut short anywhere delivers nothing; a stream whose message does
    /// not seal what arrived (a chunk missing, another id, another digest) is
    /// refused.
    #[test]
    fn truncated_or_mismatched_streams_are_refused() {
        let frames = transfer_frames(9, 12, &dump(), 1000, message());
        let bytes = encode(&frames);
        for cut in 0..bytes.len() {
            let (delivered, files, _) = run(&bytes[..cut]);
            assert!(delivered.is_empty(), "cut at {cut}");
            assert!(files.complete.is_empty(), "cut at {cut}");
        }
        let mut gap = frames.clone();
        gap.remove(2);
        let (_, _, error) = run(&encode(&gap));
        assert!(error.expect("refused").contains("expected 1"));

        let sealed_with = |f: &dyn Fn(&mut SnapshotDescriptor)| {
            let mut bad = frames.clone();
            let Some(SnapFrame::Message(m)) = bad.last_mut() else {
                panic!("the last frame is the message");
            };
            let mut d = SnapshotDescriptor::decode(m.get_snapshot().get_data()).expect("d");
            f(&mut d);
            m.mut_snapshot().set_data(d.encode().into());
            run(&encode(&bad))
        };
        for (what, f) in [
            (
                "id",
                &(|d: &mut SnapshotDescriptor| d.id = 10) as &dyn Fn(&mut SnapshotDescriptor),
            ),
            ("index", &|d| d.applied_index = 13),
            ("length", &|d| d.total_bytes -= 1),
            ("chunks", &|d| d.chunk_count = 4),
            ("digest", &|d| d.digest[0] ^= 1),
        ] {
            let (delivered, files, error) = sealed_with(f);
            assert!(error.is_some(), "{what}");
            assert!(delivered.is_empty() && files.complete.is_empty(), "{what}");
            assert_eq!(files.discarded, 1, "{what}");
        }
        // A chunk before any begin.
        let (_, _, error) = run(&encode(&frames[1..]));
        assert!(error.expect("refused").contains("before any begin"));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut huge = (MAX_FRAME + 1).to_be_bytes().to_vec();
        huge.push(KIND_CHUNK);
        let mut rest = huge.as_slice();
        assert!(matches!(
            runtime.block_on(read_snap_frame(&mut rest, None)),
            Err(SnapFrameError::TooLarge { .. })
        ));
        let mut big_message = (MAX_MESSAGE_FRAME + 1).to_be_bytes().to_vec();
        big_message.push(KIND_MESSAGE);
        let mut rest = big_message.as_slice();
        assert!(matches!(
            runtime.block_on(read_snap_frame(&mut rest, None)),
            Err(SnapFrameError::TooLarge { .. })
        ));
    }
}
