//! The admin HTTP endpoint (`--admin-addr`): status, health, Prometheus metrics, and
//! the membership and log operations.
//!
//! | method | path                         | what |
//! |--------|------------------------------|------|
//! | GET    | `/health`                    | 200 when the node serves, 503 with the reason when halted or stopped |
//! | GET    | `/status`                    | JSON [`Status`] |
//! | GET    | `/metrics`                   | Prometheus text |
//! | POST   | `/v1/cluster/nodes`          | add a voter or learner: `{"id":4,"raft_addr":"h:p","learner":false}` |
//! | DELETE | `/v1/cluster/nodes/{id}`     | remove a node |
//! | POST   | `/v1/raft/compact`           | compact the Raft log up to the applied index now |
//! | GET    | `/v1/encryption/status`      | JSON [`EncryptionStatus`] (no key bytes) |
//! | POST   | `/v1/encryption/bootstrap`   | propose the DEK bootstrap, registering every member |
//! | POST   | `/v1/encryption/rotate-dek`  | `{"purpose":"storage"}` or `"raft"`: propose a new active key |
//! | POST   | `/v1/encryption/register-writer` | propose this node's pending registrations |
//! | POST   | `/v1/encryption/enable-envelope` | `{"envelope":"storage"}` or `"raft"` |
//! | POST   | `/v1/encryption/retire-dek`  | `{"key_id":N}`: retire a storage key no member's store needs |
//! | GET    | `/v1/encryption/usage`       | this node's stored versions per key id, scanned now (no forwarding) |
//! | GET    | `/v1/encryption/writers/{id}` | on the leader, after a ReadIndex barrier: `{"rows": [{"dek_id", "last_seen_local_epoch"}]}` of node `id` |
//! | GET    | `/v1/store/status`           | JSON `maintenance::StoreStatus` (GC, live data, compaction and rewrite progress) |
//! | POST   | `/v1/store/compact`          | GC and RocksDB compaction on every node; answers once this node finished |
//! | POST   | `/v1/encryption/rewrite`     | reseal every version not under the active storage key, on every node |
//!
//! The last three are `crate::maintenance::routes`, merged in by startup.
//!
//! A test build with the `failpoints` feature adds `/v1/failpoints` and
//! `/v1/test/propose-raw` (see `crate::failpoints`) and a `failpoints` field in
//! `/status`; a release build has neither.
//!
//! The mutating encryption routes answer 412 Precondition Failed unless the node
//! runs with encryption enabled and a KEK loaded. They run on the leader only, one
//! at a time, after a Raft ReadIndex barrier: a follower forwards the request to the
//! leader's admin endpoint and answers with the leader's answer (so does `POST
//! /v1/cluster/nodes` on an encrypted node, whose admission check registers the new
//! node). A refusal (keys already bootstrapped, a registration below the writer
//! registry's record) is 409 with its reason; nothing was proposed, or the applier
//! refused the entry the same way on every replica. `register-writer` takes an
//! optional body `{"registrations": [{"dek_id", "full_node_id", "local_epoch"}]}`;
//! without one it registers the receiving node's pending epochs.
//!
//! Membership changes go through Raft: on a follower, raft-rs forwards the proposal to
//! the leader, and the answer comes once this node has applied the change. Errors are
//! JSON `{"error": "..."}` with a status that says what to do: 503 no leader or
//! halted (retry elsewhere or later), 504 timed out, 400 refused.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use raft::prelude::{ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

use sealkv_encryption::applier::{Applied, EnvelopeSwitch, RegistrationOutcome};
use sealkv_fsmwire::{Purpose, RegistrationPayload};
use sealkv_kv::Outcome;

use crate::admin_client::FORWARDED_BY;
use crate::consensus::{ProposeError, RaftHandle, RaftStatus, single_change};
use crate::encryption::{Control, ControlError, registrations_json, usage_json};
use crate::metrics::Metrics;

/// Where the node listens, for status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Addresses {
    /// Raft peer address.
    pub raft_addr: String,
    /// Redis protocol address.
    pub redis_addr: String,
    /// Admin HTTP address.
    pub admin_addr: String,
}

/// The JSON of `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Raft and state-machine state (id, role, leader, term, indexes, halted).
    #[serde(flatten)]
    pub raft: RaftStatus,
    /// Where the node listens.
    #[serde(flatten)]
    pub addresses: Addresses,
    /// The binary's version.
    pub version: &'static str,
    /// The armed fail points, `name=actions`. Present only in a test build with
    /// the `failpoints` feature, so a test can tell it runs a binary that has them.
    #[cfg(feature = "failpoints")]
    pub failpoints: Vec<String>,
}

