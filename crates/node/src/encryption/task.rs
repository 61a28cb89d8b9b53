//! The encryption task: the check of this load's epochs against the cluster's
//! record, this node's registrations, and a new cluster's bootstrap and switches.

use super::*;

/// The encryption task (see the module docs): runs until `stop` resolves. Sets
/// `registered` once the startup registrations `to_register` are applied.
pub async fn maintain(
    control: Control,
    mut to_register: Vec<RegistrationPayload>,
    registered: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Before anything applies: this load's epochs against the cluster's record.
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut attempts = 0u64;
    while !control.apply_gate.load(Ordering::Acquire) {
        attempts += 1;
        if attempts.is_multiple_of(100) {
            tracing::warn!(
                attempts,
                "still waiting to check this node's key epochs at the leader's admin \
                 endpoint; nothing is applied until then (is the leader's --admin-addr \
                 reachable from here, and is encryption enabled on it?)"
            );
        }
        tokio::select! {
            () = &mut stop => return,
            _ = check.tick() => {}
        }
        match control.check_record().await {
            Ok(true) => {
                tracing::info!("checked this node's key epochs against the cluster's record");
                control.apply_gate.store(true, Ordering::Release);
            }
            Ok(false) => {}
            Err(line) => {
                tracing::error!("{line}");
                control.raft.stop_with(line);
                return;
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let status = control.raft.status();
        if status.halted.is_some() || status.leader_id.is_none() {
            continue;
        }
        let regs = control.own_registrations(&to_register);
        if !regs.is_empty() {
            match control.register_through_leader(&regs).await {
                Ok(n) => {
                    tracing::info!(registrations = n, "registered this node's key epochs");
                    to_register.clear();
                }
                Err(e) => {
                    tracing::warn!(
                        "register this node's key epochs: {}",
                        crate::error_chain(&e)
                    );
                    continue;
                }
            }
        }
        registered.store(true, Ordering::Release);
        if status.role != Role::Leader {
            continue;
        }
        // The steps run back to back, each once the one before has applied.
        while let Some(step) = next_step(&control) {
            let result = match step {
                Step::Bootstrap => control.bootstrap().await,
                Step::Storage => control.enable(EnvelopeSwitch::Storage).await,
                Step::Raft => control.enable(EnvelopeSwitch::Raft).await,
            };
            match result {
                Ok(outcome) => tracing::info!(?outcome, "encryption: {step:?}"),
                Err(e) => {
                    tracing::warn!("encryption: {step:?}: {e}");
                    break;
                }
            }
        }
    }
}

/// What the leader still has to propose to turn encryption on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Bootstrap the keys (only on a cluster without user data).
    Bootstrap,
    /// Turn the storage envelope on.
    Storage,
    /// Turn the Raft envelope on.
    Raft,
}

fn next_step(control: &Control) -> Option<Step> {
    let keyring = &control.keyring;
    if !keyring.is_bootstrapped() {
        (!(control.has_user_data)()).then_some(Step::Bootstrap)
    } else if !keyring.storage_envelope_active() {
        Some(Step::Storage)
    } else if keyring.raft_envelope_cutover_index() == 0 {
        Some(Step::Raft)
    } else {
        None
    }
}
