//! The one durable-replace helper: every crash-safe file in sealkv is written here.
//!
//! [`durable_replace`] replaces a file's whole content so that a crash at any
//! moment leaves either the complete old file or the complete new file at the
//! target path, never a mix and never a torn prefix. The steps are:
//!
//! 1. remove a leftover `<name>.tmp` from an earlier crash (ignored when absent);
//! 2. create `<name>.tmp` in the same directory, exclusively, with the given mode;
//! 3. write every byte;
//! 4. fsync the temporary file, so its content is on disk before it has a name
//!    anyone reads;
//! 5. rename it over the target (atomic on POSIX filesystems within one directory);
//! 6. fsync the parent directory, so the rename itself survives a crash.
//!
//! The crash argument, step by step:
//!
//! * Before step 5 the target path is untouched: it holds the old file (or is
//!   absent if there was none). A half-written or unsynced `.tmp` may exist; no
//!   reader ever opens it, and the next call removes it in step 1.
//! * Step 5 is atomic: the name points at the old inode or the new one. The new
//!   inode was fsynced in step 4, so whichever one a reader sees is whole.
//! * Between steps 5 and 6 a crash may forget the rename, which again leaves the
//!   old, whole file. After step 6 the new file is durable.
//!
//! The caller learns of success only after step 6, so anything it does next (for
//! example replying that an entry was applied) happens after the file is durable.
//!
//! A filesystem that cannot fsync a directory cannot give step 6 its meaning;
//! [`check_dir_fsync`] refuses such a directory at startup rather than at the first
//! write.
//!
//! Crash safety is tested with a fail point: with the `testing` feature,
//! `durable_replace_stop_after` runs the same code and stops right after a named
//! [`DurableStep`], leaving the files exactly as a crash at that moment would (with
//! the page cache intact). With the test-only `failpoints` feature, the fail-rs
//! fail points `durable::before-rename` (tmp written and synced, target untouched)
//! and `durable::before-dir-fsync` (renamed, directory not yet synced) let a whole
//! node crash (`panic`) or fail (`return`) there; the node's `failpoints` process
//! tests use them.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The suffix of the temporary file written next to the target.
pub const TMP_SUFFIX: &str = ".tmp";

/// One step of [`durable_replace`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurableStep {
    /// Remove a `.tmp` file left over by an earlier crash.
    RemoveStaleTmp,
    /// Create the `.tmp` file with the requested mode.
    CreateTmp,
    /// Write the new content into the `.tmp` file.
    WriteTmp,
    /// Fsync the `.tmp` file.
    SyncTmp,
    /// Rename the `.tmp` file over the target.
    Rename,
    /// Open the parent directory.
    OpenDir,
    /// Fsync the parent directory.
    SyncDir,
}

impl DurableStep {
    /// Every step, in the order [`durable_replace`] runs them.
    pub const ALL: [DurableStep; 7] = [
        DurableStep::RemoveStaleTmp,
        DurableStep::CreateTmp,
        DurableStep::WriteTmp,
        DurableStep::SyncTmp,
        DurableStep::Rename,
        DurableStep::OpenDir,
        DurableStep::SyncDir,
    ];

    /// A short verb phrase naming the step, used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DurableStep::RemoveStaleTmp => "remove stale tmp",
            DurableStep::CreateTmp => "create tmp",
            DurableStep::WriteTmp => "write tmp",
            DurableStep::SyncTmp => "fsync tmp",
            DurableStep::Rename => "rename tmp over",
            DurableStep::OpenDir => "open dir",
            DurableStep::SyncDir => "fsync dir",
        }
    }
}

