//! The edits: each write takes the file's lock, re-reads the file under it,
//! checks the optimistic version, applies the change and replaces the file
//! atomically. Reads take no lock: a reader always sees a whole file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{Error, ErrorCode};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::format::{Document, Format, validate};
use crate::fsio::{
    check_writable, io_error, read_current, replace_atomically, resolve_target, sweep_stale_temps,
};
use crate::keypath::{Assignment, KeyPath, assign, lookup, remove};
use crate::lock::{DEFAULT_LOCK_TIMEOUT, FileLock};
use crate::node::Node;
use crate::version::version_of;

/// A conflict carries the current value only up to this size; past it, read
/// the file again.
pub const MAX_CONFLICT_VALUE_BYTES: usize = 64 * 1024;

/// How a write behaves. `Options::default()`: wait up to 5 s for the lock,
/// no version check, format from the extension, folders must exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How long to wait for the file's lock; `Duration::ZERO` tries once.
    pub lock_timeout: Duration,
    /// Apply only if the file's version is still this (from a read);
    /// `"absent"` means "only if the file does not exist yet".
    pub if_version: Option<String>,
    /// Overrides the format the extension implies.
    pub format: Option<Format>,
    /// Create missing parent folders (as `instance_path` results need).
    pub create_dirs: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            if_version: None,
            format: None,
            create_dirs: false,
        }
    }
}

fn serialize_path<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.display().to_string())
}

/// What a read saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    #[serde(serialize_with = "serialize_path")]
    pub path: PathBuf,
    pub format: Format,
    /// Pass it back as `if_version` to make the next write conditional.
    pub version: String,
    /// The key that was read, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The whole document (or the key's value) as JSON; a raw file's text.
    pub value: Value,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    #[serde(serialize_with = "serialize_path")]
    pub path: PathBuf,
    /// `false` when the change was already in place: the file was not
    /// rewritten.
    pub changed: bool,
    pub previous_version: String,
    pub version: String,
}

/// The format for `path`: the caller's choice, else the extension of the
/// name given, else that of the file a symlink points to.
fn choose_format(requested: Option<Format>, path: &Path, target: &Path) -> Format {
    requested.unwrap_or_else(|| match Format::from_path(path) {
        Format::Raw => Format::from_path(target),
        known => known,
    })
}

fn not_found(path: &Path) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("{} does not exist", path.display()),
    )
    .with_details(serde_json::json!({
        "path": path.display().to_string(),
        "version": crate::ABSENT_VERSION,
    }))
}

/// Reads the file (or one key of it) with its version. Takes no lock.
///
/// A missing file or key is NOT_FOUND; its `details.version` is the version
/// to pass to a create-only write.
pub fn get(path: &Path, key: Option<&KeyPath>, format: Option<Format>) -> Result<Snapshot, Error> {
    let target = resolve_target(path)?;
    let format = choose_format(format, path, &target);
    let Some((bytes, _)) = read_current(&target)? else {
        return Err(not_found(path));
    };
    let version = version_of(Some(&bytes));
    let value = match (format, key) {
        (Format::Raw, None) => match String::from_utf8(bytes) {
            Ok(text) => Value::String(text),
            Err(_) => {
                return Err(Error::invalid(
                    "path",
                    format!("{} is not UTF-8 text", path.display()),
                ));
            }
        },
        (_, None) => Document::parse(format, path, Some(&bytes))?
            .root()
            .to_value(),
        (_, Some(key)) => {
            let root = Document::parse(format, path, Some(&bytes))?.root();
            match lookup(&root, key)? {
                Some(node) => node.to_value(),
                None => {
                    return Err(Error::new(
                        ErrorCode::NotFound,
                        format!("{} has no key {:?}", path.display(), key.to_string()),
                    )
                    .with_details(serde_json::json!({
                        "path": path.display().to_string(),
                        "key": key.to_string(),
                        "version": version,
                    })));
                }
            }
        }
    };
    Ok(Snapshot {
        path: path.to_path_buf(),
        format,
        version,
        key: key.map(KeyPath::to_string),
        value,
    })
}

