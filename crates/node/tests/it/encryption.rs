//! Encryption at rest with real `sealkv` processes: no user value reaches the disk in
//! cleartext (values, Raft log, WAL, sidecar), key rotations survive a full restart,
//! every startup guard refuses with its own message, a cleartext node is moved to
//! encryption by an operator, the admin verbs need encryption, a tampered value is
//! an integrity error that is counted, and a learner gets the keys with a snapshot.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::{Commands, RedisResult};
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, WriteBatch};
use serde_json::Value;

use crate::support::*;

pub(crate) const LONG: Duration = Duration::from_secs(30);

/// Values written in the first phase of the cleartext scan, and after the rotations.
const FIRST: usize = 3000;
const SECOND: usize = 1000;

/// Filler that makes each marked value long enough for the files to grow.
const FILLER: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A prefix no earlier run left anywhere: `sealkv-marker-<random hex>-`.
pub(crate) fn marker_prefix() -> String {
    let random = RandomState::new().hash_one(Instant::now());
    format!("sealkv-marker-{random:016x}-")
}

pub(crate) fn marked_key(i: usize) -> String {
    format!("enc:{i}")
}

pub(crate) fn marked_value(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}-{FILLER}")
}

pub(crate) fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `sealkv kek generate PATH`, which must succeed.
fn generate_kek(path: &Path) {
    let (ok, out, err) = run(sealkv().args(["kek", "generate"]).arg(path));
    assert!(ok, "kek generate: {out}{err}");
}

/// A temp dir holding a freshly generated KEK file, and that file's path.
pub(crate) fn with_kek() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    generate_kek(&kek);
    (dir, kek)
}

/// The flags of an encrypted node whose KEK is the file `kek`.
pub(crate) fn encrypted_flags(kek: &Path) -> Vec<&str> {
    vec!["--encryption-enabled", "--kek-file", path_arg(kek)]
}

/// `sealkv encryption status --json` of a node.
pub(crate) fn encryption_status(node: &Node) -> Value {
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "status",
        "--json",
        "--admin-addr",
        &node.admin,
    ]));
    assert!(ok, "encryption status of node {}: {out}{err}", node.id);
    serde_json::from_str(&out).expect("encryption status JSON")
}

/// Waits until the node shows its keys bootstrapped and both envelopes on.
pub(crate) fn encryption_on(node: &Node) -> Value {
    eventually(&format!("encryption on at node {}", node.id), LONG, || {
        let s = encryption_status(node);
        let on = s["bootstrapped"] == true
            && s["storage_envelope"] == true
            && s["raft_envelope_cutover_index"].as_u64() > Some(0);
        on.then_some(s)
    })
}

/// The local epoch of `key_id` in an encryption status.
fn local_epoch(status: &Value, key_id: u64) -> u64 {
    status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"].as_u64() == Some(key_id))
        .and_then(|k| k["local_epoch"].as_u64())
        .unwrap_or_else(|| panic!("key {key_id} missing: {status}"))
}

/// `sealkv encryption rotate-dek --purpose PURPOSE`, which must succeed.
pub(crate) fn rotate(node: &Node, purpose: &str) {
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "rotate-dek",
        "--purpose",
        purpose,
        "--admin-addr",
        &node.admin,
    ]));
    assert!(ok, "rotate-dek --purpose {purpose}: {out}{err}");
    assert!(out.contains(r#""applied":"rotation""#), "{out}");
    assert!(out.contains(&format!(r#""purpose":"{purpose}""#)), "{out}");
}

/// A SET retried until the node accepts it (TRYAGAIN while an election runs or the
/// keys and envelopes are not on yet).
pub(crate) fn set_eventually(node: &Node, key: &str, value: &str) {
    eventually(&format!("SET {key} through node {}", node.id), LONG, || {
        let r: RedisResult<()> = node.try_redis()?.set(key, value);
        r.ok()
    });
}

/// Writes the marked values `range` through `node`, pipelined.
pub(crate) fn write_marked(node: &Node, prefix: &str, range: std::ops::Range<usize>) {
    let mut conn = node.redis();
    let indexes: Vec<usize> = range.collect();
    for chunk in indexes.chunks(250) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.set(marked_key(i), marked_value(prefix, i)).ignore();
        }
        let r: RedisResult<()> = pipe.query(&mut conn);
        r.unwrap_or_else(|e| panic!("pipelined SET through node {}: {e}", node.id));
    }
}

/// Reads the marked values `indexes` through `node`, pipelined, and checks each.
pub(crate) fn read_marked(node: &Node, prefix: &str, indexes: &[usize]) {
    let mut conn = node.redis();
    for chunk in indexes.chunks(250) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.get(marked_key(i));
        }
        let got: Vec<Option<String>> = pipe
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("pipelined GET through node {}: {e}", node.id));
        for (&i, value) in chunk.iter().zip(got) {
            assert_eq!(
                value.as_deref(),
                Some(marked_value(prefix, i).as_str()),
                "{} through node {}",
                marked_key(i),
                node.id
            );
        }
    }
}

/// What a scan of a directory tree for a byte string found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    files: usize,
    bytes: u64,
    ssts: usize,
    sidecars: usize,
    /// Each file holding the needle: how often, and what follows its first three
    /// occurrences.
    pub(crate) hits: Vec<Hit>,
}