impl fmt::Display for DurableStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durable replace, or a directory fsync check, that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The target path has no file name (for example `/` or `..`).
    #[error("durable target {path} has no file name")]
    NoFileName {
        /// The path given.
        path: PathBuf,
    },
    /// One step failed; `path` is the file or directory that step touched.
    #[error("{step} {path}")]
    Step {
        /// The step that failed.
        step: DurableStep,
        /// The file or directory the step touched.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A path that must be a directory is something else.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The directory (and so its filesystem) cannot be fsynced, which makes a
    /// rename impossible to persist.
    #[error("directory {dir} cannot be fsynced")]
    DirFsyncUnsupported {
        /// The directory checked.
        dir: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// Result of a durable file operation.
pub type Result<T, E = DurableError> = std::result::Result<T, E>;

/// Replaces the content of `path` with `bytes`, crash-durably; the file ends up
/// with exactly the unix permission bits `mode` (not masked by the umask).
///
/// On `Ok` the new content is durable. On `Err` the target holds either the old or
/// the new content, whole, and a `.tmp` file may be left behind; the next call
/// removes it. See the [module docs](self) for the crash argument.
pub fn durable_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    replace(path, bytes, mode, None)
}

/// Runs [`durable_replace`] but stops right after `stop` has completed, leaving the
/// files as a crash at that moment would. A test hook for crash safety.
#[cfg(any(test, feature = "testing"))]
pub fn durable_replace_stop_after(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    stop: DurableStep,
) -> Result<()> {
    replace(path, bytes, mode, Some(stop))
}

/// The path of the temporary file [`durable_replace`] uses for `path`.
pub fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| DurableError::NoFileName {
        path: path.to_path_buf(),
    })?;
    let mut tmp_name = OsString::from(name);
    tmp_name.push(TMP_SUFFIX);
    Ok(path.with_file_name(tmp_name))
}

/// Opens `dir` and fsyncs it. Run at startup on every directory that will hold a
/// durable file: a filesystem that cannot fsync a directory is refused with
/// [`DurableError::DirFsyncUnsupported`].
pub fn check_dir_fsync(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|source| DurableError::Step {
        step: DurableStep::OpenDir,
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = handle.metadata().map_err(|source| DurableError::Step {
        step: DurableStep::OpenDir,
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DurableError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    handle
        .sync_all()
        .map_err(|source| DurableError::DirFsyncUnsupported {
            dir: dir.to_path_buf(),
            source,
        })
}

/// The directory holding `path`; a bare file name lives in the current directory.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Builds the error of `step`, which touched `at`.
fn fail(step: DurableStep, at: &Path) -> impl FnOnce(io::Error) -> DurableError {
    let path = at.to_path_buf();
    move |source| DurableError::Step { step, path, source }
}

/// The body of [`durable_replace`], with an optional fail point after a step.
fn replace(path: &Path, bytes: &[u8], mode: u32, stop: Option<DurableStep>) -> Result<()> {
    let tmp = tmp_path(path)?;
    let dir = parent_dir(path);
    // Stops after `step` when the fail point names it.
    let stop_after = |step: DurableStep| stop == Some(step);

    // A stale tmp may have another mode or be a symlink; creating afresh with
    // `create_new` (O_EXCL, which never follows a symlink) avoids inheriting either.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(DurableStep::RemoveStaleTmp, &tmp)(e)),
    }
    if stop_after(DurableStep::RemoveStaleTmp) {
        return Ok(());
    }

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail(DurableStep::CreateTmp, &tmp))?;
    // The umask may have cleared bits of `mode`; set them exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(fail(DurableStep::CreateTmp, &tmp))?;
    if stop_after(DurableStep::CreateTmp) {
        return Ok(());
    }

    file.write_all(bytes)
        .map_err(fail(DurableStep::WriteTmp, &tmp))?;
    if stop_after(DurableStep::WriteTmp) {
        return Ok(());
    }

    file.sync_all().map_err(fail(DurableStep::SyncTmp, &tmp))?;
    drop(file);
    if stop_after(DurableStep::SyncTmp) {
        return Ok(());
    }

    // Fail point: the new content is whole and synced in the tmp file, and the
    // target still holds the old file. `return` fails the rename.
    fail_point!("durable::before-rename", |_| Err(fail(
        DurableStep::Rename,
        path
    )(io::Error::other(
        "fail point durable::before-rename"
    ))));
    fs::rename(&tmp, path).map_err(fail(DurableStep::Rename, path))?;
    if stop_after(DurableStep::Rename) {
        return Ok(());
    }
    // Fail point: the target names the new file, but the rename is not yet durable
    // (a crash of the process keeps it; only a crash of the machine could lose it).
    // `return` fails the directory fsync.
    fail_point!("durable::before-dir-fsync", |_| Err(fail(
        DurableStep::SyncDir,
        dir
    )(
        io::Error::other("fail point durable::before-dir-fsync")
    )));

    let dir_handle = File::open(dir).map_err(fail(DurableStep::OpenDir, dir))?;
    if stop_after(DurableStep::OpenDir) {
        return Ok(());
    }

    dir_handle
        .sync_all()
        .map_err(fail(DurableStep::SyncDir, dir))?;
    Ok(())
}
