//! The disk side: resolve the real target, read it within limits, and
//! replace it atomically (temp file in the same folder → fsync → rename →
//! fsync the folder), keeping mode and owner.
//!
//! Why not `atomic-write-file`: it does the same steps, but its temp names are
//! random, so a writer killed mid-write leaves `.name.XXXX` files nobody can
//! safely remove, and it brings `nix` with it. Our temp names carry a fixed
//! marker, and a writer that holds the file's lock removes leftovers of
//! killed writers (no live writer can own one while we hold the lock).

use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use baton_core::{Error, ErrorCode};

/// Largest file read or written: these are config and state files, and the
/// whole file is held in memory while it is edited.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Marker in temp file names: `.<name>.baton-tmp.<pid>.<nanos>`.
const TEMP_MARKER: &str = ".baton-tmp.";

/// Turns an I/O failure into the error contract, naming the file and what to
/// do next. `action` reads "read", "write", "lock", ...
pub(crate) fn io_error(error: io::Error, action: &str, path: &Path) -> Error {
    let shown = path.display();
    let (code, message) = match error.kind() {
        ErrorKind::NotFound => (
            ErrorCode::NotFound,
            format!("cannot {action} {shown}: it does not exist (or a folder on the way does not)"),
        ),
        ErrorKind::PermissionDenied => (
            ErrorCode::PermissionDenied,
            format!(
                "no permission to {action} {shown}; check its owner and mode, or run as a user who may"
            ),
        ),
        ErrorKind::IsADirectory => (
            ErrorCode::InvalidArgument,
            format!("{shown} is a directory, not a file"),
        ),
        ErrorKind::NotADirectory => (
            ErrorCode::InvalidArgument,
            format!("cannot {action} {shown}: a part of the path is not a directory"),
        ),
        _ => (
            ErrorCode::Unavailable,
            format!("cannot {action} {shown}: {error}; the file was not changed"),
        ),
    };
    Error::new(code, message).with_details(serde_json::json!({
        "path": shown.to_string(),
        "os_error": error.to_string(),
    }))
}

fn is_directory_error(path: &Path) -> Error {
    Error::invalid(
        "path",
        format!("{} is a directory, not a file", path.display()),
    )
    .with_details(serde_json::json!({ "field": "path", "path": path.display().to_string() }))
}

/// The file an edit really changes: a symlink is followed (a rename must
/// replace the file it points to, not the link), a directory is refused. A
/// missing file resolves to itself.
pub(crate) fn resolve_target(path: &Path) -> Result<PathBuf, Error> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid("path", "the path is empty"));
    }
    if path.file_name().is_none() {
        // `.`, `..`, `/`: directories, or not a file name at all.
        return Err(if path.is_dir() {
            is_directory_error(path)
        } else {
            Error::invalid("path", format!("{} does not name a file", path.display()))
        });
    }
    let (target, meta) = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let real = fs::canonicalize(path).map_err(|e| io_error(e, "follow the link", path))?;
            let meta = fs::metadata(&real).map_err(|e| io_error(e, "follow the link", path))?;
            (real, meta)
        }
        Ok(meta) => (path.to_path_buf(), meta),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(io_error(e, "read", path)),
    };
    if meta.is_dir() {
        return Err(is_directory_error(path));
    }
    if !meta.is_file() {
        // A FIFO would block the read (with the lock held), and a rename
        // would replace a device node with a regular file.
        return Err(Error::invalid(
            "path",
            format!(
                "{} is not a regular file (a FIFO, socket or device); baton file edits regular files only",
                path.display()
            ),
        )
        .with_details(serde_json::json!({ "field": "path", "path": path.display().to_string() })));
    }
    Ok(target)
}

/// The folder that holds `target` (`.` for a bare file name).
pub(crate) fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `<dir>/<name><suffix>` next to `target`.
pub(crate) fn sibling(target: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix);
    name.push(target.file_name().unwrap_or_default());
    name.push(suffix);
    target.with_file_name(name)
}

