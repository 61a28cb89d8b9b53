//! The state-machine snapshot dump: every row of the `data`, `meta` and `registry`
//! column families, read from one RocksDB snapshot, in a versioned length-prefixed
//! format. [`RaftLog`](crate::RaftLog)'s `Storage::snapshot` produces it and
//! [`RocksStore::install_snapshot`](crate::RocksStore::install_snapshot) consumes it.
//!
//! ```text
//! header, 5 bytes:
//! 0            4         5
//! +------------+---------+
//! | magic      | version |
//! | "SKVS"     | 0x02    |
//! +------------+---------+
//!
//! record, 9 + K + V bytes, any number of times:
//! 0       1                5         5+K               9+K        9+K+V
//! +-------+----------------+---------+-----------------+----------+
//! | cf_id | key_len u32 BE | key (K) | val_len u32 BE  | val (V)  |
//! +-------+----------------+---------+-----------------+----------+
//! cf_id: 0x01 data, 0x02 meta, 0x03 registry
//!
//! end, 9 bytes, exactly once, after the records:
//! 0       1
//! +-------+-------------------------+
//! | 0x00  | record_count u64 BE     |
//! +-------+-------------------------+
//!
//! checksum, 32 bytes, last: SHA-256 of every byte before it
//! ```
//!
//! A dump travels between nodes as a stream of chunks and is kept in a file on the
//! receiver (`crate::stream`); [`StreamDecoder`] reads one from a file with the
//! same checks as [`decode`], one record at a time.
//!
//! The checksum is verified before anything else is read, so a flipped byte anywhere
//! (in the file a follower keeps while installing, or on the way) is refused rather
//! than installed as a wrong value. The end marker and its record count make a dump
//! cut short at any offset, even exactly between two records, a decoding error
//! rather than a smaller state. Bytes after the end marker are an error too. The
//! decoder checks every length against the bytes left before reading, borrows keys
//! and values from the input, and grows its record list only as records are read, so
//! it never allocates more than the input justifies.

use rocksdb::{DB, IteratorMode};

use crate::rocks::{APPLIED_INDEX_KEY, CF_DATA, CF_META, CF_REGISTRY, cf, decode_applied_index};
use crate::{Result, StoreError, rocks::backend};

/// The first four bytes of every dump.
pub(crate) const MAGIC: &[u8; 4] = b"SKVS";
/// The only dump version this code writes and reads (2: with the checksum).
pub(crate) const VERSION: u8 = 2;
/// Length of the trailing SHA-256 checksum.
pub(crate) const CHECKSUM_LEN: usize = 32;

/// The checksum of a dump's bytes before the checksum.
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}
/// The `cf_id` byte that marks the end of the records.
const END_MARKER: u8 = 0x00;

/// The column families a dump carries, with their `cf_id` byte.
pub(crate) const DUMPED_CFS: [(u8, &str); 3] =
    [(0x01, CF_DATA), (0x02, CF_META), (0x03, CF_REGISTRY)];

/// A dump taken by [`dump_state`].
#[derive(Debug)]
pub(crate) struct StateDump {
    /// The applied index read from the same RocksDB snapshot as the rows (0 when the
    /// store has applied nothing).
    pub(crate) applied_index: u64,
    /// The encoded dump.
    pub(crate) bytes: Vec<u8>,
}

/// One row of a decoded dump, borrowed from the input.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    /// The column family's name.
    pub(crate) cf: &'static str,
    /// The row's key.
    pub(crate) key: &'a [u8],
    /// The row's value.
    pub(crate) value: &'a [u8],
}

/// A decoded, fully validated dump: it has a well-formed applied index among its
/// `meta` rows.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    /// Every row, in dump order.
    pub(crate) records: Vec<Record<'a>>,
    /// The applied index among the `meta` rows (the last one, if a dump repeats it:
    /// installing writes the rows in order).
    pub(crate) applied_index: u64,
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        what: "snapshot dump",
        reason,
    }
}

