//! The clients waiting on a proposal, membership change or read: how a waiter is
//! made, answered, timed out, and failed when a new leader overwrote its entry.

use std::collections::HashMap;
use std::time::Instant;

use raft::ReadState;
use raft::StateRole;
use tokio::sync::oneshot;

use super::{Driver, ProposeError};

pub(super) struct Waiter<T> {
    pub(super) reply: oneshot::Sender<Result<T, ProposeError>>,
    /// The log index of the entry, when this node appended it as leader.
    pub(super) index: Option<u64>,
    pub(super) deadline: Instant,
}

pub(super) fn fail_all<T>(waiters: &mut HashMap<u64, Waiter<T>>, error: &ProposeError) {
    for (_, w) in waiters.drain() {
        let _ = w.reply.send(Err(error.clone()));
    }
}

fn fail_where<T>(
    waiters: &mut HashMap<u64, Waiter<T>>,
    error: &ProposeError,
    pred: impl Fn(&Waiter<T>) -> bool,
) {
    let ids: Vec<u64> = waiters
        .iter()
        .filter(|(_, w)| pred(w))
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(w) = waiters.remove(&id) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
}

impl Driver {
    /// The index of the entry just appended, when this node leads (a follower
    /// forwards the proposal and does not learn its index).
    fn appended_index(&self) -> Option<u64> {
        (self.raw.raft.state == StateRole::Leader).then(|| self.raw.raft.raft_log.last_index())
    }

    /// The waiter of a proposal raft-rs accepted (it answers once the entry at the
    /// index just appended applies), or `None` after answering one it refused.
    pub(super) fn waiter_for<T>(
        &self,
        proposed: Result<(), raft::Error>,
        reply: oneshot::Sender<Result<T, ProposeError>>,
    ) -> Option<Waiter<T>> {
        match proposed {
            Ok(()) => Some(Waiter {
                reply,
                index: self.appended_index(),
                deadline: self.deadline(),
            }),
            Err(e) => {
                let _ = reply.send(Err(self.propose_error(e)));
                None
            }
        }
    }

    /// What a proposal raft-rs refused gets: a leader that drops one holds as many
    /// uncommitted bytes as it takes (or is handing leadership over); a follower
    /// drops one when it knows no leader.
    fn propose_error(&self, e: raft::Error) -> ProposeError {
        match e {
            raft::Error::ProposalDropped if self.raw.raft.state == StateRole::Leader => {
                ProposeError::Busy
            }
            raft::Error::ProposalDropped => ProposeError::NoLeader,
            other => ProposeError::Rejected(other.to_string()),
        }
    }

    pub(super) fn expire_waiters(&mut self) {
        let now = Instant::now();
        let timeout = ProposeError::Timeout;
        fail_where(&mut self.proposals, &timeout, |w| w.deadline <= now);
        fail_where(&mut self.changes, &timeout, |w| w.deadline <= now);
        fail_where(&mut self.reads, &timeout, |w| w.deadline <= now);
    }

    /// Fails the waiters whose entry index is at or below `applied` but whose entry
    /// was not theirs: a new leader overwrote it.
    pub(super) fn drop_overwritten(&mut self, applied: u64) {
        let dropped = ProposeError::Dropped;
        let overwritten = |w: &Waiter<_>| w.index.is_some_and(|i| i <= applied);
        fail_where(&mut self.proposals, &dropped, overwritten);
        fail_where(&mut self.changes, &dropped, |w| {
            w.index.is_some_and(|i| i <= applied)
        });
    }

    pub(super) fn complete_read(&mut self, state: ReadState) {
        let Some(id) = self.own_proposal(&state.request_ctx) else {
            return;
        };
        if let Some(w) = self.reads.remove(&id) {
            let _ = w.reply.send(Ok(state.index));
        }
    }
}
