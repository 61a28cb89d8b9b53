//! What a peer's Raft message must be before raft-rs steps it (DESIGN.md §11,
//! "Trust"): [`check`], a pure function of the message, the connection it arrived
//! on and what this node knows, and [`DropReason`], why it was dropped.
//!
//! raft-rs trusts its peers: a message it is handed can make it panic or corrupt its
//! state. These are the paths found in raft-rs 0.7 and the rule that closes each:
//!
//! | raft-rs path | what a crafted message does | rule |
//! |---|---|---|
//! | `handle_heartbeat` → `RaftLog::commit_to` | commit past the last index: panic "to_commit ... is out of range" | heartbeat commit ≤ last index (of the current or a higher term) |
//! | `maybe_append`: `match_term` is true for an index past the log when `log_term` is 0 | `commit_to` past the log, or `truncate_and_append` with a gap: panic | `log_term` 0 only with index 0 |
//! | `maybe_append` → `find_conflict` | an entry at or below the commit index that conflicts: panic "entry ... conflict with committed entry"; entries not starting at index + 1: an index underflow | entries at index + 1, + 2, ... with terms from `log_term` up to the message's term |
//! | `step` with term 0 | treated as a local message: no term check, so a heartbeat, append or snapshot of term 0 makes its sender leader | term 0 only on forwarded requests (`MsgPropose`, `MsgReadIndex`), never on those |
//! | `step_leader` `MsgPropose` with no entry | panic "stepped empty MsgProp" | a proposal carries exactly one entry |
//! | entries without data | `maybe_increase_uncommitted_size` counts data bytes only, so empty entries pass any uncommitted-size limit; an empty `EntryConfChangeV2` means "leave joint" | no forwarded entry without data |
//! | `MsgReadIndex`: `m.entries[0]` | index out of bounds with no entry | exactly one entry |
//! | `MsgReadIndexResp` (of a higher term, or term 0) → `maybe_commit` | commit past the log; a read state a client's read waits on | exactly one entry, from the leader this node follows, of its term |
//! | `handle_append_response` → `Progress::maybe_update` | an acknowledgement past the leader's log: its next append to that follower has index past the log and `log_term` 0 (see the second row) | index ≤ last index (same term) |
//! | `request_snapshot` in an append response | the leader builds a full snapshot each time (sealkv never requests one) | 0 only |
//! | `restore` of a snapshot | metadata term 0 past the log: `commit_to` panic; a configuration `confchange::restore` refuses, or that differs once restored: panic "unable to restore config" / "invalid restore" | index and term ≥ 1, term ≤ the message's; voters non-empty, no id 0, no duplicate, no id both voter and learner, not joint (sealkv never is) |
//! | any index or term near `u64::MAX` | `+ 1` overflows (a panic in a debug build, a wrap in release) | every index and term below 2^62 |
//! | `is_local_msg` types | `RawNode::step` refuses them; `MsgHup` would start an election | dropped here |
//! | `MsgTransferLeader`, `MsgTimeoutNow` | a forced election that ignores the leader lease | dropped: sealkv never transfers leadership |
//!
//! Beyond raft-rs's panics, the message must come from the peer its connection is
//! bound to, from a known node (a member, or in the address book), to this node, on
//! the lane of its type; and a forwarded request goes to the leader only (raft-rs
//! would relay it, but a relayed message no longer comes from its sender). The
//! driver then admits a forwarded proposal (size, state machine, context,
//! membership change) and checks a snapshot's data before raft-rs steps either.

use raft::prelude::{ConfState, Message, MessageType};

use crate::consensus::transport::{Lane, Origin};

/// Every index and term a peer sends must be below this: no cluster reaches it
/// (2^62 entries at a million a second take 146,000 years), and raft-rs adds 1 to
/// indexes and terms without checking for overflow.
pub(crate) const MAX_PLAUSIBLE: u64 = 1 << 62;

/// What this node knows when it checks a message.
pub(super) struct View<'a> {
    /// This node's id.
    pub(super) id: u64,
    /// Its current term.
    pub(super) term: u64,
    /// The leader it follows, if any (itself when it leads).
    pub(super) leader: Option<u64>,
    /// Whether it leads.
    pub(super) is_leader: bool,
    /// The last index of its log (unstable entries included).
    pub(super) last_index: u64,
    /// Whether a node id is known: a member of the configuration, or in the
    /// address book.
    pub(super) known: &'a dyn Fn(u64) -> bool,
}