/// The file's bytes and metadata, or `None` if it does not exist.
pub(crate) fn read_current(target: &Path) -> Result<Option<(Vec<u8>, Metadata)>, Error> {
    let file = match File::open(target) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e, "read", target)),
    };
    let meta = file.metadata().map_err(|e| io_error(e, "read", target))?;
    if meta.is_dir() {
        return Err(is_directory_error(target));
    }
    let too_big = || {
        Error::invalid(
            "path",
            format!(
                "{} is larger than the {MAX_FILE_BYTES}-byte limit for edited files",
                target.display()
            ),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(e, "read", target))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(Some((bytes, meta)))
}

/// Refuses early when the file exists but may not be written: a rename only
/// needs the folder's permission, but replacing a file its mode protects
/// would be a surprise.
pub(crate) fn check_writable(target: &Path) -> Result<(), Error> {
    OpenOptions::new()
        .write(true)
        .open(target)
        .map(drop)
        .map_err(|e| io_error(e, "write", target))
}

/// Removes the temp files that killed writers of `target` left behind.
/// Call only while holding `target`'s lock. Best effort; returns how many
/// were removed.
pub(crate) fn sweep_stale_temps(target: &Path) -> usize {
    let prefix = sibling(target, ".", TEMP_MARKER);
    let Some(prefix_name) = prefix.file_name() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .as_bytes()
                .starts_with(prefix_name.as_bytes())
        })
        .filter(|entry| fs::remove_file(entry.path()).is_ok())
        .count()
}

/// Removes the temp file unless the rename consumed it.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Replaces `target` with `bytes` so that every reader sees the old or the
/// new content, never a mix, and a crash at any point leaves one of the two.
/// `existing` is the current file's metadata: its mode and owner are kept.
pub(crate) fn replace_atomically(
    target: &Path,
    bytes: &[u8],
    existing: Option<&Metadata>,
) -> Result<(), Error> {
    let dir = parent_dir(target);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let temp_path = sibling(
        target,
        ".",
        &format!("{TEMP_MARKER}{}.{nanos}", std::process::id()),
    );
    // A new file gets the usual 0666 & umask; a replacement starts private
    // and takes the original's mode below, so a secret is never exposed.
    let mode = if existing.is_some() { 0o600 } else { 0o666 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp_path)
        .map_err(|e| io_error(e, "create a temporary file in", dir))?;
    let temp = TempFile(Some(temp_path.clone()));
    if let Some(meta) = existing {
        let mine = file
            .metadata()
            .map_err(|e| io_error(e, "write", &temp_path))?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())).map_err(|e| {
                Error::new(
                    if e.kind() == ErrorKind::PermissionDenied {
                        ErrorCode::PermissionDenied
                    } else {
                        ErrorCode::Unavailable
                    },
                    format!(
                        "cannot keep the owner (uid {}, gid {}) of {}: {e}; run as its owner. The file was not changed",
                        meta.uid(),
                        meta.gid(),
                        target.display()
                    ),
                )
            })?;
        }
        // After chown, which may clear set-id bits.
        file.set_permissions(meta.permissions())
            .map_err(|e| io_error(e, "set the mode of", &temp_path))?;
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(e, "write", &temp_path))?;
    drop(file);
    fs::rename(&temp_path, target).map_err(|e| io_error(e, "replace", target))?;
    std::mem::forget(temp);
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, "sync the folder of", target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_keeps_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret.json");
        fs::write(&target, "{}").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let meta = fs::metadata(&target).unwrap();
        replace_atomically(&target, b"{\"a\":1}", Some(&meta)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"{\"a\":1}");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sweep_removes_only_this_files_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("c.json");
        fs::write(dir.path().join(".c.json.baton-tmp.1.2"), "x").unwrap();
        fs::write(dir.path().join(".other.json.baton-tmp.1.2"), "x").unwrap();
        fs::write(dir.path().join("c.json.bak"), "x").unwrap();
        assert_eq!(sweep_stale_temps(&target), 1);
        assert_eq!(sweep_stale_temps(&target), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn resolve_follows_links_and_refuses_folders() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(
            resolve_target(&link).unwrap(),
            fs::canonicalize(&real).unwrap()
        );
        let err = resolve_target(dir.path()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("is a directory"));
        let missing = dir.path().join("missing.json");
        assert_eq!(resolve_target(&missing).unwrap(), missing);
    }
}
