//! Applying committed entries: normal entries to the state machine in synced
//! batches, membership changes to Raft, and the halt when the state machine stops.

use std::collections::HashMap;
use std::time::Instant;

use raft::prelude::{Entry, EntryType};
use raft::{GetEntriesContext, Storage as _};
use sealkv_kv::Outcome;

use super::waiters::fail_all;
use super::{Driver, DriverError, NodeHalt, ProposeError, log_err};

impl Driver {
    /// Applies committed entries in order: runs of normal entries go to the state
    /// machine in one call (one synced batch); membership changes are applied to
    /// Raft and recorded as applied no-ops in the state machine.
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), DriverError> {
        let gate_open = self
            .config
            .apply_gate
            .as_ref()
            .is_none_or(|g| g.load(std::sync::atomic::Ordering::Acquire));
        if !(self.alone() || self.contact && gate_open) {
            if let Some(last) = entries.last() {
                self.skipped_to = self.skipped_to.max(last.index);
            }
            return Ok(());
        }
        let mut entries = entries;
        let applied = self.fsm.applied_index();
        if self.skipped_to > applied {
            // The entries handed out before contact, from the log.
            let first = entries.first().map_or(self.skipped_to + 1, |e| e.index);
            let high = first.min(self.skipped_to + 1);
            let mut missed = self
                .log
                .entries(applied + 1, high, None, GetEntriesContext::empty(false))
                .map_err(log_err)?;
            self.skipped_to = 0;
            missed.append(&mut entries);
            entries = missed;
        }
        let mut run: Vec<Entry> = Vec::new();
        for entry in entries {
            if entry.index <= self.fsm.applied_index() {
                continue;
            }
            if self.halted.is_some() {
                return Ok(());
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => run.push(entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_normal(std::mem::take(&mut run));
                    if self.halted.is_none() {
                        self.apply_conf_change(&entry)?;
                    }
                }
            }
        }
        self.apply_normal(run);
        Ok(())
    }

    fn apply_normal(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let views: Vec<sealkv_kv::Entry<'_>> = entries
            .iter()
            .map(|e| sealkv_kv::Entry {
                index: e.index,
                data: e.get_data(),
            })
            .collect();
        let started = Instant::now();
        let result = self.fsm.apply(&views);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let (outcomes, halt) = match result {
            Ok(outcomes) => (outcomes, None),
            Err(halted) => (halted.applied, Some(halted.halt)),
        };
        self.metrics.entries_applied.inc_by(outcomes.len() as u64);
        let mut outcomes: HashMap<u64, Outcome> =
            outcomes.into_iter().map(|o| (o.index, o.outcome)).collect();
        let mut last = self.fsm.applied_index();
        for entry in &entries {
            if entry.index > self.fsm.applied_index() {
                break;
            }
            last = entry.index;
            let Some(id) = self.own_proposal(entry.get_context()) else {
                continue;
            };
            // A waiter whose entry was appended at another index is not this one's.
            if let Some(w) = self.proposals.remove(&id) {
                let result = match w.index {
                    Some(index) if index != entry.index => Err(ProposeError::Dropped),
                    _ => outcomes.remove(&entry.index).ok_or(ProposeError::Dropped),
                };
                let _ = w.reply.send(result);
            }
        }
        self.drop_overwritten(last);
        if let Some(halt) = halt {
            // The state machine logged the halt itself.
            self.set_halted(NodeHalt::StateMachine(halt));
            self.publish();
        }
    }

    /// Halts on a membership-change entry that cannot be applied.
    pub(super) fn halt_on(&mut self, index: u64, cause: String) {
        let halt = NodeHalt::Membership { index, cause };
        tracing::error!(index, "{halt}");
        self.set_halted(halt);
    }

    /// Records the halt and fails every waiting request with it.
    pub(super) fn set_halted(&mut self, halt: NodeHalt) {
        self.metrics.halted.set(1);
        self.halted = Some(halt.clone());
        let error = ProposeError::Halted(halt);
        fail_all(&mut self.proposals, &error);
        fail_all(&mut self.changes, &error);
        fail_all(&mut self.reads, &error);
    }
}