/// A file that holds the needle.
#[derive(Debug)]
#[allow(dead_code)] // read through `Debug` in failure messages
pub(crate) struct Hit {
    pub(crate) path: PathBuf,
    count: usize,
    first: Vec<String>,
}

impl Scan {
    /// Reads every file under `dir` (recursively) and records those that contain
    /// `needle`. A file a running node deletes during the scan is skipped: what is
    /// gone holds nothing.
    fn add(&mut self, dir: &Path, needle: &[u8]) {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("metadata of {}: {e}", path.display()),
            };
            if meta.is_dir() {
                self.add(&path, needle);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("read {}: {e}", path.display()),
            };
            self.files += 1;
            self.bytes += bytes.len() as u64;
            if path.extension().is_some_and(|e| e == "sst") {
                self.ssts += 1;
            }
            if path.file_name().is_some_and(|n| n == "keys.json") {
                self.sidecars += 1;
            }
            let at: Vec<usize> = bytes
                .windows(needle.len())
                .enumerate()
                .filter_map(|(i, w)| (w == needle).then_some(i + needle.len()))
                .collect();
            if !at.is_empty() {
                let first = at
                    .iter()
                    .take(3)
                    .map(|&i| String::from_utf8_lossy(&bytes[i..(i + 8).min(bytes.len())]).into())
                    .collect();
                self.hits.push(Hit {
                    path,
                    count: at.len(),
                    first,
                });
            }
        }
    }

    pub(crate) fn of(dirs: &[&Path], needle: &[u8]) -> Scan {
        let mut scan = Scan::default();
        for dir in dirs {
            scan.add(dir, needle);
        }
        scan
    }
}

/// Flushes the memtables of a stopped node's RocksDB into SST files.
fn flush_store(node: &Node) {
    let store = RocksStore::open(node.data_dir.join("db"), RocksStoreOptions::default())
        .expect("open store");
    store.flush().expect("flush");
}

