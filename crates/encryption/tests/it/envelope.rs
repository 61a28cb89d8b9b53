//! Envelope, AAD and keystore tests: the elastickv `envelope.json` vectors, then
//! truncation, byte flips and redaction.

use proptest::prelude::*;
use sealkv_encryption::envelope::{
    AadMode, Dek, ENVELOPE_VERSION, Envelope, EnvelopeError, Keystore, OVERHEAD, header_aad,
    raft_aad,
};
use serde_json::Value;

use crate::vectors::{cases, hex, load, u64};

fn u8_field(v: &Value) -> u8 {
    u8::try_from(u64(v)).expect("u8 field")
}

fn u32_field(v: &Value) -> u32 {
    u32::try_from(u64(v)).expect("u32 field")
}

fn nonce_field(v: &Value) -> [u8; 12] {
    hex(v).try_into().expect("12-byte nonce")
}

/// The `keystore` list of the vector file, loaded.
fn keystore(doc: &Value) -> Keystore {
    let mut keys = Keystore::new();
    for k in cases(doc, "keystore") {
        let dek = Dek::from_slice(&hex(&k["key_hex"])).expect("32-byte key");
        keys.insert(u32_field(&k["key_id"]), dek)
            .expect("load vector key");
    }
    keys
}

/// The AAD mode named by a case, over its `aad_context_hex`.
fn mode<'a>(case: &Value, context: &'a [u8]) -> AadMode<'a> {
    match case["aad_mode"].as_str().expect("aad_mode") {
        "storage" => AadMode::Storage { context },
        "raft" => AadMode::Raft,
        "verbatim" => AadMode::Verbatim(context),
        other => panic!("unknown aad_mode {other}"),
    }
}

fn envelope_input(input: &Value) -> Envelope {
    Envelope {
        version: u8_field(&input["version"]),
        flag: u8_field(&input["flag"]),
        key_id: u32_field(&input["key_id"]),
        nonce: nonce_field(&input["nonce_hex"]),
        body: hex(&input["body_hex"]),
    }
}

fn class<T>(r: Result<T, EnvelopeError>) -> Option<&'static str> {
    r.err().map(|e| e.class())
}

/// Checks one case of `section`; panics with the case name on a mismatch.
fn check(section: &str, case: &Value, keys: &Keystore) {
    let name = case["name"].as_str().expect("name");
    let want_class = case.get("error").and_then(Value::as_str);
    match section {
        "header_aad" => {
            let i = &case["input"];
            let got = header_aad(
                u8_field(&i["version"]),
                u8_field(&i["flag"]),
                u32_field(&i["key_id"]),
            );
            assert_eq!(got.to_vec(), hex(&case["hex"]), "{name}");
        }
        "raft_aad" => {
            let i = &case["input"];
            let got = raft_aad(u8_field(&i["version"]), u32_field(&i["key_id"]));
            assert_eq!(got.to_vec(), hex(&case["hex"]), "{name}");
        }
        "envelope_encode" => {
            let env = envelope_input(&case["input"]);
            let bytes = env.encode().expect(name);
            assert_eq!(bytes, hex(&case["hex"]), "{name}");
            assert_eq!(
                Envelope::decode(&bytes).as_ref(),
                Ok(&env),
                "{name}: round trip"
            );
        }
        "envelope_encode_invalid" => {
            assert_eq!(
                class(envelope_input(&case["input"]).encode()),
                want_class,
                "{name}"
            );
        }
        "envelope_decode_invalid" => {
            assert_eq!(
                class(Envelope::decode(&hex(&case["hex"]))),
                want_class,
                "{name}"
            );
        }
        "encrypt" => {
            let key_id = u32_field(&case["key_id"]);
            let dek = keys.get(key_id).expect("encrypt key is in the keystore");
            assert_eq!(
                dek.as_bytes().to_vec(),
                hex(&case["key_hex"]),
                "{name}: keystore key"
            );
            let nonce = nonce_field(&case["nonce_hex"]);
            let plaintext = hex(&case["plaintext_hex"]);
            let context = hex(&case["aad_context_hex"]);
            let flag = u8_field(&case["flag"]);
            let mode = mode(case, &context);
            let aad = mode.aad(ENVELOPE_VERSION, flag, key_id);
            assert_eq!(aad.to_vec(), hex(&case["aad_hex"]), "{name}: aad");
            let body = keys
                .seal(key_id, &nonce, &plaintext, &hex(&case["aad_hex"]))
                .expect(name);
            assert_eq!(body, hex(&case["ciphertext_and_tag_hex"]), "{name}: seal");
            let sealed = keys
                .seal_envelope(flag, key_id, nonce, &plaintext, mode)
                .expect(name);
            assert_eq!(sealed, hex(&case["envelope_hex"]), "{name}: envelope");
            let opened = keys.open_envelope(&sealed, mode).expect(name);
            assert_eq!(
                (opened.flag, opened.key_id),
                (flag, key_id),
                "{name}: header"
            );
            assert_eq!(opened.plaintext, plaintext, "{name}: open");
        }
        "decrypt_invalid" | "tamper_not_detected" => {
            let context = hex(&case["aad_context_hex"]);
            let got = keys.open_envelope(&hex(&case["envelope_hex"]), mode(case, &context));
            match want_class {
                Some(_) => assert_eq!(class(got), want_class, "{name}"),
                None => assert_eq!(
                    got.map(|o| o.plaintext),
                    Ok(hex(&case["plaintext_hex"])),
                    "{name}"
                ),
            }
        }
        "cipher_invalid" => {
            let (key_id, nonce) = (u32_field(&case["key_id"]), hex(&case["nonce_hex"]));
            let (input, aad) = (hex(&case["input_hex"]), hex(&case["aad_hex"]));
            let got = match case["op"].as_str().expect("op") {
                "encrypt" => keys.seal(key_id, &nonce, &input, &aad),
                "decrypt" => keys.open(key_id, &nonce, &input, &aad),
                other => panic!("{name}: unknown op {other}"),
            };
            assert_eq!(class(got), want_class, "{name}");
        }
        other => panic!("no check for section {other}"),
    }
}

