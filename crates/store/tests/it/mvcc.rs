//! The value header and key encodings: round trips, ordering, and refusal of
//! reserved states and short or malformed bytes.

use proptest::prelude::*;
use sealkv_store::StoreError;
use sealkv_store::mvcc::{
    EncryptionState, StoredValue, ValueHeader, decode_physical_key, encode_user_key, logical_key,
    physical_key,
};

#[test]
fn header_layout_is_flags_then_little_endian_expiry() {
    let h = ValueHeader {
        tombstone: true,
        encryption: EncryptionState::Encrypted,
        expire_at_ms: 0x0102,
    };
    assert_eq!(h.encode(), [0b011, 0x02, 0x01, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn reserved_states_and_unknown_flags_are_corrupt() {
    for flags in [0b100u8, 0b110, 0b1000, 0x80] {
        let mut bytes = [0u8; 9];
        bytes[0] = flags;
        let err = ValueHeader::decode(&bytes).expect_err("refused flags");
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    what: "value header",
                    ..
                }
            ),
            "{flags:#x}: {err:?}"
        );
    }
    for len in 0..9 {
        assert!(ValueHeader::decode(&vec![0; len]).is_err(), "length {len}");
    }
}

#[test]
fn logical_key_appends_inverted_version() {
    assert_eq!(
        logical_key(b"k", 1),
        [b"k".as_slice(), &(!1u64).to_be_bytes()].concat()
    );
}

proptest! {
    #[test]
    fn stored_values_round_trip(tomb in any::<bool>(), enc in any::<bool>(), exp in any::<u64>(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let encryption = if enc { EncryptionState::Encrypted } else { EncryptionState::Clear };
        let v = StoredValue { header: ValueHeader { tombstone: tomb, encryption, expire_at_ms: exp }, body };
        prop_assert_eq!(StoredValue::decode(&v.encode()).expect("decode"), v);
    }

    #[test]
    fn physical_keys_round_trip(key in prop::collection::vec(any::<u8>(), 0..32), version in any::<u64>()) {
        prop_assert_eq!(decode_physical_key(&physical_key(&key, version)).expect("decode"), (key, version));
    }

    #[test]
    fn user_key_order_is_preserved(a in prop::collection::vec(any::<u8>(), 0..16), b in prop::collection::vec(any::<u8>(), 0..16)) {
        prop_assert_eq!(a.cmp(&b), encode_user_key(&a).cmp(&encode_user_key(&b)));
    }

    #[test]
    fn arbitrary_keys_and_values_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let _ = decode_physical_key(&bytes);
        let _ = StoredValue::decode(&bytes);
    }
}