/// Body of `POST /v1/cluster/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddNode {
    /// The new node's id.
    pub id: u64,
    /// The new node's Raft address.
    pub raft_addr: String,
    /// Add as a learner (receives the log, does not vote).
    #[serde(default)]
    pub learner: bool,
}

/// The admin endpoint's shared state.
#[derive(Clone)]
pub struct AdminState {
    /// The Raft driver.
    pub raft: RaftHandle,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Where the node listens.
    pub addresses: Addresses,
    /// The encryption control plane, when encryption is enabled with a KEK.
    pub encryption: Option<Control>,
}

/// One key of [`EncryptionStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// The key id.
    pub key_id: u32,
    /// `storage` or `raft`.
    pub purpose: &'static str,
    /// Whether it is its purpose's active key.
    pub active: bool,
    /// This node's local epoch under it.
    pub local_epoch: u16,
    /// Whether this node is registered at that epoch (the key seals).
    pub registered: bool,
    /// Envelopes this process load sealed under it.
    pub encryptions: u64,
}

/// One writer-registry row of [`EncryptionStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct WriterRow {
    /// The DEK.
    pub dek_id: u32,
    /// The low 16 bits of the node id.
    pub node_id16: u16,
    /// The node's full id.
    pub full_node_id: u64,
    /// First local epoch registered.
    pub first_seen_local_epoch: u16,
    /// Last local epoch registered.
    pub last_seen_local_epoch: u16,
}

/// The JSON of `GET /v1/encryption/status`. Never carries key bytes or the KEK.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EncryptionStatus {
    /// Whether encryption is enabled on this node.
    pub enabled: bool,
    /// Where the KEK comes from (`file`, `env`), never its contents.
    pub kek_source: Option<&'static str>,
    /// Whether keys are active.
    pub bootstrapped: bool,
    /// The active storage key id.
    pub active_storage_key: Option<u32>,
    /// The active raft key id.
    pub active_raft_key: Option<u32>,
    /// Every loaded key.
    pub keys: Vec<KeyInfo>,
    /// The Raft index the key sidecar reflects.
    pub sidecar_applied_index: u64,
    /// Whether user values are sealed in storage envelopes.
    pub storage_envelope: bool,
    /// The Raft index after which KV entries are wrapped (0: not on).
    pub raft_envelope_cutover_index: u64,
    /// The writer registry.
    pub registry: Vec<WriterRow>,
    /// Key ids on record in the writer registry that are no longer loaded:
    /// retired keys (and the id of a rotation that was refused after its members
    /// were registered). No rotation takes one of them again.
    pub retired_key_ids: Vec<u32>,
    /// This node's stored versions per key id (`clear` for cleartext values),
    /// scanned for this request ([`sealkv_kv::versions_by_key`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_by_key: Option<serde_json::Value>,
    /// The applied index the scan of `versions_by_key` saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_applied_index: Option<u64>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/v1/raft/compact", post(compact))
        .route("/v1/encryption/status", get(encryption_status))
        .route("/v1/encryption/bootstrap", post(encryption_bootstrap))
        .route("/v1/encryption/rotate-dek", post(encryption_rotate))
        .route("/v1/encryption/register-writer", post(encryption_register))
        .route("/v1/encryption/enable-envelope", post(encryption_enable))
        .route("/v1/encryption/retire-dek", post(encryption_retire))
        .route("/v1/encryption/usage", get(encryption_usage))
        .route("/v1/encryption/writers/{id}", get(encryption_writers));
    #[cfg(feature = "failpoints")]
    let router = crate::failpoints::routes(router);
    router.with_state(state)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub(crate) fn propose_error(e: &ProposeError) -> Response {
    let code = match e {
        ProposeError::NoLeader
        | ProposeError::Halted(_)
        | ProposeError::Busy
        | ProposeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        ProposeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ProposeError::Dropped => StatusCode::CONFLICT,
        ProposeError::Rejected(_) => StatusCode::BAD_REQUEST,
        ProposeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ProposeError::Refused { retry: true, .. } => StatusCode::SERVICE_UNAVAILABLE,
        ProposeError::Refused { retry: false, .. } => StatusCode::BAD_REQUEST,
    };
    error(code, e.to_string())
}