/// A cluster with encryption keeps no user value in cleartext anywhere in its data
/// dirs, across writes, both key rotations and a full restart; every value reads
/// back after it.
#[test]
fn encrypted_cluster_stores_no_cleartext() {
    let _serial = serial();

    // The scan finds a marked value on a node without encryption.
    let control_prefix = marker_prefix();
    {
        let mut plain = Cluster::start(1, &[]);
        set_eventually(&plain.nodes[0], "plain", &marked_value(&control_prefix, 0));
        assert!(plain.node(1).terminate().success());
        let scan = Scan::of(&[&plain.nodes[0].data_dir], control_prefix.as_bytes());
        assert!(
            !scan.hits.is_empty(),
            "the scan missed a cleartext value: {scan:?}"
        );
    }

    let (dir, kek) = with_kek();
    let prefix = marker_prefix();
    let mut c = Cluster::start_in(dir, 3, &encrypted_flags(&kek));

    // The first write is accepted once the keys and the storage envelope are on.
    let leader = c.leader();
    set_eventually(
        c.node(leader),
        "enc:first",
        &marked_value(&prefix, usize::MAX),
    );
    write_marked(c.node(leader), &prefix, 0..FIRST);
    let follower = c.other_than(leader);
    let sample: Vec<usize> = (0..FIRST).step_by(97).collect();
    read_marked(c.node(follower), &prefix, &sample);
    let bootstrapped = encryption_on(c.node(leader));
    let storage_key = bootstrapped["active_storage_key"]
        .as_u64()
        .expect("storage key");
    let raft_key = bootstrapped["active_raft_key"].as_u64().expect("raft key");

    // Rotate both keys through a follower's admin endpoint.
    rotate(c.node(follower), "storage");
    rotate(c.node(follower), "raft");
    let rotated = encryption_status(c.node(follower));
    let new_storage = rotated["active_storage_key"].as_u64().expect("storage key");
    let new_raft = rotated["active_raft_key"].as_u64().expect("raft key");
    assert!(new_storage > storage_key.max(raft_key), "{rotated}");
    assert!(new_raft > new_storage, "{rotated}");
    write_marked(c.node(follower), &prefix, FIRST..FIRST + SECOND);

    // Every node is on the rotated keys and registered for them before it stops.
    let mut epochs = Vec::new();
    for node in &c.nodes {
        let s = eventually(
            &format!("node {} registered for the rotated keys", node.id),
            LONG,
            || {
                let s = encryption_status(node);
                let ready = s["active_storage_key"].as_u64() == Some(new_storage)
                    && s["active_raft_key"].as_u64() == Some(new_raft)
                    && epochs_registered(&s, node.id);
                ready.then_some(s)
            },
        );
        epochs.push((local_epoch(&s, new_storage), local_epoch(&s, new_raft)));
    }

    for id in 1..=3 {
        let node = c.node(id);
        assert!(node.terminate().success(), "{}", node.log_text());
    }
    let data_dirs: Vec<PathBuf> = c.nodes.iter().map(|n| n.data_dir.clone()).collect();
    let dirs: Vec<&Path> = data_dirs.iter().map(PathBuf::as_path).collect();
    let scan = Scan::of(&dirs, prefix.as_bytes());
    assert!(
        scan.hits.is_empty(),
        "cleartext after the first stop: {:?}",
        scan.hits
    );

    // A full restart replays the WAL into SSTs; every value reads back, each through
    // a different node.
    let peers = c.peers.clone();
    for id in 1..=3 {
        c.node(id).start(&peers);
    }
    c.leader();
    for (n, node) in c.nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..FIRST + SECOND).filter(|i| i % 3 == n).collect();
        eventually(&format!("node {} serving reads", node.id), LONG, || {
            let r: RedisResult<Option<String>> = node.try_redis()?.get("enc:first");
            r.ok().flatten()
        });
        read_marked(node, &prefix, &mine);
    }
    let got: String = c.nodes[0].redis().get("enc:first").expect("GET");
    assert_eq!(got, marked_value(&prefix, usize::MAX));

    // The rotated keys are still the active ones, under a new epoch on every node.
    for (node, (storage_epoch, raft_epoch)) in c.nodes.iter().zip(&epochs) {
        let s = encryption_status(node);
        assert_eq!(s["active_storage_key"].as_u64(), Some(new_storage), "{s}");
        assert_eq!(s["active_raft_key"].as_u64(), Some(new_raft), "{s}");
        assert!(local_epoch(&s, new_storage) > *storage_epoch, "{s}");
        assert!(local_epoch(&s, new_raft) > *raft_epoch, "{s}");
    }

    for id in 1..=3 {
        let node = c.node(id);
        assert!(node.terminate().success(), "{}", node.log_text());
    }
    for node in &c.nodes {
        flush_store(node);
    }
    let scan = Scan::of(&dirs, prefix.as_bytes());
    assert!(scan.hits.is_empty(), "cleartext in {:?}", scan.hits);
    assert!(scan.ssts >= 3, "no SST files were scanned: {scan:?}");
    assert_eq!(scan.sidecars, 3, "{scan:?}");
    assert!(scan.bytes > 100 * 1024, "too little was scanned: {scan:?}");
    // Nor does any node log a value.
    for node in &c.nodes {
        assert!(
            !node.log_text().contains(&prefix),
            "node {} logged a value",
            node.id
        );
    }
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// Runs `sealkv start` for `node`'s data dir and addresses with `flags`, expects it
/// to refuse with `words` on the last line of its stderr, and returns that line.
fn start_refused(node: &Node, flags: &[&str], kek_base64: Option<&str>, words: &str) -> String {
    let mut cmd = sealkv();
    cmd.args(["start", "--id", &node.id.to_string(), "--data-dir"])
        .arg(&node.data_dir)
        .args(["--raft-addr", &node.raft, "--redis-addr", &node.redis])
        .args(["--admin-addr", &node.admin, "--tick-ms", "50"])
        .args(flags);
    if let Some(kek) = kek_base64 {
        cmd.env("SEALKV_KEK_BASE64", kek);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sealkv");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("sealkv start {flags:?} did not refuse ({words:?} expected):\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        !status.success(),
        "sealkv start {flags:?} succeeded: {stderr}"
    );
    let last = stderr
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_string();
    assert!(last.contains(words), "expected {words:?} in: {stderr}");
    last
}

