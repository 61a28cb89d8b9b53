//! Installing keys from committed entries and from snapshots, and every sidecar
//! write.

use super::*;

impl Keyring {
    /// Installs `new` keys from the entry at `index`, each becoming the active key
    /// of its purpose: writes the new sidecar (with `raft_applied_index = index`)
    /// durably, then swaps the keys in. Older keys stay loaded. The caller has
    /// checked that the ids are fresh and non-zero. Nothing in memory changes when
    /// the write fails.
    pub(crate) fn install(&self, index: u64, new: Vec<NewKey>) -> Result<()> {
        let new = self.above_floors(new);
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        let created = created_now();
        let map = doc.keys.get_or_insert_with(BTreeMap::new);
        for key in &new {
            map.insert(
                key.key_id.to_string(),
                SidecarKey {
                    purpose: key.purpose.as_str().to_string(),
                    wrapped: Some(key.wrapped.clone()),
                    created: created.clone(),
                    local_epoch: key.local_epoch,
                },
            );
            match key.purpose {
                Purpose::Storage => doc.active.storage = key.key_id,
                Purpose::Raft => doc.active.raft = key.key_id,
            }
        }
        doc.raft_applied_index = index;
        self.commit_keys(doc, new)
    }

    /// Removes the key `key_id` (retired by the entry at `index`): writes the
    /// sidecar without it (`raft_applied_index = index`) durably, then drops its
    /// DEK and nonce state. What it sealed no longer opens: a read of such a value
    /// is an integrity error (`unknown_key_id`), never a value. The caller (the
    /// applier) has checked that the key is loaded, is not active, and is a storage
    /// key. An `index` the sidecar already reflects is a replay and changes nothing;
    /// nothing in memory changes when the write fails.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`].
    pub fn retire(&self, index: u64, key_id: u32) -> Result<()> {
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        if doc.raft_applied_index >= index && self.has_sidecar() {
            return Ok(());
        }
        if let Some(keys) = doc.keys.as_mut() {
            keys.remove(&key_id.to_string());
        }
        doc.raft_applied_index = index;
        self.commit_keys_removing(doc, Vec::new(), &[key_id])
    }

    /// Writes `doc` durably, then loads the `new` keys (sealing at once, as keys
    /// installed in this load) and swaps `doc` in. The caller holds the writer lock
    /// and has put the new keys into `doc`.
    fn commit_keys(&self, doc: Sidecar, new: Vec<NewKey>) -> Result<()> {
        self.commit_keys_removing(doc, new, &[])
    }

    /// [`Keyring::commit_keys`], also dropping the keys `removed` (already left out
    /// of `doc`) from memory once `doc` is durable.
    fn commit_keys_removing(&self, doc: Sidecar, new: Vec<NewKey>, removed: &[u32]) -> Result<()> {
        // Set the key schedules up before anything is written, so a failure here
        // leaves both disk and memory as they were.
        let mut staged = Keystore::new();
        let mut states = Vec::with_capacity(new.len());
        for key in new {
            staged
                .insert(key.key_id, key.dek)
                .map_err(|source| KeyringError::Cipher {
                    key_id: key.key_id,
                    source,
                })?;
            states.push((
                key.key_id,
                NonceState::new(key.purpose, key.local_epoch, Origin::Installed),
            ));
        }
        self.write_sidecar(&doc)?;

        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        for (key_id, state) in states {
            if let Some(dek) = staged.remove(key_id) {
                // Cannot fail: the same DEK was just inserted under the same id.
                live.keys
                    .insert(key_id, dek)
                    .map_err(|source| KeyringError::Cipher { key_id, source })?;
            }
            live.nonces.insert(key_id, state);
        }
        for key_id in removed {
            // Dropping the DEK zeroizes it.
            live.keys.remove(*key_id);
            live.nonces.remove(key_id);
        }
        live.sidecar = Some(doc);
        Ok(())
    }

