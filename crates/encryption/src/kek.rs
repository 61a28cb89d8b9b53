//! The key-encryption key (KEK): loading it from a file, and wrapping DEKs under it.
//!
//! # Wrapped DEK
//!
//! A DEK is wrapped with AES-256-GCM under the KEK with an **empty AAD** and a fresh
//! random nonce. The result is always [`WRAPPED_DEK_LEN`] (60) bytes, byte-compatible
//! with elastickv's file KEK wrapper:
//!
//! ```text
//!  0                       12                                  44                 60
//!  +-----------------------+-----------------------------------+------------------+
//!  |       nonce (12)      |      ciphertext of the DEK (32)   |     tag (16)     |
//!  +-----------------------+-----------------------------------+------------------+
//! ```
//!
//! # KEK file
//!
//! The file holds the 32 raw key bytes: no encoding, no trailing newline. It must be
//! a regular file (symlinks are followed) and, on unix, readable by its owner only
//! (`mode & 0o077 == 0`). The mode is checked **before** the size, so a group- or
//! world-readable file is refused as insecure whatever it holds.
//!
//! ```no_run
//! use sealkv_encryption::kek::{FileKekProvider, KekProvider, unwrap_dek, wrap_dek};
//! use sealkv_encryption::envelope::Dek;
//!
//! let kek = FileKekProvider::new("/etc/sealkv/kek").load()?;
//! let dek = Dek::generate()?;
//! let wrapped = wrap_dek(&kek, dek.as_bytes())?;
//! assert_eq!(unwrap_dek(&kek, &wrapped)?.as_bytes(), dek.as_bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{Dek, KEY_LEN, NONCE_LEN, TAG_LEN};

/// Length of a KEK: an AES-256 key.
pub const KEK_LEN: usize = 32;
/// The environment variable that carries a KEK as standard padded base64, for tests
/// and throwaway clusters (see [`EnvKekProvider`]).
pub const KEK_ENV_VAR: &str = "SEALKV_KEK_BASE64";
/// Unix permission bits of a KEK file written by [`generate_kek_file`].
pub const KEK_FILE_MODE: u32 = 0o600;
/// Length of a DEK accepted by [`wrap_dek`].
pub const DEK_LEN: usize = KEY_LEN;
/// Length of a wrapped DEK: nonce ‖ ciphertext ‖ tag.
pub const WRAPPED_DEK_LEN: usize = NONCE_LEN + DEK_LEN + TAG_LEN;

/// Result of the KEK operations.
pub type Result<T, E = KekError> = std::result::Result<T, E>;