async fn health(State(state): State<AdminState>) -> Response {
    let status = state.raft.status();
    if let Some(fatal) = status.fatal {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft driver stopped: {fatal}"),
        );
    }
    if let Some(halt) = status.halted {
        return error(StatusCode::SERVICE_UNAVAILABLE, halt.to_string());
    }
    Json(serde_json::json!({ "ok": true })).into_response()
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(Status {
        raft: state.raft.status(),
        addresses: state.addresses.clone(),
        version: env!("CARGO_PKG_VERSION"),
        #[cfg(feature = "failpoints")]
        failpoints: crate::failpoints::armed(),
    })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    if let Some(control) = &state.encryption {
        state.metrics.observe_keys(&control.keyring.status());
        // The usage gauges come from a scan of the whole store: at most one per
        // `USAGE_REFRESH`, in the background; a scrape serves the last counts.
        if state.metrics.usage_refresh_due() {
            let (control, metrics) = (control.clone(), Arc::clone(&state.metrics));
            tokio::spawn(async move {
                match control.usage().await {
                    Ok(usage) => metrics.observe_usage(&usage),
                    Err(e) => tracing::warn!("key usage for metrics: {e}"),
                }
                metrics.usage_refresh_done();
            });
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn add_node(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<AddNode>,
) -> Response {
    if body.id == 0 {
        return error(StatusCode::BAD_REQUEST, "node id 0 is not valid");
    }
    if crate::consensus::PeerBook::parse(&format!("{}={}", body.id, body.raft_addr)).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("raft_addr {:?} is not host:port", body.raft_addr),
        );
    }
    if let Some(control) = &state.encryption {
        let json = serde_json::to_value(&body).unwrap_or_default();
        if let Some(answer) = forwarded(control, &headers, "/v1/cluster/nodes", &json).await {
            return answer;
        }
        let status = state.raft.status();
        // A learner promoted to voter is already admitted and registered.
        let member = status.voters.contains(&body.id) || status.learners.contains(&body.id);
        if !member && let Err(refusal) = control.admit(body.id).await {
            return match refusal {
                crate::encryption::AdmitError::Register(e) => control_error(&e),
                other => error(StatusCode::CONFLICT, crate::error_chain(&other)),
            };
        }
    }
    let kind = if body.learner {
        ConfChangeType::AddLearnerNode
    } else {
        ConfChangeType::AddNode
    };
    change_membership(&state, single_change(kind, body.id, Some(&body.raft_addr))).await
}

async fn remove_node(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    change_membership(&state, single_change(ConfChangeType::RemoveNode, id, None)).await
}

/// Proposes `change` and answers with the configuration it produced.
async fn change_membership(state: &AdminState, change: ConfChangeV2) -> Response {
    match state.raft.change_membership(change).await {
        Ok(cs) => Json(serde_json::json!({
            "voters": cs.get_voters(),
            "learners": cs.get_learners(),
        }))
        .into_response(),
        Err(e) => propose_error(&e),
    }
}

async fn compact(State(state): State<AdminState>) -> Response {
    match state.raft.compact().await {
        Ok(first_index) => Json(serde_json::json!({ "first_index": first_index })).into_response(),
        Err(e) => propose_error(&e),
    }
}

/// The encryption state of a node; `enabled: false` and nothing else without it.
///
/// # Errors
/// When the writer registry cannot be read.
pub fn encryption_state(control: Option<&Control>) -> Result<EncryptionStatus, String> {
    let Some(control) = control else {
        return Ok(EncryptionStatus::default());
    };
    let status = control.keyring.status();
    let loaded: Vec<u32> = status.keys.iter().map(|k| k.key_id).collect();
    let registry = control
        .registry
        .list_writers()
        .map_err(|e| format!("read the writer registry: {}", crate::error_chain(&e)))?;
    let mut retired_key_ids: Vec<u32> = registry
        .iter()
        .map(|(key, _)| key.dek_id)
        .filter(|id| !loaded.contains(id))
        .collect();
    retired_key_ids.dedup();
    Ok(EncryptionStatus {
        retired_key_ids,
        versions_by_key: None,
        versions_applied_index: None,
        enabled: true,
        kek_source: Some(control.kek.kind()),
        bootstrapped: status.bootstrapped,
        active_storage_key: status.active_storage,
        active_raft_key: status.active_raft,
        keys: status
            .keys
            .iter()
            .map(|k| KeyInfo {
                key_id: k.key_id,
                purpose: k.purpose.as_str(),
                active: k.active,
                local_epoch: k.local_epoch,
                registered: k.registered,
                encryptions: k.encryptions,
            })
            .collect(),
        sidecar_applied_index: status.sidecar_applied_index,
        storage_envelope: status.storage_envelope_active,
        raft_envelope_cutover_index: status.raft_envelope_cutover_index,
        registry: registry
            .into_iter()
            .map(|(key, row)| WriterRow {
                dek_id: key.dek_id,
                node_id16: key.node_id16,
                full_node_id: row.full_node_id,
                first_seen_local_epoch: row.first_seen_local_epoch,
                last_seen_local_epoch: row.last_seen_local_epoch,
            })
            .collect(),
    })
}

