//! Every case of `registry.json`: keys, DEK prefixes and values round-trip byte for
//! byte; malformed keys and values fail with their class.

use sealkv_encryption::registry::{WriterKey, WriterRecord, dek_prefix};
use sealkv_testkit::{Value, cases, hex, load, name, u64};

fn key(v: &Value) -> WriterKey {
    WriterKey {
        dek_id: u64(&v["dek_id"]).try_into().expect("dek_id fits u32"),
        node_id16: u64(&v["node_id16"]).try_into().expect("node_id16 fits u16"),
    }
}

fn record(v: &Value) -> WriterRecord {
    let epoch = |f: &str| u64(&v[f]).try_into().expect("epoch fits u16");
    WriterRecord {
        full_node_id: u64(&v["full_node_id"]),
        first_seen_local_epoch: epoch("first_seen_local_epoch"),
        last_seen_local_epoch: epoch("last_seen_local_epoch"),
    }
}

/// A decoder under test, when the list has one.
type Decoder<'a, T, E> = Option<&'a dyn Fn(&[u8]) -> Result<T, E>>;

/// Checks one list of valid round-trip cases.
fn check<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    field: &str,
    from_input: impl Fn(&Value) -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: Decoder<'_, T, E>,
) {
    let doc = load("registry.json");
    for case in cases(&doc, field) {
        let input = from_input(&case["input"]);
        let want = hex(&case["hex"]);
        assert_eq!(encode(&input), want, "{field}/{}: encode", name(case));
        if let Some(decode) = decode {
            assert_eq!(
                decode(&want).expect("decode"),
                input,
                "{field}/{}",
                name(case)
            );
        }
    }
}

/// Checks one list of invalid cases against a decoder's error class.
fn check_invalid<T: std::fmt::Debug>(
    field: &str,
    decode: impl Fn(&[u8]) -> Result<T, sealkv_encryption::registry::RegistryCodecError>,
) {
    let doc = load("registry.json");
    for case in cases(&doc, field) {
        let class = case["error"].as_str().expect("error class");
        match decode(&hex(&case["hex"])) {
            Err(e) => assert_eq!(e.class(), class, "{field}/{}: {e}", name(case)),
            Ok(v) => panic!("{field}/{}: decoded {v:?}, want {class}", name(case)),
        }
    }
}

#[test]
fn key_vectors() {
    check(
        "keys",
        key,
        |k| k.encode().to_vec(),
        Some(&WriterKey::decode),
    );
}

#[test]
fn dek_prefix_vectors() {
    check::<u32, ()>(
        "dek_prefixes",
        |v| u64(&v["dek_id"]).try_into().expect("dek_id fits u32"),
        |id| dek_prefix(*id).to_vec(),
        None,
    );
}

#[test]
fn value_vectors() {
    check(
        "values",
        record,
        |r| r.encode().to_vec(),
        Some(&WriterRecord::decode),
    );
}

#[test]
fn invalid_key_vectors() {
    check_invalid("invalid_keys", WriterKey::decode);
}

#[test]
fn invalid_value_vectors() {
    check_invalid("invalid_values", WriterRecord::decode);
}

/// The key of a node keeps only the low 16 bits of its id, and every key starts with
/// its DEK's prefix.
#[test]
fn node_key_truncates_to_low_16_bits() {
    let k = WriterKey::for_node(9, 0xABCD_0000_0001_2345);
    assert_eq!(k.node_id16, 0x2345);
    assert!(k.encode().starts_with(&dek_prefix(9)));
    assert!(sealkv_encryption::registry::is_reserved_key(&k.encode()));
    assert!(!sealkv_encryption::registry::is_reserved_key(
        b"!encryption"
    ));
}