#[test]
fn envelope_vectors() {
    let doc = load("envelope.json");
    let keys = keystore(&doc);
    let sections = [
        "header_aad",
        "raft_aad",
        "envelope_encode",
        "envelope_encode_invalid",
        "envelope_decode_invalid",
        "encrypt",
        "decrypt_invalid",
        "tamper_not_detected",
        "cipher_invalid",
    ];
    let mut total = 0;
    for section in sections {
        let list = cases(&doc, section);
        for case in list {
            check(section, case, &keys);
        }
        assert!(!list.is_empty(), "{section} has no cases");
        total += list.len();
    }
    assert!(total > 0);
}

fn test_keys() -> Keystore {
    let mut keys = Keystore::new();
    keys.insert(1, Dek::from_bytes([0x11; 32]))
        .expect("insert 1");
    keys.insert(2, Dek::from_bytes([0x22; 32]))
        .expect("insert 2");
    keys
}

const CONTEXT: &[u8] =
    b"\x02\x00\x00\x00\x00\x00\x00\x00\x00user-key\xff\xff\xff\xff\xff\xff\xff\xfe";

#[test]
fn keystore_refuses_reserved_key_id() {
    let mut keys = Keystore::new();
    assert_eq!(
        keys.insert(0, Dek::from_bytes([1; 32])),
        Err(EnvelopeError::ReservedKeyId)
    );
    assert!(keys.is_empty());
    keys.insert(9, Dek::from_bytes([1; 32])).expect("insert 9");
    keys.insert(3, Dek::from_bytes([1; 32])).expect("insert 3");
    assert_eq!(keys.ids(), vec![3, 9]);
    assert!(keys.get(0).is_none());
    assert!(keys.remove(9).is_some());
    assert_eq!(keys.ids(), vec![3]);
}

#[test]
fn dek_from_slice_checks_length() {
    for len in [0, 16, 31, 33, 64] {
        assert_eq!(
            Dek::from_slice(&vec![7; len]).map(|_| ()),
            Err(EnvelopeError::KeySize { len })
        );
    }
    assert!(Dek::from_slice(&[7; 32]).is_ok());
}

#[test]
fn truncated_envelope_never_opens_or_panics() {
    let keys = test_keys();
    let sealed = keys
        .seal_envelope(
            1,
            2,
            [9; 12],
            b"some stored value",
            AadMode::Storage { context: CONTEXT },
        )
        .expect("seal");
    assert_eq!(sealed.len(), OVERHEAD + 17);
    for end in 0..sealed.len() {
        let prefix = sealed.get(..end).expect("prefix");
        for mode in [
            AadMode::Storage { context: CONTEXT },
            AadMode::Raft,
            AadMode::Verbatim(CONTEXT),
        ] {
            let got = keys.open_envelope(prefix, mode);
            let want = if end < OVERHEAD { "short" } else { "integrity" };
            assert_eq!(class(got), Some(want), "prefix of {end} bytes");
        }
        if end < OVERHEAD {
            assert_eq!(
                class(Envelope::decode(prefix)),
                Some("short"),
                "decode {end}"
            );
        }
    }
}

