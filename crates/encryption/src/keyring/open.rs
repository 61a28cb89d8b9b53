//! Opening a keyring (DESIGN.md §8), committing this load's epochs, and the checks
//! against the writer registry and the cluster's record.

use super::*;

impl Keyring {
    /// Opens the keyring of the node `node_id` whose data directory is `data_dir`:
    /// the startup path of DESIGN.md §8, in this order.
    ///
    /// 1. Creates `<data_dir>/encryption` (mode 0700) if it is missing, and checks
    ///    that it can be fsynced.
    /// 2. Loads `<data_dir>/encryption/keys.json` if it exists. Without it the
    ///    keyring is empty (encryption not bootstrapped) and no file is created.
    /// 3. Loads the KEK and unwraps every key of the sidecar.
    /// 4. Refuses an active key whose local epoch is `0xFFFF`.
    /// 5. Raises the local epoch of every active key by one and writes the sidecar
    ///    durably before returning, so this process load never reuses an epoch.
    ///
    /// Active keys whose new epoch is at or above [`EPOCH_WARNING_THRESHOLD`] are
    /// listed by [`Keyring::epoch_warnings`]. No key is registered yet: call
    /// [`Keyring::check_registry`] next.
    ///
    /// # Errors
    /// [`KeyringError::CreateDir`], [`KeyringError::SidecarDirNotDurable`],
    /// [`KeyringError::LoadSidecar`], [`KeyringError::NonCanonicalKeyId`],
    /// [`KeyringError::KekUnavailable`], [`KeyringError::WrappedKeyMissing`],
    /// [`KeyringError::KekDoesNotUnwrap`], [`KeyringError::EpochExhausted`] or
    /// [`KeyringError::WriteSidecar`]. Nothing is written unless every check passed.
    pub fn open(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
    ) -> Result<Keyring> {
        let keyring = Keyring::open_deferred(data_dir, node_id, kek)?;
        keyring.commit_epochs()?;
        Ok(keyring)
    }

    /// DESIGN.md §8's startup path in one call, for a node with a writer registry:
    ///
    /// 1. [`open_deferred`](Self::open_deferred): the sidecar directory and its
    ///    fsync, the sidecar, the KEK unwrapping every key, no exhausted epoch, and
    ///    this load's raised epochs in memory;
    /// 2. when `store_holds_key_state` (the caller's store holds the cluster's key
    ///    state) and there is no sidecar, refuses if the registry records this
    ///    node above epoch 0: it sealed under keys whose sidecar is gone;
    /// 3. [`check_registry`](Self::check_registry): each raised epoch above the
    ///    registry's record, no node16 collision;
    /// 4. marks this load's epochs registered, so replayed entries seal at once;
    ///    the caller proposes [`Started::to_register`] through Raft.
    ///
    /// Nothing is written: the caller runs its own remaining checks, then
    /// [`commit_epochs`](Self::commit_epochs) before anything can seal.
    ///
    /// # Errors
    /// As [`open_deferred`](Self::open_deferred) and
    /// [`check_registry`](Self::check_registry), and
    /// [`KeyringError::SidecarMissing`].
    pub fn start(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
        registry: &dyn WriterRegistryStore,
        store_holds_key_state: bool,
    ) -> Result<Started> {
        let keyring = Keyring::open_deferred(data_dir, node_id, kek)?;
        if store_holds_key_state && !keyring.has_sidecar() {
            let owned = registry
                .list_writers()?
                .into_iter()
                .find(|(_, row)| row.full_node_id == node_id && row.last_seen_local_epoch > 0);
            if let Some((slot, row)) = owned {
                return Err(KeyringError::SidecarMissing {
                    path: keyring.sidecar_path.clone(),
                    key_id: slot.dek_id,
                    epoch: row.last_seen_local_epoch,
                });
            }
        }
        let to_register = keyring.check_registry(registry)?;
        for reg in &to_register {
            keyring.mark_registered(reg.dek_id, reg.full_node_id, reg.local_epoch);
        }
        Ok(Started {
            keyring,
            to_register,
        })
    }

