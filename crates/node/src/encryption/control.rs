//! The encryption operations ([`Control`]): on the leader only, one at a time,
//! after a ReadIndex barrier; a follower forwards them to the leader.

use super::*;

/// Why an encryption operation could not be proposed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Encryption is not enabled on this node, or no KEK is loaded.
    #[error(
        "precondition failed: encryption is not enabled on this node or no KEK is loaded \
         (start it with --encryption-enabled and --kek-file)"
    )]
    NotEnabled,
    /// A key could not be generated or wrapped.
    #[error("generate or wrap a key")]
    Key(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A payload could not be encoded.
    #[error("encode the entry")]
    Encode(#[source] sealkv_fsmwire::Error),
    /// Raft refused or lost the proposal.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// This node stopped leading while the operation waited for its turn.
    #[error("this node is no longer the leader; retry")]
    NotLeader,
    /// The operation would break a rule of the key protocol; nothing was proposed.
    #[error("refused: {0}")]
    Refused(String),
    /// The operation could not be forwarded to the leader, or the leader refused it.
    #[error("forward to the leader: {0}")]
    Forward(String),
    /// A member the operation must hear from could not be asked; nothing was
    /// proposed, and the same request may succeed later.
    #[error("{0}; retry")]
    Unavailable(String),
}

/// Why a node may not join an encrypted cluster.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A registered writer owns the id's low 16 bits.
    #[error(
        "node id {id} shares its low 16 bits with writer {owner} registered under key \
         {key_id}: nonces could repeat; give the new node an id with other low 16 bits"
    )]
    Registered {
        /// The joining id.
        id: u64,
        /// The registered writer.
        owner: u64,
        /// A key it is registered under.
        key_id: u32,
    },
    /// A current member has the same low 16 bits.
    #[error(
        "node id {id} shares its low 16 bits with member {other}: give the new node an id \
         with other low 16 bits"
    )]
    Member {
        /// The joining id.
        id: u64,
        /// The member.
        other: u64,
    },
    /// The registry could not be read.
    #[error("read the writer registry: {0}")]
    Registry(String),
    /// The registration could not be proposed.
    #[error("register the new node")]
    Register(#[source] ControlError),
}

/// What the encryption operations and the encryption task work with.
///
/// Every operation that proposes control-plane entries (bootstrap, rotation,
/// envelope switches, registrations, the admission of a new node) runs on the
/// leader only, one at a time, after a Raft ReadIndex barrier: its choices (key
/// ids, the rows it may write) are made from every entry committed before it, and
/// no two operations interleave their entries. A follower forwards the request to
/// the leader's admin endpoint ([`Control::leader_admin`]).
#[derive(Clone)]
pub struct Control {
    /// The Raft driver.
    pub raft: RaftHandle,
    /// The keyring.
    pub keyring: Arc<Keyring>,
    /// The KEK.
    pub kek: Arc<dyn KekProvider>,
    /// The writer registry (for status).
    pub registry: Arc<dyn WriterRegistryStore>,
    /// Whether the store holds any user key (a cluster with data is moved to
    /// encryption by an operator, not automatically).
    pub has_user_data: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The state machine's store, for the key usage scan
    /// ([`sealkv_kv::versions_by_key`]).
    pub store: Arc<dyn sealkv_store::KvStore>,
    /// Where the other nodes' admin endpoints are (their transport hellos).
    pub transport: Arc<Transport>,
    /// Held for the whole of one operation on the leader.
    pub serial: Arc<tokio::sync::Mutex<()>>,
    /// Set once this load's epochs passed the check against the cluster's record
    /// ([`Control::check_record`]); the Raft driver applies nothing before (but
    /// when it leads, or is alone).
    pub apply_gate: Arc<AtomicBool>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("keyring", &self.keyring)
            .field("kek", &self.kek.kind())
            .finish_non_exhaustive()
    }
}