fn put_len(out: &mut Vec<u8>, what: &str, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        corrupt(format!(
            "{what} of {} bytes does not fit a u32",
            bytes.len()
        ))
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Encodes a dump incrementally: the header at once, then each record, then the
/// end marker, count and checksum. The caller drains the encoded bytes as they
/// pile up ([`Encoder::drain`]), so encoding a store of any size holds about one
/// chunk (and one record) in memory.
pub(crate) struct Encoder {
    buf: Vec<u8>,
    hasher: aws_lc_rs::digest::Context,
    count: u64,
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        Encoder {
            buf,
            hasher: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            count: 0,
        }
    }

    /// Appends one record.
    pub(crate) fn record(&mut self, id: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.buf.push(id);
        put_len(&mut self.buf, "key", key)?;
        put_len(&mut self.buf, "value", value)?;
        self.count += 1;
        Ok(())
    }

    /// Bytes encoded and not drained yet.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes up to `max` of the encoded bytes (all of them for `usize::MAX`).
    pub(crate) fn drain(&mut self, max: usize) -> Vec<u8> {
        let taken: Vec<u8> = if max >= self.buf.len() {
            std::mem::take(&mut self.buf)
        } else {
            let rest = self.buf.split_off(max);
            std::mem::replace(&mut self.buf, rest)
        };
        self.hasher.update(&taken);
        taken
    }

    /// Ends the dump: the end marker, the record count and the checksum; returns the
    /// bytes not drained yet.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.push(END_MARKER);
        self.buf.extend_from_slice(&self.count.to_be_bytes());
        self.hasher.update(&self.buf);
        let digest = self.hasher.finish();
        self.buf.extend_from_slice(digest.as_ref());
        self.buf
    }
}

/// Reads the applied index from a RocksDB snapshot (0 when the store has applied
/// nothing).
fn applied_in(db: &DB, snapshot: &rocksdb::Snapshot<'_>) -> Result<u64> {
    match snapshot
        .get_pinned_cf(cf(db, CF_META)?, APPLIED_INDEX_KEY)
        .map_err(|e| backend("read applied index for snapshot", e))?
    {
        Some(raw) => decode_applied_index(&raw),
        None => Ok(0),
    }
}

/// Encodes the state machine's column families from one RocksDB snapshot of `db`
/// into a dump, handing `sink` the bytes in pieces of exactly `chunk` bytes (the
/// last one shorter). Returns the applied index the rows reflect.
///
/// # Errors
/// [`StoreError::Backend`] when RocksDB fails to read, [`StoreError::Corrupt`] when
/// the stored applied index is malformed or a row is too large for the format, and
/// whatever `sink` returns.
pub(crate) fn encode_state(
    db: &DB,
    chunk: usize,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let chunk = chunk.max(1);
    let snapshot = db.snapshot();
    let applied_index = applied_in(db, &snapshot)?;
    let mut encoder = Encoder::new();
    for (id, name) in DUMPED_CFS {
        for item in snapshot.iterator_cf(cf(db, name)?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| backend("read rows for snapshot", e))?;
            encoder.record(id, &key, &value)?;
            while encoder.pending() >= chunk {
                sink(encoder.drain(chunk))?;
            }
        }
    }
    let mut rest = encoder.finish();
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(chunk));
        sink(std::mem::replace(&mut rest, tail))?;
    }
    Ok(applied_index)
}

/// Dumps the state machine's column families from one RocksDB snapshot into memory,
/// so the rows and the applied index are from the same instant (the in-memory form
/// of [`encode_state`], for tests and tools).
///
/// # Errors
/// As [`encode_state`].
pub(crate) fn dump_state(db: &DB) -> Result<StateDump> {
    let mut bytes = Vec::new();
    let applied_index = encode_state(db, usize::MAX, &mut |piece| {
        bytes.extend_from_slice(&piece);
        Ok(())
    })?;
    Ok(StateDump {
        applied_index,
        bytes,
    })
}

/// A bounds-checked big-endian cursor; every read checks the length first and reports
/// a shortfall as [`StoreError::Corrupt`] naming the field and the offset.
struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(corrupt(format!(
                "{field} at offset {} needs {n} bytes, {} left",
                self.offset,
                self.rest.len()
            )));
        };
        self.rest = tail;
        self.offset += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u32 BE length and that many bytes. The length is compared with the bytes
    /// left before anything is read, as a 64-bit number so it can never wrap.
    fn blob(&mut self, field: &str) -> Result<&'a [u8]> {
        let len = u32::from_be_bytes(self.array(field)?);
        if u64::from(len) > self.rest.len() as u64 {
            return Err(corrupt(format!(
                "{field} length {len} at offset {} overruns the {} bytes left",
                self.offset,
                self.rest.len()
            )));
        }
        self.take(len as usize, field)
    }
}

