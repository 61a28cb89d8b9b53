//! Test support shared by sealkv's crates: loading the elastickv golden vectors.
//!
//! The vector directory comes from `SEALKV_VECTORS_DIR`, defaulting to the
//! repository's own `vectors/` directory. A missing directory or file fails the
//! test that asked for it; it is never a skip. Pointing the variable at another
//! directory with the same schema (the holdout set) runs the same tests over it.

#![allow(clippy::panic, clippy::expect_used)]

use std::path::PathBuf;

pub use serde_json::Value;

/// The vector directory in use.
///
/// The default is found from the `CARGO_MANIFEST_DIR` that `cargo test` sets for the
/// running test (every crate sits at `crates/<name>`), read at run time so that a
/// test binary cargo reuses from another checkout sharing the target dir still finds
/// this checkout's vectors.
pub fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEALKV_VECTORS_DIR") {
        return PathBuf::from(dir);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("../../vectors")
}

/// Reads and parses one vector file, panicking with its path when it is missing.
pub fn load(file: &str) -> Value {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read vector file {}: {e} (set SEALKV_VECTORS_DIR)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Decodes a lowercase hex field.
pub fn hex(v: &Value) -> Vec<u8> {
    ::hex::decode(v.as_str().expect("hex field is a string")).expect("valid hex")
}

/// A u64 field (never read through f64).
pub fn u64(v: &Value) -> u64 {
    v.as_u64().expect("u64 field")
}

/// The non-empty list `field` of a vector document; an empty or missing list fails,
/// so a renamed field cannot silently run zero cases.
pub fn cases<'a>(doc: &'a Value, field: &str) -> &'a Vec<Value> {
    let list = doc[field]
        .as_array()
        .unwrap_or_else(|| panic!("vector field {field} is a list"));
    assert!(!list.is_empty(), "vector list {field} is empty");
    list
}

/// The `name` of a case, for failure messages.
pub fn name(case: &Value) -> &str {
    case["name"].as_str().unwrap_or("<unnamed>")
}