/// The (dek, node) rows a registration may not be proposed over: the reason, or
/// `None` when the row is new or below the registration's epoch.
fn row_refusal(
    registry: &dyn WriterRegistryStore,
    reg: &RegistrationPayload,
) -> Result<Option<String>, ControlError> {
    let key = WriterKey::for_node(reg.dek_id, reg.full_node_id);
    let row = registry
        .get_writer(key)
        .map_err(|e| ControlError::Key(Box::new(e)))?;
    Ok(row.and_then(|row| {
        if row.full_node_id != reg.full_node_id {
            Some(format!(
                "node {:#x} shares its low 16 bits with node {:#x}, registered under key {}",
                reg.full_node_id, row.full_node_id, reg.dek_id
            ))
        } else if reg.local_epoch < row.last_seen_local_epoch {
            Some(format!(
                "node {:#x} is registered under key {} at epoch {}, above {}",
                reg.full_node_id, reg.dek_id, row.last_seen_local_epoch, reg.local_epoch
            ))
        } else {
            None
        }
    }))
}

impl Control {
    /// Proposes `data` and waits until this node applied it.
    async fn propose(&self, data: Vec<u8>) -> Result<sealkv_kv::Outcome, ControlError> {
        Ok(self.raft.propose(data).await?)
    }

    /// The admin address of the leader, when another node leads: where a
    /// follower forwards an operation. `Ok(None)` when this node leads.
    ///
    /// # Errors
    /// [`ControlError::Propose`] with `NoLeader` when no leader is known or its
    /// address is not yet.
    pub fn leader_admin(&self) -> Result<Option<String>, ControlError> {
        let status = self.raft.status();
        match status.leader_id {
            Some(id) if id == status.id => Ok(None),
            Some(id) => self
                .transport
                .admin_addr_of(id)
                .map(Some)
                .ok_or(ControlError::Propose(ProposeError::NoLeader)),
            None => Err(ControlError::Propose(ProposeError::NoLeader)),
        }
    }

    /// Takes the operation lock on the leader and waits until this node applied
    /// everything committed before: what the operation reads is then the
    /// cluster's latest state.
    async fn lead(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ControlError> {
        let guard = Arc::clone(&self.serial).lock_owned().await;
        if self.leader_admin()?.is_some() {
            return Err(ControlError::NotLeader);
        }
        self.raft.linearizable_barrier().await?;
        Ok(guard)
    }

    /// Before `id` joins: refuses an id whose low 16 bits belong to a registered
    /// writer (any key, any full id: a removed node's id included, since its
    /// epochs are on record) or to another member, so two nodes can never share a
    /// nonce prefix; then proposes the registration of `id` at epoch 0 under every
    /// active key, which is the epoch the node gets when it installs those keys
    /// from the log (DESIGN.md §5: a node added later is registered with its
    /// membership change). A retry after the registration applied and the
    /// membership change did not finds `id`'s own rows and goes on.
    ///
    /// # Errors
    /// [`AdmitError`].
    pub async fn admit(&self, id: u64) -> Result<(), AdmitError> {
        let _serial = self.lead().await.map_err(AdmitError::Register)?;
        let status = self.raft.status();
        let node16 = (id & 0xFFFF) as u16;
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| AdmitError::Registry(e.to_string()))?;
        if let Some((key, row)) = rows
            .iter()
            .find(|(key, row)| key.node_id16 == node16 && row.full_node_id != id)
        {
            return Err(AdmitError::Registered {
                id,
                owner: row.full_node_id,
                key_id: key.dek_id,
            });
        }
        let members = status.voters.iter().chain(&status.learners);
        if let Some(&other) = members
            .into_iter()
            .find(|&&m| m != id && m & 0xFFFF == id & 0xFFFF)
        {
            return Err(AdmitError::Member { id, other });
        }
        for purpose in [Purpose::Storage, Purpose::Raft] {
            let Some(dek_id) = self.keyring.active_key_id(purpose) else {
                continue;
            };
            if rows
                .iter()
                .any(|(key, row)| key.dek_id == dek_id && row.full_node_id == id)
            {
                continue;
            }
            let reg = RegistrationPayload {
                dek_id,
                full_node_id: id,
                local_epoch: 0,
            };
            self.propose(registration_entry(&reg))
                .await
                .map_err(AdmitError::Register)?;
        }
        Ok(())
    }