/// Writes a sidecar document with the sidecar's mode.
fn write_sidecar(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write sidecar");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// `doc` with `edit` applied to the JSON.
fn edited(doc: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut json: Value = serde_json::from_slice(doc).expect("sidecar JSON");
    edit(&mut json);
    serde_json::to_vec_pretty(&json).expect("encode sidecar")
}

/// Standard padded base64 (for `SEALKV_KEK_BASE64`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Each startup guard refuses with its own message, against a real data dir, and
/// none of them damages it: the node starts afterwards and serves its data.
#[test]
fn startup_guards_refuse_with_their_own_message() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    let other_kek = dir.path().join("other-kek");
    generate_kek(&kek);
    generate_kek(&other_kek);
    let flags = encrypted_flags(&kek);
    let mut node = Node::new(dir.path(), 1, &flags);
    let sidecar = node.data_dir.join("encryption").join("keys.json");

    node.start("");
    encryption_on(&node);
    set_eventually(&node, "guarded", "value-1");
    let before = std::fs::read(&sidecar).expect("read sidecar");
    assert!(node.terminate().success(), "{}", node.log_text());

    // A second load raises the epochs and registers them past `before`'s; then the
    // storage key is rotated.
    node.start("");
    eventually("the epochs of this load registered", LONG, || {
        epochs_registered(&encryption_status(&node), node.id).then_some(())
    });
    rotate(&node, "storage");
    assert!(node.terminate().success(), "{}", node.log_text());
    let current = std::fs::read(&sidecar).expect("read sidecar");

    let refusal = |sidecar_doc: &[u8], flags: &[&str], env: Option<&str>, words: &str| {
        write_sidecar(&sidecar, sidecar_doc);
        start_refused(&node, flags, env, words)
    };

    // Each refusal, with the real sidecar (or a copy made from it) in place.
    refusal(&current, &[], None, "exists but encryption is not enabled");
    refusal(
        &current,
        &["--encryption-enabled"],
        None,
        "no KEK is configured",
    );
    refusal(
        &current,
        &["--encryption-enabled", "--kek-file", path_arg(&other_kek)],
        None,
        "does not unwrap key",
    );

    let inside = node.data_dir.join("kek");
    generate_kek(&inside);
    let line = refusal(
        &current,
        &["--encryption-enabled", "--kek-file", path_arg(&inside)],
        None,
        "inside --data-dir",
    );
    assert!(line.contains("--kek-file"), "{line}");
    std::fs::remove_file(&inside).expect("remove KEK");

    let kek_base64 = base64(&std::fs::read(&kek).expect("read KEK"));
    refusal(&current, &flags, Some(&kek_base64), "one way only");

    let exhausted = edited(&current, |doc| {
        let active = doc["active"]["storage"].as_u64().expect("active storage");
        doc["keys"][active.to_string()]["local_epoch"] = 65535.into();
    });
    refusal(&exhausted, &flags, None, "is exhausted");

    // The sidecar of the first load: its epochs are not above the second load's
    // registrations.
    refusal(
        &before,
        &flags,
        None,
        "not above the writer registry's record",
    );

    // The same, with epochs past the registry: it still misses the rotation the
    // state machine applied.

    let ahead_of_registry = edited(&before, |doc| {
        for key in doc["keys"].as_object_mut().expect("keys").values_mut() {
            let epoch = key["local_epoch"].as_u64().expect("local_epoch");
            key["local_epoch"] = (epoch + 100).into();
        }
    });
    refusal(
        &ahead_of_registry,
        &flags,
        None,
        "applied an encryption entry",
    );

    // A sidecar directory on a filesystem that cannot fsync a directory: procfs
    // answers EINVAL.
    let sidecar_dir = node.data_dir.join("encryption");
    let aside = node.data_dir.join("encryption.aside");
    std::fs::rename(&sidecar_dir, &aside).expect("move the sidecar dir aside");
    std::os::unix::fs::symlink("/proc/self/fdinfo", &sidecar_dir).expect("symlink");
    let line = start_refused(&node, &flags, None, "cannot be fsynced");
    assert!(line.contains("--data-dir"), "{line}");
    std::fs::remove_file(&sidecar_dir).expect("remove the symlink");
    std::fs::rename(&aside, &sidecar_dir).expect("put the sidecar dir back");

    // The real sidecar back: the node starts and serves its data.
    write_sidecar(&sidecar, &current);
    node.start("");
    let got = eventually("GET guarded after the refusals", LONG, || {
        let r: RedisResult<Option<String>> = node.try_redis()?.get("guarded");
        r.ok().flatten()
    });
    assert_eq!(got, "value-1");
    set_eventually(&node, "after-guards", "value-2");
    let s = encryption_status(&node);
    assert_eq!(
        s["active_storage_key"],
        serde_json::from_slice::<Value>(&current).expect("sidecar")["active"]["storage"],
        "{s}"
    );
}

/// A node with cleartext data does not bootstrap by itself when encryption is turned
/// on; an operator bootstraps it, after which writes are sealed and old values still
/// read.
#[test]
fn cleartext_node_moves_to_encryption() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let mut node = Node::new(dir.path(), 1, &[]);
    node.start("");
    for i in 0..20 {
        set_eventually(&node, &format!("old{i}"), &format!("clear-{i}"));
    }
    assert!(node.terminate().success(), "{}", node.log_text());

    node.set_flags(&encrypted_flags(&kek));
    node.start("");
    eventually("a leader", LONG, || {
        (node.status()?["role"] == "leader").then_some(())
    });
    // Old values read; writes are refused until the keys are bootstrapped.
    for i in 0..20 {
        let got = eventually(&format!("GET old{i}"), LONG, || {
            let r: RedisResult<Option<String>> = node.try_redis()?.get(format!("old{i}"));
            r.ok().flatten()
        });
        assert_eq!(got, format!("clear-{i}"));
    }
    // Give the encryption task a few rounds in which it must not bootstrap.
    std::thread::sleep(Duration::from_secs(2));
    let err = node
        .redis()
        .set::<_, _, ()>("new", "sealed")
        .expect_err("a write before the bootstrap");
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert!(
        err.to_string().contains("sealkv encryption bootstrap"),
        "{err}"
    );
    let s = encryption_status(&node);
    assert_eq!(s["enabled"], true, "{s}");
    assert_eq!(s["bootstrapped"], false, "{s}");
    assert_eq!(s["storage_envelope"], false, "{s}");

    let (ok, out, err) =
        run(sealkv().args(["encryption", "bootstrap", "--admin-addr", &node.admin]));
    assert!(ok, "encryption bootstrap: {out}{err}");
    set_eventually(&node, "new", "sealed");
    let s = encryption_on(&node);
    assert!(s["active_storage_key"].as_u64() > Some(0), "{s}");
    assert!(s["active_raft_key"].as_u64() > Some(0), "{s}");

    let mut r = node.redis();
    for i in 0..20 {
        let got: String = r.get(format!("old{i}")).expect("GET old");
        assert_eq!(got, format!("clear-{i}"));
    }
    let got: String = r.get("new").expect("GET new");
    assert_eq!(got, "sealed");
    let _: () = r.set("newer", "sealed too").expect("SET newer");
    let got: String = r.get("newer").expect("GET newer");
    assert_eq!(got, "sealed too");
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// Without encryption the mutating encryption verbs are refused as a failed
/// precondition, status says so, and `kek generate` never overwrites a key.
#[test]
fn encryption_admin_needs_encryption_enabled() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), 1, &[]);
    node.start("");

    for verb in [
        &["bootstrap"][..],
        &["rotate-dek", "--purpose", "storage"][..],
        &["rotate-dek", "--purpose", "raft"][..],
        &["register-writer"][..],
        &["enable-envelope", "--envelope", "storage"][..],
    ] {
        let (ok, out, err) = run(sealkv()
            .arg("encryption")
            .args(verb)
            .args(["--admin-addr", &node.admin]));
        assert!(!ok, "encryption {verb:?} succeeded: {out}");
        let last = err.lines().last().expect("an error line");
        assert!(last.contains("412"), "{verb:?}: {err}");
        assert!(last.contains("precondition failed"), "{verb:?}: {err}");
    }
    let (ok, out, err) = run(sealkv().args(["encryption", "status", "--admin-addr", &node.admin]));
    assert!(ok, "{err}");
    assert!(out.contains("encryption disabled"), "{out}");
    let s = encryption_status(&node);
    assert_eq!(s["enabled"], false, "{s}");
    // Nothing was bootstrapped behind the refusals.
    assert!(!node.data_dir.join("encryption").join("keys.json").exists());

    let kek = dir.path().join("kek");
    generate_kek(&kek);
    let key = std::fs::read(&kek).expect("read KEK");
    assert_eq!(key.len(), 32);
    let (ok, _, err) = run(sealkv().args(["kek", "generate"]).arg(&kek));
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&kek).expect("read KEK"), key);
    let mode = std::fs::metadata(&kek)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// A stored ciphertext with one flipped byte reads as an integrity error, never as