    /// The cluster-wide part of the key state as a sidecar document (JSON): the
    /// wrapped keys, active ids, envelope switches and the index they reflect, with
    /// every `local_epoch` 0 (epochs are each node's own). The state machine keeps
    /// it in its metadata so that a Raft snapshot carries the keys to a node that
    /// never saw the entries that installed them. `None` before any key-family
    /// entry was applied.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`] if the document does not encode (it was
    /// validated when written, so this does not happen in practice).
    pub fn shared_json(&self) -> Result<Option<Vec<u8>>> {
        let Some(mut doc) = self.read().sidecar.clone() else {
            return Ok(None);
        };
        for key in doc.keys.iter_mut().flat_map(|k| k.values_mut()) {
            key.local_epoch = 0;
        }
        let text = sidecar::to_json(&doc).map_err(|source| KeyringError::WriteSidecar {
            path: self.sidecar_path.clone(),
            source,
        })?;
        Ok(Some(text.into_bytes()))
    }

    /// Adopts the cluster-wide key state `shared` (from [`Keyring::shared_json`] on
    /// another node, carried by a Raft snapshot) when it reflects more entries than
    /// this node's sidecar: keys this node lacks are unwrapped and installed
    /// (sealing at once, like keys installed by an entry), the active ids and
    /// envelope switches are taken over, and the sidecar is written durably. A new
    /// key's epoch is one above the registry's record for this node, or 0 without
    /// one. Returns whether anything changed; an older or equal state changes
    /// nothing, so adopting is idempotent.
    ///
    /// # Errors
    /// [`KeyringError::LoadSidecar`] when `shared` does not load,
    /// [`KeyringError::KekDoesNotUnwrap`], [`KeyringError::EpochExhausted`],
    /// [`KeyringError::Registry`] or [`KeyringError::WriteSidecar`].
    pub fn adopt(&self, shared: &[u8], registry: &dyn WriterRegistryStore) -> Result<bool> {
        let theirs = sidecar::from_json(shared).map_err(|source| KeyringError::LoadSidecar {
            path: PathBuf::from("<snapshot metadata>"),
            source,
        })?;
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        if theirs.raft_applied_index <= doc.raft_applied_index && self.has_sidecar() {
            return Ok(false);
        }
        let mut new = Vec::new();
        for (id, key) in theirs.keys.iter().flatten() {
            let key_id = canonical_id(id)?;
            if self.contains_key(key_id) {
                continue;
            }
            let purpose = key
                .purpose_kind()
                .ok_or(KeyringError::NonCanonicalKeyId { key_id: id.clone() })?;
            let wrapped = key
                .wrapped
                .as_deref()
                .ok_or(KeyringError::WrappedKeyMissing { key_id })?;
            let local_epoch =
                match registry.get_writer(WriterKey::for_node(key_id, self.node_id))? {
                    Some(row) if row.full_node_id == self.node_id => {
                        if row.last_seen_local_epoch == EPOCH_EXHAUSTED {
                            return Err(KeyringError::EpochExhausted { key_id });
                        }
                        row.last_seen_local_epoch + 1
                    }
                    _ => 0,
                };
            let dek = self.unwrap(key_id, wrapped)?;
            if let Some(same_as) = self.duplicate_of(&new, &dek) {
                return Err(KeyringError::DuplicateDek { key_id, same_as });
            }
            new.push(NewKey {
                key_id,
                purpose,
                wrapped: wrapped.to_vec(),
                dek,
                local_epoch,
            });
            doc.keys.get_or_insert_with(BTreeMap::new).insert(
                key_id.to_string(),
                SidecarKey {
                    purpose: purpose.as_str().to_string(),
                    wrapped: Some(wrapped.to_vec()),
                    created: key.created.clone(),
                    local_epoch,
                },
            );
        }
        // Keys leave a keyring only by retirement. State that reflects more entries
        // and lacks a key this node holds has applied its retirement: drop it too.
        let mut removed = Vec::new();
        if let Some(ours) = doc.keys.as_mut() {
            let retired: Vec<String> = ours
                .keys()
                .filter(|id| theirs.keys.as_ref().is_none_or(|t| !t.contains_key(*id)))
                .cloned()
                .collect();
            for id in retired {
                ours.remove(&id);
                removed.push(canonical_id(&id)?);
            }
        }
        doc.active = theirs.active;
        doc.storage_envelope_active = theirs.storage_envelope_active;
        doc.raft_envelope_cutover_index = theirs.raft_envelope_cutover_index;
        doc.raft_applied_index = theirs.raft_applied_index;
        let new = self.above_floors(new);
        for key in &new {
            if let Some(k) = doc
                .keys
                .as_mut()
                .and_then(|m| m.get_mut(&key.key_id.to_string()))
            {
                k.local_epoch = key.local_epoch;
            }
        }
        self.commit_keys_removing(doc, new, &removed)?;
        Ok(true)
    }