/// Sets each `key=value` (in order, all or nothing), creating the file and
/// missing objects as needed. Keys that are not named keep their values,
/// so concurrent `set`s of different keys all survive.
pub fn set(path: &Path, assignments: &[Assignment], options: &Options) -> Result<Written, Error> {
    edit_tree(path, options, "set", true, |root| {
        for assignment in assignments {
            assign(root, &assignment.key, assignment.value.clone())?;
        }
        Ok(())
    })
}

/// Removes each key. A key that is not there is no error; a missing file is
/// NOT_FOUND.
pub fn unset(path: &Path, keys: &[KeyPath], options: &Options) -> Result<Written, Error> {
    edit_tree(path, options, "unset", false, |root| {
        for key in keys {
            remove(root, key)?;
        }
        Ok(())
    })
}

/// Applies an RFC 7396 JSON merge patch (`null` deletes a key), creating the
/// file if needed. The patch is JSON text.
pub fn merge(path: &Path, patch: &str, options: &Options) -> Result<Written, Error> {
    let patch: Node = serde_json::from_str(patch)
        .map_err(|e| Error::invalid("patch", format!("the merge patch is not valid JSON: {e}")))?;
    edit_tree(path, options, "merge", true, |root| {
        root.merge_patch(&patch);
        Ok(())
    })
}

/// Replaces the whole file with `content`. For a JSON or TOML file the
/// content must parse first, so a bad write cannot break the file.
pub fn write(path: &Path, content: &[u8], options: &Options) -> Result<Written, Error> {
    let target = resolve_target(path)?;
    validate(choose_format(options.format, path, &target), path, content)?;
    update_as(path, options, "write", None, |_| Ok(Some(content.to_vec())))
}

/// The general locked read-modify-write, for formats this crate does not
/// know: `change` gets the current bytes (`None`: no file) and returns the
/// new bytes, or `None` to leave the file as it is. It runs under the lock,
/// after the `if_version` check, and may fail to abort the write.
pub fn update<F>(path: &Path, options: &Options, change: F) -> Result<Written, Error>
where
    F: FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, Error>,
{
    update_as(path, options, "update", None, change)
}

/// Parse → edit the tree → render, under the lock. Writes nothing when the
/// tree did not change.
fn edit_tree<F>(
    path: &Path,
    options: &Options,
    operation: &str,
    create: bool,
    change: F,
) -> Result<Written, Error>
where
    F: FnOnce(&mut Node) -> Result<(), Error>,
{
    let target = resolve_target(path)?;
    let format = choose_format(options.format, path, &target);
    if format == Format::Raw {
        // Fails before the lock is taken; the message says what to do.
        Document::parse(format, path, None)?;
    }
    update_as(path, options, operation, Some(format), |bytes| {
        if bytes.is_none() && !create {
            return Err(not_found(path));
        }
        let mut doc = Document::parse(format, path, bytes)?;
        let before = doc.root();
        let mut after = before.clone();
        change(&mut after)?;
        if bytes.is_some() && after == before {
            return Ok(None);
        }
        doc.replace_root(after)?;
        Ok(Some(doc.render()))
    })
}

