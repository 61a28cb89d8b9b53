//! Storage maintenance (DESIGN.md §12): MVCC garbage collection below a replicated
//! safe point, compaction and value rewriting on request, each node on its own
//! copy, in bounded steps beside the apply path.
//!
//! * **Safe point.** Every node samples its applied index once a second. The
//!   leader proposes a [`Maintenance`] entry with the horizon `(index, at_ms)`:
//!   the index it had applied `--mvcc-retention` seconds ago and that moment's
//!   time. Applying it moves the replicated horizon forward on every replica at
//!   the same index (the state machine then judges expiry no earlier than its
//!   time), so every replica may remove the same versions.
//! * **Collection.** The worker walks the `data` column family in steps of at
//!   most [`STEP_BUDGET`] versions (one unsynced write each, under the store's
//!   maintenance lock) and removes what the horizon allows
//!   (`sealkv_store::gc`). A pass runs whenever the horizon moved.
//! * **Compaction** (`POST /v1/store/compact`, `sealkv store compact`): an entry
//!   with a fresh horizon and the compaction flag; every node runs a pass, then
//!   flushes and compacts every column family. The route answers once the node
//!   that took it has finished.
//! * **Rewrite** (`POST /v1/encryption/rewrite`, `sealkv encryption rewrite`): an
//!   entry with the rewrite flag; every node reseals, in synced steps, each
//!   version that is cleartext or under a storage key other than the active one
//!   ([`sealkv_kv::Reader::reseal`]). Progress is in `GET /v1/store/status`.
//!
//! What a node has done (the last request index it finished) is kept in memory:
//! after a restart it runs the last requested rewrite and compaction once more,
//! which finds little or nothing left to do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get, routing::post};
use prometheus::{IntCounter, IntGauge, Registry};
use serde::Serialize;

use sealkv_kv::{
    COMPACT_REQUEST_META_KEY, Command, KvRequest, Maintenance, REWRITE_REQUEST_META_KEY, Reader,
    ResealError, meta_u64,
};
use sealkv_store::gc::{Cursor, Horizon, LiveStats, Rewrite};
use sealkv_store::{KvStore, RocksStore};

use crate::consensus::{RaftHandle, Role};
use crate::resp::{ApiError, Backend};

/// Versions one step visits at most (one write, one hold of the maintenance lock).
pub const STEP_BUDGET: usize = 1024;
/// How often the applied index is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long `POST /v1/store/compact` waits for this node's compaction.
const COMPACT_WAIT: Duration = Duration::from_secs(600);
/// How long the worker sleeps when there is nothing to do.
const IDLE: Duration = Duration::from_millis(250);

/// How a node maintains its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// How long a superseded version, a tombstone or an expired value stays
    /// readable history before it may be collected (`--mvcc-retention`).
    pub retention: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            retention: Duration::from_secs(300),
        }
    }
}

impl MaintenanceConfig {
    /// How often the leader proposes a new safe point: a quarter of the retention
    /// window, between 1 and 30 seconds.
    fn propose_every(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// The store metrics (`sealkv_gc_*`, `sealkv_live_*`, `sealkv_store_*`,
/// `sealkv_rewrite_*`).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    gc_passes: IntCounter,
    gc_removed: IntCounter,
    gc_bytes: IntCounter,
    gc_horizon: IntGauge,
    live_keys: IntGauge,
    live_bytes: IntGauge,
    versions: IntGauge,
    sst_bytes: IntGauge,
    compactions: IntCounter,
    rewritten: IntCounter,
    unreadable: IntCounter,
}

impl StoreMetrics {
    /// Registers the store metrics in `registry`.
    ///
    /// # Errors
    /// When a name is taken.
    pub fn new(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(StoreMetrics {
            gc_passes: counter("sealkv_gc_passes_total", "Completed MVCC GC passes.")?,
            gc_removed: counter(
                "sealkv_gc_versions_removed_total",
                "MVCC versions removed by GC (superseded, tombstones, expired).",
            )?,
            gc_bytes: counter(
                "sealkv_gc_bytes_removed_total",
                "Key and value bytes of the versions GC removed.",
            )?,
            gc_horizon: gauge(
                "sealkv_gc_horizon_index",
                "The Raft index of the applied GC safe point.",
            )?,
            live_keys: gauge(
                "sealkv_live_keys",
                "Keys with a live value, as of the last GC pass.",
            )?,
            live_bytes: gauge(
                "sealkv_live_bytes",
                "Key and stored value bytes of the live keys' newest versions, as of the last GC pass.",
            )?,
            versions: gauge(
                "sealkv_stored_versions",
                "Versions left in the store after the last GC pass.",
            )?,
            sst_bytes: gauge(
                "sealkv_store_sst_bytes",
                "Size of the store's live SST files.",
            )?,
            compactions: counter(
                "sealkv_store_compactions_total",
                "Store compactions run on request.",
            )?,
            rewritten: counter(
                "sealkv_rewrite_versions_total",
                "Versions resealed under the active storage key.",
            )?,
            unreadable: counter(
                "sealkv_rewrite_unreadable_total",
                "Versions the rewrite left alone because they do not open.",
            )?,
        })
    }
}

/// Progress of the rewrite, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewriteStatus {
    /// Index of the last rewrite request applied here (0: never asked).
    pub requested_index: u64,
    /// The last request this node finished.
    pub done_index: u64,
    /// Whether a pass is running.
    pub running: bool,
    /// Versions visited by the current (or last) pass.
    pub scanned: u64,
    /// Versions resealed by the current (or last) pass.
    pub rewritten: u64,
    /// Versions left alone because they do not open (reads refuse them too).
    pub unreadable: u64,
    /// Why the last step stopped early, if it did (it is retried).
    pub last_error: Option<String>,
}

