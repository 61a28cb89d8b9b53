//! KEK tests: the elastickv `kek.json` vectors, KEK file checks and redaction.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sealkv_encryption::kek::{
    FileKekProvider, Kek, KekError, KekProvider, WRAPPED_DEK_LEN, unwrap_dek, wrap_dek,
    wrap_dek_with_nonce,
};
use serde_json::Value;

use crate::vectors::{cases, hex, load};

fn kek_field(v: &Value) -> Kek {
    Kek::from_bytes(hex(v).try_into().expect("32-byte kek"))
}

fn class<T>(r: Result<T, KekError>) -> Option<&'static str> {
    r.err().map(|e| e.class())
}

/// Writes `bytes` to a fresh file in `dir` with permission bits `mode`.
fn kek_file(dir: &Path, bytes: &[u8], mode: u32) -> std::path::PathBuf {
    let path = dir.join(format!("kek-{mode:o}-{}", bytes.len()));
    std::fs::write(&path, bytes).expect("write kek file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod kek file");
    path
}

/// Checks one case of `section`; panics with the case name on a mismatch.
fn check(section: &str, case: &Value, dir: &Path) {
    let name = case["name"].as_str().expect("name");
    let want_class = case.get("error").and_then(Value::as_str);
    match section {
        "unwrap" => {
            let kek = kek_field(&case["kek_hex"]);
            let (dek, wrapped) = (hex(&case["dek_hex"]), hex(&case["wrapped_hex"]));
            let got = unwrap_dek(&kek, &wrapped).expect(name);
            assert_eq!(got.as_bytes().to_vec(), dek, "{name}: unwrap");
            let nonce = hex(&case["nonce_hex"]).try_into().expect("12-byte nonce");
            let rewrapped = wrap_dek_with_nonce(&kek, &dek, nonce).expect(name);
            assert_eq!(rewrapped.to_vec(), wrapped, "{name}: wrap with nonce");
        }
        "unwrap_invalid" => {
            let got = unwrap_dek(&kek_field(&case["kek_hex"]), &hex(&case["wrapped_hex"]));
            assert_eq!(class(got), want_class, "{name}");
        }
        "wrap_invalid" => {
            let kek = kek_field(&case["kek_hex"]);
            let dek = hex(&case["dek_hex"]);
            assert_eq!(class(wrap_dek(&kek, &dek)), want_class, "{name}: wrap");
            assert_eq!(
                class(wrap_dek_with_nonce(&kek, &dek, [0; 12])),
                want_class,
                "{name}: with nonce"
            );
        }
        "file_load" => {
            let mode =
                u32::from_str_radix(case["mode"].as_str().expect("mode"), 8).expect("octal mode");
            let bytes = hex(&case["file_hex"]);
            let path = kek_file(dir, &bytes, mode);
            let got = Kek::from_file(&path);
            match (&got, want_class) {
                (Ok(kek), None) => {
                    // The loaded key is the file's: it opens what a key from the same bytes wraps.
                    let same = Kek::from_bytes(bytes.clone().try_into().expect("32 bytes"));
                    let wrapped = wrap_dek(&same, &[5; 32]).expect("wrap");
                    assert_eq!(
                        unwrap_dek(kek, &wrapped).expect(name).as_bytes(),
                        &[5; 32],
                        "{name}"
                    );
                }
                _ => assert_eq!(class(got), want_class, "{name}"),
            }
            std::fs::remove_file(&path).expect("remove kek file");
        }
        other => panic!("no check for section {other}"),
    }
}