    /// Proposes the bootstrap with every current member registered.
    ///
    /// # Errors
    /// [`ControlError`]; [`ControlError::Refused`] when the keys exist already.
    pub async fn bootstrap(&self) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        if self.keyring.is_bootstrapped() {
            return Err(ControlError::Refused(
                "the cluster's keys are bootstrapped already".to_string(),
            ));
        }
        let status = self.raft.status();
        let mut members = status.voters.clone();
        members.extend(&status.learners);
        if let Some((a, b)) = low16_collision(&members) {
            return Err(ControlError::Refused(format!(
                "members {a} and {b} share their low 16 bits, so they would build the same \
                 nonces: replace one of them under another id before bootstrapping"
            )));
        }
        self.propose(bootstrap_entry(self.kek.as_ref(), &members)?)
            .await
    }

    /// Proposes a rotation of the `purpose` key to a new key whose id is above
    /// every id the keyring or the writer registry has seen. Every other member is
    /// registered for the new key at epoch 0 (the epoch it installs the key at)
    /// first, so that every replica is registered before it seals under the key;
    /// the rotation entry registers this node.
    ///
    /// # Errors
    /// [`ControlError`].
    pub async fn rotate(&self, purpose: Purpose) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        if !self.keyring.is_bootstrapped() {
            return Err(ControlError::Refused(
                "the cluster has no keys to rotate: bootstrap first (sealkv encryption bootstrap)"
                    .to_string(),
            ));
        }
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| ControlError::Key(Box::new(e)))?;
        let key_id = self
            .keyring
            .key_ids()
            .into_iter()
            .chain(rows.iter().map(|(key, _)| key.dek_id))
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| ControlError::Refused("no key id is left".to_string()))?;
        let status = self.raft.status();
        let me = self.keyring.node_id();
        for &member in status.voters.iter().chain(&status.learners) {
            if member == me {
                continue;
            }
            let reg = RegistrationPayload {
                dek_id: key_id,
                full_node_id: member,
                local_epoch: 0,
            };
            if let Some(reason) = row_refusal(self.registry.as_ref(), &reg)? {
                return Err(ControlError::Refused(reason));
            }
            self.propose(registration_entry(&reg)).await?;
        }
        self.propose(rotation_entry(
            self.kek.as_ref(),
            &self.keyring,
            key_id,
            purpose,
        )?)
        .await
    }

    /// Proposes turning `switch` on.
    ///
    /// # Errors
    /// [`ControlError`].
    pub async fn enable(&self, switch: EnvelopeSwitch) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        self.propose(switch_entry(switch)).await
    }

    /// This node's key usage ([`sealkv_kv::versions_by_key`]), scanned now on a
    /// blocking thread.
    ///
    /// # Errors
    /// A sentence when the store cannot be scanned.
    pub async fn usage(&self) -> Result<VersionsByKey, String> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || sealkv_kv::versions_by_key(store.as_ref()))
            .await
            .map_err(|e| format!("usage scan task: {e}"))?
            .map_err(|e| format!("scan the store: {}", crate::error_chain(&e)))
    }

    /// The key usage of member `id`: this node's own scan, or the answer of the
    /// member's `GET /v1/encryption/usage` (with the node certificate, under TLS).
    async fn usage_of(&self, id: u64) -> Result<VersionsByKey, String> {
        if id == self.keyring.node_id() {
            return self.usage().await;
        }
        let admin = self
            .transport
            .admin_addr_of(id)
            .ok_or_else(|| "its admin address is not known yet".to_string())?;
        let path = "/v1/encryption/usage";
        let (code, json) =
            crate::admin_client::forward(&admin, path, None, self.keyring.node_id()).await?;
        if code != 200 {
            let reason = json["error"].as_str().unwrap_or("no reason given");
            return Err(format!("{admin} answered {code}: {reason}"));
        }
        if json["node_id"].as_u64() != Some(id) {
            return Err(format!("{admin} answered for node {}", json["node_id"]));
        }
        usage_from_json(&json).ok_or_else(|| format!("{admin} answered a malformed usage"))
    }

    /// Proposes the retirement of storage key `key_id` ([`KeyRetirement`]), after
    /// checking on every member (voters and learners) that nothing needs it:
    ///
    /// * the key is loaded, is not active, and is a storage key (raft keys are not
    ///   retired: entries sealed under them may still be read from the log);
    /// * every member answers (an unreachable one is [`ControlError::Unavailable`],
    ///   never taken for zero);
    /// * every member's scan reflects the leader's last key-family entry, so the
    ///   key stopped being active on it before the scan and it never seals under
    ///   the key again (DESIGN.md §6: an inactive key never seals);
    /// * no member holds a version sealed under the key.
    ///
    /// The applier checks the key state again on every replica.
    ///
    /// # Errors
    /// [`ControlError::Refused`] with the reason (naming the node and its count);
    /// [`ControlError::Unavailable`]; any other [`ControlError`].
    pub async fn retire(&self, key_id: u32) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        let Some(purpose) = self.keyring.purpose_of(key_id) else {
            return Err(ControlError::Refused(format!(
                "key {key_id} is not a loaded key (never issued, or retired already)"
            )));
        };
        if self.keyring.active_key_id(purpose) == Some(key_id) {
            return Err(ControlError::Refused(format!(
                "key {key_id} is the active {purpose} key: rotate it first \
                 (sealkv encryption rotate-dek --purpose {purpose})"
            )));
        }
        if purpose == Purpose::Raft {
            return Err(ControlError::Refused(format!(
                "key {key_id} is a raft key; only storage keys can be retired (Raft entries \
                 sealed under it may still be read from the log)"
            )));
        }
        // Every key-family entry up to here applied on this node, the one that made
        // another key active in `key_id`'s place included.
        let since = self.keyring.sidecar_applied_index();
        let status = self.raft.status();
        let mut members: Vec<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        members.sort_unstable();
        members.dedup();
        for member in members {
            let usage = self
                .usage_of(member)
                .await
                .map_err(|e| ControlError::Unavailable(format!("ask node {member}: {e}")))?;
            if usage.applied_index < since {
                return Err(ControlError::Refused(format!(
                    "node {member} has applied up to index {}, not yet the key change at \
                     index {since}: it could still seal under key {key_id}",
                    usage.applied_index
                )));
            }
            let held = usage.under(key_id);
            if held > 0 {
                return Err(ControlError::Refused(format!(
                    "node {member} still holds {held} versions sealed under key {key_id} (at \
                     its applied index {}): rewrite them under the active key first",
                    usage.applied_index
                )));
            }
        }
        self.propose(KeyRetirement { key_id }.entry()).await
    }

    /// Proposes `registrations` (a node's own, forwarded to the leader, or this
    /// node's): each must name a current member's own row at an epoch not below
    /// the registry's record. A registration at the recorded epoch is proposed again
    /// and applies as unchanged. Returns how many applied.
    ///
    /// # Errors
    /// [`ControlError::Refused`] for a registration below the record or over
    /// another node's row; any other [`ControlError`].
    pub async fn register(
        &self,
        registrations: &[RegistrationPayload],
    ) -> Result<usize, ControlError> {
        let _serial = self.lead().await?;
        let status = self.raft.status();
        for reg in registrations {
            let id = reg.full_node_id;
            if !status.voters.contains(&id) && !status.learners.contains(&id) {
                return Err(ControlError::Refused(format!(
                    "node {id} is not a member; a node is registered when it is added"
                )));
            }
            if let Some(reason) = row_refusal(self.registry.as_ref(), reg)? {
                return Err(ControlError::Refused(reason));
            }
        }
        for reg in registrations {
            self.propose(registration_entry(reg)).await?;
        }
        Ok(registrations.len())
    }

    /// The cluster's record of node `id` (key id, last epoch), read on the leader
    /// after a ReadIndex barrier.
    ///
    /// # Errors
    /// [`ControlError::NotLeader`] elsewhere; [`ControlError::Propose`] when the
    /// barrier fails; [`ControlError::Key`] when the registry cannot be read.
    pub async fn record_of(&self, id: u64) -> Result<Vec<(u32, u16)>, ControlError> {
        if self.leader_admin()?.is_some() {
            return Err(ControlError::NotLeader);
        }
        self.raft.linearizable_barrier().await?;
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| ControlError::Key(Box::new(e)))?;
        Ok(rows
            .into_iter()
            .filter(|(_, row)| row.full_node_id == id)
            .map(|(key, row)| (key.dek_id, row.last_seen_local_epoch))
            .collect())
    }

    /// Before this node applies anything: checks its epochs against the leader's
    /// record of it ([`Keyring::check_cluster_record`]). `Ok(true)` once checked
    /// (or when this node leads: the driver then applies without it), `Ok(false)`
    /// to try again later (no leader yet, the leader unreachable).
    ///
    /// # Errors
    /// The line to stop the node with: its data dir is an earlier copy or was
    /// wiped.
    pub async fn check_record(&self) -> Result<bool, String> {
        let admin = match self.leader_admin() {
            Ok(Some(admin)) => admin,
            Ok(None) => return Ok(true),
            Err(_) => return Ok(false),
        };
        let me = self.keyring.node_id();
        let answer =
            crate::admin_client::forward(&admin, &format!("/v1/encryption/writers/{me}"), None, me)
                .await;
        let rows: Vec<(u32, u16)> = match answer {
            Ok((200, json)) => json["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let dek = u32::try_from(r["dek_id"].as_u64()?).ok()?;
                    let last = u16::try_from(r["last_seen_local_epoch"].as_u64()?).ok()?;
                    Some((dek, last))
                })
                .collect(),
            Ok((code, json)) => {
                tracing::debug!(code, "check this node's epochs at the leader: {json}");
                return Ok(false);
            }
            Err(e) => {
                tracing::debug!("check this node's epochs at the leader: {e}");
                return Ok(false);
            }
        };
        match self.keyring.check_cluster_record(&rows) {
            Ok(()) => Ok(true),
            Err(e) => Err(format!(
                "node {me}: {e}. Replace the node: `sealkv cluster remove-node --id {me}`, then \
                 start an empty data dir under a new id with --join and `sealkv cluster add-node`"
            )),
        }
    }

    /// The registrations this node still needs: the ones left from startup and
    /// any key it is not yet registered for (after a rotation another node
    /// proposed).
    pub fn own_registrations(
        &self,
        from_startup: &[RegistrationPayload],
    ) -> Vec<RegistrationPayload> {
        let mut regs = from_startup.to_vec();
        for reg in self.keyring.pending_registrations() {
            if !regs.contains(&reg) {
                regs.push(reg);
            }
        }
        regs
    }

    /// Registers `registrations` through the leader: here when this node leads,
    /// else by the leader's admin endpoint.
    ///
    /// # Errors
    /// As [`register`](Self::register); [`ControlError::Forward`] when the leader
    /// cannot be reached or refuses.
    pub async fn register_through_leader(
        &self,
        registrations: &[RegistrationPayload],
    ) -> Result<usize, ControlError> {
        let Some(admin) = self.leader_admin()? else {
            return self.register(registrations).await;
        };
        let body = registrations_json(registrations);
        let (code, answer) = crate::admin_client::forward(
            &admin,
            "/v1/encryption/register-writer",
            Some(&body),
            self.keyring.node_id(),
        )
        .await
        .map_err(ControlError::Forward)?;
        if !(200..300).contains(&code) {
            let reason = answer["error"].as_str().unwrap_or("no reason given");
            return Err(ControlError::Forward(format!(
                "the leader at {admin} answered {code}: {reason}"
            )));
        }
        Ok(registrations.len())
    }
}

