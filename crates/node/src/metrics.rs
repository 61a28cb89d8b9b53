//! The node's Prometheus metrics: Raft state, proposals, apply latency, halts,
//! snapshots (installed, bytes streamed, transfers refused, transfer time) and compactions, failed Redis authentications, peer messages and connections refused, and encryption (decrypt failures by reason, envelopes
//! sealed per key, active key ids, sidecar index). `GET /metrics` on the admin
//! endpoint serves them in the Prometheus text format.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sealkv_encryption::keyring::KeyringStatus;
use sealkv_fsmwire::Purpose;
use sealkv_kv::VersionsByKey;

use crate::consensus::{RaftStatus, Role};

/// Every metric of a node, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Proposals received by this node (writes and their batches).
    pub proposals: IntCounter,
    /// Proposals that failed before they were appended (no leader, halted, busy).
    pub proposals_failed: IntCounter,
    /// Entries applied to the state machine.
    pub entries_applied: IntCounter,
    /// Time to apply one run of committed entries (one synced batch).
    pub apply_seconds: Histogram,
    /// 1 when the state machine has halted.
    pub halted: IntGauge,
    /// Snapshots installed from a leader.
    pub snapshots_installed: IntCounter,
    /// Log compactions.
    pub compactions: IntCounter,
    /// Bytes of snapshot dumps streamed to peers.
    pub snapshot_sent_bytes: IntCounter,
    /// Bytes of snapshot dumps received from peers (chunks that checked out).
    pub snapshot_received_bytes: IntCounter,
    /// Snapshot transfers refused: a chunk whose checksum did not match, or a
    /// stream that did not add up to its descriptor.
    pub snapshot_chunks_refused: IntCounter,
    /// Time to stream one snapshot, by direction (`sent`, `received`).
    pub snapshot_transfer_seconds: HistogramVec,
    /// Failed Redis authentication attempts (`AUTH`, `HELLO ... AUTH`).
    pub auth_failures: IntCounter,
    role: IntGaugeVec,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    first_index: IntGauge,
    last_index: IntGauge,
    leader_id: IntGauge,
    /// Values or Raft payloads that failed to decrypt, by reason.
    pub decrypt_failures: IntCounterVec,
    /// Peer messages dropped before Raft stepped them, by reason
    /// (`consensus::DropReason::label`).
    pub peer_messages_dropped: IntCounterVec,
    /// Inbound peer connections the transport refused or closed, by reason
    /// (`consensus::transport::CloseReason::label`).
    pub peer_connections_closed: IntCounterVec,
    encryptions: IntGaugeVec,
    active_key: IntGaugeVec,
    sidecar_index: IntGauge,
    versions_by_key: IntGaugeVec,
    versions_applied_index: IntGauge,
    /// When the usage gauges were last refreshed, and whether a scan is running.
    usage_refreshed: Mutex<(Option<Instant>, bool)>,
}

