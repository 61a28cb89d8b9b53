//! Test-only fault injection (feature `failpoints`, never in a release build): the
//! fail points of every sealkv crate armed from the `FAILPOINTS` environment
//! variable at startup and from the admin endpoint at run time, and a route that
//! proposes raw entry bytes without admission.
//!
//! | method | path                        | what |
//! |--------|-----------------------------|------|
//! | GET    | `/v1/failpoints`            | `{"failpoints": ["name=actions", ...]}`, the armed ones |
//! | PUT    | `/v1/failpoints/{name}`     | arms `name` with the body, fail-rs actions (`panic`, `return`, `2*off->panic`, ...) |
//! | DELETE | `/v1/failpoints/{name}`     | disarms `name` |
//! | POST   | `/v1/test/propose-raw`      | `{"hex": "09ff"}`: proposes those entry bytes on this node, skipping admission; answers once applied |
//!
//! The fail points (DESIGN.md §10 lists them): `durable::before-rename`,
//! `durable::before-dir-fsync`, `kv::before-applied-index`, `raftlog::persist`,
//! `kv::install-snapshot`, `store::commit`, `store::install-snapshot-rows`, and
//! `transport::snapshot-chunk` (`sleep(ms)` slows a snapshot transfer). A `panic` in one of them on the Raft
//! driver thread stops the driver (`DriverError::Panicked`) and the process exits
//! non-zero, as after a crash at that point; nothing is written after the panic.
//!
//! A raw proposal must be sent to the leader: a follower forwards it to the leader,
//! whose admission drops it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;

use crate::admin::AdminState;

/// The environment variable read at startup: `name=actions` entries separated by
/// `;`, as fail-rs's `FailScenario` reads it.
pub const ENV: &str = "FAILPOINTS";

/// Arms every fail point `FAILPOINTS` names and returns them as `name=actions`.
/// Unlike `fail::FailScenario::setup`, a malformed entry is an error, not a panic.
///
/// # Errors
/// An entry without `=`, or actions fail-rs does not parse.
pub fn arm_from_env() -> anyhow::Result<Vec<String>> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(Vec::new());
    };
    let mut armed = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            anyhow::bail!("{ENV}: {entry:?} is not name=actions");
        };
        arm(name.trim(), actions.trim())
            .map_err(|e| anyhow::anyhow!("{ENV}: fail point {name}: {e}"))?;
        armed.push(format!("{}={}", name.trim(), actions.trim()));
    }
    Ok(armed)
}

/// Arms `name` with fail-rs `actions`.
///
/// # Errors
/// fail-rs's message when the actions do not parse.
pub fn arm(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

/// The armed fail points, `name=actions`, sorted.
pub fn armed() -> Vec<String> {
    let mut list: Vec<String> = fail::list()
        .into_iter()
        .map(|(name, actions)| format!("{name}={actions}"))
        .collect();
    list.sort();
    list
}

/// Adds the test-only routes to the admin router.
pub fn routes(router: axum::Router<AdminState>) -> axum::Router<AdminState> {
    router
        .route("/v1/failpoints", get(list))
        .route("/v1/failpoints/{name}", put(set).delete(remove))
        .route("/v1/test/propose-raw", post(propose_raw))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn list() -> Response {
    Json(serde_json::json!({ "failpoints": armed() })).into_response()
}

async fn set(Path(name): Path<String>, body: Bytes) -> Response {
    let Ok(actions) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "actions are not UTF-8");
    };
    match arm(&name, actions.trim()) {
        Ok(()) => {
            tracing::warn!(fail_point = %name, actions = actions.trim(), "armed a fail point");
            Json(serde_json::json!({ "failpoints": armed() })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("fail point {name}: {e}")),
    }
}

async fn remove(Path(name): Path<String>) -> Response {
    fail::remove(&name);
    tracing::info!(fail_point = %name, "disarmed a fail point");
    Json(serde_json::json!({ "failpoints": armed() })).into_response()
}

/// Body of `POST /v1/test/propose-raw`.
#[derive(Debug, Deserialize)]
struct RawProposal {
    /// The entry's bytes (opcode and payload), in hex.
    hex: String,
}

async fn propose_raw(State(state): State<AdminState>, Json(body): Json<RawProposal>) -> Response {
    let Some(data) = decode_hex(&body.hex) else {
        return error(
            StatusCode::BAD_REQUEST,
            "hex is not an even number of hex digits",
        );
    };
    tracing::warn!(
        bytes = data.len(),
        "proposing raw entry bytes without admission"
    );
    match state.raft.propose_raw(data).await {
        Ok(outcome) => {
            Json(serde_json::json!({ "outcome": format!("{outcome:?}") })).into_response()
        }
        Err(e) => crate::admin::propose_error(&e),
    }
}

/// Decodes lowercase or uppercase hex digits; `None` for anything else.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::decode_hex;

    #[test]
    fn hex_decodes_or_is_refused() {
        assert_eq!(decode_hex("09fF00"), Some(vec![0x09, 0xff, 0x00]));
        assert_eq!(decode_hex(""), Some(vec![]));
        for bad in ["0", "0g", "+1", "é0"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
    }
}