#[test]
fn flipped_byte_in_storage_envelope_never_opens() {
    let keys = test_keys();
    let mode = AadMode::Storage { context: CONTEXT };
    for flag in [0, 1] {
        let sealed = keys
            .seal_envelope(flag, 1, [3; 12], b"value bytes", mode)
            .expect("seal");
        assert_eq!(
            keys.open_envelope(&sealed, mode).map(|o| o.plaintext),
            Ok(b"value bytes".to_vec())
        );
        for pos in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = sealed.clone();
                *tampered.get_mut(pos).expect("in range") ^= bit;
                let got = keys.open_envelope(&tampered, mode);
                assert!(
                    got.is_err(),
                    "flip {bit:#04x} at byte {pos} (flag {flag}) still opened"
                );
            }
        }
        // The context binds the value header and the storage key.
        for pos in 0..CONTEXT.len() {
            let mut context = CONTEXT.to_vec();
            *context.get_mut(pos).expect("in range") ^= 1;
            let got = keys.open_envelope(&sealed, AadMode::Storage { context: &context });
            assert_eq!(class(got), Some("integrity"), "context flip at {pos}");
        }
    }
}

#[test]
fn raft_and_storage_envelopes_do_not_cross() {
    let keys = test_keys();
    let raft = keys
        .seal_envelope(0, 1, [5; 12], b"proposal", AadMode::Raft)
        .expect("seal raft");
    assert_eq!(
        keys.open_envelope(&raft, AadMode::Raft)
            .map(|o| o.plaintext),
        Ok(b"proposal".to_vec())
    );
    assert_eq!(
        class(keys.open_envelope(&raft, AadMode::Storage { context: b"" })),
        Some("integrity")
    );
    let stored = keys
        .seal_envelope(0, 1, [5; 12], b"value", AadMode::Storage { context: b"" })
        .expect("seal");
    assert_eq!(
        class(keys.open_envelope(&stored, AadMode::Raft)),
        Some("integrity")
    );
}

#[test]
fn seal_envelope_checks_key_id() {
    let keys = test_keys();
    let mode = AadMode::Raft;
    assert_eq!(
        class(keys.seal_envelope(0, 0, [0; 12], b"x", mode)),
        Some("reserved_key_id")
    );
    assert_eq!(
        class(keys.seal_envelope(0, 3, [0; 12], b"x", mode)),
        Some("unknown_key_id")
    );
}

#[test]
fn debug_output_has_no_key_bytes() {
    let bytes: [u8; 32] = std::array::from_fn(|i| 0xa0 + i as u8);
    let dek = Dek::from_bytes(bytes);
    let mut keys = Keystore::new();
    keys.insert(5, Dek::from_bytes(bytes)).expect("insert");
    let key_hex = ::hex::encode(bytes);
    for text in [
        format!("{dek:?}"),
        format!("{dek:#?}"),
        format!("{keys:?}"),
        format!("{keys:#?}"),
    ] {
        assert!(!text.to_lowercase().contains(&key_hex[..8]), "{text}");
        assert!(!text.contains("160"), "{text}: decimal key byte");
        assert!(!text.contains("0xa0") && !text.contains("a0a1"), "{text}");
    }
    assert_eq!(format!("{dek:?}"), "Dek(<redacted>)");
    assert_eq!(format!("{keys:?}"), "Keystore { key_ids: [5] }");
}

proptest! {
    /// Decoding never panics, and whatever decodes encodes back to the same bytes.
    #[test]
    fn decode_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        match Envelope::decode(&bytes) {
            Ok(env) => prop_assert_eq!(env.encode(), Ok(bytes)),
            Err(e) => prop_assert!(matches!(e.class(), "short" | "version")),
        }
    }

    /// Any plaintext, flag and context round-trips in every mode.
    #[test]
    fn seal_open_round_trip(
        plaintext in proptest::collection::vec(any::<u8>(), 0..300),
        context in proptest::collection::vec(any::<u8>(), 0..40),
        flag in any::<u8>(),
        nonce in any::<[u8; 12]>(),
    ) {
        let keys = test_keys();
        for mode in [AadMode::Storage { context: &context }, AadMode::Raft, AadMode::Verbatim(&context)] {
            let sealed = keys.seal_envelope(flag, 2, nonce, &plaintext, mode).expect("seal");
            prop_assert_eq!(sealed.len(), plaintext.len() + OVERHEAD);
            let opened = keys.open_envelope(&sealed, mode).expect("open");
            prop_assert_eq!(&opened.plaintext, &plaintext);
            prop_assert_eq!(opened.flag, flag);
        }
    }
}
