//! The Redis password (`--redis-password-file`): loading it, holding it, and
//! checking a client's guess in constant time.
//!
//! sealkv has one user, Redis's `default`. With a password configured, a
//! connection must authenticate (`AUTH password`, `AUTH default password` or
//! `HELLO 3 AUTH default password`) before any command other than `AUTH`, `HELLO`
//! and `QUIT`; see the module docs of [`crate::resp`] for the replies.
//!
//! # The password file
//!
//! One line: the password, optionally followed by one newline (`\n` or `\r\n`),
//! which is not part of it. The file is refused when
//!
//! * it is not a regular file (symlinks are followed, so a Kubernetes secret
//!   mount works);
//! * on unix, its group or other permission bits are set (`mode & 0o077 != 0`):
//!   the rule `--kek-file` follows, and that of OpenSSH for private keys and
//!   libpq for `.pgpass`. A password others can read is disclosed already, and a
//!   refusal at startup is noticed where a warning in the log would not be;
//! * it holds nothing but the newline, holds a line break inside the password, or
//!   is larger than [`MAX_PASSWORD_LEN`] bytes.
//!
//! The password is read once, at startup, into memory that is zeroed when dropped;
//! it is never logged, and its `Debug` form is redacted.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use zeroize::Zeroizing;

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 4096;

/// Why a password file was refused. Every message names the file; none contains
/// any of its bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The file could not be inspected, opened or read.
    #[error("read password file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file.
    #[error("password file {} is not a regular file", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may access the file.
    #[error(
        "password file {} has mode {mode:04o}, want owner-only (chmod 600 it)",
        path.display()
    )]
    InsecureMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds no password.
    #[error("password file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The password has a line break before its end.
    #[error("password file {} has more than one line", path.display())]
    LineBreak {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_PASSWORD_LEN`] plus a newline.
    #[error("password file {} is longer than {MAX_PASSWORD_LEN} bytes", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
}

/// The password of Redis's `default` user. Zeroed when dropped; `Debug` shows no
/// byte of it.
#[derive(Clone)]
pub struct Password(Zeroizing<Vec<u8>>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// A password from its bytes, or `None` when `bytes` is empty: an empty password
    /// would let anyone in.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Option<Password> {
        (!bytes.is_empty()).then_some(Password(bytes))
    }

    /// Reads a password file (see the module docs for what is refused).
    ///
    /// # Errors
    /// A [`PasswordError`] naming the file and what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Password, PasswordError> {
        let io_err = |source| PasswordError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Checked on the path first, so a FIFO is refused without blocking, and
        // again on the open file, so a file swapped in between is caught.
        check_metadata(path, &std::fs::metadata(path).map_err(io_err)?)?;
        let file = File::open(path).map_err(io_err)?;
        check_metadata(path, &file.metadata().map_err(io_err)?)?;
        // The password, a CRLF, and one byte more to tell a file that is too long.
        let cap = MAX_PASSWORD_LEN + 3;
        let mut text = Zeroizing::new(Vec::with_capacity(cap));
        file.take(cap as u64)
            .read_to_end(&mut text)
            .map_err(io_err)?;
        let mut line: &[u8] = &text;
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if line.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::TooLong {
                path: path.to_path_buf(),
            });
        }
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return Err(PasswordError::LineBreak {
                path: path.to_path_buf(),
            });
        }
        Password::new(Zeroizing::new(line.to_vec())).ok_or_else(|| PasswordError::Empty {
            path: path.to_path_buf(),
        })
    }

    /// Whether `guess` is the password. Both are hashed with SHA-256 and the
    /// digests compared in constant time, so the time taken tells nothing about how
    /// much of the guess, or of its length, was right.
    pub fn matches(&self, guess: &[u8]) -> bool {
        let want = digest(&SHA256, &self.0);
        let got = digest(&SHA256, guess);
        verify_slices_are_equal(want.as_ref(), got.as_ref()).is_ok()
    }
}

/// Checks that `meta` describes a regular file only its owner may access.
fn check_metadata(path: &Path, meta: &Metadata) -> Result<(), PasswordError> {
    if !meta.is_file() {
        return Err(PasswordError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PasswordError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn reads_one_line_and_strips_one_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: &[(&[u8], &[u8])] = &[
            (b"s3cret", b"s3cret"),
            (b"s3cret\n", b"s3cret"),
            (b"s3cret\r\n", b"s3cret"),
            (b" spaced pass ", b" spaced pass "),
            (b"\xff\x00binary\n", b"\xff\x00binary"),
        ];
        for (i, (content, want)) in cases.iter().enumerate() {
            let path = file(dir.path(), &format!("p{i}"), content, 0o600);
            let password = Password::from_file(&path).expect("accepted");
            assert!(password.matches(want), "{}", content.escape_ascii());
            assert!(!password.matches(content) || content == want);
        }
        let long = vec![b'x'; MAX_PASSWORD_LEN];
        let path = file(dir.path(), "long", &long, 0o400);
        assert!(
            Password::from_file(&path)
                .expect("at the limit")
                .matches(&long)
        );
    }

    #[test]
    fn refuses_what_it_should() {
        let dir = tempfile::tempdir().expect("tempdir");
        let too_long = vec![b'x'; MAX_PASSWORD_LEN + 1];
        let cases: Vec<(&str, &[u8], u32, &str)> = vec![
            ("empty", b"", 0o600, "is empty"),
            ("newline", b"\n", 0o600, "is empty"),
            ("crlf", b"\r\n", 0o600, "is empty"),
            ("two-lines", b"a\nb\n", 0o600, "more than one line"),
            ("two-newlines", b"a\n\n", 0o600, "more than one line"),
            ("cr", b"a\rb", 0o600, "more than one line"),
            ("too-long", &too_long, 0o600, "longer than 4096 bytes"),
            ("group", b"pw", 0o640, "has mode 0640, want owner-only"),
            ("world", b"pw", 0o604, "has mode 0604, want owner-only"),
        ];
        for (name, content, mode, want) in cases {
            let path = file(dir.path(), name, content, mode);
            let err = Password::from_file(&path).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
        }
        let err = Password::from_file(dir.path()).expect_err("a directory");
        assert!(matches!(err, PasswordError::NotRegularFile { .. }), "{err}");
        let err = Password::from_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, PasswordError::Io { .. }), "{err}");
    }

    #[test]
    fn debug_is_redacted_and_comparison_is_exact() {
        let password = Password::new(Zeroizing::new(b"hunter2".to_vec())).expect("non-empty");
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        assert!(password.matches(b"hunter2"));
        for wrong in [&b""[..], b"hunter", b"hunter22", b"Hunter2", b"hunter2\n"] {
            assert!(!password.matches(wrong), "{}", wrong.escape_ascii());
        }
        assert!(Password::new(Zeroizing::new(Vec::new())).is_none());
    }
}