    /// Steps 1 to 4 of [`open`](Self::open), and step 5 in memory only: the
    /// raised epochs are what [`check_registry`](Self::check_registry) and the
    /// registrations use, but they reach the disk only with
    /// [`commit_epochs`](Self::commit_epochs), and nothing seals under them
    /// before. A node runs every other startup check in between, so a start that
    /// fails (a check refuses, a port is taken) and is retried in a loop does not
    /// use up epochs.
    ///
    /// # Errors
    /// As [`open`](Self::open), but for [`KeyringError::WriteSidecar`].
    pub fn open_deferred(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
    ) -> Result<Keyring> {
        let data_dir = data_dir.as_ref();
        let dir = data_dir.join(SIDECAR_DIR);
        ensure_dir(&dir)?;
        durable::check_dir_fsync(&dir).map_err(|source| KeyringError::SidecarDirNotDurable {
            dir: dir.clone(),
            source,
        })?;
        let sidecar_path = sidecar::sidecar_path(data_dir);
        let loaded = Sidecar::load(&sidecar_path).map_err(|source| KeyringError::LoadSidecar {
            path: sidecar_path.clone(),
            source,
        })?;

        let mut keys = Keystore::new();
        let mut nonces = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut raised = false;
        let sidecar = match loaded {
            None => None,
            Some(mut doc) => {
                let mut parsed = Vec::new();
                for (id, key) in doc.keys.iter().flatten() {
                    let key_id = canonical_id(id)?;
                    // A validated sidecar has a known purpose for every key.
                    let purpose = key.purpose_kind().ok_or(KeyringError::LoadSidecar {
                        path: sidecar_path.clone(),
                        source: SidecarError::UnknownPurpose {
                            key_id: id.clone(),
                            purpose: key.purpose.clone(),
                        },
                    })?;
                    parsed.push((key_id, purpose));
                }
                if !parsed.is_empty() {
                    let kek = load_kek(kek.as_ref())?;
                    for &(key_id, _) in &parsed {
                        let wrapped = doc
                            .key(key_id)
                            .and_then(|k| k.wrapped.as_deref())
                            .ok_or(KeyringError::WrappedKeyMissing { key_id })?;
                        let dek = unwrap_dek(&kek, wrapped)
                            .map_err(|source| KeyringError::KekDoesNotUnwrap { key_id, source })?;
                        keys.insert(key_id, dek)
                            .map_err(|source| KeyringError::Cipher { key_id, source })?;
                    }
                }
                let active: Vec<u32> = [Purpose::Storage, Purpose::Raft]
                    .into_iter()
                    .filter_map(|p| doc.active_key_id(p))
                    .collect();
                for &key_id in &active {
                    if doc.key(key_id).map(|k| k.local_epoch) == Some(EPOCH_EXHAUSTED) {
                        return Err(KeyringError::EpochExhausted { key_id });
                    }
                }
                if let Some(map) = doc.keys.as_mut() {
                    for &key_id in &active {
                        if let Some(key) = map.get_mut(&key_id.to_string()) {
                            // Checked against 0xFFFF above.
                            key.local_epoch = key.local_epoch.saturating_add(1);
                        }
                    }
                }
                for (key_id, purpose) in parsed {
                    let epoch = doc.key(key_id).map_or(0, |k| k.local_epoch);
                    if active.contains(&key_id) && epoch >= EPOCH_WARNING_THRESHOLD {
                        warnings.push(EpochWarning {
                            key_id,
                            purpose,
                            local_epoch: epoch,
                        });
                    }
                    let origin = if active.contains(&key_id) {
                        Origin::Raised
                    } else {
                        Origin::Stale
                    };
                    nonces.insert(key_id, NonceState::new(purpose, epoch, origin));
                }
                raised = !active.is_empty();
                Some(doc)
            }
        };

        Ok(Keyring {
            node_id,
            sidecar_path,
            kek,
            live: RwLock::new(Live {
                sidecar,
                keys,
                nonces,
            }),
            writer: Mutex::new(()),
            warnings,
            epochs_durable: AtomicBool::new(!raised),
            epoch_floors: Mutex::new(BTreeMap::new()),
            #[cfg(any(test, feature = "testing"))]
            crash_point: Mutex::new(None),
        })
    }

    /// Writes the sidecar with this load's raised epochs durably (step 5 of
    /// [`open`](Self::open)), once; sealing under them is allowed from then on.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`]; nothing seals under the raised epochs then.
    pub fn commit_epochs(&self) -> Result<()> {
        if self.epochs_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        let _writer = self.lock_writer();
        let doc = self.read().doc();
        self.write_sidecar(&doc)
    }

    /// Checks this load against the cluster's record of this node (the rows of
    /// the leader's writer registry naming this node: key id and last epoch),
    /// before the node applies anything:
    ///
    /// * an active key this node holds must seal at an epoch above the record;
    /// * a key it does not hold may be recorded at epoch 0 (registered when the
    ///   node was admitted or the key rotated) or 1 (registered by the bootstrap),
    ///   before the node installed it; above that the node held the key in a
    ///   load that restarted, and its sidecar is gone. The record becomes the
    ///   key's floor: when the node installs or adopts the key, it takes an
    ///   epoch above it, so a node whose data dir was wiped after one load never
    ///   reuses that load's epoch;
    /// * inactive keys never seal and are not checked; nor does a key the node does
    ///   not hold whose id is below one it holds. Ids are issued in increasing
    ///   order and a node installs keys in log order, so it held that key and
    ///   it was retired (DESIGN.md §6, "Retiring a key"): it never seals again,
    ///   and its rows stay in the registry;
    ///
    /// # Errors
    /// [`KeyringError::EarlierCopy`] for the first row that fails; no floor is
    /// set then.
    pub fn check_cluster_record(&self, rows: &[(u32, u16)]) -> Result<()> {
        let live = self.read();
        let active = [live.active(Purpose::Storage), live.active(Purpose::Raft)];
        let highest_held = live.nonces.keys().copied().max();
        let mut floors = Vec::new();
        for &(key_id, recorded) in rows {
            let epoch = match live.nonces.get(&key_id) {
                Some(_) if !active.contains(&Some(key_id)) => continue,
                Some(state) if state.local_epoch > recorded => continue,
                Some(state) => state.local_epoch,
                None if highest_held.is_some_and(|h| key_id < h) => continue,
                None if recorded <= 1 => {
                    floors.push((key_id, recorded));
                    continue;
                }
                None => 0,
            };
            return Err(KeyringError::EarlierCopy {
                key_id,
                epoch,
                recorded,
            });
        }
        self.epoch_floors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(floors);
        Ok(())
    }

