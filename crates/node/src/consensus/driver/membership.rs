//! Membership changes: checking one before it is proposed, applying a committed one
//! to Raft, and recording the peer addresses it carries.

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};

use super::{Driver, DriverError, NodeHalt, ProposeError, log_err};
use crate::consensus::PeerBook;

impl Driver {
    /// Refuses a membership change that cannot be right before it is proposed: adding
    /// a node that is already a member in that role, removing a node that is not a
    /// member, and removing the last voter (the cluster could never commit again).
    pub(super) fn check_change(&self, change: &ConfChangeV2) -> Result<(), ProposeError> {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let (voters, learners) = (conf.get_voters(), conf.get_learners());
        let mut remaining = voters.to_vec();
        for single in change.get_changes() {
            let id = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode if voters.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is already a voter"
                    )));
                }
                ConfChangeType::AddLearnerNode if voters.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is a voter; remove it before adding it as a learner"
                    )));
                }
                ConfChangeType::AddLearnerNode if learners.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is already a learner"
                    )));
                }
                ConfChangeType::RemoveNode if !voters.contains(&id) && !learners.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is not a member (voters {voters:?}, learners {learners:?})"
                    )));
                }
                ConfChangeType::RemoveNode => remaining.retain(|v| *v != id),
                _ => {}
            }
        }
        if remaining.is_empty() {
            return Err(ProposeError::Rejected(
                "refusing to remove the last voter: the cluster could never commit again"
                    .to_string(),
            ));
        }
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), DriverError> {
        let change = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                ConfChange::parse_from_bytes(entry.get_data()).map(|v1| {
                    let mut v2 = single_change(v1.get_change_type(), v1.node_id, None);
                    v2.set_context(v1.get_context().to_vec().into());
                    v2
                })
            }
            _ => ConfChangeV2::parse_from_bytes(entry.get_data()),
        };
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                self.halt_on(entry.index, format!("decode membership change: {e}"));
                return Ok(());
            }
        };
        let cs = match self.raw.apply_conf_change(&change) {
            Ok(cs) => cs,
            Err(e) => {
                self.halt_on(entry.index, format!("apply membership change: {e}"));
                return Ok(());
            }
        };
        self.log.set_conf_state(&cs).map_err(log_err)?;
        self.learn_addresses(&change);
        tracing::info!(index = entry.index, voters = ?cs.get_voters(), learners = ?cs.get_learners(), "membership changed");
        // The entry counts as applied in the state machine, in index order.
        let noop = [sealkv_kv::Entry {
            index: entry.index,
            data: &[],
        }];
        if let Err(halted) = self.fsm.apply(&noop) {
            self.set_halted(NodeHalt::StateMachine(halted.halt));
            return Ok(());
        }
        if let Some(id) = self.own_proposal(entry.get_context())
            && let Some(w) = self.changes.remove(&id)
        {
            // Status shows the new configuration before the caller hears of it.
            self.publish();
            let _ = w.reply.send(Ok(cs));
        }
        self.drop_overwritten(entry.index);
        Ok(())
    }

    /// Records the Raft address a membership change carries in its context.
    fn learn_addresses(&mut self, change: &ConfChangeV2) {
        let addr = std::str::from_utf8(change.get_context())
            .ok()
            .filter(|a| !a.is_empty());
        for single in change.get_changes() {
            let id = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(addr) = addr {
                        self.peers.set(id, Some(addr.to_string()));
                        self.outbox.set_peer(id, Some(addr.to_string()));
                    }
                }
                ConfChangeType::RemoveNode => {
                    if id != self.config.id {
                        self.peers.set(id, None);
                        self.outbox.set_peer(id, None);
                    }
                }
            }
        }
        let path = PeerBook::path_in(&self.config.data_dir);
        if let Err(e) = self.peers.save(&path) {
            tracing::warn!("save peers after membership change: {e:#}");
        }
    }
}

/// A membership change of one node, with the new node's Raft address as context.
pub fn single_change(kind: ConfChangeType, id: u64, addr: Option<&str>) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![single].into());
    if let Some(addr) = addr {
        change.set_context(addr.as_bytes().to_vec().into());
    }
    change
}