    /// Records the envelope switches applied by the entry at `index`: whether user
    /// values are written in storage envelopes, and the Raft index from which
    /// proposals are wrapped. Writes the sidecar durably with
    /// `raft_applied_index = index`. An `index` the sidecar already reflects is a
    /// replay and changes nothing.
    ///
    /// # Errors
    /// [`KeyringError::NotBootstrapped`] (no key is active, so nothing could be
    /// sealed) or [`KeyringError::WriteSidecar`].
    pub fn set_envelopes(&self, index: u64, storage: bool, raft_cutover: u64) -> Result<()> {
        let _writer = self.lock_writer();
        let mut doc = {
            let live = self.read();
            let Some(doc) = live.sidecar.as_ref() else {
                return Err(KeyringError::NotBootstrapped);
            };
            if doc.active_key_id(Purpose::Storage).is_none()
                && doc.active_key_id(Purpose::Raft).is_none()
            {
                return Err(KeyringError::NotBootstrapped);
            }
            if doc.raft_applied_index >= index {
                return Ok(());
            }
            doc.clone()
        };
        doc.storage_envelope_active = storage;
        doc.raft_envelope_cutover_index = raft_cutover;
        doc.raft_applied_index = index;
        self.replace_sidecar(doc)
    }

    /// Records that the key-family entry at `index` was applied without changing
    /// keys (it was refused): writes the sidecar durably with
    /// `raft_applied_index = index`, creating a sidecar without keys when there is
    /// none. An `index` the sidecar already reflects changes nothing.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`].
    pub fn note_applied(&self, index: u64) -> Result<()> {
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        if doc.raft_applied_index >= index && self.has_sidecar() {
            return Ok(());
        }
        doc.raft_applied_index = index;
        self.replace_sidecar(doc)
    }

    pub(super) fn write_sidecar(&self, doc: &Sidecar) -> Result<()> {
        let write_err = |source| KeyringError::WriteSidecar {
            path: self.sidecar_path.clone(),
            source,
        };
        #[cfg(any(test, feature = "testing"))]
        {
            let crash = self
                .crash_point
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(step) = crash {
                let text = sidecar::to_json(doc).map_err(write_err)?;
                durable::durable_replace_stop_after(
                    &self.sidecar_path,
                    text.as_bytes(),
                    sidecar::SIDECAR_MODE,
                    step,
                )
                .map_err(|e| write_err(SidecarError::Durable(e)))?;
                return Err(write_err(SidecarError::Durable(DurableError::Step {
                    step,
                    path: self.sidecar_path.clone(),
                    source: io::Error::other("simulated crash"),
                })));
            }
        }
        doc.write(&self.sidecar_path).map_err(write_err)?;
        // Every write carries the live epochs, this load's raised ones included.
        self.epochs_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes the next sidecar write stop right after `step` and fail, leaving the
    /// files as a crash at that moment would. Memory is left unchanged, as after a
    /// crash; drop the keyring and reopen it to model the restart.
    #[cfg(any(test, feature = "testing"))]
    pub fn crash_next_sidecar_write_after(&self, step: durable::DurableStep) {
        *self
            .crash_point
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(step);
    }

    /// Sets the nonce counter of `key_id` for this load, to exercise counter
    /// exhaustion. Returns whether the key is loaded.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_nonce_counter(&self, key_id: u32, counter: u64) -> bool {
        let live = self.read();
        match live.nonces.get(&key_id) {
            Some(state) => {
                state.counter.store(counter, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Writes `doc` durably, then makes it the live sidecar (keys unchanged).
    fn replace_sidecar(&self, doc: Sidecar) -> Result<()> {
        self.write_sidecar(&doc)?;
        self.live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .sidecar = Some(doc);
        Ok(())
    }
}
