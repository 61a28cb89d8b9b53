//! What the driver refuses before Raft sees it: a client's proposal it would not
//! append, a peer's forwarded proposal no replica should apply, and a leader's
//! message that shows this node lost state it acknowledged.

use raft::prelude::{Entry, Message, MessageType};

use super::{Driver, DriverError, ProposeError};
use crate::consensus::context::ProposalContext;

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

    /// Checks a message from a peer before Raft steps it: `Ok(false)` drops it.
    ///
    /// A heartbeat whose commit index is beyond this node's log would make raft-rs
    /// panic. From the leader this node follows (or the first leader it hears from
    /// after a start) it means the leader holds entries this node acknowledged and
    /// lost ([`DriverError::LostState`]). From another node while it follows a
    /// known leader (a new leader knows nothing this node acknowledged, so it never
    /// sends one) it is a crafted message: dropped and logged. A heartbeat,
    /// append or snapshot of the current term that passes is the contact with a
    /// leader that lets this node apply its log (see `contact`).
    pub(super) fn check_contact(&mut self, message: &Message) -> Result<bool, DriverError> {
        let from_leader = matches!(
            message.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend | MessageType::MsgSnapshot
        );
        if !from_leader || message.term < self.raw.raft.term {
            return Ok(true);
        }
        let last_index = self.raw.raft.raft_log.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last_index {
            let leader = self.raw.raft.leader_id;
            if message.from == leader || leader == raft::INVALID_ID {
                return Err(DriverError::LostState {
                    id: self.config.id,
                    leader: message.from,
                    commit: message.commit,
                    last_index,
                });
            }
            tracing::warn!(
                from = message.from,
                term = message.term,
                commit = message.commit,
                last_index,
                "dropped a heartbeat past this node's log from a node it does not follow"
            );
            return Ok(false);
        }
        if !self.contact {
            tracing::info!(leader = message.from, "in contact with the leader");
            self.contact = true;
        }
        Ok(true)
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