    /// `new` with each key's epoch raised above its floor, if it has one.
    pub(super) fn above_floors(&self, mut new: Vec<NewKey>) -> Vec<NewKey> {
        let floors = self
            .epoch_floors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &mut new {
            if let Some(&floor) = floors.get(&key.key_id) {
                key.local_epoch = key.local_epoch.max(floor.saturating_add(1));
            }
        }
        new
    }

    /// The startup registry check, run after the store is open and before anything
    /// is encrypted. For each active key, reads the row of (key, this node):
    ///
    /// * a row of another node with the same low 16 bits is
    ///   [`KeyringError::NodeIdCollision`];
    /// * a row whose last epoch is at or above this load's epoch is
    ///   [`KeyringError::EpochNotAboveRegistry`];
    /// * otherwise (no row, or a lower epoch) the registration of (key, node, epoch)
    ///   is returned: the node proposes each through Raft, and the key seals once
    ///   it is applied.
    ///
    /// A key already marked registered at its epoch is skipped. The check reads
    /// only; it changes nothing.
    ///
    /// # Errors
    /// The two above, or [`KeyringError::Registry`] when the store fails.
    pub fn check_registry(
        &self,
        registry: &dyn WriterRegistryStore,
    ) -> Result<Vec<RegistrationPayload>> {
        let live = self.read();
        let mut out = Vec::new();
        for purpose in [Purpose::Storage, Purpose::Raft] {
            let Some(key_id) = live.active(purpose) else {
                continue;
            };
            let Some(state) = live.nonces.get(&key_id) else {
                continue;
            };
            let epoch = state.local_epoch;
            let row = registry.get_writer(WriterKey::for_node(key_id, self.node_id))?;
            if let Some(row) = row {
                if row.full_node_id != self.node_id {
                    return Err(KeyringError::NodeIdCollision {
                        key_id,
                        node_id16: WriterKey::for_node(key_id, self.node_id).node_id16,
                        registered_full_node_id: row.full_node_id,
                        full_node_id: self.node_id,
                    });
                }
                let registered = state.registered.load(Ordering::Acquire);
                if registered && row.last_seen_local_epoch == epoch {
                    continue;
                }
                if row.last_seen_local_epoch >= epoch {
                    return Err(KeyringError::EpochNotAboveRegistry {
                        key_id,
                        epoch,
                        registered: row.last_seen_local_epoch,
                    });
                }
            }
            out.push(RegistrationPayload {
                dek_id: key_id,
                full_node_id: self.node_id,
                local_epoch: epoch,
            });
        }
        Ok(out)
    }

    /// The registrations this node still has to propose: (key, node, epoch) for
    /// every active key not yet registered at its epoch. After a rotation this node
    /// did not propose, the new key appears here.
    pub fn pending_registrations(&self) -> Vec<RegistrationPayload> {
        let live = self.read();
        [Purpose::Storage, Purpose::Raft]
            .into_iter()
            .filter_map(|p| live.active(p))
            .filter_map(|key_id| {
                let state = live.nonces.get(&key_id)?;
                (!state.registered.load(Ordering::Acquire)).then_some(RegistrationPayload {
                    dek_id: key_id,
                    full_node_id: self.node_id,
                    local_epoch: state.local_epoch,
                })
            })
            .collect()
    }

    /// Records that (dek_id, full_node_id, epoch) is registered. The applier calls
    /// it after a registration row (from a registration, bootstrap or rotation
    /// entry) is durable. Only this node's rows at the key's current epoch count;
    /// anything else is ignored. Returns whether the key was marked.
    pub fn mark_registered(&self, dek_id: u32, full_node_id: u64, epoch: u16) -> bool {
        if full_node_id != self.node_id {
            return false;
        }
        let live = self.read();
        match live.nonces.get(&dek_id) {
            Some(state) if state.local_epoch == epoch && state.origin != Origin::Stale => {
                state.registered.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }
}
