//! What the driver refuses before Raft sees it: a client's proposal it would not
//! append, a peer's message that fails [`validate::check`], a forwarded proposal no
//! replica should apply, and a leader's message that shows this node lost state it
//! acknowledged.

use std::time::Instant;

use protobuf::Message as _;
use raft::StateRole;
use raft::prelude::{ConfChangeV2, Entry, EntryType, Message, MessageType};

use super::validate::{self, DropReason, View};
use super::{Driver, DriverError, ProposeError};
use crate::consensus::context::ProposalContext;
use crate::consensus::transport::Origin;

impl Driver {
    pub(super) fn refuse(&self) -> Option<ProposeError> {
        if let Some(h) = &self.halted {
            return Some(ProposeError::Halted(h.clone()));
        }
        if self.leader().is_none() {
            return Some(ProposeError::NoLeader);
        }
        None
    }

    /// Refuses, before Raft sees it, an entry this node would not append: one
    /// larger than `max_entry_bytes`, or one the state machine would halt on or
    /// refuse ([`KvFsm::admit`](sealkv_kv::KvFsm::admit)).
    pub(super) fn admit(&self, data: &[u8]) -> Result<(), ProposeError> {
        if data.len() > self.config.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                bytes: data.len(),
                limit: self.config.max_entry_bytes,
            });
        }
        self.fsm.admit(data).map_err(|e| ProposeError::Refused {
            reason: crate::error_chain(&e),
            retry: e.is_transient(),
        })
    }

    /// Decides whether raft-rs may step a message a peer sent from `origin`:
    /// `Ok(true)` steps it, `Ok(false)` drops it (counted in
    /// `sealkv_peer_messages_dropped_total{reason}` and logged, at most one line
    /// per reason per 10 s).
    ///
    /// A heartbeat whose commit index is beyond this node's log would make raft-rs
    /// panic. From the leader this node follows (or from any node while it knows no
    /// leader, as after a start) it means the leader holds entries this node
    /// acknowledged and lost ([`DriverError::LostState`]). From another node while it
    /// follows a known leader (a new leader knows nothing this node acknowledged, so
    /// it never sends one) it is a crafted message: dropped. A heartbeat, append or
    /// snapshot of the current term that passes is the contact with a leader that
    /// lets this node apply its log (see `contact`).
    pub(super) fn admit_peer_message(
        &mut self,
        origin: Origin,
        message: &Message,
    ) -> Result<bool, DriverError> {
        let reason = match self.check_peer_message(origin, message) {
            Ok(()) => {
                self.note_contact(message);
                return Ok(true);
            }
            Err(reason) => reason,
        };
        if let DropReason::CommitPastLog { commit, last_index } = reason
            && message.get_msg_type() == MessageType::MsgHeartbeat
        {
            let leader = self.raw.raft.leader_id;
            if message.from == leader || leader == raft::INVALID_ID {
                return Err(DriverError::LostState {
                    id: self.config.id,
                    leader: message.from,
                    commit,
                    last_index,
                });
            }
        }
        if matches!(reason, DropReason::RefusedProposal(_)) {
            self.metrics.proposals_failed.inc();
        }
        self.metrics
            .peer_messages_dropped
            .with_label_values(&[reason.label()])
            .inc();
        if let Some(held) = self.drop_log.admit(reason.label(), Instant::now()) {
            tracing::warn!(
                peer = origin.peer,
                lane = %origin.lane,
                kind = ?message.get_msg_type(),
                term = message.term,
                reason = reason.label(),
                held_back = held,
                "dropped a raft message from a peer: {reason}"
            );
        }
        Ok(false)
    }

    /// [`validate::check`] against this node's state, then, for a forwarded
    /// proposal, admission of its entry, and for a snapshot, its data.
    fn check_peer_message(&self, origin: Origin, message: &Message) -> Result<(), DropReason> {
        let raft = &self.raw.raft;
        let known = |id: u64| raft.prs().get(id).is_some() || self.peers.get(id).is_some();
        let view = View {
            id: self.config.id,
            term: raft.term,
            leader: self.leader(),
            is_leader: raft.state == StateRole::Leader,
            last_index: raft.raft_log.last_index(),
            known: &known,
        };
        validate::check(message, origin, &view)?;
        match message.get_msg_type() {
            MessageType::MsgPropose => message
                .get_entries()
                .iter()
                .try_for_each(|e| self.admit_forwarded(e, message.from)),
            MessageType::MsgSnapshot => {
                let snapshot = message.get_snapshot();
                let index = snapshot.get_metadata().index;
                // The transport hands over a MsgSnapshot only once its dump is in
                // a file that matched the sealed descriptor; check that it is
                // still there, of that length.
                let descriptor = sealkv_store::SnapshotDescriptor::decode(snapshot.get_data())
                    .map_err(|e| DropReason::BadSnapshot(format!("its descriptor: {e}")))?;
                if descriptor.applied_index != index {
                    return Err(DropReason::BadSnapshot(format!(
                        "its data is applied up to index {}, its metadata says {index}",
                        descriptor.applied_index
                    )));
                }
                let path = crate::consensus::snapstream::received_path(
                    &self.config.data_dir,
                    descriptor.id,
                );
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() == descriptor.total_bytes => Ok(()),
                    Ok(m) => Err(DropReason::BadSnapshot(format!(
                        "its file {} holds {} bytes, the descriptor says {}",
                        path.display(),
                        m.len(),
                        descriptor.total_bytes
                    ))),
                    Err(e) => Err(DropReason::BadSnapshot(format!(
                        "its file {}: {e}",
                        path.display()
                    ))),
                }
            }
            _ => Ok(()),
        }
    }

    /// Admits one entry of a proposal `from` forwarded: it carries that node's
    /// context; a normal entry passes [`Driver::admit`] (and a rotation names its
    /// proposer); a membership change is one change of the kind sealkv makes that
    /// passes [`Driver::check_change`].
    fn admit_forwarded(&self, entry: &Entry, from: u64) -> Result<(), DropReason> {
        let refused = |e: ProposeError| DropReason::RefusedProposal(e.to_string());
        forwarded_by(entry, from).map_err(refused)?;
        match entry.get_entry_type() {
            EntryType::EntryNormal => self.admit(entry.get_data()).map_err(refused),
            EntryType::EntryConfChangeV2 => {
                let change = ConfChangeV2::parse_from_bytes(entry.get_data()).map_err(|e| {
                    DropReason::RefusedProposal(format!("membership change does not decode: {e}"))
                })?;
                if change.get_changes().len() != 1 {
                    return Err(DropReason::RefusedProposal(format!(
                        "a membership change of {} nodes; sealkv changes one at a time",
                        change.get_changes().len()
                    )));
                }
                self.check_change(&change).map_err(refused)
            }
            EntryType::EntryConfChange => Err(DropReason::RefusedProposal(
                "a membership change of the old format; sealkv proposes ConfChangeV2".to_string(),
            )),
        }
    }

    /// A heartbeat, append or snapshot of the current term (or a later one) that
    /// passed the checks is contact with a leader.
    fn note_contact(&mut self, message: &Message) {
        let from_leader = matches!(
            message.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend | MessageType::MsgSnapshot
        );
        if from_leader && message.term >= self.raw.raft.term && !self.contact {
            tracing::info!(leader = message.from, "in contact with the leader");
            self.contact = true;
        }
    }
}