/// Two of `ids` whose low 16 bits are equal, if any: under one key they would
/// build the same nonces (DESIGN.md §5).
pub fn low16_collision(ids: &[u64]) -> Option<(u64, u64)> {
    ids.iter().enumerate().find_map(|(i, &a)| {
        ids.iter()
            .skip(i + 1)
            .find(|&&b| a & 0xFFFF == b & 0xFFFF && a != b)
            .map(|&b| (a, b))
    })
}

/// `{"node_id", "applied_index", "versions_by_key": {"clear": n, "<key id>": n, ...}}`,
/// the answer of `GET /v1/encryption/usage` (`malformed` appears when non-zero).
pub fn usage_json(node_id: u64, usage: &VersionsByKey) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    counts.insert("clear".to_string(), usage.clear.into());
    for (key_id, n) in &usage.by_key {
        counts.insert(key_id.to_string(), (*n).into());
    }
    if usage.malformed > 0 {
        counts.insert("malformed".to_string(), usage.malformed.into());
    }
    serde_json::json!({
        "node_id": node_id,
        "applied_index": usage.applied_index,
        "versions_by_key": counts,
    })
}

/// Reads [`usage_json`] back; `None` when a field is missing or not a number.
pub fn usage_from_json(json: &serde_json::Value) -> Option<VersionsByKey> {
    let mut usage = VersionsByKey {
        applied_index: json["applied_index"].as_u64()?,
        ..VersionsByKey::default()
    };
    for (name, n) in json["versions_by_key"].as_object()? {
        let n = n.as_u64()?;
        match name.as_str() {
            "clear" => usage.clear = n,
            "malformed" => usage.malformed = n,
            id => {
                usage.by_key.insert(id.parse().ok()?, n);
            }
        }
    }
    Some(usage)
}

