//! Safe edits of the config and state files that CLI tools share on one
//! host, with no server: two agents editing `~/.tool/config.json` at once
//! both keep their change, and a reader never sees half a file.
//!
//! This crate must never depend on clap, tokio or a Baton server: any Rust
//! CLI can use it. The `baton file` commands are a thin layer over it.
//!
//! Every write:
//! 1. takes an advisory lock on the sidecar `<file>.lock` (never on the file
//!    itself, which the rename replaces), waiting up to
//!    [`Options::lock_timeout`] (5 s by default); a timeout is
//!    CONCURRENT_MODIFICATION with `retry_after_ms` and the holder's pid;
//! 2. re-reads the file under the lock and checks [`Options::if_version`];
//! 3. applies the change to what it just read (field-level for JSON and
//!    TOML: keys it does not name keep their current values);
//! 4. writes a temp file in the same folder, fsyncs it, renames it over the
//!    file and fsyncs the folder, keeping the mode and owner.
//!
//! Versions are `"sha256:<hex>"` of the bytes ([`version_of`]), or
//! `"absent"` for a missing file. Errors are [`baton_core::Error`]: NOT_FOUND,
//! PERMISSION_DENIED, INVALID_ARGUMENT (unparseable file, key path through a
//! non-object, a directory), CONCURRENT_MODIFICATION (lock timeout or stale
//! version); on any error the file is untouched.
//!
//! # Example: a `config set` that is safe to run in parallel
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use baton_fs::{Assignment, KeyPath, Options};
//!
//! # fn main() -> Result<(), baton_core::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let config = dir.path().join("config.json");
//! # let config: &Path = &config;
//! // `config` is e.g. ~/.mytool/config.json. Values follow `key=value` rules:
//! // JSON if it parses, else a string.
//! let written = baton_fs::set(
//!     config,
//!     &[Assignment::parse("theme=dark")?, Assignment::parse("editor.tab_width=4")?],
//!     &Options::default(),
//! )?;
//! assert!(written.changed);
//!
//! // Read one key, with the version to make the next write conditional.
//! let snapshot = baton_fs::get(config, Some(&KeyPath::parse("editor.tab_width")?), None)?;
//! assert_eq!(snapshot.value, 4);
//!
//! // Optimistic read-modify-write: fails with CONCURRENT_MODIFICATION if
//! // another process changed the file since `snapshot` was taken.
//! let options = Options {
//!     if_version: Some(snapshot.version),
//!     lock_timeout: Duration::from_secs(2),
//!     ..Options::default()
//! };
//! let width = snapshot.value.as_i64().unwrap_or(0);
//! baton_fs::set(config, &[Assignment::new(KeyPath::parse("editor.tab_width")?, &(width * 2).into())], &options)?;
//!
//! // A JSON merge patch (RFC 7396): null removes a key.
//! baton_fs::merge(config, r#"{"theme": null, "recent": ["a.txt"]}"#, &Options::default())?;
//! let all = baton_fs::get(config, None, None)?;
//! assert_eq!(all.value, serde_json::json!({"editor": {"tab_width": 8}, "recent": ["a.txt"]}));
//!
//! // Per-agent state: <dir>/instances/<id>/config.json.
//! let mine = baton_fs::instance_path(config, "agent-7")?;
//! baton_fs::write(&mine, b"{}\n", &Options { create_dirs: true, ..Options::default() })?;
//!
//! // Anything else: hold the lock while you do it.
//! let _lock = baton_fs::FileLock::acquire(config, Duration::from_secs(5), "migrate")?;
//! # Ok(())
//! # }
//! ```

mod format;
mod fsio;
mod instance;
mod keypath;
mod lock;
mod node;
mod ops;
mod toml_doc;
mod version;

pub use format::Format;
pub use fsio::MAX_FILE_BYTES;
pub use instance::{INSTANCES_DIR, MAX_INSTANCE_ID_LEN, instance_path};
pub use keypath::{Assignment, KeyPath, MAX_KEY_DEPTH, parse_value};
pub use lock::{
    DEFAULT_LOCK_TIMEOUT, FileLock, LOCK_RETRY_AFTER_MS, LockHolder, MAX_LOCK_TIMEOUT,
    lock_path_for,
};
pub use ops::{
    MAX_CONFLICT_VALUE_BYTES, Options, Snapshot, Written, get, merge, set, unset, update, write,
};
pub use version::{ABSENT_VERSION, version_of};