fn update_as<F>(
    path: &Path,
    options: &Options,
    operation: &str,
    format: Option<Format>,
    change: F,
) -> Result<Written, Error>
where
    F: FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, Error>,
{
    let target = resolve_target(path)?;
    if options.create_dirs {
        let dir = crate::fsio::parent_dir(&target);
        std::fs::create_dir_all(dir).map_err(|e| io_error(e, "create the folder", dir))?;
    }
    let _lock = FileLock::acquire(&target, options.lock_timeout, operation)?;
    sweep_stale_temps(&target);
    let current = read_current(&target)?;
    let current_bytes = current.as_ref().map(|(bytes, _)| bytes.as_slice());
    let previous_version = version_of(current_bytes);
    if let Some(expected) = &options.if_version
        && *expected != previous_version
    {
        return Err(version_conflict(
            path,
            expected,
            &previous_version,
            format,
            current_bytes,
        ));
    }
    if current.is_some() {
        check_writable(&target)?;
    }
    let Some(new_bytes) = change(current_bytes)? else {
        return Ok(Written {
            path: path.to_path_buf(),
            changed: false,
            version: previous_version.clone(),
            previous_version,
        });
    };
    if current_bytes == Some(new_bytes.as_slice()) {
        return Ok(Written {
            path: path.to_path_buf(),
            changed: false,
            version: previous_version.clone(),
            previous_version,
        });
    }
    if new_bytes.len() as u64 > crate::MAX_FILE_BYTES {
        return Err(Error::invalid(
            "content",
            format!(
                "the new content is larger than the {}-byte limit",
                crate::MAX_FILE_BYTES
            ),
        ));
    }
    replace_atomically(&target, &new_bytes, current.as_ref().map(|(_, meta)| meta))?;
    Ok(Written {
        path: path.to_path_buf(),
        changed: true,
        previous_version,
        version: version_of(Some(&new_bytes)),
    })
}

