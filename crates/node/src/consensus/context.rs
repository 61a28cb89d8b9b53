//! The proposal context carried in each Raft entry this node proposes, so that the
//! node that proposed an entry can hand its result back to the waiting client when it
//! applies the entry.
//!
//! ```text
//! 0                8                16
//! +----------------+----------------+
//! | node id u64 BE | proposal id BE |
//! +----------------+----------------+
//! ```
//!
//! Entries appended by raft-rs itself (a new leader's empty entry) and entries from
//! other proposers carry another node's id or no context; they are applied and
//! answered to nobody.

/// Length of an encoded context.
pub const CONTEXT_LEN: usize = 16;

/// Who proposed an entry, and which of its proposals it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProposalContext {
    /// The proposing node's Raft id.
    pub node_id: u64,
    /// The proposal's id, unique within one process of that node.
    pub proposal_id: u64,
}

impl ProposalContext {
    /// The 16-byte encoding.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT_LEN);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.proposal_id.to_be_bytes());
        out
    }

    /// Decodes a context; anything that is not exactly 16 bytes is no context.
    pub fn decode(bytes: &[u8]) -> Option<ProposalContext> {
        let bytes: &[u8; CONTEXT_LEN] = bytes.try_into().ok()?;
        let (node, proposal) = bytes.split_at(8);
        Some(ProposalContext {
            node_id: u64::from_be_bytes(node.try_into().ok()?),
            proposal_id: u64::from_be_bytes(proposal.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_other_lengths() {
        let ctx = ProposalContext {
            node_id: 0x0102_0304_0506_0708,
            proposal_id: 42,
        };
        assert_eq!(ProposalContext::decode(&ctx.encode()), Some(ctx));
        for len in [0, 1, 8, 15, 17, 32] {
            assert_eq!(ProposalContext::decode(&vec![7u8; len]), None, "{len}");
        }
    }
}
