//! The CLI's client of the admin endpoint (`sealkv status`, `sealkv cluster ...`),
//! also used by a node to forward an operation to the leader's endpoint.
//!
//! Plain HTTP, or HTTPS with a client certificate once [`use_tls`] was called: the
//! CLI with `--certs-dir` (a `client-NAME` certificate), a node started with
//! `--certs-dir` (its node certificate). One process speaks as one identity.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The TLS every admin request of this process uses; unset: plain HTTP.
static TLS: OnceLock<ureq::tls::TlsConfig> = OnceLock::new();

/// Makes every later admin request of this process HTTPS, verified against the
/// CA in `tls` and with its client certificate. The first call wins; call it once,
/// before any request.
pub fn use_tls(tls: ureq::tls::TlsConfig) {
    let _ = TLS.set(tls);
}

fn agent() -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)));
    if let Some(tls) = TLS.get() {
        config = config.tls_config(tls.clone());
    }
    config.build().into()
}

fn url(admin_addr: &str, path: &str) -> String {
    let scheme = if TLS.get().is_some() { "https" } else { "http" };
    format!("{scheme}://{admin_addr}{path}")
}

fn answer(
    admin_addr: &str,
    what: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<Value> {
    let hint = if TLS.get().is_none() {
        " (a node started with --certs-dir speaks HTTPS: give --certs-dir too)"
    } else {
        ""
    };
    let mut response = response.with_context(|| {
        format!("{what}: reach admin endpoint {admin_addr} (--admin-addr){hint}")
    })?;
    let code = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{what}: read the answer of {admin_addr}"))?;
    let json: Value = serde_json::from_str(&body)
        .with_context(|| format!("{what}: {admin_addr} answered {code} with non-JSON"))?;
    if !code.is_success() {
        let message = json
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        bail!("{what}: {admin_addr} answered {code}: {message}");
    }
    Ok(json)
}

/// GETs a JSON document.
///
/// # Errors
/// When the endpoint cannot be reached or answers with an error.
pub fn get_json(admin_addr: &str, path: &str) -> anyhow::Result<Value> {
    answer(
        admin_addr,
        "get status",
        agent().get(url(admin_addr, path)).call(),
    )
}

/// POSTs `body` (JSON) to `path`; `what` names the operation in errors.
///
/// # Errors
/// When the endpoint cannot be reached or answers with an error.
pub fn post_json(admin_addr: &str, path: &str, what: &str, body: &Value) -> anyhow::Result<Value> {
    answer(
        admin_addr,
        what,
        agent().post(url(admin_addr, path)).send_json(body),
    )
}

/// Adds a voter or learner.
///
/// # Errors
/// When the endpoint cannot be reached or refuses.
pub fn add_node(
    admin_addr: &str,
    id: u64,
    raft_addr: &str,
    learner: bool,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "id": id, "raft_addr": raft_addr, "learner": learner });
    let what = if learner { "add learner" } else { "add node" };
    let json = answer(
        admin_addr,
        what,
        agent()
            .post(url(admin_addr, "/v1/cluster/nodes"))
            .send_json(&body),
    )?;
    Ok(format!("{what} {id}: {}", membership(&json)))
}

/// Removes a node.
///
/// # Errors
/// When the endpoint cannot be reached or refuses.
pub fn remove_node(admin_addr: &str, id: u64) -> anyhow::Result<String> {
    let json = answer(
        admin_addr,
        "remove node",
        agent()
            .delete(url(admin_addr, &format!("/v1/cluster/nodes/{id}")))
            .call(),
    )?;
    Ok(format!("remove node {id}: {}", membership(&json)))
}

fn membership(json: &Value) -> String {
    format!("voters {} learners {}", json["voters"], json["learners"])
}

/// A few lines summarizing `GET /v1/encryption/status`.
pub fn summarize_encryption(status: &Value) -> String {
    if status["enabled"] != Value::Bool(true) {
        return "encryption disabled on this node".to_string();
    }
    let mut out = format!(
        "encryption enabled (KEK from {}), bootstrapped {}, storage envelope {}, raft envelope cutover {}, sidecar index {}\nactive keys: storage {} raft {}",
        status["kek_source"].as_str().unwrap_or("?"),
        status["bootstrapped"],
        status["storage_envelope"],
        status["raft_envelope_cutover_index"],
        status["sidecar_applied_index"],
        status["active_storage_key"],
        status["active_raft_key"],
    );
    for key in status["keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nkey {} {}{} epoch {} registered {} encryptions {}",
            key["key_id"],
            key["purpose"].as_str().unwrap_or("?"),
            if key["active"] == Value::Bool(true) {
                " (active)"
            } else {
                ""
            },
            key["local_epoch"],
            key["registered"],
            key["encryptions"],
        ));
    }
    if let Some(counts) = status["versions_by_key"].as_object() {
        let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!(
            "\nstored versions by key (at applied index {}): {}",
            status["versions_applied_index"],
            counts.join(", ")
        ));
    }
    if let Some(retired) = status["retired_key_ids"]
        .as_array()
        .filter(|r| !r.is_empty())
    {
        let ids: Vec<String> = retired.iter().map(Value::to_string).collect();
        out.push_str(&format!("\nretired key ids: {}", ids.join(", ")));
    }
    for row in status["registry"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nwriter dek {} node {} (node16 {}) epochs {}..{}",
            row["dek_id"],
            row["full_node_id"],
            row["node_id16"],
            row["first_seen_local_epoch"],
            row["last_seen_local_epoch"],
        ));
    }
    out
}

/// A one-line summary of `GET /status`.
pub fn summarize(status: &Value) -> String {
    let field = |k: &str| match &status[k] {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "node {} role {} leader {} term {} commit {} applied {} voters {} learners {} halted {}",
        field("id"),
        field("role"),
        field("leader_id"),
        field("term"),
        field("commit_index"),
        field("applied_index"),
        field("voters"),
        field("learners"),
        field("halted"),
    )
}

/// The header a node sets on a request it forwards to the leader; the leader never
/// forwards such a request again.
pub const FORWARDED_BY: &str = "x-sealkv-forwarded-by";

/// POSTs `body` (or GETs, without one) to `path` on another node's admin endpoint
/// on behalf of node `from`, from async code: the answer's status and JSON body,
/// whatever the status.
///
/// # Errors
/// A sentence when the endpoint cannot be reached or answers with non-JSON.
pub async fn forward(
    admin_addr: &str,
    path: &str,
    body: Option<&Value>,
    from: u64,
) -> Result<(u16, Value), String> {
    let url = url(admin_addr, path);
    let body = body.cloned();
    let admin = admin_addr.to_string();
    tokio::task::spawn_blocking(move || {
        let sent = match body {
            Some(body) => agent()
                .post(&url)
                .header(FORWARDED_BY, from.to_string())
                .send_json(&body),
            None => agent()
                .get(&url)
                .header(FORWARDED_BY, from.to_string())
                .call(),
        };
        let mut response =
            sent.map_err(|e| format!("reach the leader's admin endpoint {admin}: {e}"))?;
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("read the answer of {admin}: {e}"))?;
        let json = serde_json::from_str(&text)
            .map_err(|_| format!("{admin} answered {code} with non-JSON"))?;
        Ok((code, json))
    })
    .await
    .map_err(|e| format!("forward task: {e}"))?
}
