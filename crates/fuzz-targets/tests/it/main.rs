//! Integration tests of sealkv-fuzz-targets: every fuzz target replays its committed
//! corpus and runs a short property test, so `cargo test` exercises the targets
//! without a fuzzer; the seed generator keeps the corpus in step with the formats.

mod corpus;
mod properties;
mod regressions;
mod seeds;

use std::path::PathBuf;

/// The repository's `fuzz/` directory (the cargo-fuzz crate), found from the
/// `CARGO_MANIFEST_DIR` that `cargo test` sets, read at run time so that a test
/// binary reused from another checkout reads this checkout's corpus.
pub fn fuzz_dir() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("../../fuzz")
}

/// The committed corpus of `target`: every file of `fuzz/corpus/<target>/`, sorted
/// by name. A missing or empty directory fails the test that asked: never a skip.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read corpus dir {}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("list corpus dir").path();
            let name = path
                .file_name()
                .expect("a corpus file has a name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("read corpus file {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    assert!(!files.is_empty(), "corpus dir {} is empty", dir.display());
    files.sort();
    files
}

/// Declares one test per fuzz target in the calling module, each calling
/// `check(name)`, and `NAMES`, the list those tests cover.
macro_rules! per_target {
    ($($name:ident)*) => {
        /// The targets this module has a test for.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}
pub(crate) use per_target;
