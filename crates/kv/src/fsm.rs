//! [`KvFsm`]: applies committed Raft entries to a [`KvStore`], dispatching on the
//! opcode byte, and halts on anything it cannot apply.

use std::collections::HashMap;
use std::sync::Arc;

use sealkv_encryption::applier::{Applied, Applier, ApplyError, EnvelopeSwitch};
use sealkv_encryption::keyring::{Keyring, KeyringError};
use sealkv_fsmwire::is_encryption_opcode;
use sealkv_store::gc::{Horizon, Rewrite};
use sealkv_store::mvcc::{EncryptionState, StoredValue, Version, logical_key};
use sealkv_store::{KvStore, StoreError, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::command::{
    Command, CommandError, KvRequest, Maintenance, OP_KV, OP_KV_BATCH, PutCondition, WRAPPED,
};

/// A committed Raft entry, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's Raft index. Entries must be applied in index order with no gaps.
    pub index: u64,
    /// The entry's data: an opcode byte and its payload, or empty for the no-op
    /// entry a new leader appends.
    pub data: &'a [u8],
}

/// The answer to one KV command. A deterministic user-level failure is an
/// [`Reply::Error`], not a halt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The command applied.
    Ok,
    /// The command did nothing (a failed `SET NX`/`XX` condition).
    Nil,
    /// An integer result.
    Int(i64),
    /// A deterministic user error; a front end words it for its protocol.
    Error(UserError),
}

/// A user-level failure of one command: the same on every replica, answered to the
/// client, never a halt. The RESP layer renders it as Redis's error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// `INCR` and friends on a value that is not a 64-bit integer.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// `INCRBY` past `i64`.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A write to the reserved keyspace `!encryption|`.
    #[error("key is in the reserved keyspace !encryption|")]
    ReservedKey,
    /// A cleartext KV entry after the raft envelope cutover (it was proposed
    /// before its proposer applied the cutover); a retry is wrapped.
    #[error("proposal was not in a raft envelope after the cutover; retry")]
    NotWrapped,
}

/// What applying one entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An empty (leader no-op) entry.
    Noop,
    /// A KV entry: one reply per command, in order.
    Kv(Vec<Reply>),
    /// An encryption control-plane entry.
    Encryption(Applied),
}

/// The outcome of one applied entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    /// The entry's index.
    pub index: u64,
    /// What it produced.
    pub outcome: Outcome,
}