/// Decodes and validates a whole dump before anything is written.
///
/// # Errors
/// [`StoreError::Corrupt`] on a checksum that does not match, a wrong magic, an
/// unknown version, an unknown `cf_id`, a length that overruns the input, a missing
/// end marker, a record count that does not match, trailing bytes, or a missing or
/// malformed applied index.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded<'_>> {
    let Some((body, sum)) = bytes.split_last_chunk::<CHECKSUM_LEN>() else {
        return Err(corrupt(format!(
            "{} bytes is shorter than the {CHECKSUM_LEN}-byte checksum",
            bytes.len()
        )));
    };
    if checksum(body) != *sum {
        return Err(corrupt(
            "checksum does not match: the dump was altered or cut short".to_string(),
        ));
    }
    let mut r = Reader {
        rest: body,
        offset: 0,
    };
    let magic = r.take(MAGIC.len(), "magic")?;
    if magic != MAGIC {
        return Err(corrupt(format!("magic {magic:02x?}, want {MAGIC:02x?}")));
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(corrupt(format!("unknown version {version}")));
    }
    let mut records = Vec::new();
    let mut applied_index = None;
    loop {
        let id = r.u8("cf_id")?;
        if id == END_MARKER {
            break;
        }
        let Some((_, cf)) = DUMPED_CFS.iter().find(|(known, _)| *known == id) else {
            return Err(corrupt(format!(
                "unknown cf_id {id:#04x} at offset {}",
                r.offset - 1
            )));
        };
        let key = r.blob("key")?;
        let value = r.blob("value")?;
        if *cf == CF_META && key == APPLIED_INDEX_KEY {
            applied_index = Some(decode_applied_index(value)?);
        }
        records.push(Record { cf, key, value });
    }
    let count = r.u64("record count")?;
    if count != records.len() as u64 {
        return Err(corrupt(format!(
            "end marker counts {count} records, the dump has {}",
            records.len()
        )));
    }
    if !r.rest.is_empty() {
        return Err(corrupt(format!(
            "{} bytes after the end marker",
            r.rest.len()
        )));
    }
    let Some(applied_index) = applied_index else {
        return Err(corrupt("no applied index in the meta rows".to_string()));
    };
    Ok(Decoded {
        records,
        applied_index,
    })
}

/// Checks a snapshot's data as [`RocksStore::install_snapshot`](crate::RocksStore::install_snapshot)
/// would, without writing anything, and returns the applied index it carries: a node
/// checks a peer's snapshot this way before Raft takes it, so data that would not
/// install is dropped instead of stopping the node midway.
///
/// # Errors
/// [`StoreError::Corrupt`] on every defect `install_snapshot` refuses.
pub fn snapshot_applied_index(data: &[u8]) -> Result<u64> {
    decode(data).map(|decoded| decoded.applied_index)
}

/// A streaming decoder of a dump read from `R` (a file, in practice): the same
/// checks as [`decode`], one record at a time, with memory bounded by the largest
/// record. `total` is the number of bytes `R` holds; every length is checked
/// against the bytes left before anything is allocated, so a hostile length never
/// allocates more than the input holds.
pub(crate) struct StreamDecoder<R> {
    inner: R,
    /// Bytes left before the checksum.
    left: u64,
    offset: u64,
    /// `None` when decoding from the middle of a dump (no checksum to check).
    hasher: Option<aws_lc_rs::digest::Context>,
    count: u64,
    ended: bool,
}