/// other bytes, and is counted by reason.
#[test]
fn tampered_value_is_an_integrity_error_and_counted() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let mut node = Node::new(dir.path(), 1, &encrypted_flags(&kek));
    node.start("");
    encryption_on(&node);
    set_eventually(&node, "tampered", "a value worth protecting");
    set_eventually(&node, "intact", "left alone");
    set_eventually(&node, "relabelled", "sealed, then marked cleartext on disk");
    set_eventually(&node, "deleted", "deleted, then undeleted on disk");
    let _: () = node.redis().del("deleted").expect("DEL");
    assert!(node.terminate().success(), "{}", node.log_text());

    {
        let store = RocksStore::open(node.data_dir.join("db"), RocksStoreOptions::default())
            .expect("open store");
        let rewrite = |key: &[u8], edit: &dyn Fn(&mut sealkv_store::mvcc::StoredValue)| {
            let v = store.get_at(key, u64::MAX).expect("get").expect("present");
            let mut value = v.value;
            edit(&mut value);
            let mut batch = WriteBatch::new();
            batch.put(key, v.commit_version, value).expect("put");
            batch.set_applied_index(store.applied_index().expect("applied"));
            store.commit(batch).expect("commit");
        };
        // One ciphertext byte; one header byte (sealed -> cleartext); the
        // tombstone bit of a sealed delete.
        rewrite(b"tampered", &|v| {
            let byte = v.body.len() - 20;
            v.body[byte] ^= 0x01;
        });
        rewrite(b"relabelled", &|v| {
            v.header.encryption = sealkv_store::mvcc::EncryptionState::Clear;
        });
        rewrite(b"deleted", &|v| v.header.tombstone = false);
    }

    node.start("");
    let got = eventually("GET intact", LONG, || {
        let r: RedisResult<Option<String>> = node.try_redis()?.get("intact");
        r.ok().flatten()
    });
    assert_eq!(got, "left alone");
    let err = node
        .redis()
        .get::<_, Option<String>>("tampered")
        .expect_err("a tampered value");
    assert_eq!(err.code(), Some("INTEGRITY"), "{err}");
    for key in ["relabelled", "deleted"] {
        let err = node
            .redis()
            .get::<_, Option<String>>(key)
            .expect_err("a header flipped on disk");
        assert_eq!(err.code(), Some("INTEGRITY"), "{key}: {err}");
    }
    let metrics = node.metrics();
    for reason in ["integrity\"} 2", "cleartext_after_switch\"} 1"] {
        assert!(
            metrics.contains(&format!("sealkv_decrypt_failures_total{{reason=\"{reason}")),
            "{reason}: {metrics}"
        );
    }
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// `key` as `node` has applied it (a stale read), once it equals `value`.
pub(crate) fn converges_stale(node: &Node, key: &str, value: &str) {
    eventually(&format!("node {} to apply {key}", node.id), LONG, || {
        let mut conn = node.try_redis()?;
        redis::cmd("READONLY").query::<()>(&mut conn).ok()?;
        let got: Option<String> = conn.get(key).ok()?;
        (got.as_deref() == Some(value)).then_some(())
    });
}