/// Why a peer's message was dropped before raft-rs stepped it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The message names another sender than the peer its connection is bound to.
    #[error("sender {from} is not node {peer}, whose connection it came on")]
    FromMismatch {
        /// The sender the message names.
        from: u64,
        /// The peer the connection is bound to.
        peer: u64,
    },
    /// The message is addressed to another node.
    #[error("addressed to node {to}, not this node")]
    NotForThisNode {
        /// The addressee.
        to: u64,
    },
    /// The sender is neither a member nor in the address book.
    #[error("sender {from} is not a known node")]
    UnknownPeer {
        /// The sender.
        from: u64,
    },
    /// A type raft-rs only makes for itself.
    #[error("{kind:?} is local to a node and never sent to another")]
    LocalOnly {
        /// The message type.
        kind: MessageType,
    },
    /// A type sealkv never uses: leadership transfer.
    #[error("{kind:?} is never sent: sealkv does not transfer leadership")]
    Unused {
        /// The message type.
        kind: MessageType,
    },
    /// The message arrived on the other lane than its type travels on.
    #[error("{kind:?} arrived on the {lane} lane")]
    WrongLane {
        /// The message type.
        kind: MessageType,
        /// The lane it arrived on.
        lane: Lane,
    },
    /// A term of 0 on a message that needs one, or a term on a forwarded request.
    #[error("{kind:?} with term {term}")]
    BadTerm {
        /// The message type.
        kind: MessageType,
        /// Its term.
        term: u64,
    },
    /// An index or term no cluster reaches.
    #[error("{field} {value} is beyond any cluster's reach")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A heartbeat's commit index past this node's log.
    #[error("commit index {commit} is past this node's log (last index {last_index})")]
    CommitPastLog {
        /// The commit index the heartbeat carries.
        commit: u64,
        /// This node's last index.
        last_index: u64,
    },
    /// An append whose entries do not follow its index, or whose terms go backwards
    /// or past the message's.
    #[error("malformed append: {0}")]
    MalformedAppend(&'static str),
    /// An append response that acknowledges past this node's log, or asks for a
    /// snapshot.
    #[error("bad append response: {0}")]
    BadAppendResponse(String),
    /// A forwarded proposal with no entry, or with an entry without data.
    #[error("proposal {0}")]
    EmptyProposal(&'static str),
    /// A forwarded proposal with more than one entry.
    #[error("proposal of {0} entries; a node forwards one at a time")]
    MalformedProposal(usize),
    /// A forwarded request (proposal, read index) to a node that does not lead.
    #[error("{kind:?} forwarded to this node, which is not the leader")]
    NotLeader {
        /// The message type.
        kind: MessageType,
    },
    /// A forwarded proposal admission refused: too large, an entry every replica
    /// would halt on or refuse, another node's context, a membership change that
    /// cannot be right.
    #[error("refused proposal: {0}")]
    RefusedProposal(String),
    /// A snapshot whose metadata or configuration raft-rs cannot restore, or whose
    /// data would not install.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// A read-index request or response without exactly one entry, or a response
    /// not from the leader this node follows in its term.
    #[error("bad read index: {0}")]
    BadReadIndex(&'static str),
}

impl DropReason {
    /// The label of `sealkv_peer_messages_dropped_total`.
    pub fn label(&self) -> &'static str {
        match self {
            DropReason::FromMismatch { .. } => "from_mismatch",
            DropReason::NotForThisNode { .. } => "not_for_this_node",
            DropReason::UnknownPeer { .. } => "unknown_peer",
            DropReason::LocalOnly { .. } => "local_only",
            DropReason::Unused { .. } => "unused_type",
            DropReason::WrongLane { .. } => "wrong_lane",
            DropReason::BadTerm { .. } => "bad_term",
            DropReason::OutOfRange { .. } => "out_of_range",
            DropReason::CommitPastLog { .. } => "commit_past_log",
            DropReason::MalformedAppend(_) => "malformed_append",
            DropReason::BadAppendResponse(_) => "bad_append_response",
            DropReason::EmptyProposal(_) => "empty_proposal",
            DropReason::MalformedProposal(_) => "malformed_proposal",
            DropReason::NotLeader { .. } => "not_leader",
            DropReason::RefusedProposal(_) => "refused_proposal",
            DropReason::BadSnapshot(_) => "bad_snapshot",
            DropReason::BadReadIndex(_) => "bad_read_index",
        }
    }
}

/// Checks a message from a peer that arrived from `origin` against what this node
/// knows (`view`), before raft-rs steps it. `Err` drops it.
///
/// The order: who sent it (the connection's peer, a known node, to this node), its
/// type and lane, then its numbers, then what its type needs.
pub(super) fn check(m: &Message, origin: Origin, view: &View<'_>) -> Result<(), DropReason> {
    let kind = m.get_msg_type();
    if m.from != origin.peer {
        return Err(DropReason::FromMismatch {
            from: m.from,
            peer: origin.peer,
        });
    }
    if m.to != view.id {
        return Err(DropReason::NotForThisNode { to: m.to });
    }
    if m.from == view.id || !(view.known)(m.from) {
        return Err(DropReason::UnknownPeer { from: m.from });
    }
    match kind {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => return Err(DropReason::LocalOnly { kind }),
        MessageType::MsgTransferLeader | MessageType::MsgTimeoutNow => {
            return Err(DropReason::Unused { kind });
        }
        _ => {}
    }
    if Lane::of(m) != origin.lane {
        return Err(DropReason::WrongLane {
            kind,
            lane: origin.lane,
        });
    }
    plausible(m)?;
    // raft-rs sends forwarded requests without a term and everything else with one;
    // it takes a message of term 0 as a local one and skips its term checks.
    let forwarded = matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if forwarded != (m.term == 0) {
        return Err(DropReason::BadTerm { kind, term: m.term });
    }
    match kind {
        MessageType::MsgPropose => check_proposal(m, view),
        MessageType::MsgReadIndex => {
            if !view.is_leader {
                return Err(DropReason::NotLeader { kind });
            }
            one_entry(m)
        }
        MessageType::MsgReadIndexResp => {
            one_entry(m)?;
            if view.leader != Some(m.from) || m.term != view.term {
                return Err(DropReason::BadReadIndex(
                    "a response not from the leader this node follows, in its term",
                ));
            }
            Ok(())
        }
        MessageType::MsgHeartbeat => {
            // A heartbeat of a lower term is answered without being applied.
            if m.term >= view.term && m.commit > view.last_index {
                return Err(DropReason::CommitPastLog {
                    commit: m.commit,
                    last_index: view.last_index,
                });
            }
            Ok(())
        }
        MessageType::MsgAppend => check_append(m),
        MessageType::MsgAppendResponse => {
            if m.request_snapshot != 0 {
                return Err(DropReason::BadAppendResponse(format!(
                    "requests a snapshot at index {}; sealkv never does",
                    m.request_snapshot
                )));
            }
            // Every index a follower answers with in this term is one this node sent.
            if m.term == view.term && m.index > view.last_index {
                return Err(DropReason::BadAppendResponse(format!(
                    "index {} is past this node's log (last index {})",
                    m.index, view.last_index
                )));
            }
            Ok(())
        }
        MessageType::MsgSnapshot => check_snapshot_metadata(m),
        _ => Ok(()),
    }
}

/// Every index and term in the message below [`MAX_PLAUSIBLE`].
fn plausible(m: &Message) -> Result<(), DropReason> {
    let meta = m.get_snapshot().get_metadata();
    let fields = [
        ("term", m.term),
        ("log_term", m.log_term),
        ("index", m.index),
        ("commit", m.commit),
        ("commit_term", m.commit_term),
        ("reject_hint", m.reject_hint),
        ("request_snapshot", m.request_snapshot),
        ("snapshot index", meta.index),
        ("snapshot term", meta.term),
    ];
    let entries = m
        .get_entries()
        .iter()
        .flat_map(|e| [("entry index", e.index), ("entry term", e.term)]);
    for (field, value) in fields.into_iter().chain(entries) {
        if value >= MAX_PLAUSIBLE {
            return Err(DropReason::OutOfRange { field, value });
        }
    }
    Ok(())
}

fn one_entry(m: &Message) -> Result<(), DropReason> {
    if m.get_entries().len() == 1 {
        Ok(())
    } else {
        Err(DropReason::BadReadIndex("not exactly one entry"))
    }
}

/// A forwarded proposal: to the leader, one entry, with data.
fn check_proposal(m: &Message, view: &View<'_>) -> Result<(), DropReason> {
    match m.get_entries() {
        [] => return Err(DropReason::EmptyProposal("carries no entry")),
        [entry] if entry.get_data().is_empty() => {
            return Err(DropReason::EmptyProposal("carries an entry without data"));
        }
        [_] => {}
        entries => return Err(DropReason::MalformedProposal(entries.len())),
    }
    if !view.is_leader {
        return Err(DropReason::NotLeader {
            kind: MessageType::MsgPropose,
        });
    }
    Ok(())
}

/// An append: entries at index + 1, + 2, ... whose terms run from `log_term` up to
/// the message's term, and a `log_term` of 0 only for index 0 (raft-rs takes an
/// index past its log to have term 0, so such an append would "match").
fn check_append(m: &Message) -> Result<(), DropReason> {
    if m.log_term == 0 && m.index != 0 {
        return Err(DropReason::MalformedAppend(
            "previous entry term 0 after index 0",
        ));
    }
    if m.log_term > m.term {
        return Err(DropReason::MalformedAppend(
            "previous entry term above the message's term",
        ));
    }
    let mut expected = m.index;
    let mut term = m.log_term;
    for entry in m.get_entries() {
        expected += 1;
        if entry.index != expected {
            return Err(DropReason::MalformedAppend(
                "entries do not follow the previous index one by one",
            ));
        }
        if entry.term < term || entry.term > m.term {
            return Err(DropReason::MalformedAppend(
                "entry terms go backwards or past the message's term",
            ));
        }
        term = entry.term;
    }
    Ok(())
}

/// A snapshot's metadata: an index and a term, no later than the message's term,
/// and a configuration raft-rs restores as it is.
fn check_snapshot_metadata(m: &Message) -> Result<(), DropReason> {
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 {
        return Err(DropReason::BadSnapshot(format!(
            "metadata index {} term {}",
            meta.index, meta.term
        )));
    }
    if meta.term > m.term {
        return Err(DropReason::BadSnapshot(format!(
            "snapshot term {} is above the message's term {}",
            meta.term, m.term
        )));
    }
    check_conf_state(meta.get_conf_state()).map_err(DropReason::BadSnapshot)
}

/// A configuration as sealkv makes them, which raft-rs's `confchange::restore`
/// rebuilds exactly: at least one voter, no id 0, no id twice, no id both voter and
/// learner, and not joint (sealkv changes one node at a time).
fn check_conf_state(cs: &ConfState) -> Result<(), String> {
    if !cs.get_voters_outgoing().is_empty() || !cs.get_learners_next().is_empty() || cs.auto_leave {
        return Err("a joint configuration; sealkv never makes one".to_string());
    }
    if cs.get_voters().is_empty() {
        return Err("a configuration without voters".to_string());
    }
    let mut ids: Vec<u64> = cs
        .get_voters()
        .iter()
        .chain(cs.get_learners())
        .copied()
        .collect();
    if ids.contains(&0) {
        return Err("node id 0 in the configuration".to_string());
    }
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("node {} appears twice in the configuration", w[0]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{Entry, Snapshot, SnapshotMetadata};

    const ME: u64 = 2;
    const LEADER: u64 = 1;
    const OTHER: u64 = 3;
    const TERM: u64 = 5;
    const LAST: u64 = 100;

    fn known(id: u64) -> bool {
        [LEADER, ME, OTHER].contains(&id)
    }

    /// A follower of LEADER in TERM whose log ends at LAST.
    fn follower() -> View<'static> {
        View {
            id: ME,
            term: TERM,
            leader: Some(LEADER),
            is_leader: false,
            last_index: LAST,
            known: &known,
        }
    }

    fn leader() -> View<'static> {
        View {
            is_leader: true,
            leader: Some(ME),
            ..follower()
        }
    }

    fn msg(kind: MessageType, from: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = ME;
        m.term = TERM;
        m
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn with(mut m: Message, f: impl FnOnce(&mut Message)) -> Message {
        f(&mut m);
        m
    }

    fn proposal(entries: Vec<Entry>) -> Message {
        with(msg(MessageType::MsgPropose, OTHER), |m| {
            m.term = 0;
            m.set_entries(entries.into());
        })
    }

    fn append(index: u64, log_term: u64, entries: Vec<Entry>) -> Message {
        with(msg(MessageType::MsgAppend, LEADER), |m| {
            m.index = index;
            m.log_term = log_term;
            m.commit = index;
            m.set_entries(entries.into());
        })
    }

    fn snapshot(index: u64, term: u64, voters: &[u64], learners: &[u64]) -> Message {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        cs.set_learners(learners.to_vec());
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(cs);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        with(msg(MessageType::MsgSnapshot, LEADER), |m| {
            m.set_snapshot(snap)
        })
    }

    fn lane(m: &Message) -> Origin {
        Origin {
            peer: m.from,
            lane: Lane::of(m),
        }
    }

    /// One case: the message, the connection's peer (`None`: its sender), the view,
    /// and the expected label (`None`: stepped).
    fn check_case(name: &str, m: &Message, peer: Option<u64>, view: &View<'_>, want: Option<&str>) {
        let mut origin = lane(m);
        if let Some(peer) = peer {
            origin.peer = peer;
        }
        let got = check(m, origin, view);
        assert_eq!(
            got.as_ref().err().map(DropReason::label),
            want,
            "{name}: {got:?}"
        );
        if let Err(reason) = got {
            assert!(!reason.to_string().is_empty());
        }
    }

    #[test]
    fn who_sends_and_to_whom() {
        let hb = msg(MessageType::MsgHeartbeat, LEADER);
        let cases: Vec<(&str, Message, Option<u64>, Option<&str>)> = vec![
            ("the leader's heartbeat", hb.clone(), None, None),
            (
                "sender is not the connection's peer",
                hb.clone(),
                Some(OTHER),
                Some("from_mismatch"),
            ),
            (
                "to another node",
                with(hb.clone(), |m| m.to = OTHER),
                None,
                Some("not_for_this_node"),
            ),
            (
                "from a stranger",
                with(hb.clone(), |m| m.from = 9),
                Some(9),
                Some("unknown_peer"),
            ),
            (
                "from this node itself",
                with(hb.clone(), |m| m.from = ME),
                Some(ME),
                Some("unknown_peer"),
            ),
        ];
        for (name, m, peer, want) in cases {
            check_case(name, &m, peer, &follower(), want);
        }
    }

    #[test]
    fn types_lanes_terms_and_ranges() {
        let mut cases: Vec<(String, Message, Option<&str>)> = Vec::new();
        for kind in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            cases.push((format!("{kind:?}"), msg(kind, OTHER), Some("local_only")));
        }
        for kind in [MessageType::MsgTransferLeader, MessageType::MsgTimeoutNow] {
            cases.push((format!("{kind:?}"), msg(kind, LEADER), Some("unused_type")));
        }
        for kind in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgHeartbeatResponse,
        ] {
            cases.push((format!("{kind:?}"), msg(kind, OTHER), None));
            cases.push((
                format!("{kind:?} of term 0"),
                with(msg(kind, OTHER), |m| m.term = 0),
                Some("bad_term"),
            ));
        }
        cases.push((
            "a heartbeat of term 0 (raft-rs would take it as local)".into(),
            with(msg(MessageType::MsgHeartbeat, OTHER), |m| m.term = 0),
            Some("bad_term"),
        ));
        cases.push((
            "a forwarded proposal with a term".into(),
            with(proposal(vec![entry(0, 0, b"\x00")]), |m| m.term = TERM + 1),
            Some("bad_term"),
        ));
        for (field, set) in [
            (
                "term",
                (|m: &mut Message| m.term = u64::MAX) as fn(&mut Message),
            ),
            ("commit", |m| m.commit = MAX_PLAUSIBLE),
            ("index", |m| m.index = u64::MAX),
            ("log_term", |m| m.log_term = u64::MAX),
            ("reject_hint", |m| m.reject_hint = u64::MAX),
        ] {
            cases.push((
                format!("{field} out of range"),
                with(msg(MessageType::MsgRequestVote, OTHER), set),
                Some("out_of_range"),
            ));
        }
        cases.push((
            "an entry index out of range".into(),
            append(LAST, TERM, vec![entry(u64::MAX, TERM, b"x")]),
            Some("out_of_range"),
        ));
        for (name, m, want) in cases {
            check_case(&name, &m, None, &follower(), want);
        }
        // A snapshot travels on the snapshot lane, everything else on the normal one.
        let snap = snapshot(50, TERM, &[LEADER, ME], &[]);
        let mut origin = lane(&snap);
        origin.lane = Lane::Normal;
        assert_eq!(
            check(&snap, origin, &follower()).map_err(|e| e.label()),
            Err("wrong_lane")
        );
        let hb = msg(MessageType::MsgHeartbeat, LEADER);
        let mut origin = lane(&hb);
        origin.lane = Lane::Snapshot;
        assert_eq!(
            check(&hb, origin, &follower()).map_err(|e| e.label()),
            Err("wrong_lane")
        );
    }

    #[test]
    fn heartbeats_and_appends() {
        let hb = |term: u64, commit: u64| {
            with(msg(MessageType::MsgHeartbeat, LEADER), |m| {
                m.term = term;
                m.commit = commit;
            })
        };
        let cases: Vec<(&str, Message, Option<&str>)> = vec![
            ("heartbeat at the last index", hb(TERM, LAST), None),
            (
                "heartbeat past the log",
                hb(TERM, LAST + 1),
                Some("commit_past_log"),
            ),
            (
                "heartbeat of a higher term past the log",
                hb(TERM + 1, 1_000_000),
                Some("commit_past_log"),
            ),
            (
                "a stale heartbeat past the log is answered, not applied",
                hb(TERM - 1, 1_000_000),
                None,
            ),
            (
                "append of entries after the last index",
                append(
                    LAST,
                    TERM,
                    vec![entry(LAST + 1, TERM, b"a"), entry(LAST + 2, TERM, b"")],
                ),
                None,
            ),
            (
                "append probing past the log: raft-rs rejects it",
                append(LAST + 50, TERM, vec![]),
                None,
            ),
            (
                "append from index 0 of an empty log",
                append(0, 0, vec![]),
                None,
            ),
            (
                "append past the log with log_term 0",
                append(LAST + 50, 0, vec![]),
                Some("malformed_append"),
            ),
            (
                "entries with a gap",
                append(
                    LAST,
                    TERM,
                    vec![entry(LAST + 1, TERM, b"a"), entry(LAST + 3, TERM, b"b")],
                ),
                Some("malformed_append"),
            ),
            (
                "entries before the index (a conflict with committed entries)",
                append(LAST, TERM, vec![entry(LAST - 10, TERM, b"a")]),
                Some("malformed_append"),
            ),
            (
                "entry terms going backwards",
                append(
                    LAST,
                    TERM - 1,
                    vec![entry(LAST + 1, TERM, b"a"), entry(LAST + 2, TERM - 1, b"b")],
                ),
                Some("malformed_append"),
            ),
            (
                "entry term above the message's",
                append(LAST, TERM, vec![entry(LAST + 1, TERM + 1, b"a")]),
                Some("malformed_append"),
            ),
            (
                "entry term below the previous entry's",
                append(LAST, TERM, vec![entry(LAST + 1, TERM - 1, b"a")]),
                Some("malformed_append"),
            ),
            (
                "previous term above the message's",
                append(LAST, TERM + 1, vec![]),
                Some("malformed_append"),
            ),
        ];
        for (name, m, want) in cases {
            check_case(name, &m, None, &follower(), want);
        }
    }

    #[test]
    fn responses_to_the_leader() {
        let ack = |index: u64| {
            with(msg(MessageType::MsgAppendResponse, OTHER), |m| {
                m.index = index
            })
        };
        let cases: Vec<(&str, Message, Option<&str>)> = vec![
            ("an ack at the last index", ack(LAST), None),
            (
                "an ack past the log",
                ack(LAST + 1),
                Some("bad_append_response"),
            ),
            (
                "a rejection past the log",
                with(ack(LAST + 1), |m| m.reject = true),
                Some("bad_append_response"),
            ),
            (
                "an ack past the log of a higher term (this node steps down)",
                with(ack(LAST + 1), |m| m.term = TERM + 1),
                None,
            ),
            (
                "a snapshot request",
                with(ack(LAST), |m| m.request_snapshot = 3),
                Some("bad_append_response"),
            ),
            (
                "a heartbeat response",
                msg(MessageType::MsgHeartbeatResponse, OTHER),
                None,
            ),
        ];
        for (name, m, want) in cases {
            check_case(name, &m, None, &leader(), want);
        }
    }

    #[test]
    fn forwarded_proposals_and_reads() {
        let read = |entries: usize| {
            with(msg(MessageType::MsgReadIndex, OTHER), |m| {
                m.term = 0;
                m.set_entries(vec![entry(0, 0, b"ctx"); entries].into());
            })
        };
        let resp = |from: u64, term: u64, entries: usize| {
            with(msg(MessageType::MsgReadIndexResp, from), |m| {
                m.term = term;
                m.index = 7;
                m.set_entries(vec![entry(0, 0, b"ctx"); entries].into());
            })
        };
        let to_leader: Vec<(&str, Message, Option<&str>)> = vec![
            ("a proposal", proposal(vec![entry(0, 0, b"\x00x")]), None),
            ("no entry", proposal(vec![]), Some("empty_proposal")),
            (
                "an entry without data",
                proposal(vec![entry(0, 0, b"")]),
                Some("empty_proposal"),
            ),
            (
                "two entries",
                proposal(vec![entry(0, 0, b"a"), entry(0, 0, b"b")]),
                Some("malformed_proposal"),
            ),
            ("a read index", read(1), None),
            (
                "a read index without entry",
                read(0),
                Some("bad_read_index"),
            ),
            (
                "a read index of two entries",
                read(2),
                Some("bad_read_index"),
            ),
        ];
        for (name, m, want) in to_leader {
            check_case(name, &m, None, &leader(), want);
        }
        let to_follower: Vec<(&str, Message, Option<&str>)> = vec![
            (
                "a proposal to a follower",
                proposal(vec![entry(0, 0, b"\x00x")]),
                Some("not_leader"),
            ),
            (
                "an empty proposal to a follower",
                proposal(vec![]),
                Some("empty_proposal"),
            ),
            ("a read index to a follower", read(1), Some("not_leader")),
            (
                "the leader's read index response",
                resp(LEADER, TERM, 1),
                None,
            ),
            (
                "a read index response from another node",
                resp(OTHER, TERM, 1),
                Some("bad_read_index"),
            ),
            (
                "a read index response of a higher term",
                resp(LEADER, TERM + 1, 1),
                Some("bad_read_index"),
            ),
            (
                "a read index response without entry",
                resp(LEADER, TERM, 0),
                Some("bad_read_index"),
            ),
        ];
        for (name, m, want) in to_follower {
            check_case(name, &m, None, &follower(), want);
        }
    }

    #[test]
    fn snapshots() {
        let cases: Vec<(&str, Message, Option<&str>)> = vec![
            (
                "a snapshot",
                snapshot(50, TERM, &[LEADER, ME, OTHER], &[4]),
                None,
            ),
            (
                "index 0",
                snapshot(0, TERM, &[LEADER, ME], &[]),
                Some("bad_snapshot"),
            ),
            (
                "term 0 (it would match any index past the log)",
                snapshot(500, 0, &[LEADER, ME], &[]),
                Some("bad_snapshot"),
            ),
            (
                "a term above the message's",
                snapshot(50, TERM + 1, &[LEADER, ME], &[]),
                Some("bad_snapshot"),
            ),
            (
                "no voter",
                snapshot(50, TERM, &[], &[ME]),
                Some("bad_snapshot"),
            ),
            (
                "node 0",
                snapshot(50, TERM, &[0, ME], &[]),
                Some("bad_snapshot"),
            ),
            (
                "a voter twice",
                snapshot(50, TERM, &[ME, ME, LEADER], &[]),
                Some("bad_snapshot"),
            ),
            (
                "a voter that is also a learner",
                snapshot(50, TERM, &[ME, LEADER], &[LEADER]),
                Some("bad_snapshot"),
            ),
            (
                "a joint configuration",
                with(snapshot(50, TERM, &[ME, LEADER], &[]), |m| {
                    m.mut_snapshot()
                        .mut_metadata()
                        .mut_conf_state()
                        .set_voters_outgoing(vec![ME]);
                }),
                Some("bad_snapshot"),
            ),
            (
                "auto leave",
                with(snapshot(50, TERM, &[ME, LEADER], &[]), |m| {
                    m.mut_snapshot().mut_metadata().mut_conf_state().auto_leave = true;
                }),
                Some("bad_snapshot"),
            ),
        ];
        for (name, m, want) in cases {
            check_case(name, &m, None, &follower(), want);
        }
    }
}