impl<R: std::io::Read> StreamDecoder<R> {
    /// Reads and checks the header of a whole dump of `total` bytes.
    pub(crate) fn new(inner: R, total: u64) -> Result<StreamDecoder<R>> {
        let Some(left) = total.checked_sub(CHECKSUM_LEN as u64) else {
            return Err(corrupt(format!(
                "{total} bytes is shorter than the {CHECKSUM_LEN}-byte checksum"
            )));
        };
        let mut decoder = StreamDecoder {
            inner,
            left,
            offset: 0,
            hasher: Some(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256)),
            count: 0,
            ended: false,
        };
        let magic: [u8; 4] = decoder.array("magic")?;
        if &magic != MAGIC {
            return Err(corrupt(format!("magic {magic:02x?}, want {MAGIC:02x?}")));
        }
        let [version] = decoder.array::<1>("version")?;
        if version != VERSION {
            return Err(corrupt(format!("unknown version {version}")));
        }
        Ok(decoder)
    }

    /// Decodes records from `offset` of a dump already verified whole (by a
    /// [`StreamDecoder::new`] pass), up to `end`, the offset the records stop at.
    /// Nothing is hashed: the records were checked by the verifying pass.
    pub(crate) fn resume(inner: R, offset: u64, end: u64) -> StreamDecoder<R> {
        StreamDecoder {
            inner,
            left: end.saturating_sub(offset),
            offset,
            hasher: None,
            count: 0,
            ended: false,
        }
    }

    /// The offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, out: &mut [u8], field: &str) -> Result<()> {
        let n = out.len() as u64;
        if n > self.left {
            return Err(corrupt(format!(
                "{field} at offset {} needs {n} bytes, {} left",
                self.offset, self.left
            )));
        }
        self.inner.read_exact(out).map_err(|e| {
            corrupt(format!(
                "{field} at offset {} could not be read: {e}",
                self.offset
            ))
        })?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(out);
        }
        self.left -= n;
        self.offset += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        self.fill(&mut out, field)?;
        Ok(out)
    }

    /// A u32 BE length and that many bytes, into `out` (reused between records).
    fn blob(&mut self, field: &str, out: &mut Vec<u8>) -> Result<()> {
        let len = u32::from_be_bytes(self.array(field)?);
        if u64::from(len) > self.left {
            return Err(corrupt(format!(
                "{field} length {len} at offset {} overruns the {} bytes left",
                self.offset, self.left
            )));
        }
        out.clear();
        out.resize(len as usize, 0);
        self.fill(out, field)
    }

    /// The next record into `key` and `value`, with its column family's name;
    /// `None` at the end marker (or at `end` for a resumed decoder).
    pub(crate) fn next_record(
        &mut self,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<Option<&'static str>> {
        if self.ended || (self.hasher.is_none() && self.left == 0) {
            return Ok(None);
        }
        let [id] = self.array::<1>("cf_id")?;
        if id == END_MARKER {
            self.ended = true;
            return Ok(None);
        }
        let Some((_, cf)) = DUMPED_CFS.iter().find(|(known, _)| *known == id) else {
            return Err(corrupt(format!(
                "unknown cf_id {id:#04x} at offset {}",
                self.offset - 1
            )));
        };
        self.blob("key", key)?;
        self.blob("value", value)?;
        self.count += 1;
        Ok(Some(cf))
    }

    /// After [`next_record`](Self::next_record) returned `None` on a whole dump:
    /// checks the record count, that nothing follows it, and the checksum.
    pub(crate) fn finish(mut self) -> Result<()> {
        if !self.ended {
            return Err(corrupt("the records did not reach the end marker".into()));
        }
        let count = u64::from_be_bytes(self.array("record count")?);
        if count != self.count {
            return Err(corrupt(format!(
                "end marker counts {count} records, the dump has {}",
                self.count
            )));
        }
        if self.left != 0 {
            return Err(corrupt(format!("{} bytes after the end marker", self.left)));
        }
        let mut sum = [0u8; CHECKSUM_LEN];
        self.inner
            .read_exact(&mut sum)
            .map_err(|e| corrupt(format!("checksum could not be read: {e}")))?;
        let Some(hasher) = self.hasher.take() else {
            return Err(corrupt("a resumed decoder has no checksum to check".into()));
        };
        if hasher.finish().as_ref() != sum {
            return Err(corrupt(
                "checksum does not match: the dump was altered or cut short".to_string(),
            ));
        }
        let mut extra = [0u8; 1];
        match self.inner.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(corrupt("bytes after the checksum".into())),
            Err(e) => Err(corrupt(format!("read past the checksum: {e}"))),
        }
    }
}

/// What a verifying pass over a whole dump found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The applied index among the `meta` rows.
    pub(crate) applied_index: u64,
    /// Offset of the end marker.
    pub(crate) end_offset: u64,
    /// How many records it holds.
    pub(crate) records: u64,
}

/// Length of the header (magic and version).
pub(crate) const HEADER_LEN: u64 = 5;

/// Reads a whole dump of `total` bytes from `reader` and checks everything
/// [`decode`] checks, without keeping more than one record.
///
/// # Errors
/// [`StoreError::Corrupt`], as [`decode`].
pub(crate) fn verify(reader: impl std::io::Read, total: u64) -> Result<Verified> {
    let mut decoder = StreamDecoder::new(reader, total)?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut applied_index = None;
    while let Some(cf) = decoder.next_record(&mut key, &mut value)? {
        if cf == CF_META && key == APPLIED_INDEX_KEY {
            applied_index = Some(decode_applied_index(&value)?);
        }
    }
    let end_offset = decoder.offset().saturating_sub(1);
    let records = decoder.count;
    decoder.finish()?;
    let Some(applied_index) = applied_index else {
        return Err(corrupt("no applied index in the meta rows".to_string()));
    };
    Ok(Verified {
        applied_index,
        end_offset,
        records,
    })
}