/// The JSON of `GET /v1/store/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStatus {
    /// `--mvcc-retention`, in seconds.
    pub retention_seconds: u64,
    /// The applied GC safe point: Raft index.
    pub horizon_index: u64,
    /// The applied GC safe point: time (ms since the Unix epoch).
    pub horizon_at_ms: u64,
    /// Completed GC passes in this process load.
    pub gc_passes: u64,
    /// Versions GC removed in this process load.
    pub versions_removed: u64,
    /// Key and value bytes of those versions.
    pub bytes_removed: u64,
    /// Keys with a live value at the last pass.
    pub live_keys: u64,
    /// Their bytes (key and stored newest value).
    pub live_bytes: u64,
    /// Versions left after the last pass.
    pub versions: u64,
    /// Size of the live SST files.
    pub sst_bytes: u64,
    /// Index of the last compaction request applied here.
    pub compact_requested_index: u64,
    /// The last compaction request this node finished.
    pub compact_done_index: u64,
    /// The rewrite.
    pub rewrite: RewriteStatus,
    /// Why the last GC step failed, if it did (it is retried).
    pub last_error: Option<String>,
}

/// A node's storage maintenance: the worker's state and what the admin routes use.
pub struct Maintainer {
    store: Arc<RocksStore>,
    reader: Reader,
    raft: RaftHandle,
    backend: Arc<dyn ProposeMaintenance>,
    config: MaintenanceConfig,
    metrics: StoreMetrics,
    status: Mutex<StoreStatus>,
    history: Mutex<VecDeque<(u64, u64)>>,
    /// The last compaction request this node finished (what `compact` waits on).
    compacted: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintainer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Proposes a maintenance entry the way a write is proposed (wrapped in a raft
/// envelope on an encrypted cluster), answered once this node applied it.
pub trait ProposeMaintenance: Send + Sync {
    /// Proposes `request`.
    fn propose(
        &self,
        request: Maintenance,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + '_>>;
}

impl<B: Backend + Send + Sync> ProposeMaintenance for B {
    fn propose(
        &self,
        request: Maintenance,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + '_>>
    {
        Box::pin(async move {
            let request = KvRequest {
                issued_at_ms: now_ms(),
                commands: vec![Command::Maintain(request)],
            };
            self.write(request).await.map(|_| ())
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a maintenance request failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The proposal failed.
    #[error("propose: {0}")]
    Propose(ApiError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] sealkv_store::StoreError),
    /// The worker stopped before it finished.
    #[error("the maintenance worker stopped")]
    Stopped,
    /// The compaction asked for is still running on this node.
    #[error("compaction {0} is still running on this node; follow it with `sealkv store status`")]
    StillRunning(u64),
}

impl Maintainer {
    /// A maintainer for `store`, reading the horizon through `reader` (the state
    /// machine's reader, with its keyring) and proposing through `backend`.
    pub fn new(
        store: Arc<RocksStore>,
        reader: Reader,
        raft: RaftHandle,
        backend: Arc<dyn ProposeMaintenance>,
        config: MaintenanceConfig,
        metrics: StoreMetrics,
    ) -> Maintainer {
        let (compacted, _) = tokio::sync::watch::channel(0);
        Maintainer {
            store,
            reader,
            raft,
            backend,
            config,
            metrics,
            status: Mutex::new(StoreStatus {
                retention_seconds: config.retention.as_secs(),
                ..StoreStatus::default()
            }),
            history: Mutex::new(VecDeque::new()),
            compacted,
        }
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, StoreStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What `GET /v1/store/status` shows.
    pub fn status(&self) -> StoreStatus {
        let mut status = self.status_mut().clone();
        let horizon = self.reader.horizon();
        status.horizon_index = horizon.index;
        status.horizon_at_ms = horizon.at_ms;
        status
    }

    /// Records this node's applied index now, and forgets samples no horizon will
    /// need (all but the newest one older than the retention window).
    fn sample(&self, now: u64) {
        let applied = self.raft.status().applied_index;
        let window = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history.push_back((now, applied));
        let cutoff = now.saturating_sub(window);
        while history.get(1).is_some_and(|(t, _)| *t <= cutoff) {
            history.pop_front();
        }
    }

    /// The safe point this node can vouch for: the index it had applied a
    /// retention window ago, and that moment. `None` until it has watched that
    /// long.
    pub fn candidate(&self, now: u64) -> Option<Horizon> {
        let window = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.checked_sub(window)?;
        if window == 0 {
            return Some(Horizon {
                index: self.raft.status().applied_index,
                at_ms: now,
            });
        }
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history
            .iter()
            .rev()
            .find(|(t, _)| *t <= cutoff)
            .map(|&(_, index)| Horizon {
                index,
                at_ms: cutoff,
            })
    }

    /// Proposes a compaction (with this node's safe point) and waits until this
    /// node has collected and compacted for it.
    ///
    /// # Errors
    /// [`MaintenanceError`] when the proposal fails or the worker stops.
    pub async fn compact(&self) -> Result<StoreStatus, MaintenanceError> {
        let request = Maintenance {
            horizon: self.candidate(now_ms()).map(|h| (h.index, h.at_ms)),
            compact: true,
            rewrite: false,
        };
        let wanted = self.request(request, COMPACT_REQUEST_META_KEY).await?;
        let mut done = self.compacted.subscribe();
        match tokio::time::timeout(
            COMPACT_WAIT,
            done.wait_for(|compacted| *compacted >= wanted),
        )
        .await
        {
            Ok(Ok(_)) => Ok(self.status()),
            Ok(Err(_)) => Err(MaintenanceError::Stopped),
            Err(_) => Err(MaintenanceError::StillRunning(wanted)),
        }
    }

    /// Proposes a rewrite; answers with the request's index once this node applied
    /// it (the rewrite itself runs in the background on every node).
    ///
    /// # Errors
    /// [`MaintenanceError`] when the proposal fails.
    pub async fn rewrite(&self) -> Result<u64, MaintenanceError> {
        let request = Maintenance {
            horizon: None,
            compact: false,
            rewrite: true,
        };
        self.request(request, REWRITE_REQUEST_META_KEY).await
    }

    /// Proposes `request` and, once this node applied it, reads back the index of
    /// the last request of its kind (the meta row `key`): this one's, or a later one.
    async fn request(&self, request: Maintenance, key: &[u8]) -> Result<u64, MaintenanceError> {
        self.backend
            .propose(request)
            .await
            .map_err(MaintenanceError::Propose)?;
        Ok(meta_u64(self.store.as_ref() as &dyn KvStore, key)?)
    }

    /// The worker: samples, proposes safe points on the leader, collects garbage
    /// when the horizon moves, and compacts and rewrites on request, until `stop`.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last_sample: Option<Instant> = None;
        let mut last_proposal: Option<Instant> = None;
        let mut collected = Horizon::default();
        let (mut compacted, mut rewritten) = (0u64, 0u64);
        loop {
            let now = now_ms();
            if last_sample.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY) {
                self.sample(now);
                last_sample = Some(Instant::now());
            }
            let status = self.raft.status();
            if status.role == Role::Leader
                && status.halted.is_none()
                && last_proposal.is_none_or(|t| t.elapsed() >= self.config.propose_every())
            {
                last_proposal = Some(Instant::now());
                self.maybe_propose(now).await;
            }
            let store = self.store.as_ref() as &dyn KvStore;
            let compact_requested = meta_u64(store, COMPACT_REQUEST_META_KEY).unwrap_or(0);
            let rewrite_requested = meta_u64(store, REWRITE_REQUEST_META_KEY).unwrap_or(0);
            {
                let mut s = self.status_mut();
                s.compact_requested_index = compact_requested;
                s.rewrite.requested_index = rewrite_requested;
            }
            let horizon = self.reader.horizon();
            let mut worked = false;
            if rewrite_requested > rewritten {
                worked = true;
                if self.clone().rewrite_pass().await {
                    rewritten = rewrite_requested;
                    self.status_mut().rewrite.done_index = rewritten;
                }
            }
            if horizon != collected || compact_requested > compacted {
                worked = true;
                if self.clone().gc_pass(horizon).await {
                    collected = horizon;
                    if compact_requested > compacted && self.clone().compact_store().await {
                        compacted = compact_requested;
                        self.status_mut().compact_done_index = compacted;
                        self.compacted.send_replace(compacted);
                    }
                }
            }
            if !worked {
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(IDLE) => {}
                }
            } else {
                // Between two passes, give way (and stop when asked).
                tokio::select! {
                    biased;
                    () = &mut stop => return,
                    () = tokio::task::yield_now() => {}
                }
            }
        }
    }

    /// On the leader: proposes its candidate safe point when it moves the horizon
    /// past more than the previous proposal's own entry, or a retention window of
    /// time has passed (values expire without writes).
    async fn maybe_propose(&self, now: u64) {
        let Some(candidate) = self.candidate(now) else {
            return;
        };
        let current = self.reader.horizon();
        let window = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let stale_time = candidate.at_ms >= current.at_ms.saturating_add(window.max(60_000));
        if candidate.index <= current.index.saturating_add(1) && !stale_time {
            return;
        }
        let request = Maintenance {
            horizon: Some((candidate.index, candidate.at_ms)),
            compact: false,
            rewrite: false,
        };
        if let Err(e) = self.backend.propose(request).await {
            tracing::debug!("propose gc safe point: {e}");
        }
    }

    /// One whole GC pass below `horizon`, step by step on the blocking pool.
    /// Returns whether it finished.
    async fn gc_pass(self: Arc<Self>, horizon: Horizon) -> bool {
        let this = Arc::clone(&self);
        let result = tokio::task::spawn_blocking(move || {
            let mut cursor = Cursor::new();
            let mut live = LiveStats::default();
            let (mut removed, mut bytes) = (0u64, 0u64);
            while !cursor.is_done() {
                let stats = this.store.gc_step(
                    &mut cursor,
                    horizon,
                    STEP_BUDGET,
                    now_ms(),
                    Some(&mut live),
                )?;
                if stats.restarted {
                    live = LiveStats::default();
                }
                removed += stats.changed;
                bytes += stats.bytes;
                this.metrics.gc_removed.inc_by(stats.changed);
                this.metrics.gc_bytes.inc_by(stats.bytes);
            }
            Ok::<_, sealkv_store::StoreError>((live, removed, bytes))
        })
        .await;
        match result {
            Ok(Ok((live, removed, bytes))) => {
                self.metrics.gc_passes.inc();
                self.metrics.gc_horizon.set(gauge_value(horizon.index));
                self.metrics.live_keys.set(gauge_value(live.keys));
                self.metrics.live_bytes.set(gauge_value(live.bytes));
                self.metrics.versions.set(gauge_value(live.versions));
                let sst = self.store.sst_bytes().unwrap_or(0);
                self.metrics.sst_bytes.set(gauge_value(sst));
                let mut s = self.status_mut();
                s.gc_passes += 1;
                s.versions_removed += removed;
                s.bytes_removed += bytes;
                s.live_keys = live.keys;
                s.live_bytes = live.bytes;
                s.versions = live.versions;
                s.sst_bytes = sst;
                s.last_error = None;
                if removed > 0 {
                    tracing::info!(
                        horizon = horizon.index,
                        removed,
                        bytes,
                        "collected old versions"
                    );
                }
                true
            }
            Ok(Err(e)) => self.failed("gc pass", &e).await,
            Err(e) => self.failed("gc task", &e).await,
        }
    }

    /// Records a failed GC pass or compaction in the log and status, and waits a
    /// moment before the worker tries again. Returns `false` (not finished).
    async fn failed(&self, what: &str, error: &(dyn std::fmt::Display + Sync)) -> bool {
        tracing::error!("{what} failed: {error}");
        self.status_mut().last_error = Some(format!("{what}: {error}"));
        tokio::time::sleep(SAMPLE_EVERY).await;
        false
    }

    /// Flushes and compacts every column family. Returns whether it succeeded.
    async fn compact_store(self: Arc<Self>) -> bool {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.compact_all()).await {
            Ok(Ok(sst)) => {
                self.metrics.compactions.inc();
                self.metrics.sst_bytes.set(gauge_value(sst));
                self.status_mut().sst_bytes = sst;
                tracing::info!(sst_bytes = sst, "compacted the store");
                true
            }
            Ok(Err(e)) => self.failed("compaction", &e).await,
            Err(e) => self.failed("compaction task", &e).await,
        }
    }

    /// One whole rewrite pass, step by step. Returns whether it finished; a step
    /// that cannot seal yet (this load's epoch not registered) ends the attempt,
    /// and the worker tries again.
    async fn rewrite_pass(self: Arc<Self>) -> bool {
        {
            let mut s = self.status_mut();
            s.rewrite.running = true;
            s.rewrite.scanned = 0;
            s.rewrite.rewritten = 0;
            s.rewrite.unreadable = 0;
        }
        let this = Arc::clone(&self);
        let result = tokio::task::spawn_blocking(move || {
            let mut cursor = Cursor::new();
            while !cursor.is_done() {
                let mut unreadable = 0u64;
                let reader = &this.reader;
                let mut decide =
                    |key: &[u8], version: u64, value| match reader.reseal(key, version, value) {
                        Ok(decision) => Ok(decision),
                        Err(ResealError::Read(e)) => {
                            tracing::warn!(
                                version,
                                "rewrite left a version alone: {}",
                                sealkv_kv::error_chain(&e)
                            );
                            unreadable += 1;
                            Ok(Rewrite::Keep)
                        }
                        Err(e) => Err(e),
                    };
                let stats = this
                    .store
                    .rewrite_step(&mut cursor, STEP_BUDGET, &mut decide)?;
                this.metrics.rewritten.inc_by(stats.changed);
                this.metrics.unreadable.inc_by(unreadable);
                let mut s = this.status_mut();
                if stats.restarted {
                    s.rewrite.scanned = 0;
                }
                s.rewrite.scanned += stats.scanned;
                s.rewrite.rewritten += stats.changed;
                s.rewrite.unreadable += unreadable;
            }
            Ok::<_, ResealError>(())
        })
        .await;
        let finished = match result {
            Ok(Ok(())) => {
                let s = self.status_mut();
                tracing::info!(
                    scanned = s.rewrite.scanned,
                    rewritten = s.rewrite.rewritten,
                    unreadable = s.rewrite.unreadable,
                    "rewrite pass finished"
                );
                true
            }
            Ok(Err(e)) => {
                let text = sealkv_kv::error_chain(&e);
                tracing::warn!("rewrite paused: {text}");
                self.status_mut().rewrite.last_error = Some(text);
                tokio::time::sleep(SAMPLE_EVERY).await;
                false
            }
            Err(e) => {
                tracing::error!("rewrite task failed: {e}");
                false
            }
        };
        let mut s = self.status_mut();
        s.rewrite.running = false;
        if finished {
            s.rewrite.last_error = None;
        }
        finished
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The store routes: `GET /v1/store/status`, `POST /v1/store/compact`,
/// `POST /v1/encryption/rewrite`.
pub fn routes<S>(
    maintainer: Arc<Maintainer>,
    rewrite_allowed: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Router<S> {
    Router::new()
        .route("/v1/store/status", get(store_status))
        .route("/v1/store/compact", post(store_compact))
        .route("/v1/encryption/rewrite", post(encryption_rewrite))
        .with_state(Routes {
            maintainer,
            rewrite_allowed,
        })
}

#[derive(Clone)]
struct Routes {
    maintainer: Arc<Maintainer>,
    rewrite_allowed: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

async fn store_status(State(routes): State<Routes>) -> Json<StoreStatus> {
    Json(routes.maintainer.status())
}

fn failure(e: &MaintenanceError) -> Response {
    let code = match e {
        MaintenanceError::Propose(ApiError::Timeout) | MaintenanceError::StillRunning(_) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        MaintenanceError::Propose(_) | MaintenanceError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        MaintenanceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match e {
        MaintenanceError::Propose(api) => api.redis_error(),
        other => other.to_string(),
    };
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn store_compact(State(routes): State<Routes>) -> Response {
    match routes.maintainer.compact().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => failure(&e),
    }
}

async fn encryption_rewrite(State(routes): State<Routes>) -> Response {
    if let Err(reason) = (routes.rewrite_allowed)() {
        return (
            StatusCode::PRECONDITION_FAILED,
            Json(serde_json::json!({ "error": reason })),
        )
            .into_response();
    }
    match routes.maintainer.rewrite().await {
        Ok(index) => Json(serde_json::json!({ "requested_index": index })).into_response(),
        Err(e) => failure(&e),
    }
}
