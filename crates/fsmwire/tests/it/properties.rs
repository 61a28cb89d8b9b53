//! Properties of the codecs over generated input: encode→decode is the identity, and
//! decoding arbitrary bytes (or any truncation of a valid payload) never panics.

use proptest::prelude::*;
use sealkv_fsmwire::{
    BootstrapPayload, MAX_BATCH_REGISTRY, Purpose, RegistrationPayload, RotationPayload,
    RotationSubtag,
};

fn registration() -> impl Strategy<Value = RegistrationPayload> {
    (any::<u32>(), any::<u64>(), any::<u16>()).prop_map(|(dek_id, full_node_id, local_epoch)| {
        RegistrationPayload {
            dek_id,
            full_node_id,
            local_epoch,
        }
    })
}

fn bootstrap() -> impl Strategy<Value = BootstrapPayload> {
    (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..80),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(registration(), 0..20),
    )
        .prop_map(|(s, ws, r, wr, rows)| BootstrapPayload {
            storage_dek_id: s,
            wrapped_storage: ws,
            raft_dek_id: r,
            wrapped_raft: wr,
            batch_registry: rows,
        })
}

fn rotation() -> impl Strategy<Value = RotationPayload> {
    (
        any::<u32>(),
        prop_oneof![Just(Purpose::Storage), Just(Purpose::Raft)],
        prop::collection::vec(any::<u8>(), 0..80),
        registration(),
    )
        .prop_map(|(dek_id, purpose, wrapped, proposer)| RotationPayload {
            subtag: RotationSubtag::RotateDek,
            dek_id,
            purpose,
            wrapped,
            proposer_registration: proposer,
        })
}

proptest! {
    #[test]
    fn registration_round_trips(p in registration()) {
        prop_assert_eq!(RegistrationPayload::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn bootstrap_round_trips(p in bootstrap()) {
        let bytes = p.encode().expect("encode");
        prop_assert_eq!(BootstrapPayload::decode(&bytes), Ok(p));
    }

    #[test]
    fn rotation_round_trips(p in rotation()) {
        let bytes = p.encode().expect("encode");
        prop_assert_eq!(RotationPayload::decode(&bytes), Ok(p));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = RegistrationPayload::decode(&bytes);
        let _ = BootstrapPayload::decode(&bytes);
        let _ = RotationPayload::decode(&bytes);
    }

    #[test]
    fn every_truncation_is_malformed(p in bootstrap(), r in rotation()) {
        let boot = p.encode().expect("encode");
        for cut in 0..boot.len() {
            let err = BootstrapPayload::decode(&boot[..cut]).expect_err("truncated bootstrap");
            prop_assert_eq!(err.class(), "malformed");
        }
        let rot = r.encode().expect("encode");
        for cut in 0..rot.len() {
            let err = RotationPayload::decode(&rot[..cut]).expect_err("truncated rotation");
            prop_assert_eq!(err.class(), "malformed");
        }
    }
}

/// A count at the cap with no rows behind it is an overrun, one above the cap is
/// refused by the cap; neither allocates room for the rows it claims.
#[test]
fn batch_cap_is_checked_before_allocation() {
    let mut at_cap = BootstrapPayload::default().encode().expect("encode");
    let n = at_cap.len();
    at_cap[n - 4..].copy_from_slice(&MAX_BATCH_REGISTRY.to_be_bytes());
    let err = BootstrapPayload::decode(&at_cap).expect_err("overrun");
    assert!(err.to_string().contains("batch rows"), "{err}");

    let mut over = at_cap.clone();
    over[n - 4..].copy_from_slice(&(MAX_BATCH_REGISTRY + 1).to_be_bytes());
    let err = BootstrapPayload::decode(&over).expect_err("over cap");
    assert!(err.to_string().contains("over the cap"), "{err}");

    let mut huge = at_cap;
    huge[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = BootstrapPayload::decode(&huge).expect_err("huge count");
    assert!(err.to_string().contains("over the cap"), "{err}");
}

/// The encoder refuses a batch the decoder would refuse.
#[test]
fn encoder_refuses_oversized_batch() {
    let p = BootstrapPayload {
        batch_registry: vec![RegistrationPayload::default(); MAX_BATCH_REGISTRY as usize + 1],
        ..BootstrapPayload::default()
    };
    assert_eq!(p.encode().expect_err("oversized").class(), "malformed");
}

/// The leading opcode byte is added by `to_entry` and is not part of the payload.
#[test]
fn entries_carry_their_opcode() {
    let reg = RegistrationPayload {
        dek_id: 1,
        full_node_id: 2,
        local_epoch: 3,
    };
    let entry = reg.to_entry();
    assert_eq!(entry[0], sealkv_fsmwire::OP_REGISTRATION);
    assert_eq!(RegistrationPayload::decode(&entry[1..]), Ok(reg));
    assert_eq!(
        BootstrapPayload::default().to_entry().expect("encode")[0],
        sealkv_fsmwire::OP_BOOTSTRAP
    );
    assert!((0x03..=0x07).all(sealkv_fsmwire::is_encryption_opcode));
    assert!(!sealkv_fsmwire::is_encryption_opcode(0x02));
    assert!(!sealkv_fsmwire::is_encryption_opcode(0x08));
}