/// `{"registrations": [{"dek_id", "full_node_id", "local_epoch"}, ...]}`, the body
/// of a forwarded `POST /v1/encryption/register-writer`.
pub fn registrations_json(registrations: &[RegistrationPayload]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = registrations
        .iter()
        .map(|r| {
            serde_json::json!({
                "dek_id": r.dek_id,
                "full_node_id": r.full_node_id,
                "local_epoch": r.local_epoch,
            })
        })
        .collect();
    serde_json::json!({ "registrations": rows })
}

#[cfg(test)]
mod tests {
    use super::{VersionsByKey, low16_collision, usage_from_json, usage_json};

    #[test]
    fn usage_json_roundtrips() {
        let usage = VersionsByKey {
            applied_index: 42,
            clear: 3,
            by_key: [(1, 5), (7, 0), (10, 2)].into_iter().collect(),
            malformed: 1,
        };
        let json = usage_json(9, &usage);
        assert_eq!(json["versions_by_key"]["10"], 2);
        assert_eq!(usage_from_json(&json), Some(usage));
        let mut bad = json.clone();
        bad["versions_by_key"]["x"] = 1.into();
        assert_eq!(usage_from_json(&bad), None);
        assert_eq!(usage_from_json(&serde_json::json!({})), None);
    }

    #[test]
    fn ids_that_share_their_low_16_bits_collide() {
        assert_eq!(low16_collision(&[1, 2, 3]), None);
        assert_eq!(low16_collision(&[1, 2, 0x1_0001]), Some((1, 0x1_0001)));
        assert_eq!(low16_collision(&[0x2_0005, 7, 0x5]), Some((0x2_0005, 5)));
        // The same id twice is one node, not a collision.
        assert_eq!(low16_collision(&[4, 4]), None);
    }
}