/// Why a proposal is refused before it is appended ([`KvFsm::admit`]): an entry
/// every replica would halt on, or refuse, is never put in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The opcode is not one this cluster applies (the reserved `0x02`, `0x06` and
    /// `0x07` included).
    #[error("opcode {0:#04x} is not one this cluster applies")]
    UnknownOpcode(u8),
    /// A KV entry that does not decode.
    #[error("malformed kv entry")]
    Malformed(#[source] CommandError),
    /// A cleartext KV entry after the raft envelope cutover (its proposer had not
    /// applied the cutover yet; a retry is wrapped).
    #[error("a kv entry after the raft envelope cutover must be in a raft envelope; retry")]
    NotWrapped,
    /// A wrapped KV entry that does not open under this node's keys (sealed under
    /// a key this node has not installed yet, or altered).
    #[error("kv entry in a raft envelope does not open on this node")]
    Unwrap(#[source] KeyringError),
    /// A wrapped KV entry and this node has no keyring.
    #[error("kv entry in a raft envelope and no keyring on this node")]
    WrappedWithoutKeyring,
    /// An encryption entry and this node has no encryption applier.
    #[error("encryption opcode {0:#04x} and encryption is not enabled on this node")]
    NoEncryption(u8),
    /// An encryption entry that does not decode, or whose registry rows break the
    /// registration rules (a rollback, a collision).
    #[error("encryption entry refused")]
    Control(#[source] ApplyError),
}

impl Refusal {
    /// Whether the same request may be accepted if retried shortly (the node was
    /// a step behind the entry that decides it).
    pub fn is_transient(&self) -> bool {
        matches!(self, Refusal::NotWrapped | Refusal::Unwrap(_))
    }
}

/// Why the state machine halted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HaltCause {
    /// The opcode is not one this state machine knows (including the reserved `0x02`).
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A KV entry does not decode.
    #[error("decode kv entry")]
    Command(#[from] CommandError),
    /// An encryption opcode arrived and no encryption applier is installed.
    #[error("encryption opcode {0:#04x} with no encryption applier installed")]
    NoEncryption(u8),
    /// The encryption applier refused the entry.
    #[error("apply encryption entry")]
    Encryption(#[from] ApplyError),
    /// The store failed to read or to commit.
    #[error("storage")]
    Storage(#[from] StoreError),
    /// A stored value the entry needs (INCR, EXPIRE) could not be read: it is
    /// encrypted and does not open on this replica.
    #[error("read stored value")]
    Read(#[from] ReadError),
    /// A KV entry in a raft envelope does not open: it was altered, or sealed under
    /// a key this node does not hold, or this node has no keyring.
    #[error("open raft envelope of kv entry")]
    Unwrap(#[source] KeyringError),
    /// A KV entry arrived in a raft envelope and this node has no keyring.
    #[error("kv entry in a raft envelope and no keyring on this node")]
    WrappedWithoutKeyring,
    /// The keyring failed: a value could not be sealed (no active key, the node's
    /// epoch is not registered, the nonce counter is exhausted), or key state could
    /// not be adopted from a snapshot.
    #[error("keyring")]
    Seal(#[source] KeyringError),
    /// An entry arrived out of order.
    #[error("entry index {got} does not follow applied index {applied}")]
    OutOfOrder {
        /// The last applied index.
        applied: u64,
        /// The index that arrived.
        got: u64,
    },
}

/// A halt: the entry at `index` could not be applied. The entry is not marked
/// applied, no later entry is applied, and writes must be refused until an operator
/// fixes the cause and restarts the node (which replays the same entry).
#[derive(Debug, Clone, thiserror::Error)]
#[error("state machine halted at index {index}: {}", error_chain(cause.as_ref()))]
pub struct Halt {
    /// The index of the entry that could not be applied.
    pub index: u64,
    /// The entry's opcode, when it had one.
    pub opcode: Option<u8>,
    /// Why.
    pub cause: Arc<HaltCause>,
}

/// An error and its sources on one line, `outer: inner: ...`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Returned by [`KvFsm::apply`] when the state machine halted: the halt, and the
/// outcomes of the entries that applied before it (their effects are durable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{halt}")]
#[must_use]
pub struct Halted {
    /// The halt.
    pub halt: Halt,
    /// The entries applied in this call before the halt.
    pub applied: Vec<EntryOutcome>,
}

/// A failure to read user data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store failed.
    #[error("read value")]
    Storage(#[from] StoreError),
    /// The value is encrypted and this node has no keyring (encryption is not
    /// enabled on it).
    #[error("value of key {} is encrypted and no storage key is loaded", String::from_utf8_lossy(.0))]
    Encrypted(Vec<u8>),
    /// A cleartext version above the entry that turned the storage envelope on:
    /// the state machine seals every version from there, so it was written by
    /// something else (a flipped header byte, an edited store). Never answered as
    /// a value or as a delete.
    #[error(
        "integrity check failed for the value of key {}: version {version} is in cleartext, \
         above the storage envelope switch at {switch}",
        String::from_utf8_lossy(key)
    )]
    ClearAfterSwitch {
        /// The user key.
        key: Vec<u8>,
        /// The version's index.
        version: u64,
        /// The index of the storage envelope switch.
        switch: u64,
    },
    /// The value is encrypted and does not open: it was altered, moved to another
    /// key or version, or sealed under a key this node does not hold. Never
    /// answered with empty or wrong bytes.
    #[error(
        "integrity check failed for the value of key {}",
        String::from_utf8_lossy(key)
    )]
    Integrity {
        /// The user key.
        key: Vec<u8>,
        /// Why it does not open; [`KeyringError::reason`] classifies it.
        #[source]
        source: KeyringError,
    },
}

impl ReadError {
    /// For a decrypt failure, its reason (`integrity`, `unknown_key_id`, ...), for
    /// metrics; `None` otherwise.
    pub fn decrypt_failure_reason(&self) -> Option<&'static str> {
        match self {
            ReadError::Encrypted(_) => Some("no_keyring"),
            ReadError::ClearAfterSwitch { .. } => Some("cleartext_after_switch"),
            ReadError::Integrity { source, .. } => Some(source.reason().unwrap_or("other")),
            ReadError::Storage(_) => None,
        }
    }
}

/// Why a version could not be resealed ([`Reader::reseal`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResealError {
    /// The version does not open as a read would: it stays as it is.
    #[error("open the stored value")]
    Read(#[source] ReadError),
    /// The active storage key cannot seal here.
    #[error("seal under the active storage key")]
    Seal(#[source] KeyringError),
    /// This load may not seal under the active key yet (its epoch is not
    /// registered), and the keyring sealed under an older one.
    #[error(
        "the active storage key is {active}; this node can only seal under key {sealed_under} yet"
    )]
    NotActive {
        /// The active storage key.
        active: u32,
        /// The key the keyring sealed under.
        sealed_under: u32,
    },
    /// The store failed.
    #[error("storage")]
    Storage(#[from] StoreError),
}

/// The key id an envelope names (bytes 2..6, big-endian), if it is long enough.
pub fn envelope_key_id(envelope: &[u8]) -> Option<u32> {
    let id: [u8; 4] = envelope.get(2..6)?.try_into().ok()?;
    Some(u32::from_be_bytes(id))
}

/// Where the dump of a snapshot [`KvFsm::install_snapshot`] installs is.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotData<'a> {
    /// A whole dump in memory (the format before streamed snapshots).
    Bytes(&'a [u8]),
    /// A dump in a file, installed with bounded memory
    /// ([`KvStore::install_snapshot_file`]).
    File(&'a std::path::Path),
}

/// The state machine: applies committed entries to a [`KvStore`].
///
/// Dispatch on the first byte of an entry (DESIGN.md §3):
///
/// | opcode          | handling |
/// |-----------------|----------|
/// | empty entry     | no-op, counts as applied |
/// | `0x00`, `0x01`  | KV commands ([`KvRequest`]) |
/// | `0x03..=0x07`   | the encryption applier; halts when none is installed |
/// | anything else   | halts (including the reserved `0x02`) |
///
/// The effects of the KV entries in one [`apply`](Self::apply) call and the applied
/// index are committed in one atomic, synced store batch.
pub struct KvFsm {
    store: Arc<dyn KvStore>,
    reader: Reader,
    encryption: Option<Applier>,
    applied: u64,
    halt: Option<Halt>,
}

impl std::fmt::Debug for KvFsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvFsm")
            .field("encryption", &self.encryption.is_some())
            .field("applied", &self.applied)
            .field("halt", &self.halt)
            .finish_non_exhaustive()
    }
}

/// KV effects of the entries applied so far in one call, not yet committed, with a
/// view of the newest pending value per key so later commands read earlier writes.
struct Pending {
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, StoredValue>,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            batch: WriteBatch::new(),
            overlay: HashMap::new(),
        }
    }
}

