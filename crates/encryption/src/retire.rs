//! The key retirement entry: sealkv's own rotation-family subtag `0x04`, which removes
//! a storage key that no stored version needs any more from every keyring and
//! sidecar (DESIGN.md §6, "Retiring a key").
//!
//! ```text
//! payload (after the 0x05 opcode), exactly 6 bytes:
//! +---------+--------+------------------+
//! | version | subtag | key_id           |
//! | 01      | 04     | u32 big-endian   |
//! +---------+--------+------------------+
//! 0         1        2                  6
//! ```
//!
//! Like the envelope switches ([`crate::applier::EnvelopeSwitch`]) it is recognised
//! before fsmwire's rotation decoder runs, which refuses subtag `0x04`: an elastickv
//! node halts on it rather than diverging. A payload that starts `01 04` and is not
//! exactly 6 bytes long is malformed.

use sealkv_fsmwire::{Error, OP_ROTATION};

/// A decoded key retirement (see the module docs). Plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRetirement {
    /// The key to remove.
    pub key_id: u32,
}

impl KeyRetirement {
    /// The payload version.
    pub const VERSION: u8 = 1;
    /// The rotation-family subtag of a retirement.
    pub const SUBTAG: u8 = 0x04;
    /// The exact length of the payload after the opcode.
    pub const LEN: usize = 6;

    /// The payload after the `0x05` opcode.
    pub fn encode(self) -> [u8; Self::LEN] {
        let [a, b, c, d] = self.key_id.to_be_bytes();
        [Self::VERSION, Self::SUBTAG, a, b, c, d]
    }

    /// The whole entry data: opcode `0x05` ‖ payload.
    pub fn entry(self) -> Vec<u8> {
        let mut data = Vec::with_capacity(1 + Self::LEN);
        data.push(OP_ROTATION);
        data.extend_from_slice(&self.encode());
        data
    }

    /// Recognises a retirement in a `0x05` payload: `Ok(None)` when the payload is
    /// not one (another subtag, or another version).
    ///
    /// # Errors
    /// [`Error::Malformed`] when a payload that starts `01 04` is not exactly
    /// [`Self::LEN`] bytes long (truncated, or with trailing bytes).
    pub fn decode(payload: &[u8]) -> Result<Option<KeyRetirement>, Error> {
        let [Self::VERSION, Self::SUBTAG, rest @ ..] = payload else {
            return Ok(None);
        };
        let id: [u8; 4] = rest.try_into().map_err(|_| Error::Malformed {
            payload: "key retirement",
            reason: format!("{} bytes, want {}", payload.len(), Self::LEN),
        })?;
        Ok(Some(KeyRetirement {
            key_id: u32::from_be_bytes(id),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        for key_id in [0, 1, 7, 0x0102_0304, u32::MAX] {
            let r = KeyRetirement { key_id };
            let bytes = r.encode();
            let [a, b, c, d] = key_id.to_be_bytes();
            assert_eq!(bytes, [1, 4, a, b, c, d]);
            assert_eq!(KeyRetirement::decode(&bytes).unwrap(), Some(r));
            assert_eq!(r.entry(), [OP_ROTATION, 1, 4, a, b, c, d]);
        }
    }

    #[test]
    fn truncated_at_every_offset_and_trailing_bytes_are_malformed() {
        let full = KeyRetirement { key_id: 9 }.encode();
        for len in 2..full.len() {
            let err = KeyRetirement::decode(full.get(..len).unwrap()).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{len}: {err:?}");
        }
        let mut long = full.to_vec();
        long.push(0);
        assert!(matches!(
            KeyRetirement::decode(&long),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn other_payloads_are_not_retirements() {
        for payload in [
            &[][..],
            &[1][..],
            &[1, 2][..],
            &[1, 3][..],
            &[1, 1, 0, 0, 0, 9][..],
            &[2, 4, 0, 0, 0, 9][..],
        ] {
            assert_eq!(KeyRetirement::decode(payload).unwrap(), None, "{payload:?}");
        }
    }
}
