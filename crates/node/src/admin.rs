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
//!
//! Membership changes go through Raft: on a follower, raft-rs forwards the proposal to
//! the leader, and the answer comes once this node has applied the change. Errors are
//! JSON `{"error": "..."}` with a status that says what to do: 503 no leader or
//! halted (retry elsewhere or later), 504 timed out, 400 refused.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use raft::prelude::ConfChangeType;
use serde::{Deserialize, Serialize};

use crate::consensus::{ProposeError, RaftHandle, RaftStatus, single_change};
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
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/v1/raft/compact", post(compact))
        .with_state(state)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn propose_error(e: &ProposeError) -> Response {
    let code = match e {
        ProposeError::NoLeader
        | ProposeError::Halted(_)
        | ProposeError::Busy
        | ProposeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        ProposeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ProposeError::Dropped => StatusCode::CONFLICT,
        ProposeError::Rejected(_) => StatusCode::BAD_REQUEST,
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
        return error(StatusCode::SERVICE_UNAVAILABLE, halt);
    }
    Json(serde_json::json!({ "ok": true })).into_response()
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(Status {
        raft: state.raft.status(),
        addresses: state.addresses.clone(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn add_node(State(state): State<AdminState>, Json(body): Json<AddNode>) -> Response {
    if body.id == 0 {
        return error(StatusCode::BAD_REQUEST, "node id 0 is not valid");
    }
    if crate::consensus::PeerBook::parse(&format!("{}={}", body.id, body.raft_addr)).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("raft_addr {:?} is not host:port", body.raft_addr),
        );
    }
    let kind = if body.learner {
        ConfChangeType::AddLearnerNode
    } else {
        ConfChangeType::AddNode
    };
    let change = single_change(kind, body.id, Some(&body.raft_addr));
    match state.raft.change_membership(change).await {
        Ok(cs) => Json(serde_json::json!({
            "voters": cs.get_voters(),
            "learners": cs.get_learners(),
        }))
        .into_response(),
        Err(e) => propose_error(&e),
    }
}

async fn remove_node(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let change = single_change(ConfChangeType::RemoveNode, id, None);
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