async fn encryption_status(State(state): State<AdminState>) -> Response {
    let mut status = match encryption_state(state.encryption.as_ref()) {
        Ok(status) => status,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Some(control) = &state.encryption {
        match control.usage().await {
            Ok(usage) => {
                state.metrics.observe_usage(&usage);
                let json = usage_json(control.keyring.node_id(), &usage);
                status.versions_by_key = Some(json["versions_by_key"].clone());
                status.versions_applied_index = Some(usage.applied_index);
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    Json(status).into_response()
}

/// This node's key usage, scanned now: answered by every node for itself (the
/// leader asks each member before it retires a key).
async fn encryption_usage(State(state): State<AdminState>) -> Result<Response, Refusal> {
    let control = control(&state)?;
    Ok(match control.usage().await {
        Ok(usage) => {
            state.metrics.observe_usage(&usage);
            Json(usage_json(control.keyring.node_id(), &usage)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    })
}

/// Body of `POST /v1/encryption/retire-dek`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetireDek {
    /// The storage key to retire.
    pub key_id: u32,
}

async fn encryption_retire(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<RetireDek>,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    let json = serde_json::to_value(&body).unwrap_or_default();
    if let Some(answer) = forwarded(control, &headers, "/v1/encryption/retire-dek", &json).await {
        return Ok(answer);
    }
    Ok(applied(control.retire(body.key_id).await))
}

/// Body of `POST /v1/encryption/rotate-dek`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateDek {
    /// `storage` or `raft`.
    pub purpose: String,
}

/// Body of `POST /v1/encryption/enable-envelope`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnableEnvelope {
    /// `storage` or `raft`.
    pub envelope: String,
}

/// A refused admin request: the status and the message of its JSON error body.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn control(state: &AdminState) -> Result<&Control, Refusal> {
    state.encryption.as_ref().ok_or_else(|| {
        Refusal(
            StatusCode::PRECONDITION_FAILED,
            ControlError::NotEnabled.to_string(),
        )
    })
}

/// Runs the request on the leader: `None` when this node leads (the handler goes
/// on), else the leader's answer to the same request, forwarded.
async fn forwarded(
    control: &Control,
    headers: &HeaderMap,
    path: &str,
    body: &serde_json::Value,
) -> Option<Response> {
    let admin = match control.leader_admin() {
        Ok(None) => return None,
        Ok(Some(admin)) => admin,
        Err(e) => return Some(control_error(&e)),
    };
    if headers.contains_key(FORWARDED_BY) {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is not the leader (leadership moved while the request was forwarded); retry",
        ));
    }
    let from = control.keyring.node_id();
    Some(
        match crate::admin_client::forward(&admin, path, Some(body), from).await {
            Ok((code, json)) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                Json(json),
            )
                .into_response(),
            Err(e) => error(StatusCode::BAD_GATEWAY, e),
        },
    )
}

fn control_error(e: &ControlError) -> Response {
    match e {
        ControlError::Propose(p) => propose_error(p),
        ControlError::NotEnabled => error(StatusCode::PRECONDITION_FAILED, e.to_string()),
        ControlError::NotLeader => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ControlError::Refused(_) => error(StatusCode::CONFLICT, e.to_string()),
        ControlError::Forward(_) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        ControlError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ControlError::Key(_) | ControlError::Encode(_) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(e))
        }
    }
}

/// The answer to an encryption proposal: 200 with what it did, 409 when the
/// applier refused it, or the proposal's error.
fn applied(result: Result<Outcome, ControlError>) -> Response {
    match result {
        Ok(Outcome::Encryption(Applied::Rejected { reason })) => {
            error(StatusCode::CONFLICT, format!("refused: {reason}"))
        }
        Ok(Outcome::Encryption(done)) => Json(describe(&done)).into_response(),
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected outcome {other:?}"),
        ),
        Err(e) => control_error(&e),
    }
}

