//! The JSON fixtures: every `bad/` history is rejected where its `stuck` field
//! says, every `good/` one is accepted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealkv_linearizability::{CheckResult, History, KeyResult, OpId, check};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    paths
}

/// Loads a fixture: the history and its `stuck` field (the op the checker must
/// name as the one it could not place).
fn load(path: &Path) -> (History, Option<OpId>) {
    let history = History::read_file(path).unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let stuck = meta
        .get("stuck")
        .and_then(serde_json::Value::as_u64)
        .map(OpId);
    (history, stuck)
}

fn check_fixture(path: &Path) -> (CheckResult, Option<OpId>) {
    let (history, stuck) = load(path);
    (check(&history, Duration::from_secs(10)), stuck)
}

#[test]
fn bad_fixtures_are_rejected() {
    let paths = fixtures("bad");
    assert!(paths.len() >= 7);
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (result, stuck) = check_fixture(&path);
        assert!(!result.is_linearizable(), "{name}: accepted");
        let failures: Vec<&KeyResult> = result.failures().collect();
        assert_eq!(failures.len(), 1, "{name}: {result}");
        let KeyResult::NotLinearizable { explanation, .. } = failures[0] else {
            panic!("{name}: {result}");
        };
        let stuck_at = explanation.stuck.as_ref().map(|op| op.id);
        assert_eq!(stuck_at, stuck, "{name}: {result}");
        // The report names the op it could not place.
        let report = result.to_string();
        assert!(report.contains("cannot place"), "{name}: {report}");
    }
}

#[test]
fn good_fixtures_are_accepted() {
    let paths = fixtures("good");
    assert!(paths.len() >= 4);
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (result, _) = check_fixture(&path);
        assert!(result.is_linearizable(), "{name}: {result}");
    }
}

/// A fixture round-trips through the JSON writer unchanged (as a history).
#[test]
fn fixtures_round_trip() {
    for path in fixtures("bad").into_iter().chain(fixtures("good")) {
        let (history, _) = load(&path);
        let again = History::from_json(&history.to_json().unwrap()).unwrap();
        assert_eq!(again, history, "{}", path.display());
    }
}

/// The report names the prefix, the state after it and the op that could not go
/// next, with client, input, output and times.
#[test]
fn report_names_the_ops() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad/read_back_in_time.json");
    let report = check_fixture(&path).0.to_string();
    for line in [
        "key \"x\" is not linearizable: longest linearizable prefix: 3 ops",
        "op 0 client 1: SET \"a\" -> OK [seq 0 @0ns .. seq 1 @1µs]",
        "op 2 client 2: GET -> \"b\" [seq 3 @3µs .. seq 4 @4µs]",
        "state after it: \"b\"",
        "cannot place: op 3 client 3: GET -> \"a\" [seq 5 @5µs .. seq 6 @6µs]",
    ] {
        assert!(report.contains(line), "{line:?} not in\n{report}");
    }
}