/// The metadata row holding the index (8 bytes, big-endian) of the entry that
/// turned the storage envelope on.
pub const STORAGE_ENVELOPE_META_KEY: &[u8] = b"storage_envelope_index";

/// The metadata row holding the cluster-wide key state
/// ([`Keyring::shared_json`]).
pub const ENCRYPTION_META_KEY: &[u8] = b"encryption";

/// The metadata row holding the GC safe point ([`Horizon::encode`]).
pub const GC_HORIZON_META_KEY: &[u8] = b"gc_horizon";

/// The metadata row holding the index (u64 BE) of the last entry that asked every
/// node to collect garbage and compact its store.
pub const COMPACT_REQUEST_META_KEY: &[u8] = b"compact_requested";

/// The metadata row holding the index (u64 BE) of the last entry that asked every
/// node to reseal its values under the active storage key.
pub const REWRITE_REQUEST_META_KEY: &[u8] = b"rewrite_requested";

/// Reads a u64 BE metadata row; absent (or not 8 bytes) reads as 0.
pub fn meta_u64(store: &dyn KvStore, key: &[u8]) -> Result<u64, StoreError> {
    Ok(store
        .get_meta(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Reads the GC safe point; none yet is the zero horizon.
///
/// # Errors
/// [`StoreError`] when the row cannot be read or does not decode.
pub fn gc_horizon(store: &dyn KvStore) -> Result<Horizon, StoreError> {
    match store.get_meta(GC_HORIZON_META_KEY)? {
        Some(raw) => Horizon::decode(&raw),
        None => Ok(Horizon::default()),
    }
}

impl KvFsm {
    /// A state machine over `store`, resuming after the store's applied index.
    ///
    /// # Errors
    /// [`StoreError`] when the applied index cannot be read.
    pub fn new(store: Arc<dyn KvStore>) -> Result<KvFsm, StoreError> {
        let applied = store.applied_index()?;
        Ok(KvFsm {
            reader: Reader::new(Arc::clone(&store)),
            store,
            encryption: None,
            applied,
            halt: None,
        })
    }

    /// Installs the encryption applier: opcodes `0x03..=0x07` go to it instead of
    /// halting. When it carries a [`Keyring`], values are sealed in storage
    /// envelopes from the entry that turned the storage envelope on, and encrypted
    /// values are opened on read.
    pub fn with_encryption(mut self, applier: Applier) -> KvFsm {
        if let Some(keyring) = applier.keyring() {
            self.reader = Reader::new(Arc::clone(&self.store)).with_keyring(Arc::clone(keyring));
        }
        self.encryption = Some(applier);
        self
    }

    /// The encryption applier, when installed.
    pub fn encryption(&self) -> Option<&Applier> {
        self.encryption.as_ref()
    }

    /// Checks a proposal before it is appended to the Raft log: what this returns
    /// `Ok` for, [`apply`](Self::apply) applies or answers with a reply (given the
    /// same state), and what every replica would halt on or refuse is refused here
    /// instead. The leader runs it on every proposal, its own and forwarded ones.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub fn admit(&self, data: &[u8]) -> Result<(), Refusal> {
        let Some((&opcode, payload)) = data.split_first() else {
            return Ok(());
        };
        match opcode {
            OP_KV | OP_KV_BATCH => {
                let keyring = self.reader.keyring.as_ref();
                match payload.split_first() {
                    Some((&WRAPPED, envelope)) => {
                        let keyring = keyring.ok_or(Refusal::WrappedWithoutKeyring)?;
                        let clear = keyring.open_raft(envelope).map_err(Refusal::Unwrap)?;
                        KvRequest::decode(opcode, &clear).map_err(Refusal::Malformed)?;
                    }
                    _ if keyring.is_some_and(|k| k.raft_envelope_cutover_index() != 0) => {
                        return Err(Refusal::NotWrapped);
                    }
                    _ => {
                        KvRequest::decode(opcode, payload).map_err(Refusal::Malformed)?;
                    }
                }
                Ok(())
            }
            op if is_encryption_opcode(op) => {
                let applier = self.encryption.as_ref().ok_or(Refusal::NoEncryption(op))?;
                applier.precheck(op, payload).map_err(Refusal::Control)
            }
            other => Err(Refusal::UnknownOpcode(other)),
        }
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Re-reads the applied index from the store, after the store's contents were
    /// replaced under the state machine (a Raft snapshot was installed). Returns it.
    ///
    /// # Errors
    /// [`StoreError`] when the applied index cannot be read.
    pub fn reload_applied_index(&mut self) -> Result<u64, StoreError> {
        self.applied = self.store.applied_index()?;
        let from = Reader::new(Arc::clone(&self.store))
            .storage_from
            .load(std::sync::atomic::Ordering::Acquire);
        self.reader
            .storage_from
            .store(from, std::sync::atomic::Ordering::Release);
        self.reader.set_horizon(gc_horizon(self.store.as_ref())?);
        Ok(self.applied)
    }

    /// Installs a snapshot: the state machine's contents become the dump `data`
    /// (in memory, or in a file a streamed snapshot was received into) of the Raft
    /// snapshot at `index` (unless the store already reflects it),
    /// then the applied index and the storage switch are reloaded and the keys the
    /// snapshot carries adopted. The one owner of a snapshot install: the Raft
    /// driver calls it for a snapshot from the leader, and startup for one a crash
    /// interrupted. Returns whether keys were adopted. The caller records the
    /// snapshot in the Raft log afterwards.
    ///
    /// # Errors
    /// [`HaltCause::Storage`] when the dump does not install, or the causes of
    /// [`adopt_snapshot_keys`](Self::adopt_snapshot_keys); the node must stop.
    pub fn install_snapshot(
        &mut self,
        index: u64,
        data: SnapshotData<'_>,
    ) -> Result<bool, HaltCause> {
        if index > self.store.applied_index()? {
            match data {
                SnapshotData::Bytes(bytes) => self.store.install_snapshot(bytes)?,
                SnapshotData::File(path) => self.store.install_snapshot_file(path)?,
            }
        }
        // Fail point: the store holds the snapshot's rows, and neither the state
        // machine nor the keyring (the sidecar) has taken them in yet. Startup
        // finishes the install from the pending-snapshot file.
        fail_point!("kv::install-snapshot", |_| Err(HaltCause::Storage(
            injected("install snapshot", "kv::install-snapshot")
        )));
        self.reload_applied_index()?;
        self.adopt_snapshot_keys()
    }

    /// After a Raft snapshot was installed under the state machine (or at startup,
    /// in case a crash came between the install and this call): adopts the key
    /// state the snapshot carried in its metadata into this node's keyring, so the
    /// node can open the values the snapshot holds and seal new ones. Returns
    /// whether the keyring changed; without a keyring or key state, nothing to do.
    ///
    /// # Errors
    /// [`HaltCause::Storage`] when the metadata cannot be read,
    /// [`HaltCause::Seal`] when the keys do not unwrap or the sidecar cannot be
    /// written; the node must not go on without the keys.
    pub fn adopt_snapshot_keys(&self) -> Result<bool, HaltCause> {
        let Some(applier) = &self.encryption else {
            return Ok(false);
        };
        let Some(keyring) = applier.keyring() else {
            return Ok(false);
        };
        let Some(shared) = self.store.get_meta(ENCRYPTION_META_KEY)? else {
            return Ok(false);
        };
        keyring
            .adopt(&shared, applier.registry())
            .map_err(HaltCause::Seal)
    }

    /// The halt, once the state machine has halted.
    pub fn halted(&self) -> Option<&Halt> {
        self.halt.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Applies committed entries in index order. Entries at or below the applied
    /// index are skipped as already applied (Raft may hand them over again after a
    /// restart).
    ///
    /// # Errors
    /// [`Halted`] when an entry cannot be applied: the effects of the entries before
    /// it are committed with their applied index, the halting entry and everything
    /// after it are not applied, and every later call fails with the same halt.
    pub fn apply(&mut self, entries: &[Entry<'_>]) -> Result<Vec<EntryOutcome>, Halted> {
        let mut outcomes = Vec::with_capacity(entries.len());
        if let Some(halt) = &self.halt {
            return Err(Halted {
                halt: halt.clone(),
                applied: outcomes,
            });
        }
        let mut pending = Pending::new();
        let mut next = self.applied;
        for entry in entries {
            if entry.index <= next {
                continue;
            }
            let result = if entry.index != next + 1 {
                Err(HaltCause::OutOfOrder {
                    applied: next,
                    got: entry.index,
                })
            } else {
                self.apply_one(entry, &mut pending)
            };
            match result {
                Ok(outcome) => {
                    next = entry.index;
                    pending.batch.set_applied_index(next);
                    outcomes.push(EntryOutcome {
                        index: entry.index,
                        outcome,
                    });
                }
                Err(cause) => {
                    // Everything before the halting entry is applied and must become
                    // durable; if even that fails, the halt still names this entry
                    // and the restart replays from the durable index.
                    let committed = self.flush(&mut pending, next);
                    let halt = Halt {
                        index: entry.index,
                        opcode: entry.data.first().copied(),
                        cause: Arc::new(cause),
                    };
                    tracing::error!(index = halt.index, opcode = ?halt.opcode, "{halt}");
                    if let Err(e) = committed {
                        tracing::error!(index = next, "commit entries before the halt: {e}");
                        let durable = self.applied;
                        outcomes.retain(|o| o.index <= durable);
                    }
                    self.halt = Some(halt.clone());
                    return Err(Halted {
                        halt,
                        applied: outcomes,
                    });
                }
            }
        }
        if let Err(e) = self.flush(&mut pending, next) {
            // The batch did not land: the entries after the last durable index are not
            // applied. Halt at the first of them; a restart replays it.
            let durable = self.applied;
            let first = entries
                .iter()
                .find(|e| e.index > durable)
                .map_or(next, |e| e.index);
            outcomes.retain(|o| o.index <= durable);
            let halt = Halt {
                index: first,
                opcode: None,
                cause: Arc::new(HaltCause::Storage(e)),
            };
            tracing::error!(index = halt.index, "{halt}");
            self.halt = Some(halt.clone());
            return Err(Halted {
                halt,
                applied: outcomes,
            });
        }
        Ok(outcomes)
    }

    /// Commits the pending batch and moves the applied index to `applied`.
    fn flush(&mut self, pending: &mut Pending, applied: u64) -> Result<(), StoreError> {
        let done = std::mem::replace(pending, Pending::new());
        self.store.commit(done.batch)?;
        self.applied = applied;
        Ok(())
    }

    fn apply_one(
        &mut self,
        entry: &Entry<'_>,
        pending: &mut Pending,
    ) -> Result<Outcome, HaltCause> {
        let Some((&opcode, payload)) = entry.data.split_first() else {
            return Ok(Outcome::Noop);
        };
        match opcode {
            OP_KV | OP_KV_BATCH => {
                let keyring = self.reader.keyring.as_ref();
                let (request, wrapped) = match payload.split_first() {
                    Some((&WRAPPED, envelope)) => {
                        let keyring = keyring.ok_or(HaltCause::WrappedWithoutKeyring)?;
                        let clear = keyring.open_raft(envelope).map_err(HaltCause::Unwrap)?;
                        (KvRequest::decode(opcode, &clear)?, true)
                    }
                    _ => (KvRequest::decode(opcode, payload)?, false),
                };
                let cutover = keyring.map_or(0, |k| k.raft_envelope_cutover_index());
                if !wrapped && cutover != 0 && entry.index > cutover {
                    let refusal = Reply::Error(UserError::NotWrapped);
                    return Ok(Outcome::Kv(vec![refusal; request.commands.len()]));
                }
                let mut replies = Vec::with_capacity(request.commands.len());
                for command in &request.commands {
                    // Expiry is judged at the proposer's clock, but never before the
                    // GC safe point's time: what GC may have removed reads as absent
                    // on every replica, whether or not it is gone yet (gc.rs).
                    let now = request.issued_at_ms.max(self.reader.horizon_at());
                    replies.push(self.execute(entry.index, now, command, pending)?);
                }
                Ok(Outcome::Kv(replies))
            }
            op if is_encryption_opcode(op) => {
                if self.encryption.is_none() {
                    return Err(HaltCause::NoEncryption(op));
                }
                // Registry rows are synced by the applier itself; make every earlier
                // entry's effects durable first so the registry never runs ahead of
                // the entries before it.
                self.flush(pending, entry.index - 1)?;
                let applier = self
                    .encryption
                    .as_ref()
                    .ok_or(HaltCause::NoEncryption(op))?;
                let applied = applier.apply(entry.index, op, payload)?;
                // Fail point: the applier wrote its registry rows (and the sidecar),
                // and this entry's applied index is not written yet; a restart
                // replays the entry. `return` fails the batch as a write error would.
                fail_point!("kv::before-applied-index", |_| Err(HaltCause::Storage(
                    injected("commit batch", "kv::before-applied-index")
                )));
                // The cluster-wide key state rides in the state machine's metadata,
                // committed with this entry's applied index, so that a snapshot
                // carries the keys (see `adopt_snapshot_keys`).
                if let Some(keyring) = applier.keyring()
                    && let Some(shared) = keyring.shared_json().map_err(HaltCause::Seal)?
                {
                    pending.batch.put_meta(ENCRYPTION_META_KEY, shared)?;
                }
                // The index every later version is sealed from, for the reader's
                // check of cleartext versions (a replay records it too, in case a
                // crash came between the sidecar and this batch).
                let storage_on = matches!(
                    applied,
                    Applied::EnvelopeEnabled {
                        switch: EnvelopeSwitch::Storage,
                        ..
                    }
                ) || (matches!(applied, Applied::Replayed { .. })
                    && op == sealkv_fsmwire::OP_ROTATION
                    && matches!(
                        EnvelopeSwitch::decode(payload),
                        Ok(Some(EnvelopeSwitch::Storage))
                    ));
                if storage_on {
                    pending.batch.put_meta(
                        STORAGE_ENVELOPE_META_KEY,
                        entry.index.to_be_bytes().to_vec(),
                    )?;
                    self.reader
                        .storage_from
                        .store(entry.index, std::sync::atomic::Ordering::Release);
                }
                Ok(Outcome::Encryption(applied))
            }
            other => Err(HaltCause::UnknownOpcode(other)),
        }
    }

    /// The live value of `key` at `now_ms`, looking at pending writes first.
    fn live(
        &self,
        key: &[u8],
        now_ms: u64,
        pending: &Pending,
    ) -> Result<Option<StoredValue>, HaltCause> {
        let value = match pending.overlay.get(key) {
            Some(v) => Some(v.clone()),
            None => match self.store.get_at(key, u64::MAX)? {
                Some(version) => Some(self.reader.open(key, version)?),
                None => None,
            },
        };
        Ok(value.filter(|v| v.is_live_at(now_ms)))
    }

    /// Writes `value` (cleartext) as `key`'s version `version`: sealed in a storage
    /// envelope once the storage envelope is on, and kept in cleartext in the
    /// pending overlay so later commands of the same call read it.
    fn write(
        &self,
        key: &[u8],
        version: u64,
        value: StoredValue,
        pending: &mut Pending,
    ) -> Result<(), HaltCause> {
        let keyring = self
            .reader
            .keyring
            .as_ref()
            .filter(|k| k.storage_envelope_active());
        let stored = match keyring {
            Some(keyring) => {
                let mut header = value.header;
                header.encryption = EncryptionState::Encrypted;
                let body = keyring
                    .seal_storage(&value.body, &header.encode(), &logical_key(key, version))
                    .map_err(HaltCause::Seal)?;
                StoredValue { header, body }
            }
            None => value.clone(),
        };
        pending.batch.put(key, version, stored)?;
        pending.overlay.insert(key.to_vec(), value);
        Ok(())
    }

    fn execute(
        &self,
        version: u64,
        now_ms: u64,
        command: &Command,
        pending: &mut Pending,
    ) -> Result<Reply, HaltCause> {
        let keys: Vec<&[u8]> = match command {
            Command::Put { key, .. }
            | Command::IncrBy { key, .. }
            | Command::Expire { key, .. } => {
                vec![key]
            }
            Command::Delete { keys } => keys.iter().map(Vec::as_slice).collect(),
            Command::Maintain(maintenance) => {
                self.maintain(version, maintenance, pending)?;
                return Ok(Reply::Ok);
            }
        };
        if keys
            .iter()
            .any(|k| sealkv_encryption::registry::is_reserved_key(k))
        {
            return Ok(Reply::Error(UserError::ReservedKey));
        }
        match command {
            Command::Put {
                key,
                value,
                expire_at_ms,
                condition,
            } => {
                let live = self.live(key, now_ms, pending)?.is_some();
                let allowed = match condition {
                    PutCondition::Always => true,
                    PutCondition::IfAbsent => !live,
                    PutCondition::IfPresent => live,
                };
                if !allowed {
                    return Ok(Reply::Nil);
                }
                self.write(
                    key,
                    version,
                    StoredValue::clear(value.clone(), *expire_at_ms),
                    pending,
                )?;
                Ok(Reply::Ok)
            }
            Command::Delete { keys } => {
                let mut deleted = 0i64;
                for key in keys {
                    if self.live(key, now_ms, pending)?.is_some() {
                        self.write(key, version, StoredValue::tombstone(), pending)?;
                        deleted += 1;
                    }
                }
                Ok(Reply::Int(deleted))
            }
            Command::IncrBy { key, delta } => {
                let current = self.live(key, now_ms, pending)?;
                let (base, expire_at_ms) = match &current {
                    None => (0i64, 0),
                    Some(v) => match parse_int(&v.body) {
                        Some(n) => (n, v.header.expire_at_ms),
                        None => return Ok(Reply::Error(UserError::NotAnInteger)),
                    },
                };
                let Some(sum) = base.checked_add(*delta) else {
                    return Ok(Reply::Error(UserError::Overflow));
                };
                let value = StoredValue::clear(sum.to_string().into_bytes(), expire_at_ms);
                self.write(key, version, value, pending)?;
                Ok(Reply::Int(sum))
            }
            Command::Expire { key, expire_at_ms } => {
                let Some(mut value) = self.live(key, now_ms, pending)? else {
                    return Ok(Reply::Int(0));
                };
                if *expire_at_ms <= now_ms {
                    self.write(key, version, StoredValue::tombstone(), pending)?;
                } else {
                    value.header.expire_at_ms = *expire_at_ms;
                    self.write(key, version, value, pending)?;
                }
                Ok(Reply::Int(1))
            }
            Command::Maintain(_) => Ok(Reply::Ok),
        }
    }

    /// Applies a maintenance request: moves the GC safe point forward (never back,
    /// and never past this entry), and records the compaction and rewrite
    /// requests every node's maintenance worker acts on.
    fn maintain(
        &self,
        version: u64,
        request: &Maintenance,
        pending: &mut Pending,
    ) -> Result<(), HaltCause> {
        if let Some((index, at_ms)) = request.horizon {
            let current = self.reader.horizon();
            let proposed = Horizon {
                index: index.min(version),
                at_ms,
            };
            let next = current.max(proposed);
            pending
                .batch
                .put_meta(GC_HORIZON_META_KEY, next.encode().to_vec())?;
            self.reader.set_horizon(next);
        }
        if request.compact {
            pending
                .batch
                .put_meta(COMPACT_REQUEST_META_KEY, version.to_be_bytes().to_vec())?;
        }
        if request.rewrite {
            pending
                .batch
                .put_meta(REWRITE_REQUEST_META_KEY, version.to_be_bytes().to_vec())?;
        }
        Ok(())
    }

    /// Reads the live value of `key` at `now_ms` from the committed store.
    ///
    /// # Errors
    /// As [`Reader::get`].
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.reader.get(key, now_ms)?.map(|v| v.value))
    }

    /// A reader of the committed store (with the keyring, when there is one),
    /// usable from other threads while the state machine applies.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }
}

/// A live user value and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveValue {
    /// The value.
    pub value: Vec<u8>,
    /// Absolute expiry in ms since the Unix epoch; `0` means none.
    pub expire_at_ms: u64,
}

/// Reads committed user values. It sees what the state machine has committed, so a
/// caller that needs a linearizable read first waits until the state machine has
/// applied the read index.
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn KvStore>,
    keyring: Option<Arc<Keyring>>,
    /// The index of the entry that turned the storage envelope on (0: not on, or
    /// applied before it was recorded): every version above it is sealed.
    storage_from: Arc<std::sync::atomic::AtomicU64>,
    /// The GC safe point the state machine has applied (index, ms): expiry is never
    /// judged before its time. Written only by the state machine.
    horizon: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("keyring", &self.keyring.is_some())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A reader over `store`, without a keyring: an encrypted value is a
    /// [`ReadError::Encrypted`].
    pub fn new(store: Arc<dyn KvStore>) -> Reader {
        let from = store
            .get_meta(STORAGE_ENVELOPE_META_KEY)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let horizon = gc_horizon(store.as_ref()).unwrap_or_default();
        Reader {
            store,
            keyring: None,
            storage_from: Arc::new(std::sync::atomic::AtomicU64::new(from)),
            horizon: Arc::new([
                std::sync::atomic::AtomicU64::new(horizon.index),
                std::sync::atomic::AtomicU64::new(horizon.at_ms),
            ]),
        }
    }

    /// The GC safe point the state machine has applied.
    pub fn horizon(&self) -> Horizon {
        let [index, at_ms] = &*self.horizon;
        Horizon {
            index: index.load(std::sync::atomic::Ordering::Acquire),
            at_ms: at_ms.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// The time of the GC safe point: the earliest `now` expiry is judged at.
    fn horizon_at(&self) -> u64 {
        let [_, at_ms] = &*self.horizon;
        at_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_horizon(&self, horizon: Horizon) {
        let [index, at_ms] = &*self.horizon;
        index.store(horizon.index, std::sync::atomic::Ordering::Release);
        at_ms.store(horizon.at_ms, std::sync::atomic::Ordering::Release);
    }

    /// The same reader, opening encrypted values with `keyring`.
    pub fn with_keyring(mut self, keyring: Arc<Keyring>) -> Reader {
        self.keyring = Some(keyring);
        self
    }

    /// The live value of `key` at `now_ms`: `None` when absent, deleted or expired.
    ///
    /// # Errors
    /// [`ReadError::Integrity`] when an encrypted value does not open,
    /// [`ReadError::Encrypted`] when it is encrypted and there is no keyring,
    /// [`ReadError::Storage`] when the store fails.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<LiveValue>, ReadError> {
        let now_ms = now_ms.max(self.horizon_at());
        let Some(version) = self.store.get_at(key, u64::MAX)? else {
            return Ok(None);
        };
        // An encrypted version is opened before its header is believed: the AAD
        // binds the header, so a flipped tombstone bit or expiry is an integrity
        // error, not a value that silently disappears.
        let value = self.open(key, version)?;
        if !value.is_live_at(now_ms) {
            return Ok(None);
        }
        Ok(Some(LiveValue {
            expire_at_ms: value.header.expire_at_ms,
            value: value.body,
        }))
    }

    /// `key`'s stored `version` in cleartext: an encrypted body is opened with the
    /// AAD of its header and storage key (DESIGN.md §6), and the header marked clear.
    /// Tombstones are sealed too (an empty plaintext), and a cleartext version
    /// above the entry that turned the storage envelope on was not written by the
    /// state machine: it is [`ReadError::ClearAfterSwitch`], never a value or a
    /// delete.
    fn open(&self, key: &[u8], version: Version) -> Result<StoredValue, ReadError> {
        let Version {
            commit_version,
            value,
        } = version;
        if value.header.encryption == EncryptionState::Clear {
            let from = self.storage_from.load(std::sync::atomic::Ordering::Acquire);
            if from != 0 && commit_version > from {
                return Err(ReadError::ClearAfterSwitch {
                    key: key.to_vec(),
                    version: commit_version,
                    switch: from,
                });
            }
            return Ok(value);
        }
        let keyring = self
            .keyring
            .as_ref()
            .ok_or_else(|| ReadError::Encrypted(key.to_vec()))?;
        let body = keyring
            .open_storage(
                &value.body,
                &value.header.encode(),
                &logical_key(key, commit_version),
            )
            .map_err(|source| ReadError::Integrity {
                key: key.to_vec(),
                source,
            })?;
        let mut header = value.header;
        header.encryption = EncryptionState::Clear;
        Ok(StoredValue { header, body })
    }

    /// What the rewrite does with `key`'s stored `version` (DESIGN.md §12): a
    /// version that holds a value in cleartext, or is sealed under a storage key
    /// other than the active one, is opened (with every check of a read) and
    /// sealed again under the active key, at the same key and version, so a read
    /// sees the same value. A cleartext tombstone holds nothing and is kept.
    /// Without a keyring, or before the storage envelope is on, everything is kept.
    ///
    /// # Errors
    /// [`ResealError::Read`] when the version does not open as a read would (it is
    /// left as it is, and reads keep refusing it); [`ResealError::Seal`] when the
    /// active key cannot seal on this node yet (try again later).
    pub fn reseal(
        &self,
        key: &[u8],
        commit_version: u64,
        value: StoredValue,
    ) -> Result<Rewrite, ResealError> {
        let Some(keyring) = self
            .keyring
            .as_ref()
            .filter(|k| k.storage_envelope_active())
        else {
            return Ok(Rewrite::Keep);
        };
        let Some(active) = keyring.active_key_id(sealkv_fsmwire::Purpose::Storage) else {
            return Ok(Rewrite::Keep);
        };
        match value.header.encryption {
            EncryptionState::Clear if value.header.tombstone => return Ok(Rewrite::Keep),
            EncryptionState::Encrypted if envelope_key_id(&value.body) == Some(active) => {
                return Ok(Rewrite::Keep);
            }
            _ => {}
        }
        let clear = self
            .open(
                key,
                Version {
                    commit_version,
                    value,
                },
            )
            .map_err(ResealError::Read)?;
        let mut header = clear.header;
        header.encryption = EncryptionState::Encrypted;
        let body = keyring
            .seal_storage(
                &clear.body,
                &header.encode(),
                &logical_key(key, commit_version),
            )
            .map_err(ResealError::Seal)?;
        // The keyring falls back to an older key while this load may not seal under
        // the active one yet; such a seal changes nothing worth writing.
        let sealed_under = envelope_key_id(&body).unwrap_or(0);
        if sealed_under != active {
            return Err(ResealError::NotActive {
                active,
                sealed_under,
            });
        }
        Ok(Rewrite::Replace(StoredValue { header, body }))
    }

    /// How many keys have a live value at `now_ms` (Redis `DBSIZE`). It scans every
    /// key, so it costs time in proportion to the keyspace.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when the store fails.
    pub fn count_live(&self, now_ms: u64) -> Result<u64, ReadError> {
        let now_ms = now_ms.max(self.horizon_at());
        let mut count = 0u64;
        self.store.scan_latest(&mut |_, version| {
            if version.value.is_live_at(now_ms) {
                count += 1;
            }
            true
        })?;
        Ok(count)
    }
}

/// The engine error a fail point's `return` action injects into `op` (feature
/// `failpoints`).
#[cfg(feature = "failpoints")]
fn injected(op: &'static str, fail_point: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(std::io::Error::other(format!("fail point {fail_point}"))),
    }
}

/// Parses a value as Redis does for INCR: an optional `-` and decimal digits, no
/// spaces, no `+`, no leading zeros, within i64.
fn parse_int(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse().ok()
}