#[test]
fn kek_vectors() {
    let doc = load("kek.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut total = 0;
    for section in ["unwrap", "unwrap_invalid", "wrap_invalid", "file_load"] {
        let list = cases(&doc, section);
        for case in list {
            check(section, case, dir.path());
        }
        assert!(!list.is_empty(), "{section} has no cases");
        total += list.len();
    }
    assert!(total > 0);
}

#[test]
fn wrap_draws_a_fresh_nonce_and_round_trips() {
    let kek = Kek::from_bytes([0x33; 32]);
    let a = wrap_dek(&kek, &[0x44; 32]).expect("wrap a");
    let b = wrap_dek(&kek, &[0x44; 32]).expect("wrap b");
    assert_eq!(a.len(), WRAPPED_DEK_LEN);
    assert_ne!(a.get(..12), b.get(..12), "two wraps shared a nonce");
    for wrapped in [a, b] {
        assert_eq!(
            unwrap_dek(&kek, &wrapped).expect("unwrap").as_bytes(),
            &[0x44; 32]
        );
    }
}

#[test]
fn flipped_byte_in_wrapped_dek_never_unwraps() {
    let kek = Kek::from_bytes([0x33; 32]);
    let wrapped = wrap_dek(&kek, &[0x44; 32]).expect("wrap");
    for pos in 0..WRAPPED_DEK_LEN {
        let mut tampered = wrapped;
        *tampered.get_mut(pos).expect("in range") ^= 0x01;
        assert_eq!(
            class(unwrap_dek(&kek, &tampered)),
            Some("integrity"),
            "flip at {pos}"
        );
    }
    for len in 0..WRAPPED_DEK_LEN {
        let prefix = wrapped.get(..len).expect("prefix");
        assert_eq!(
            class(unwrap_dek(&kek, prefix)),
            Some("length"),
            "prefix of {len}"
        );
    }
}

#[test]
fn insecure_mode_wins_over_wrong_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    for len in [0, 31, 33, 4096] {
        let path = kek_file(dir.path(), &vec![1; len], 0o644);
        match Kek::from_file(&path) {
            Err(KekError::InsecureMode { mode, .. }) => assert_eq!(mode, 0o644),
            other => panic!("{len} bytes at 0644: {other:?}"),
        }
    }
}

#[test]
fn kek_size_names_the_file_and_its_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = kek_file(dir.path(), &[1; 1 << 20], 0o600);
    match Kek::from_file(&path) {
        Err(KekError::KekSize { path: p, len }) => assert_eq!((p, len), (path, 1 << 20)),
        other => panic!("1 MiB kek file: {other:?}"),
    }
}

#[test]
fn directory_is_not_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("kek");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_eq!(class(Kek::from_file(&sub)), Some("not_regular_file"));
    assert!(matches!(Kek::from_file(&sub), Err(KekError::NotRegularFile { path }) if path == sub));
}

#[test]
fn missing_file_is_io_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent");
    match Kek::from_file(&path) {
        Err(e @ KekError::Io { .. }) => {
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}")
        }
        other => panic!("missing file: {other:?}"),
    }
}

#[test]
fn symlink_to_a_good_file_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = kek_file(dir.path(), &[9; 32], 0o600);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    assert!(Kek::from_file(&link).is_ok());
}

#[test]
fn file_provider_loads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = kek_file(dir.path(), &[9; 32], 0o400);
    let provider = FileKekProvider::new(&path);
    assert_eq!(provider.kind(), "file");
    let kek = provider.load().expect("load");
    let wrapped = wrap_dek(&Kek::from_bytes([9; 32]), &[1; 32]).expect("wrap");
    assert_eq!(
        unwrap_dek(&kek, &wrapped).expect("unwrap").as_bytes(),
        &[1; 32]
    );
    let bad = FileKekProvider::new(dir.path().join("absent"));
    assert_eq!(class(bad.load()), Some("io"));
}

#[test]
fn debug_output_has_no_key_bytes() {
    let bytes: [u8; 32] = std::array::from_fn(|i| 0xc0 + i as u8);
    let kek = Kek::from_bytes(bytes);
    let dek = unwrap_dek(&kek, &wrap_dek(&kek, &bytes).expect("wrap")).expect("unwrap");
    let key_hex = ::hex::encode(bytes);
    for text in [
        format!("{kek:?}"),
        format!("{kek:#?}"),
        format!("{dek:?}"),
        format!("{dek:#?}"),
    ] {
        assert!(!text.to_lowercase().contains(&key_hex[..8]), "{text}");
        assert!(!text.contains("192") && !text.contains("0xc0"), "{text}");
    }
    assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    assert_eq!(format!("{dek:?}"), "Dek(<redacted>)");
}

#[test]
fn fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("kek");
    let status = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    // No writer ever opens the FIFO: opening it for reading would block forever.
    assert_eq!(class(Kek::from_file(&fifo)), Some("not_regular_file"));
}