/// Why loading a KEK or wrapping or unwrapping a DEK failed. No message ever contains
/// key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// A wrapped DEK is not [`WRAPPED_DEK_LEN`] bytes. Checked before any crypto.
    #[error("wrapped dek is {len} bytes, want 60")]
    Length {
        /// The length given.
        len: usize,
    },
    /// The wrapped DEK failed GCM authentication: it was changed, or the KEK is the
    /// wrong one.
    #[error("wrapped dek failed authentication under this kek")]
    Integrity,
    /// A DEK to wrap is not [`DEK_LEN`] bytes.
    #[error("dek is {len} bytes, want 32")]
    DekSize {
        /// The length given.
        len: usize,
    },
    /// The KEK file is readable or writable by group or others.
    #[error("kek file {} has mode {mode:04o}, want owner-only (mode & 0o077 == 0)", path.display())]
    InsecureMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK file is not exactly [`KEK_LEN`] bytes.
    #[error("kek file {} is {len} bytes, want exactly 32", path.display())]
    KekSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The KEK path names a directory, FIFO, device or socket, not a regular file.
    #[error("kek file {} is not a regular file", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// The KEK file could not be inspected, opened or read.
    #[error("read kek file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The system random number generator failed to draw a nonce.
    #[error("random number generator failed")]
    Random,
    /// The AES-GCM library refused an operation that should not fail.
    #[error("aes-gcm {op} failed")]
    Crypto {
        /// The operation: `"key setup"` or `"seal"`.
        op: &'static str,
    },
    /// The text given for [`KEK_ENV_VAR`] is not standard padded base64. The text
    /// itself is never part of the message.
    #[error("{KEK_ENV_VAR} is not standard padded base64")]
    EnvBase64,
    /// The text given for [`KEK_ENV_VAR`] decodes to a length other than
    /// [`KEK_LEN`].
    #[error("{KEK_ENV_VAR} decodes to {len} bytes, want exactly 32")]
    EnvKekSize {
        /// The decoded length.
        len: usize,
    },
    /// [`generate_kek_file`] refuses to replace a file that already exists.
    #[error("kek file {} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// A new KEK file could not be created, written or synced.
    #[error("{op} kek file {}", path.display())]
    Write {
        /// What failed, as a verb phrase (`"create"`, `"write"`, `"fsync"`,
        /// `"fsync the directory of"`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl KekError {
    /// The error class, as named by the elastickv vectors (`length`, `integrity`,
    /// `dek_size`, `insecure_mode`, `kek_size`); the variants with no vector class
    /// return `not_regular_file`, `io`, `random`, `crypto`, `env_base64`,
    /// `env_kek_size`, `already_exists` and `write`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Length { .. } => "length",
            Self::Integrity => "integrity",
            Self::DekSize { .. } => "dek_size",
            Self::InsecureMode { .. } => "insecure_mode",
            Self::KekSize { .. } => "kek_size",
            Self::NotRegularFile { .. } => "not_regular_file",
            Self::Io { .. } => "io",
            Self::Random => "random",
            Self::Crypto { .. } => "crypto",
            Self::EnvBase64 => "env_base64",
            Self::EnvKekSize { .. } => "env_kek_size",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Write { .. } => "write",
        }
    }
}

/// A key-encryption key: 32 bytes that wrap DEKs.
///
/// The bytes are zeroed when the value is dropped. `Debug` prints no key material and
/// there is no `Display`. There is deliberately no accessor for the bytes: a KEK only
/// wraps and unwraps.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Kek([u8; KEK_LEN]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Wraps key bytes. The caller's array is a copy that this type cannot zero.
    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Self {
        Self(bytes)
    }

    /// Loads a KEK file (see the module docs), in this order:
    ///
    /// 1. the path (symlinks followed) must be a regular file, else
    ///    [`KekError::NotRegularFile`];
    /// 2. on unix, `mode & 0o077` must be 0, else [`KekError::InsecureMode`];
    /// 3. the size must be 32, else [`KekError::KekSize`].
    ///
    /// Failing to inspect, open or read the file is [`KekError::Io`]. The checks run
    /// on the path before it is opened, so a FIFO is refused without blocking, and
    /// again on the open file, so a file swapped in between is caught. At most 33
    /// bytes are read, whatever the file has grown to.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| KekError::Io {
            path: path.to_path_buf(),
            source,
        };
        check_metadata(path, &std::fs::metadata(path).map_err(io_err)?)?;
        let mut file = File::open(path).map_err(io_err)?;
        check_metadata(path, &file.metadata().map_err(io_err)?)?;

        // One spare byte tells a grown file from a 32-byte one.
        let mut buf = Zeroizing::new([0u8; KEK_LEN + 1]);
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match file.read(rest) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let size_err = || KekError::KekSize {
            path: path.to_path_buf(),
            len: filled as u64,
        };
        let key = buf.get(..filled).ok_or_else(size_err)?;
        let key: [u8; KEK_LEN] = key.try_into().map_err(|_| size_err())?;
        Ok(Self(key))
    }

    /// The AES-GCM key for this KEK.
    fn aead(&self) -> Result<LessSafeKey> {
        let key = UnboundKey::new(&AES_256_GCM, &self.0)
            .map_err(|_| KekError::Crypto { op: "key setup" })?;
        Ok(LessSafeKey::new(key))
    }
}

