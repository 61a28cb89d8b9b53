//! The control-plane entries a node proposes: registration (`0x03`), bootstrap
//! (`0x04`), rotation and envelope switches (`0x05`).

use super::*;

fn entry(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(opcode);
    out.extend_from_slice(payload);
    out
}

/// A fresh DEK wrapped under the KEK.
fn new_wrapped_dek(kek: &dyn KekProvider) -> Result<Vec<u8>, ControlError> {
    let dek = Dek::generate().map_err(|e| ControlError::Key(Box::new(e)))?;
    let kek = kek.load().map_err(|e| ControlError::Key(Box::new(e)))?;
    let wrapped = wrap_dek(&kek, dek.as_bytes()).map_err(|e| ControlError::Key(Box::new(e)))?;
    Ok(wrapped.to_vec())
}

/// The `0x03` entry registering (key, node, epoch).
pub fn registration_entry(reg: &RegistrationPayload) -> Vec<u8> {
    entry(OP_REGISTRATION, &reg.encode())
}

/// A `0x04` bootstrap entry: storage key 1 and raft key 2, fresh and wrapped under
/// the KEK, and a registration at epoch 1 of both keys for every member.
///
/// # Errors
/// [`ControlError::Key`] or [`ControlError::Encode`].
pub fn bootstrap_entry(kek: &dyn KekProvider, members: &[u64]) -> Result<Vec<u8>, ControlError> {
    const STORAGE_KEY: u32 = 1;
    const RAFT_KEY: u32 = 2;
    let batch_registry = [STORAGE_KEY, RAFT_KEY]
        .into_iter()
        .flat_map(|dek_id| {
            members
                .iter()
                .map(move |&full_node_id| RegistrationPayload {
                    dek_id,
                    full_node_id,
                    local_epoch: 1,
                })
        })
        .collect();
    let payload = BootstrapPayload {
        storage_dek_id: STORAGE_KEY,
        wrapped_storage: new_wrapped_dek(kek)?,
        raft_dek_id: RAFT_KEY,
        wrapped_raft: new_wrapped_dek(kek)?,
        batch_registry,
    };
    Ok(entry(
        OP_BOOTSTRAP,
        &payload.encode().map_err(ControlError::Encode)?,
    ))
}

/// A `0x05` rotate-DEK entry proposed by the keyring's node: a fresh key `key_id`
/// of `purpose`, and the proposer registered for it at epoch 1.
///
/// # Errors
/// [`ControlError::Key`] or [`ControlError::Encode`].
pub fn rotation_entry(
    kek: &dyn KekProvider,
    keyring: &Keyring,
    key_id: u32,
    purpose: Purpose,
) -> Result<Vec<u8>, ControlError> {
    let payload = RotationPayload {
        subtag: RotationSubtag::RotateDek,
        dek_id: key_id,
        purpose,
        wrapped: new_wrapped_dek(kek)?,
        proposer_registration: RegistrationPayload {
            dek_id: key_id,
            full_node_id: keyring.node_id(),
            local_epoch: 1,
        },
    };
    Ok(entry(
        OP_ROTATION,
        &payload.encode().map_err(ControlError::Encode)?,
    ))
}

/// The `0x05` entry turning `switch` on.
pub fn switch_entry(switch: EnvelopeSwitch) -> Vec<u8> {
    entry(OP_ROTATION, &switch.encode())
}