mod env_and_generate {
    use super::*;
    use base64::Engine as _;
    use sealkv_encryption::kek::{EnvKekProvider, KEK_ENV_VAR, generate_kek_file};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The provider's key is the decoded bytes: it unwraps what they wrap.
    fn assert_loads(provider: &EnvKekProvider, bytes: [u8; 32]) {
        let wrapped = wrap_dek(&Kek::from_bytes(bytes), &[7; 32]).expect("wrap");
        let kek = provider.load().expect("load");
        assert_eq!(
            unwrap_dek(&kek, &wrapped).expect("unwrap").as_bytes(),
            &[7; 32]
        );
    }

    #[test]
    fn env_provider_decodes_padded_base64() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
        let provider = EnvKekProvider::from_base64(&b64(&bytes)).expect("good base64");
        assert_eq!(provider.kind(), "env");
        assert_loads(&provider, bytes);
        // Surrounding whitespace, such as the newline of `base64 < kek`, is ignored.
        let padded = format!("  {}\n", b64(&bytes));
        assert_loads(
            &EnvKekProvider::from_base64(&padded).expect("trimmed"),
            bytes,
        );
        assert_eq!(KEK_ENV_VAR, "SEALKV_KEK_BASE64");
        assert_eq!(format!("{provider:?}"), "EnvKekProvider(<redacted>)");
    }

    #[test]
    fn env_provider_refuses_bad_text_without_echoing_it() {
        let good = b64(&[0xab; 32]);
        let unpadded = good.trim_end_matches('=').to_string();
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
        let cases: [(&str, &str, Option<usize>); 8] = [
            ("not base64", "!!!!not-base64!!!!", None),
            ("unpadded", &unpadded, None),
            ("url-safe alphabet", &url_safe, None),
            ("inner space", "AQEB AQEB", None),
            ("empty", "", Some(0)),
            ("31 bytes", &b64(&[1; 31]), Some(31)),
            ("33 bytes", &b64(&[1; 33]), Some(33)),
            ("64 bytes", &b64(&[1; 64]), Some(64)),
        ];
        for (name, text, want_len) in cases {
            let err = EnvKekProvider::from_base64(text).expect_err(name);
            match (&err, want_len) {
                (KekError::EnvBase64, None) => {}
                (KekError::EnvKekSize { len }, Some(want)) => assert_eq!(*len, want, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
            let message = err.to_string();
            assert!(message.contains(KEK_ENV_VAR), "{name}: {message}");
            if text.len() > 4 {
                assert!(!message.contains(text), "{name}: message echoes the text");
            }
        }
    }

    #[test]
    fn generated_kek_file_loads_and_is_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        generate_kek_file(&path).expect("generate");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o077, 0, "group/other bits set");
        assert_eq!(meta.permissions().mode() & 0o600, 0o600);
        let kek = Kek::from_file(&path).expect("load generated kek");
        let wrapped = wrap_dek(&kek, &[3; 32]).expect("wrap");
        let again = FileKekProvider::new(&path).load().expect("load again");
        assert_eq!(
            unwrap_dek(&again, &wrapped).expect("unwrap").as_bytes(),
            &[3; 32]
        );

        // Two generated keys differ.
        let other = dir.path().join("kek2");
        generate_kek_file(&other).expect("generate second");
        assert_ne!(
            std::fs::read(&path).expect("read"),
            std::fs::read(&other).expect("read")
        );
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        generate_kek_file(&path).expect("generate");
        let before = std::fs::read(&path).expect("read");
        match generate_kek_file(&path) {
            Err(KekError::AlreadyExists { path: p }) => assert_eq!(p, path),
            other => panic!("second generate: {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "kek file changed"
        );

        // A symlink at the path is refused too, and its target is left alone.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write target");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(class(generate_kek_file(&link)), Some("already_exists"));
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }

    #[test]
    fn generate_into_a_missing_directory_is_a_write_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent").join("kek");
        match generate_kek_file(&path) {
            Err(KekError::Write {
                op: "create",
                path: p,
                ..
            }) => assert_eq!(p, path),
            other => panic!("missing dir: {other:?}"),
        }
    }
}