/// What an applied encryption entry did, as JSON.
fn describe(applied: &Applied) -> serde_json::Value {
    use serde_json::json;
    match applied {
        Applied::Registration(outcome) => match outcome {
            RegistrationOutcome::Inserted => {
                json!({ "applied": "registration", "row": "inserted" })
            }
            RegistrationOutcome::Advanced { previous_last } => json!({
                "applied": "registration",
                "row": "advanced",
                "previous_last_epoch": previous_last,
            }),
            RegistrationOutcome::Replayed => {
                json!({ "applied": "registration", "row": "unchanged" })
            }
        },
        Applied::Bootstrapped {
            storage_key_id,
            raft_key_id,
        } => json!({
            "applied": "bootstrap",
            "storage_key_id": storage_key_id,
            "raft_key_id": raft_key_id,
        }),
        Applied::Rotated { purpose, key_id } => json!({
            "applied": "rotation",
            "purpose": purpose.as_str(),
            "key_id": key_id,
        }),
        Applied::EnvelopeEnabled {
            switch,
            raft_cutover_index,
        } => json!({
            "applied": "envelope",
            "envelope": switch.to_string(),
            "raft_cutover_index": raft_cutover_index,
        }),
        Applied::Retired { key_id } => json!({ "applied": "retirement", "key_id": key_id }),
        Applied::Replayed { opcode } => json!({ "applied": "replay", "opcode": opcode }),
        Applied::Rejected { reason } => json!({ "refused": reason.to_string() }),
        other => json!({ "applied": format!("{other:?}") }),
    }
}

fn purpose(text: &str) -> Result<Purpose, Refusal> {
    match text {
        "storage" => Ok(Purpose::Storage),
        "raft" => Ok(Purpose::Raft),
        other => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("{other:?} is neither storage nor raft"),
        )),
    }
}

async fn encryption_bootstrap(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    let path = "/v1/encryption/bootstrap";
    if let Some(answer) = forwarded(control, &headers, path, &serde_json::json!({})).await {
        return Ok(answer);
    }
    Ok(applied(control.bootstrap().await))
}

async fn encryption_rotate(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<RotateDek>,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    let purpose = purpose(&body.purpose)?;
    let json = serde_json::to_value(&body).unwrap_or_default();
    if let Some(answer) = forwarded(control, &headers, "/v1/encryption/rotate-dek", &json).await {
        return Ok(answer);
    }
    Ok(applied(control.rotate(purpose).await))
}

/// Body of `POST /v1/encryption/register-writer` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegisterWriter {
    /// The registrations to propose; empty means the receiving node's own pending
    /// ones.
    #[serde(default)]
    pub registrations: Vec<RegistrationRow>,
}

/// One registration of [`RegisterWriter`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RegistrationRow {
    /// The key.
    pub dek_id: u32,
    /// The node's full id.
    pub full_node_id: u64,
    /// The epoch.
    pub local_epoch: u16,
}

async fn encryption_register(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    let body: RegisterWriter = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterWriter::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("body is not a register-writer request: {e}"),
            )
        })?
    };
    let mut regs: Vec<RegistrationPayload> = body
        .registrations
        .iter()
        .map(|r| RegistrationPayload {
            dek_id: r.dek_id,
            full_node_id: r.full_node_id,
            local_epoch: r.local_epoch,
        })
        .collect();
    if regs.is_empty() {
        regs = control.own_registrations(&[]);
    }
    let json = registrations_json(&regs);
    let path = "/v1/encryption/register-writer";
    if let Some(answer) = forwarded(control, &headers, path, &json).await {
        return Ok(answer);
    }
    Ok(match control.register(&regs).await {
        Ok(n) => Json(serde_json::json!({ "registered": n })).into_response(),
        Err(e) => control_error(&e),
    })
}

async fn encryption_enable(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<EnableEnvelope>,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    let switch = match purpose(&body.envelope)? {
        Purpose::Storage => EnvelopeSwitch::Storage,
        Purpose::Raft => EnvelopeSwitch::Raft,
    };
    let json = serde_json::to_value(&body).unwrap_or_default();
    let path = "/v1/encryption/enable-envelope";
    if let Some(answer) = forwarded(control, &headers, path, &json).await {
        return Ok(answer);
    }
    Ok(applied(control.enable(switch).await))
}

/// The writer-registry rows of node `id` as the leader has them after a ReadIndex
/// barrier: what a starting node checks its epochs against before it applies
/// anything. Answered by the leader only (503 elsewhere, to retry at the leader).
async fn encryption_writers(
    State(state): State<AdminState>,
    Path(id): Path<u64>,
) -> Result<Response, Refusal> {
    let control = control(&state)?;
    Ok(match control.record_of(id).await {
        Ok(rows) => {
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|&(dek_id, last)| {
                    serde_json::json!({ "dek_id": dek_id, "last_seen_local_epoch": last })
                })
                .collect();
            Json(serde_json::json!({ "rows": rows })).into_response()
        }
        Err(e) => control_error(&e),
    })
}