/// Checks that `meta` describes a regular, owner-only, 32-byte file.
fn check_metadata(path: &Path, meta: &Metadata) -> Result<()> {
    if !meta.is_file() {
        return Err(KekError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KekError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() != KEK_LEN as u64 {
        return Err(KekError::KekSize {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    Ok(())
}

/// Wraps a DEK under the KEK with a fresh random nonce (see the module docs for the
/// layout). Fails with [`KekError::DekSize`] unless `dek` is 32 bytes.
pub fn wrap_dek(kek: &Kek, dek: &[u8]) -> Result<[u8; WRAPPED_DEK_LEN]> {
    if dek.len() != DEK_LEN {
        return Err(KekError::DekSize { len: dek.len() });
    }
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KekError::Random)?;
    wrap_dek_with_nonce(kek, dek, nonce)
}

/// Wraps a DEK under the KEK with the given nonce. Only for deterministic tests: a
/// nonce must never be used twice under one KEK, so production code calls
/// [`wrap_dek`]. Fails with [`KekError::DekSize`] unless `dek` is 32 bytes.
pub fn wrap_dek_with_nonce(
    kek: &Kek,
    dek: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<[u8; WRAPPED_DEK_LEN]> {
    let dek: &[u8; DEK_LEN] = dek
        .try_into()
        .map_err(|_| KekError::DekSize { len: dek.len() })?;
    // Sealed in place: the buffer holds the DEK until the seal succeeds.
    let mut ciphertext = Zeroizing::new(*dek);
    let tag = kek
        .aead()?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            ciphertext.as_mut_slice(),
        )
        .map_err(|_| KekError::Crypto { op: "seal" })?;
    let mut out = [0u8; WRAPPED_DEK_LEN];
    let (out_nonce, rest) = out.split_at_mut(NONCE_LEN);
    let (out_ct, out_tag) = rest.split_at_mut(DEK_LEN);
    out_nonce.copy_from_slice(&nonce);
    out_ct.copy_from_slice(ciphertext.as_slice());
    out_tag.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Unwraps a DEK wrapped by [`wrap_dek`]. Fails with [`KekError::Length`] unless
/// `wrapped` is 60 bytes (before any crypto), then [`KekError::Integrity`] if GCM
/// authentication fails.
pub fn unwrap_dek(kek: &Kek, wrapped: &[u8]) -> Result<Dek> {
    let wrapped: &[u8; WRAPPED_DEK_LEN] = wrapped
        .try_into()
        .map_err(|_| KekError::Length { len: wrapped.len() })?;
    let (nonce, sealed) = wrapped
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(KekError::Length {
            len: WRAPPED_DEK_LEN,
        })?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let plaintext = kek
        .aead()?
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::empty(), &mut buf)
        .map_err(|_| KekError::Integrity)?;
    // GCM keeps the length, so a 44-byte sealed part always opens to 32 bytes.
    Dek::from_slice(plaintext).map_err(|_| KekError::Integrity)
}

/// A source of the KEK.
///
/// `load` is called at startup and whenever a DEK must be wrapped or unwrapped; it
/// returns a fresh [`Kek`] the caller drops (and so zeroes) when done. An error means
/// the node cannot reach its keys and must not start or serve encrypted data: it is
/// never a reason to fall back to plaintext. Implementations must never log key bytes.
pub trait KekProvider: Send + Sync {
    /// Loads the KEK.
    fn load(&self) -> Result<Kek>;

    /// A short name of the provider kind for logs and errors, such as `"file"`.
    fn kind(&self) -> &'static str;
}

/// A [`KekProvider`] that reads the KEK from a file with [`Kek::from_file`] on every
/// load. The file should not live under the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKekProvider {
    /// Path of the KEK file.
    pub path: PathBuf,
}

impl FileKekProvider {
    /// A provider for the KEK file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl KekProvider for FileKekProvider {
    fn load(&self) -> Result<Kek> {
        Kek::from_file(&self.path)
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

/// A [`KekProvider`] holding a KEK given as base64 text, normally the value of
/// [`KEK_ENV_VAR`] (`SEALKV_KEK_BASE64`).
///
/// Meant for tests and throwaway clusters: an environment variable is visible to
/// anything that can read the process's environment, so production nodes should use
/// a [`FileKekProvider`]. The key is decoded once and kept in memory that is zeroed
/// on drop; [`KekProvider::load`] returns a copy.
///
/// This type never reads the environment itself. Reading the variable and then
/// removing it from the process environment (so that child processes and later
/// readers do not see it) is the binary's job: removing a variable needs `unsafe` in
/// edition 2024, which this crate forbids.
///
/// ```
/// use sealkv_encryption::kek::{EnvKekProvider, KekProvider};
///
/// // 32 bytes of 0x01, base64-encoded.
/// let provider = EnvKekProvider::from_base64("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")?;
/// assert_eq!(provider.kind(), "env");
/// let _kek = provider.load()?;
/// # Ok::<(), sealkv_encryption::kek::KekError>(())
/// ```
pub struct EnvKekProvider {
    key: Zeroizing<[u8; KEK_LEN]>,
}

impl fmt::Debug for EnvKekProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvKekProvider(<redacted>)")
    }
}

impl EnvKekProvider {
    /// Decodes `text` as standard padded base64 (RFC 4648 alphabet, `=` padding
    /// required) into a 32-byte KEK. Leading and trailing ASCII whitespace is
    /// ignored, so a value captured with a trailing newline still loads.
    ///
    /// # Errors
    /// [`KekError::EnvBase64`] when the text is not valid base64, then
    /// [`KekError::EnvKekSize`] when it does not decode to exactly 32 bytes. Neither
    /// message contains the text.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim_ascii();
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| KekError::EnvBase64)?,
        );
        let key: [u8; KEK_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KekError::EnvKekSize { len: decoded.len() })?;
        Ok(Self {
            key: Zeroizing::new(key),
        })
    }
}

