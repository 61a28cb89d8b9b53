//! Replays every committed corpus file through its target (what CI runs instead of
//! the fuzzer), and checks that the targets, the cargo-fuzz binaries and the corpus
//! directories name the same set.

use std::collections::BTreeSet;
use std::panic::catch_unwind;

use sealkv_fuzz_targets::{TARGETS, target};

use crate::{corpus, fuzz_dir};

/// Runs every file of `name`'s corpus, and fails naming each file that panicked.
fn check(name: &str) {
    let run = target(name).expect("a target of this name");
    let files = corpus(name);
    let failed: Vec<&str> = files
        .iter()
        .filter(|(_, bytes)| catch_unwind(|| run(bytes)).is_err())
        .map(|(file, _)| file.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} corpus files fail: {failed:?}",
        failed.len(),
        files.len()
    );
}

mod fuzz_corpus {
    use super::check;
    crate::per_target!(
        fsmwire_registration fsmwire_bootstrap fsmwire_rotation registry_key registry_value
        envelope sidecar kv_command snapshot_dump snapshot_stream transport_hello transport_frame resp
        resp_commands
    );
}

fn names_in(dir: &str, suffix: &str) -> BTreeSet<String> {
    let path = fuzz_dir().join(dir);
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .map(|entry| {
            entry
                .expect("list dir")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .collect()
}

#[test]
fn fuzz_targets_binaries_and_corpus_dirs_agree() {
    let targets: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    let tested: BTreeSet<String> = fuzz_corpus::NAMES.iter().map(|n| n.to_string()).collect();
    assert_eq!(tested, targets, "a target without a corpus replay test");
    let props: BTreeSet<String> = crate::properties::fuzz_props::NAMES
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(props, targets, "a target without a property test");
    let binaries = names_in("fuzz_targets", ".rs");
    assert_eq!(
        binaries, targets,
        "fuzz/fuzz_targets/*.rs and TARGETS differ"
    );
    let dirs = names_in("corpus", "");
    assert_eq!(dirs, targets, "fuzz/corpus/* and TARGETS differ");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &targets {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
