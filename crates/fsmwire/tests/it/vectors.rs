//! Every case of `fsmwire.json`: valid payloads round-trip byte for byte, invalid
//! payloads fail with the vector's error class.

use sealkv_fsmwire::{
    BootstrapPayload, Error, Purpose, RegistrationPayload, RotationPayload, RotationSubtag,
};
use sealkv_testkit::{Value, cases, hex, load, name, u64};

fn row(v: &Value) -> RegistrationPayload {
    RegistrationPayload {
        dek_id: u64(&v["dek_id"]).try_into().expect("dek_id fits u32"),
        full_node_id: u64(&v["full_node_id"]),
        local_epoch: u64(&v["local_epoch"]).try_into().expect("epoch fits u16"),
    }
}

fn u32_field(v: &Value) -> u32 {
    u64(v).try_into().expect("field fits u32")
}

fn bootstrap(v: &Value) -> BootstrapPayload {
    BootstrapPayload {
        storage_dek_id: u32_field(&v["storage_dek_id"]),
        wrapped_storage: hex(&v["wrapped_storage_hex"]),
        raft_dek_id: u32_field(&v["raft_dek_id"]),
        wrapped_raft: hex(&v["wrapped_raft_hex"]),
        batch_registry: v["batch_registry"]
            .as_array()
            .expect("batch_registry list")
            .iter()
            .map(row)
            .collect(),
    }
}

fn rotation(v: &Value) -> RotationPayload {
    let subtag = u64(&v["subtag"]) as u8;
    let purpose = u64(&v["purpose"]) as u8;
    RotationPayload {
        subtag: RotationSubtag::from_byte(subtag).expect("valid vectors use a known subtag"),
        dek_id: u32_field(&v["dek_id"]),
        purpose: Purpose::from_byte(purpose).expect("valid vectors use a known purpose"),
        wrapped: hex(&v["wrapped_hex"]),
        proposer_registration: row(&v["proposer_registration"]),
    }
}

/// Runs one payload kind's valid and invalid cases through its codec.
fn check<T: PartialEq + std::fmt::Debug>(
    kind: &str,
    from_input: impl Fn(&Value) -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, Error>,
) -> usize {
    let doc = load("fsmwire.json");
    let section = &doc[kind];
    let mut ran = 0;
    for case in cases(section, "valid") {
        let want = hex(&case["hex"]);
        let input = from_input(&case["input"]);
        assert_eq!(encode(&input), want, "{kind}/{}: encode", name(case));
        assert_eq!(decode(&want), Ok(input), "{kind}/{}: decode", name(case));
        ran += 1;
    }
    for case in cases(section, "invalid") {
        let got = decode(&hex(&case["hex"]));
        let class = case["error"].as_str().expect("error class");
        match got {
            Err(e) => assert_eq!(e.class(), class, "{kind}/{}: {e}", name(case)),
            Ok(v) => panic!("{kind}/{}: decoded {v:?}, want {class}", name(case)),
        }
        ran += 1;
    }
    ran
}

#[test]
fn registration_vectors() {
    let ran = check(
        "registration",
        row,
        RegistrationPayload::encode,
        RegistrationPayload::decode,
    );
    assert!(ran > 0);
}

#[test]
fn bootstrap_vectors() {
    let ran = check(
        "bootstrap",
        bootstrap,
        |b| b.encode().expect("encode bootstrap"),
        BootstrapPayload::decode,
    );
    assert!(ran > 0);
}

#[test]
fn rotation_vectors() {
    let ran = check(
        "rotation",
        rotation,
        |r| r.encode().expect("encode rotation"),
        RotationPayload::decode,
    );
    assert!(ran > 0);
}