/// Refuses a rotate-DEK entry whose proposer row names another node than
/// `proposer`: a node may only register itself at epoch 1 under a new key.
pub(super) fn proposer_names_itself(data: &[u8], proposer: u64) -> Result<(), ProposeError> {
    let Some((&sealkv_fsmwire::OP_ROTATION, payload)) = data.split_first() else {
        return Ok(());
    };
    let Ok(rotation) = sealkv_fsmwire::RotationPayload::decode(payload) else {
        // An envelope switch (or a payload admit already refused).
        return Ok(());
    };
    let named = rotation.proposer_registration.full_node_id;
    if named == proposer {
        return Ok(());
    }
    Err(ProposeError::Refused {
        reason: format!(
            "the rotation's proposer row names node {named:#x}, but node {proposer:#x} proposed it"
        ),
        retry: false,
    })
}

/// For an entry a peer forwarded: its context must be the sending node's, and a
/// rotation's proposer row must name that node.
pub(super) fn forwarded_by(entry: &Entry, from: u64) -> Result<(), ProposeError> {
    let proposer = ProposalContext::decode(entry.get_context()).map(|ctx| ctx.node_id);
    if proposer != Some(from) {
        return Err(ProposeError::Refused {
            reason: format!("a proposal forwarded by node {from} carries another node's context"),
            retry: false,
        });
    }
    proposer_names_itself(entry.get_data(), from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealkv_fsmwire::{
        OP_ROTATION, Purpose, RegistrationPayload, RotationPayload, RotationSubtag,
    };

    fn rotation_entry(proposer_row: u64) -> Vec<u8> {
        let rotation = RotationPayload {
            subtag: RotationSubtag::RotateDek,
            dek_id: 3,
            purpose: Purpose::Storage,
            wrapped: vec![7; 60],
            proposer_registration: RegistrationPayload {
                dek_id: 3,
                full_node_id: proposer_row,
                local_epoch: 1,
            },
        };
        let mut data = vec![OP_ROTATION];
        data.extend(rotation.encode().expect("encode"));
        data
    }

    fn forwarded(data: Vec<u8>, node_id: u64) -> Entry {
        let mut entry = Entry::default();
        entry.set_data(data.into());
        let ctx = ProposalContext {
            node_id,
            load_id: 9,
            proposal_id: 1,
        };
        entry.set_context(ctx.encode().into());
        entry
    }

    #[test]
    fn a_rotation_may_only_register_its_proposer() {
        assert_eq!(proposer_names_itself(&rotation_entry(2), 2), Ok(()));
        assert!(matches!(
            proposer_names_itself(&rotation_entry(3), 2),
            Err(ProposeError::Refused { retry: false, .. })
        ));
        // Other entries carry no proposer row.
        assert_eq!(proposer_names_itself(&[0x00, 0x01], 2), Ok(()));
    }

    #[test]
    fn a_forwarded_proposal_carries_its_senders_context() {
        assert_eq!(forwarded_by(&forwarded(rotation_entry(2), 2), 2), Ok(()));
        // Node 2 forwards a rotation that registers node 3.
        assert!(forwarded_by(&forwarded(rotation_entry(3), 2), 2).is_err());
        // Node 2 forwards an entry in node 3's name.
        assert!(forwarded_by(&forwarded(vec![0x00], 3), 2).is_err());
        // No context at all.
        assert!(forwarded_by(&Entry::default(), 2).is_err());
    }
}