/// A learner added to an encrypted cluster after the log was compacted catches up
/// by snapshot, gets the wrapped keys with it, opens the values it holds and seals
/// the writes that follow; an id sharing its low 16 bits with a member is refused.
#[test]
fn a_learner_gets_the_keys_with_a_snapshot() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let mut flags = encrypted_flags(&kek);
    flags.extend(["--compact-threshold", "20", "--compact-keep", "2"]);
    let mut c = Cluster::start_in(dir, 3, &flags);
    let leader = c.leader();
    set_eventually(c.node(leader), "seed", "first");
    let prefix = marker_prefix();
    write_marked(c.node(leader), &prefix, 0..200);
    let first = c.node(leader).status().expect("status")["first_index"]
        .as_u64()
        .expect("first_index");
    assert!(first > 20, "the leader did not compact its log: {first}");

    // 65537 shares its low 16 bits with node 1: its nonces could collide.
    let admin = c.node(leader).admin.clone();
    let (ok, _, err) = run(sealkv().args([
        "cluster",
        "add-learner",
        "--id",
        "65537",
        "--raft-addr",
        "127.0.0.1:1",
        "--admin-addr",
        &admin,
    ]));
    assert!(!ok);
    assert!(err.contains("low 16 bits"), "{err}");

    let kek = c.dir.path().join("kek");
    let mut learner_flags = vec!["--join"];
    learner_flags.extend(encrypted_flags(&kek));
    let mut learner = Node::new(c.dir.path(), 4, &learner_flags);
    learner.start(&format!("{},4={}", c.peers, learner.raft));
    let (ok, out, err) = add_learner(&admin, &learner);
    assert!(ok, "add-learner: {out}{err}");
    converges_stale(&learner, &marked_key(199), &marked_value(&prefix, 199));
    converges_stale(&learner, "seed", "first");
    assert!(
        learner
            .metrics()
            .contains("sealkv_snapshots_installed_total 1"),
        "the learner did not catch up by snapshot"
    );
    let status = encryption_status(&learner);
    assert_eq!(status["bootstrapped"], Value::Bool(true), "{status}");
    assert_eq!(status["storage_envelope"], Value::Bool(true), "{status}");
    // It seals what it applies after the snapshot, and registers its epochs.
    set_eventually(c.node(leader), "later", "second");
    converges_stale(&learner, "later", "second");
    eventually("the learner's epochs registered", LONG, || {
        epochs_registered(&encryption_status(&learner), 4).then_some(())
    });
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// `rotate-dek` calls at the same moment, ten at a time spread over every node, once halted
/// every replica ("epoch rollback"): each node chose the next key id from its own
/// view and registered the others under it. They now run one at a time on the
/// leader (followers forward them), each with a key id above every id seen: every
/// call succeeds or is refused with a reason, and the cluster keeps serving.
#[test]
fn concurrent_rotations_leave_a_working_cluster() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let prefix = marker_prefix();
    let mut c = Cluster::start_in(dir, 3, &encrypted_flags(&kek));
    let leader = c.leader();
    set_eventually(c.node(leader), "enc:first", "first");
    write_marked(c.node(leader), &prefix, 0..200);
    for node in &c.nodes {
        encryption_on(node);
    }

    // Rounds of ten calls on connections opened beforehand, released together and
    // then spread by a round's spacing, so that some call picks its key id while
    // another's entries are still being applied (the interleaving that halted).
    let mut results: Vec<(u16, String)> = Vec::new();
    for spacing_us in [0u64, 500, 1000, 2000, 4000] {
        let start = std::sync::Barrier::new(10);
        let round: Vec<(u16, String)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..10)
                .map(|i| {
                    let admin = c.nodes[i % 3].admin.clone();
                    let purpose = if i % 2 == 0 { "storage" } else { "raft" };
                    let start = &start;
                    let delay = Duration::from_micros(spacing_us * i as u64);
                    s.spawn(move || rotate_at_once(&admin, purpose, start, delay))
                })
                .collect();
            calls
                .into_iter()
                .map(|h| h.join().expect("rotate thread"))
                .collect()
        });
        results.extend(round);
    }
    let mut rotated = 0;
    for (code, body) in &results {
        if *code == 200 {
            assert!(body.contains(r#""applied":"rotation""#), "{body}");
            rotated += 1;
        } else {
            // A refusal names its reason and says what to do; it is never a halt.
            assert!(
                [409, 503].contains(code) && (body.contains("refused") || body.contains("retry")),
                "a failed rotation must say why: {code} {body}"
            );
        }
    }
    assert!(rotated >= 1, "no rotation went through: {results:?}");

    // Every node applied the same rotations, none halted, and every value reads
    // back through every node; new writes work everywhere.
    let sample: Vec<usize> = (0..200).step_by(7).collect();
    for node in &c.nodes {
        let status = node.status().expect("status");
        assert!(
            status["halted"].is_null(),
            "node {} halted: {status}",
            node.id
        );
        read_marked(node, &prefix, &sample);
        set_eventually(node, &format!("after:{}", node.id), "after");
    }
    // The other operations are forwarded by a follower too.
    let follower = c.other_than(leader);
    for (path, body) in [
        ("/v1/encryption/enable-envelope", r#"{"envelope":"raft"}"#),
        ("/v1/encryption/register-writer", ""),
    ] {
        let (code, answer) =
            http(&c.node(follower).admin, "POST", path, Some(body)).expect("admin answer");
        assert_eq!(code, 200, "{path} through node {follower}: {answer}");
    }
    let (code, answer) = http(
        &c.node(follower).admin,
        "POST",
        "/v1/encryption/bootstrap",
        Some("{}"),
    )
    .expect("admin answer");
    assert_eq!(code, 409, "a second bootstrap is refused: {answer}");
    assert!(answer.contains("bootstrapped already"), "{answer}");
    // Nobody registers a node that is not a member (its epochs are its own).
    let (code, answer) = http(
        &c.node(follower).admin,
        "POST",
        "/v1/encryption/register-writer",
        Some(r#"{"registrations":[{"dek_id":1,"full_node_id":99,"local_epoch":5}]}"#),
    )
    .expect("admin answer");
    assert_eq!(code, 409, "a stranger's registration is refused: {answer}");
    assert!(answer.contains("node 99 is not a member"), "{answer}");
    let leader_keys = encryption_status(c.node(leader))["keys"]
        .as_array()
        .expect("keys")
        .len();
    assert_eq!(
        leader_keys,
        2 + rotated,
        "each successful rotation installs exactly one new key: {results:?}"
    );
    for node in &c.nodes {
        eventually(&format!("node {} to hold every key", node.id), LONG, || {
            let keys = encryption_status(node)["keys"].as_array()?.len();
            (keys == leader_keys).then_some(())
        });
    }
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// `POST /v1/encryption/rotate-dek` on a connection opened first, sent `delay` after
/// every caller reached `start` (a load pattern, not a wait): the answer's status
/// and body.
fn rotate_at_once(
    admin: &str,
    purpose: &str,
    start: &std::sync::Barrier,
    delay: Duration,
) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = format!(r#"{{"purpose":"{purpose}"}}"#);
    let request = format!(
        "POST /v1/encryption/rotate-dek HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    start.wait();
    std::thread::sleep(delay);
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("answer");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// An encrypted follower restored from an older copy of its data dir, restarted
/// after a new leader was elected (so the leader's heartbeat cannot show what it
/// lost): its epoch equals the one the cluster recorded for its later load, and it
/// is refused before it applies, and so seals, anything. Then wiped, it is refused
/// too. The cluster keeps serving.
#[test]
fn a_restored_or_wiped_encrypted_node_is_refused_before_it_seals() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let prefix = marker_prefix();
    let mut c = Cluster::start_in(dir, 3, &encrypted_flags(&kek));
    let peers = c.peers.clone();
    let leader = c.leader();
    set_eventually(c.node(leader), "enc:first", "first");
    write_marked(c.node(leader), &prefix, 0..100);
    for node in &c.nodes {
        encryption_on(node);
    }
    let victim = c.other_than(leader);

    // A copy of the victim's data dir; then a restart registers a new epoch.
    assert!(c.node(victim).terminate().success());
    let data = c.node(victim).data_dir.clone();
    let copy = c.dir.path().join("copy");
    copy_dir(&data, &copy);
    c.node(victim).start(&peers);
    eventually("the victim's new epochs registered", LONG, || {
        let s = encryption_status(c.node(victim));
        epochs_registered(&s, victim).then_some(())
    });
    // Values the victim seals in this load, under its new epoch: a restored copy
    // would replay them under the same epoch (and the nonce ledgers show it).
    write_marked(c.node(leader), &prefix, 100..200);
    let target = c.node(leader).status().expect("status")["commit_index"]
        .as_u64()
        .expect("commit index");
    eventually("the victim to apply them", LONG, || {
        let applied = c.node(victim).status()?["applied_index"].as_u64()?;
        (applied >= target).then_some(())
    });

    // Restored, after a new leader took over.
    assert!(c.node(victim).terminate().success());
    std::fs::remove_dir_all(&data).expect("remove data dir");
    copy_dir(&copy, &data);
    assert!(c.node(leader).terminate().success());
    c.node(leader).start(&peers);
    let leader = c.leader();
    let log = refused(c.node(victim), &peers);
    assert!(log.contains("earlier copy"), "{log}");

    // Wiped.
    std::fs::remove_dir_all(&data).expect("remove data dir");
    refused(c.node(victim), &peers);

    set_eventually(c.node(leader), "enc:after", "after");
    let sample: Vec<usize> = (0..100).step_by(9).collect();
    read_marked(c.node(leader), &prefix, &sample);
    // No (key, nonce) pair was sealed twice, across nodes and process loads.
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// The KEK given in `SEALKV_KEK_BASE64` is gone from the running node's
/// environment, `/proc/<pid>/environ` included (removing the variable alone leaves
/// it there), and the node runs encrypted with it.
#[test]
fn the_env_kek_does_not_stay_in_proc_environ() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = base64(&[0x42; 32]);
    let mut node = Node::new(dir.path(), 1, &["--encryption-enabled"]);
    node.set_env("SEALKV_KEK_BASE64", &kek);
    node.start("");
    encryption_on(&node);
    set_eventually(&node, "k", "v");
    let pid = node.pid().expect("running");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&kek),
        "the KEK is readable in /proc/{pid}/environ"
    );
    assert!(
        environ.contains("SEALKV_NONCE_LEDGER="),
        "not the node's environment: {environ}"
    );
}

/// The local epochs in a node's sidecar, by key id.
fn sidecar_epochs(node: &Node) -> Vec<(String, u64)> {
    let path = node.data_dir.join("encryption").join("keys.json");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read sidecar")).expect("sidecar JSON");
    let mut epochs: Vec<(String, u64)> = doc["keys"]
        .as_object()
        .expect("keys")
        .iter()
        .map(|(id, k)| (id.clone(), k["local_epoch"].as_u64().expect("epoch")))
        .collect();
    epochs.sort();
    epochs
}

/// A start that fails after the keyring is open (a port in use) leaves the key
/// epochs as they were: a restart loop does not use them up. A sidecar deleted
/// after the log was compacted (so no key entry is left to show it) is refused
/// too, and so is a start without encryption on a store that holds the keys.
#[test]
fn failed_starts_keep_their_epochs_and_a_missing_sidecar_is_refused() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let flags = encrypted_flags(&kek);
    let mut node = Node::new(dir.path(), 1, &flags);
    node.start("");
    encryption_on(&node);
    set_eventually(&node, "k", "v");
    let (code, body) = http(&node.admin, "POST", "/v1/raft/compact", None).expect("compact");
    assert_eq!(code, 200, "{body}");
    assert!(node.terminate().success(), "{}", node.log_text());
    let before = sidecar_epochs(&node);

    // The Redis port is taken: the start fails, three times, and no epoch moves.
    let squatter = std::net::TcpListener::bind(&node.redis).expect("take the redis port");
    for _ in 0..3 {
        start_refused(&node, &flags, None, "redis");
    }
    drop(squatter);
    assert_eq!(
        sidecar_epochs(&node),
        before,
        "a failed start used up epochs"
    );
    node.start("");
    let after = sidecar_epochs(&node);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a.1 <= b.1 + 1),
        "one start raises an epoch by one at most: {before:?} -> {after:?}"
    );
    set_eventually(&node, "k2", "v2");
    assert!(node.terminate().success(), "{}", node.log_text());

    // The sidecar is deleted: refused, with or without encryption.
    std::fs::remove_file(node.data_dir.join("encryption").join("keys.json"))
        .expect("delete the sidecar");
    start_refused(&node, &flags, None, "keys.json is missing");
    start_refused(&node, &[], None, "holds the cluster's encryption keys");
    let sealed = assert_no_nonce_repeats(dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

/// Two members whose ids share their low 16 bits would build the same nonces: an
/// encrypted node started with such `--peers` is refused before anything is
/// proposed (a cleartext cluster does not use the low bits and starts).
#[test]
fn peers_that_share_their_low_16_bits_are_refused_when_encrypted() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let node = Node::new(dir.path(), 1, &[]);
    let other = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={},65537={other}", node.raft);
    let mut flags = encrypted_flags(&kek);
    flags.extend(["--peers", peers.as_str()]);
    let line = start_refused(&node, &flags, None, "share their low 16 bits");
    assert!(line.contains("1 and 65537"), "{line}");
    assert!(
        !node.data_dir.join("encryption").join("keys.json").exists(),
        "a refused start wrote a sidecar"
    );
}

/// kill -9 of the leader and then of a follower while writes go on: every
/// acknowledged write reads back from every node, and no (key, nonce) pair was
/// sealed twice across the six process loads.
#[test]
fn kill_9_under_writes_loses_nothing_and_repeats_no_nonce() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let mut c = Cluster::start_in(dir, 3, &encrypted_flags(&kek));
    let peers = c.peers.clone();
    for node in &c.nodes {
        encryption_on(node);
    }
    let mut acked: Vec<usize> = Vec::new();
    let mut next = 0usize;
    // Writes through any node that answers, each retried until it is acknowledged
    // or the node fails; acknowledged ones are recorded.
    let mut write_some = |c: &Cluster, n: usize, acked: &mut Vec<usize>| {
        for _ in 0..n {
            let i = next;
            next += 1;
            for node in c.nodes.iter().cycle().take(30) {
                let Some(mut conn) = node.try_redis() else {
                    continue;
                };
                let r: RedisResult<()> = conn.set(format!("kill:{i}"), format!("value-{i}"));
                if r.is_ok() {
                    acked.push(i);
                    break;
                }
            }
        }
    };
    write_some(&c, 100, &mut acked);
    for round in 0..2 {
        let leader = c.leader();
        let victim = if round == 0 {
            leader
        } else {
            c.other_than(leader)
        };
        c.node(victim).kill();
        write_some(&c, 100, &mut acked);
        c.node(victim).start(&peers);
        write_some(&c, 50, &mut acked);
    }
    assert!(
        acked.len() >= 300,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for node in &c.nodes {
        eventually(
            &format!("node {} to read every write", node.id),
            LONG,
            || {
                let mut conn = node.try_redis()?;
                acked
                    .iter()
                    .all(|i| {
                        let v: RedisResult<String> = conn.get(format!("kill:{i}"));
                        v.ok().as_deref() == Some(format!("value-{i}").as_str())
                    })
                    .then_some(())
            },
        );
    }
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}