/// CONCURRENT_MODIFICATION for a stale `if_version`, with what the caller
/// needs to redo its change: the current version, and the current value
/// when it is small enough to carry.
fn version_conflict(
    path: &Path,
    expected: &str,
    current_version: &str,
    format: Option<Format>,
    current: Option<&[u8]>,
) -> Error {
    let mut details = serde_json::json!({
        "path": path.display().to_string(),
        "expected_version": expected,
        "current_version": current_version,
    });
    let current_value = match (format, current) {
        (Some(format), Some(bytes)) if bytes.len() <= MAX_CONFLICT_VALUE_BYTES => {
            Document::parse(format, path, Some(bytes))
                .ok()
                .map(|doc| doc.root().to_value())
        }
        _ => None,
    };
    if let Some(value) = current_value {
        details["current_value"] = value;
    }
    Error::new(
        ErrorCode::ConcurrentModification,
        format!(
            "{} changed since version {expected} was read (it is now {current_version}); read it again and redo the change",
            path.display()
        ),
    )
    .with_retry_after(0)
    .with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ABSENT_VERSION;
    use std::fs;

    fn set_one(path: &Path, assignment: &str, options: &Options) -> Result<Written, Error> {
        set(path, &[Assignment::parse(assignment).unwrap()], options)
    }

    #[test]
    fn set_creates_then_edits_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let first = set_one(&path, "b=1", &Options::default()).unwrap();
        assert!(first.changed);
        assert_eq!(first.previous_version, ABSENT_VERSION);
        assert_eq!(first.version, version_of(Some(&fs::read(&path).unwrap())));
        set_one(&path, "a.x=\"s\"", &Options::default()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\n  \"b\": 1,\n  \"a\": {\n    \"x\": \"s\"\n  }\n}\n"
        );
        // Setting what is already there rewrites nothing.
        let again = set_one(&path, "b=1", &Options::default()).unwrap();
        assert!(!again.changed);
        assert_eq!(again.version, again.previous_version);
    }

    #[test]
    fn if_version_guards_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let create_only = Options {
            if_version: Some(ABSENT_VERSION.to_owned()),
            ..Options::default()
        };
        set_one(&path, "n=1", &create_only).unwrap();
        let before = fs::read(&path).unwrap();
        let err = set_one(&path, "n=2", &create_only).unwrap_err();
        assert_eq!(err.code, ErrorCode::ConcurrentModification);
        assert_eq!(err.retry_after_ms, Some(0));
        let details = err.details.unwrap();
        assert_eq!(details["current_version"], version_of(Some(&before)));
        assert_eq!(details["current_value"], serde_json::json!({"n": 1}));
        assert_eq!(fs::read(&path).unwrap(), before);

        let snapshot = get(&path, Some(&KeyPath::parse("n").unwrap()), None).unwrap();
        let matching = Options {
            if_version: Some(snapshot.version),
            ..Options::default()
        };
        set_one(&path, "n=2", &matching).unwrap();
        // The same version is stale now.
        assert!(set_one(&path, "n=3", &matching).is_err());
        assert_eq!(
            get(&path, None, None).unwrap().value,
            serde_json::json!({"n": 2})
        );
    }

    #[test]
    fn unset_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let err = unset(&path, &[KeyPath::parse("a").unwrap()], &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        merge(&path, r#"{"a":{"b":1,"c":2},"d":3}"#, &Options::default()).unwrap();
        unset(
            &path,
            &[
                KeyPath::parse("a.b").unwrap(),
                KeyPath::parse("zz").unwrap(),
            ],
            &Options::default(),
        )
        .unwrap();
        merge(&path, r#"{"d":null}"#, &Options::default()).unwrap();
        assert_eq!(
            get(&path, None, None).unwrap().value,
            serde_json::json!({"a":{"c":2}})
        );
        let err = merge(&path, "{nope", &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn bad_input_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.json");
        fs::write(&broken, "{\"a\": 1,").unwrap();
        let err = set_one(&broken, "b=1", &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(fs::read(&broken).unwrap(), b"{\"a\": 1,");

        let scalar = dir.path().join("scalar.json");
        fs::write(&scalar, "{\"a\": 5}").unwrap();
        assert!(set_one(&scalar, "a.b=1", &Options::default()).is_err());
        assert_eq!(fs::read(&scalar).unwrap(), b"{\"a\": 5}");

        let err = write(&scalar, b"{not json", &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("the new content is not valid"));
        assert_eq!(fs::read(&scalar).unwrap(), b"{\"a\": 5}");

        let err = set_one(dir.path(), "a=1", &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        let err = set_one(
            &dir.path().join("no/such/dir/c.json"),
            "a=1",
            &Options::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);

        let raw = dir.path().join("notes.txt");
        fs::write(&raw, "hello").unwrap();
        assert!(set_one(&raw, "a=1", &Options::default()).is_err());
        assert_eq!(get(&raw, None, None).unwrap().value, "hello");
        // The failed edits left no lock holder or temp files behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("baton-tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn toml_edits_keep_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        fs::write(&path, "# settings\n[server]\nport = 80 # http\n").unwrap();
        set_one(&path, "server.port=8080", &Options::default()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# settings\n[server]\nport = 8080 # http\n"
        );
        let err = set_one(&path, "server.x=null", &Options::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn update_is_a_locked_read_modify_write_for_any_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter.txt");
        for expected in 1..=3u32 {
            update(&path, &Options::default(), |bytes| {
                let n: u32 = bytes
                    .map(|b| String::from_utf8_lossy(b).trim().parse().unwrap_or(0))
                    .unwrap_or(0);
                Ok(Some(format!("{}\n", n + 1).into_bytes()))
            })
            .unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), format!("{expected}\n"));
        }
        let err = update(&path, &Options::default(), |_| {
            Err(Error::invalid("content", "refused"))
        })
        .unwrap_err();
        assert_eq!(err.message, "content: refused");
        assert_eq!(fs::read_to_string(&path).unwrap(), "3\n");
    }

    #[test]
    fn a_held_lock_times_out_writes_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        fs::write(&path, "{}").unwrap();
        let _held = FileLock::acquire(&path, Duration::ZERO, "test").unwrap();
        let options = Options {
            lock_timeout: Duration::ZERO,
            ..Options::default()
        };
        let err = set_one(&path, "a=1", &options).unwrap_err();
        assert_eq!(err.code, ErrorCode::ConcurrentModification);
        assert!(err.retry_after_ms.is_some());
        assert_eq!(fs::read(&path).unwrap(), b"{}");
    }
}