impl KekProvider for EnvKekProvider {
    fn load(&self) -> Result<Kek> {
        Ok(Kek(*self.key))
    }

    fn kind(&self) -> &'static str {
        "env"
    }
}

/// Writes a new KEK file at `path`: 32 bytes from the system CSPRNG, in a file
/// created exclusively with mode [`KEK_FILE_MODE`] (0600, narrowed further by the
/// umask, never widened), written and fsynced, then its directory fsynced. The
/// result loads with [`Kek::from_file`].
///
/// The file should live outside every data directory.
///
/// # Errors
/// [`KekError::AlreadyExists`] when anything exists at `path` (a symlink
/// included): an existing KEK is never overwritten, since that would make every key
/// wrapped under it unreadable. [`KekError::Random`] when the CSPRNG fails (nothing
/// is created), [`KekError::Write`] when an I/O step fails; a partly written file is
/// removed.
pub fn generate_kek_file(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut key = Zeroizing::new([0u8; KEK_LEN]);
    SystemRandom::new()
        .fill(key.as_mut_slice())
        .map_err(|_| KekError::Random)?;

    let write_err = |op| {
        let path = path.to_path_buf();
        move |source| KekError::Write { op, path, source }
    };
    #[cfg(unix)]
    let mut options = {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = OpenOptions::new();
        options.mode(KEK_FILE_MODE);
        options
    };
    #[cfg(not(unix))]
    let mut options = OpenOptions::new();
    // `create_new` is O_CREAT | O_EXCL: it fails on any existing name and never
    // follows a symlink.
    let mut file = match options.write(true).create_new(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(KekError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(write_err("create")(e)),
    };
    let written = file
        .write_all(key.as_slice())
        .map_err(write_err("write"))
        .and_then(|()| file.sync_all().map_err(write_err("fsync")));
    drop(file);
    if let Err(e) = written {
        // The file is ours (create_new) and incomplete; leaving it would make the
        // next attempt fail as "already exists" over a useless key.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err("fsync the directory of"))
}
