//! Sealing and opening storage values and Raft payloads.

use super::*;

impl Keyring {
    /// Seals a user value under the active storage key. The AAD is the envelope
    /// header ‖ `value_header` ‖ `storage_key` (DESIGN.md §6), so the envelope opens
    /// only at the same key and version with the same header.
    ///
    /// # Errors
    /// [`KeyringError::NoActiveKey`], [`KeyringError::NotRegistered`],
    /// [`KeyringError::NonceExhausted`] or [`KeyringError::Cipher`].
    pub fn seal_storage(
        &self,
        plaintext: &[u8],
        value_header: &[u8; VALUE_HEADER_LEN],
        storage_key: &[u8],
    ) -> Result<Vec<u8>> {
        let context = storage_context(value_header, storage_key);
        self.seal(
            Purpose::Storage,
            plaintext,
            AadMode::Storage { context: &context },
        )
    }

    /// Opens a storage envelope under whatever loaded key it names, so values
    /// sealed before a rotation stay readable.
    ///
    /// # Errors
    /// [`KeyringError::Integrity`] (see [`KeyringError::reason`]) or
    /// [`KeyringError::UnsupportedFlag`]; never empty or wrong bytes.
    pub fn open_storage(
        &self,
        envelope: &[u8],
        value_header: &[u8; VALUE_HEADER_LEN],
        storage_key: &[u8],
    ) -> Result<Vec<u8>> {
        let context = storage_context(value_header, storage_key);
        self.open_envelope(envelope, AadMode::Storage { context: &context })
    }

    /// Seals a Raft payload under the active raft key, with the raft AAD
    /// (`'R'` ‖ version ‖ key id).
    ///
    /// # Errors
    /// As [`Keyring::seal_storage`].
    pub fn seal_raft(&self, payload: &[u8]) -> Result<Vec<u8>> {
        self.seal(Purpose::Raft, payload, AadMode::Raft)
    }

    /// Opens a raft envelope under whatever loaded key it names.
    ///
    /// # Errors
    /// As [`Keyring::open_storage`].
    pub fn open_raft(&self, envelope: &[u8]) -> Result<Vec<u8>> {
        self.open_envelope(envelope, AadMode::Raft)
    }

    /// Seals under the active key of `purpose` when it may seal in this load (see
    /// [`Origin`]); otherwise under the newest other key of the purpose that may.
    /// Which key sealed is in the envelope, so replicas need not agree on it.
    fn seal(&self, purpose: Purpose, plaintext: &[u8], mode: AadMode<'_>) -> Result<Vec<u8>> {
        let live = self.read();
        let active = live
            .active(purpose)
            .ok_or(KeyringError::NoActiveKey(purpose))?;
        let durable = self.epochs_durable.load(Ordering::Acquire);
        let usable = |s: &NonceState| match s.origin {
            Origin::Raised => durable && s.registered.load(Ordering::Acquire),
            Origin::Installed => true,
            Origin::Stale => false,
        };
        let chosen = match live.nonces.get(&active) {
            Some(state) if usable(state) => Some((active, state)),
            _ => live
                .nonces
                .iter()
                .rev()
                .find(|(_, s)| s.purpose == purpose && usable(s))
                .map(|(id, s)| (*id, s)),
        };
        let Some((key_id, state)) = chosen else {
            let epoch = live.nonces.get(&active).map_or(0, |s| s.local_epoch);
            return Err(KeyringError::NotRegistered {
                key_id: active,
                epoch,
            });
        };
        let epoch = state.local_epoch;
        let counter = state
            .next_counter()
            .ok_or(KeyringError::NonceExhausted { key_id, epoch })?;
        let nonce = nonce(self.node_id, epoch, counter);
        #[cfg(feature = "nonce-ledger")]
        crate::ledger::record(key_id, &nonce);
        live.keys
            .seal_envelope(0, key_id, nonce, plaintext, mode)
            .map_err(|source| KeyringError::Cipher { key_id, source })
    }

    fn open_envelope(&self, envelope: &[u8], mode: AadMode<'_>) -> Result<Vec<u8>> {
        let opened = self
            .read()
            .keys
            .open_envelope(envelope, mode)
            .map_err(|source| KeyringError::Integrity { source })?;
        if opened.flag != 0 {
            return Err(KeyringError::UnsupportedFlag {
                key_id: opened.key_id,
                flag: opened.flag,
            });
        }
        Ok(opened.plaintext)
    }

    /// Unwraps a DEK from a committed entry with the KEK.
    pub(crate) fn unwrap(&self, key_id: u32, wrapped: &[u8]) -> Result<Dek> {
        let kek = load_kek(self.kek.as_ref())?;
        unwrap_dek(&kek, wrapped)
            .map_err(|source| KeyringError::KekDoesNotUnwrap { key_id, source })
    }

    /// The id of a key with `dek`'s bytes among `new` (keys about to be installed
    /// together) or the loaded ones, compared in constant time: two ids must never
    /// share an AES key, and so its nonces.
    pub(crate) fn duplicate_of(&self, new: &[NewKey], dek: &Dek) -> Option<u32> {
        new.iter()
            .find(|k| k.dek.same_bytes(dek))
            .map(|k| k.key_id)
            .or_else(|| self.read().keys.holder_of(dek))
    }
}
