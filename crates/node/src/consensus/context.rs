//! The proposal context carried in each Raft entry this node proposes, so that the
//! node that proposed an entry can hand its result back to the waiting client when it
//! applies the entry.
//!
//! ```text
//! 0                8                16               24
//! +----------------+----------------+----------------+
//! | node id u64 BE | load id u64 BE | proposal id BE |
//! +----------------+----------------+----------------+
//! ```
//!
//! The load id is drawn at random when the process starts, and proposal ids count
//! from 1 in each process load: an entry proposed by an earlier load of the same
//! node (replayed from the log after a restart) carries another load id, so it
//! never answers a client of this load, whatever its proposal id. Entries appended
//! by raft-rs itself (a new leader's empty entry) and entries from other proposers
//! carry another node's id or no context; they are applied and answered to nobody.

use std::hash::BuildHasher;

/// Length of an encoded context.
pub const CONTEXT_LEN: usize = 24;

/// Who proposed an entry, in which process load, and which of its proposals it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProposalContext {
    /// The proposing node's Raft id.
    pub node_id: u64,
    /// The proposing process load's random id.
    pub load_id: u64,
    /// The proposal's id, unique within one process load.
    pub proposal_id: u64,
}

/// A random id for this process load: std's per-process random SipHash keys (drawn
/// from the OS) over the process id and the clock. It only has to differ from the
/// ids of this node's earlier loads.
pub fn new_load_id() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now))
}

impl ProposalContext {
    /// The 24-byte encoding.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT_LEN);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.load_id.to_be_bytes());
        out.extend_from_slice(&self.proposal_id.to_be_bytes());
        out
    }

    /// Decodes a context; anything that is not exactly 24 bytes is no context.
    pub fn decode(bytes: &[u8]) -> Option<ProposalContext> {
        let bytes: &[u8; CONTEXT_LEN] = bytes.try_into().ok()?;
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|w| w.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Some(ProposalContext {
            node_id: word(0)?,
            load_id: word(1)?,
            proposal_id: word(2)?,
        })
    }

    /// The proposal id of `bytes` when it is a context of `node`'s load `load`:
    /// the one rule for "this process proposed it", for applied entries and read
    /// states alike.
    pub fn own_proposal(bytes: &[u8], node: u64, load: u64) -> Option<u64> {
        ProposalContext::decode(bytes)
            .filter(|ctx| ctx.node_id == node && ctx.load_id == load)
            .map(|ctx| ctx.proposal_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_other_lengths() {
        let ctx = ProposalContext {
            node_id: 0x0102_0304_0506_0708,
            load_id: 0x1112_1314_1516_1718,
            proposal_id: 42,
        };
        assert_eq!(ProposalContext::decode(&ctx.encode()), Some(ctx));
        for len in [0, 1, 8, 16, 23, 25, 32] {
            assert_eq!(ProposalContext::decode(&vec![7u8; len]), None, "{len}");
        }
    }

    /// After a restart proposal ids count from 1 again: the replayed entry of the
    /// earlier load's proposal 1 must not answer this load's proposal 1.
    #[test]
    fn only_this_nodes_current_load_owns_a_context() {
        let (node, earlier, now) = (3, new_load_id(), new_load_id());
        assert_ne!(earlier, now, "two loads drew the same id");
        let ctx = |node_id, load_id| {
            ProposalContext {
                node_id,
                load_id,
                proposal_id: 1,
            }
            .encode()
        };
        assert_eq!(
            ProposalContext::own_proposal(&ctx(node, now), node, now),
            Some(1)
        );
        assert_eq!(
            ProposalContext::own_proposal(&ctx(node, earlier), node, now),
            None
        );
        assert_eq!(ProposalContext::own_proposal(&ctx(4, now), node, now), None);
        // A context of the earlier, 16-byte format is no one's.
        assert_eq!(ProposalContext::own_proposal(&[0; 16], node, now), None);
    }
}