/// How often a scrape of `/metrics` may start a scan of the store for the usage
/// gauges (`GET /v1/encryption/status` and `/v1/encryption/usage` refresh them
/// too).
pub const USAGE_REFRESH: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// The registry, for metrics registered elsewhere (the store's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A fresh set of metrics.
    ///
    /// # Errors
    /// Only if two metrics share a name (a programming error caught by the tests).
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sealkv_apply_seconds",
                "Time to apply one run of committed entries, including its synced write",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
        )?;
        registry.register(Box::new(apply_seconds.clone()))?;
        let role = IntGaugeVec::new(
            Opts::new("sealkv_raft_role", "1 for the node's current Raft role"),
            &["role"],
        )?;
        registry.register(Box::new(role.clone()))?;
        let decrypt_failures = IntCounterVec::new(
            Opts::new(
                "sealkv_decrypt_failures_total",
                "Stored values that failed to decrypt, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(decrypt_failures.clone()))?;
        let peer_messages_dropped = IntCounterVec::new(
            Opts::new(
                "sealkv_peer_messages_dropped_total",
                "Raft messages from peers dropped before Raft stepped them, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(peer_messages_dropped.clone()))?;
        let peer_connections_closed = IntCounterVec::new(
            Opts::new(
                "sealkv_peer_connections_closed_total",
                "Inbound Raft peer connections refused or closed by this node, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(peer_connections_closed.clone()))?;
        let encryptions = IntGaugeVec::new(
            Opts::new(
                "sealkv_encryptions",
                "Envelopes sealed under a key in this process load (its nonce counter)",
            ),
            &["key_id"],
        )?;
        registry.register(Box::new(encryptions.clone()))?;
        let active_key = IntGaugeVec::new(
            Opts::new(
                "sealkv_active_key_id",
                "Active key id per purpose (0: none)",
            ),
            &["purpose"],
        )?;
        registry.register(Box::new(active_key.clone()))?;
        let versions_by_key = IntGaugeVec::new(
            Opts::new(
                "sealkv_versions_by_key",
                "Stored versions per storage key id (clear: cleartext values), at the last scan",
            ),
            &["key_id"],
        )?;
        registry.register(Box::new(versions_by_key.clone()))?;
        let snapshot_transfer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sealkv_snapshot_transfer_seconds",
                "Time to stream one snapshot's dump, by direction",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.0, 16)?),
            &["direction"],
        )?;
        registry.register(Box::new(snapshot_transfer_seconds.clone()))?;
        Ok(Metrics {
            versions_by_key,
            versions_applied_index: gauge(
                &registry,
                "sealkv_versions_by_key_applied_index",
                "Applied index the last scan of sealkv_versions_by_key saw",
            )?,
            usage_refreshed: Mutex::new((None, false)),
            snapshot_transfer_seconds,
            snapshot_sent_bytes: counter(
                &registry,
                "sealkv_snapshot_sent_bytes_total",
                "Bytes of snapshot dumps streamed to peers",
            )?,
            snapshot_received_bytes: counter(
                &registry,
                "sealkv_snapshot_received_bytes_total",
                "Bytes of snapshot dumps received from peers",
            )?,
            snapshot_chunks_refused: counter(
                &registry,
                "sealkv_snapshot_chunks_refused_total",
                "Snapshot transfers refused: a corrupt chunk or a stream that does not match its descriptor",
            )?,
            decrypt_failures,
            peer_messages_dropped,
            peer_connections_closed,
            encryptions,
            active_key,
            sidecar_index: gauge(
                &registry,
                "sealkv_sidecar_applied_index",
                "Raft index the key sidecar reflects",
            )?,
            proposals: counter(&registry, "sealkv_proposals_total", "Proposals received")?,
            proposals_failed: counter(
                &registry,
                "sealkv_proposals_failed_total",
                "Proposals refused before they were appended",
            )?,
            entries_applied: counter(
                &registry,
                "sealkv_entries_applied_total",
                "Entries applied to the state machine",
            )?,
            apply_seconds,
            halted: gauge(
                &registry,
                "sealkv_halted",
                "1 when the state machine has halted",
            )?,
            snapshots_installed: counter(
                &registry,
                "sealkv_snapshots_installed_total",
                "Raft snapshots installed",
            )?,
            compactions: counter(
                &registry,
                "sealkv_log_compactions_total",
                "Raft log compactions",
            )?,
            auth_failures: counter(
                &registry,
                "sealkv_auth_failures_total",
                "Failed Redis authentication attempts (AUTH, HELLO AUTH)",
            )?,
            role,
            term: gauge(&registry, "sealkv_raft_term", "Current Raft term")?,
            commit_index: gauge(&registry, "sealkv_raft_commit_index", "Raft commit index")?,
            applied_index: gauge(&registry, "sealkv_raft_applied_index", "Last applied index")?,
            first_index: gauge(
                &registry,
                "sealkv_raft_first_index",
                "First index in the log",
            )?,
            last_index: gauge(&registry, "sealkv_raft_last_index", "Last index in the log")?,
            leader_id: gauge(
                &registry,
                "sealkv_raft_leader_id",
                "Known leader id, 0 for none",
            )?,
            registry,
        })
    }

    /// Records a Raft status.
    pub fn observe(&self, status: &RaftStatus) {
        for (role, name) in [
            (Role::Follower, "follower"),
            (Role::Candidate, "candidate"),
            (Role::PreCandidate, "pre_candidate"),
            (Role::Leader, "leader"),
        ] {
            self.role
                .with_label_values(&[name])
                .set(i64::from(status.role == role));
        }
        let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.term, status.term);
        set(&self.commit_index, status.commit_index);
        set(&self.applied_index, status.applied_index);
        set(&self.first_index, status.first_index);
        set(&self.last_index, status.last_index);
        set(&self.leader_id, status.leader_id.unwrap_or(0));
        self.halted.set(i64::from(status.halted.is_some()));
    }

    /// Whether a scrape should start a usage scan: none ran within
    /// [`USAGE_REFRESH`] and none is running. Marks one as running.
    pub fn usage_refresh_due(&self) -> bool {
        let mut state = self
            .usage_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = !state.1 && state.0.is_none_or(|at| at.elapsed() >= USAGE_REFRESH);
        if due {
            state.1 = true;
        }
        due
    }

    /// Ends the scan [`usage_refresh_due`](Self::usage_refresh_due) started.
    pub fn usage_refresh_done(&self) {
        self.usage_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = false;
    }

    /// Sets the usage gauges from a scan, dropping key ids it no longer found.
    pub fn observe_usage(&self, usage: &VersionsByKey) {
        self.versions_by_key.reset();
        let set = |label: &str, n: u64| {
            self.versions_by_key
                .with_label_values(&[label])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("clear", usage.clear);
        for (key_id, n) in &usage.by_key {
            set(&key_id.to_string(), *n);
        }
        if usage.malformed > 0 {
            set("malformed", usage.malformed);
        }
        self.versions_applied_index
            .set(i64::try_from(usage.applied_index).unwrap_or(i64::MAX));
        self.usage_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0 = Some(Instant::now());
    }

    /// Records the keyring's state.
    pub fn observe_keys(&self, status: &KeyringStatus) {
        // A retired key leaves the keyring: drop its series too.
        self.encryptions.reset();
        for key in &status.keys {
            self.encryptions
                .with_label_values(&[key.key_id.to_string().as_str()])
                .set(i64::try_from(key.encryptions).unwrap_or(i64::MAX));
        }
        for (purpose, id) in [
            (Purpose::Storage, status.active_storage),
            (Purpose::Raft, status.active_raft),
        ] {
            self.active_key
                .with_label_values(&[purpose.as_str()])
                .set(i64::from(id.unwrap_or(0)));
        }
        self.sidecar_index
            .set(i64::try_from(status.sidecar_applied_index).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encode metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::new().expect("metrics");
        m.proposals.inc();
        m.peer_messages_dropped
            .with_label_values(&["empty_proposal"])
            .inc();
        let text = m.render();
        for name in [
            "sealkv_proposals_total 1",
            "sealkv_apply_seconds_bucket",
            "sealkv_halted 0",
            "sealkv_raft_term",
            "sealkv_auth_failures_total 0",
            "sealkv_peer_messages_dropped_total{reason=\"empty_proposal\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
