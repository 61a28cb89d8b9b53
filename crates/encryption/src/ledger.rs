//! The nonce ledger, for tests only (feature `nonce-ledger`): when the environment
//! variable [`LEDGER_ENV`] names a file, every envelope this process seals appends
//! one line to it, `<key id> <nonce in hex>`. Tests collect the ledgers of every
//! node and every process load and check that no (key, nonce) pair repeats.
//!
//! The ledger holds key ids and nonces only, never key material or plaintext. A
//! release build has no ledger: the feature is off unless a test enables it.

use std::io::Write as _;
use std::path::Path;

/// The environment variable naming the ledger file.
pub const LEDGER_ENV: &str = "SEALKV_NONCE_LEDGER";

/// Appends `(key_id, nonce)` to the ledger, when one is configured. A failure to
/// write is reported on stderr and does not stop the seal: the test that reads the
/// ledger then finds the pair missing.
pub(crate) fn record(key_id: u32, nonce: &[u8]) {
    let Some(path) = std::env::var_os(LEDGER_ENV) else {
        return;
    };
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("{key_id} {hex}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let path = Path::new(&path).display().to_string();
        // Test-only diagnostics: there is no logger in this crate.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("nonce ledger {path}: {e}");
        }
    }
}

/// The (key id, nonce) pairs of a ledger file, in the order they were sealed.
///
/// # Errors
/// When the file cannot be read or a line is not `<u32> <24 hex digits>`.
pub fn read(path: &Path) -> std::io::Result<Vec<(u32, [u8; 12])>> {
    let bad = |line: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: bad ledger line {line:?}", path.display()),
        )
    };
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|line| {
            let (key, hex) = line.split_once(' ').ok_or_else(|| bad(line))?;
            let key = key.parse().map_err(|_| bad(line))?;
            let mut nonce = [0u8; 12];
            if hex.len() != 24 {
                return Err(bad(line));
            }
            for (i, byte) in nonce.iter_mut().enumerate() {
                let pair = hex.get(2 * i..2 * i + 2).ok_or_else(|| bad(line))?;
                *byte = u8::from_str_radix(pair, 16).map_err(|_| bad(line))?;
            }
            Ok((key, nonce))
        })
        .collect()
}
