//! The per-file lock: an advisory `flock` on the sidecar `<file>.lock`.
//! The file itself is replaced by rename on every write, so a lock on it
//! would guard an inode nobody reads any more; the sidecar is never replaced
//! or removed. The OS drops the lock when the holder exits, even on SIGKILL,
//! so a crashed holder never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::fsio::{io_error, resolve_target, sibling};

/// How long an edit waits for the lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest lock wait accepted: a wait of hours is a hang, not a timeout.
pub const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

/// `retry_after_ms` on a lock timeout. The holder's remaining time is
/// unknown, so this is a fixed hint: about two polls at the slowest rate, long
/// enough not to spin, short next to the 5 s default wait.
pub const LOCK_RETRY_AFTER_MS: u64 = 100;

/// First and largest pause between two `try_lock` polls (std has no timed
/// lock). Pauses double from the first to the largest, with jitter so many
/// waiters do not poll in step.
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);

/// Holder info is small; never read more than this from a sidecar.
const MAX_HOLDER_BYTES: u64 = 4096;

/// Who holds a lock, as written into the sidecar after it is taken. A waiter
/// that times out reports it in the error's `details.holder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    /// RFC 3339 UTC, milliseconds.
    pub since: String,
    pub since_unix_ms: u64,
    /// What the holder is doing: "set", "merge", "exec", ...
    pub operation: String,
}

/// An exclusive lock on a file, held until dropped.
///
/// Every writer of the file must take it: it is advisory. Readers need not,
/// since writes replace the file atomically.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    lock_path: PathBuf,
}

impl FileLock {
    /// Locks `path` (through `<path>.lock`; a symlink is followed first, so
    /// every name of the file shares one lock), waiting up to `timeout`
    /// (`Duration::ZERO`: try once). On timeout: CONCURRENT_MODIFICATION with
    /// `retry_after_ms` and, if known, `details.holder`.
    pub fn acquire(path: &Path, timeout: Duration, operation: &str) -> Result<FileLock, Error> {
        if timeout > MAX_LOCK_TIMEOUT {
            return Err(Error::invalid(
                "lock_timeout",
                format!(
                    "{} ms is longer than the {} s limit",
                    timeout.as_millis(),
                    MAX_LOCK_TIMEOUT.as_secs()
                ),
            ));
        }
        let target = resolve_target(path)?;
        let lock_path = lock_path_for(&target);
        let file = open_sidecar(&lock_path)?;
        let started = Instant::now();
        let mut pause = FIRST_POLL;
        let mut jitter = Jitter::new();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io_error(e, "lock", &lock_path));
                }
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(timeout_error(path, &lock_path, waited));
            }
            std::thread::sleep(jitter.scale(pause).min(timeout - waited));
            pause = (pause * 2).min(MAX_POLL);
        }
        let lock = FileLock { file, lock_path };
        lock.write_holder(operation);
        Ok(lock)
    }

    /// The sidecar this lock holds.
    /// The open lock file: a process that inherits it (across `exec`,
    /// without close-on-exec) shares the lock, which then lasts until
    /// every process holding it has exited or closed it, as with `flock(1)`.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn write_holder(&self, operation: &str) {
        let now = SystemTime::now();
        let holder = LockHolder {
            pid: std::process::id(),
            since: humantime::format_rfc3339_millis(now).to_string(),
            since_unix_ms: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            operation: operation.to_owned(),
        };
        // Best effort: the info only improves error messages. A sidecar that
        // could only be opened read-only still locks.
        if let Ok(json) = serde_json::to_vec(&holder) {
            let _ = self.file.set_len(0);
            let _ = self.file.write_all_at(&json, 0);
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Clear the holder info first, so nobody reads it as current; closing
        // the file would release the lock anyway.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// `<file>.lock`, next to the file.
pub fn lock_path_for(path: &Path) -> PathBuf {
    sibling(path, "", ".lock")
}

fn open_sidecar(lock_path: &Path) -> Result<File, Error> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path);
    match opened {
        Ok(file) => Ok(file),
        // Someone else's sidecar we may not write: flock works read-only too.
        Err(denied) if denied.kind() == ErrorKind::PermissionDenied => File::open(lock_path)
            .map_err(|e| {
                // Not there and may not be created: the first error says why.
                let cause = if e.kind() == ErrorKind::NotFound {
                    denied
                } else {
                    e
                };
                io_error(cause, "create the lock file", lock_path)
            }),
        Err(e) => Err(io_error(e, "open the lock file", lock_path)),
    }
}

/// The holder info in a sidecar, if it is there and readable.
pub(crate) fn read_holder(lock_path: &Path) -> Option<LockHolder> {
    let mut text = Vec::new();
    File::open(lock_path)
        .ok()?
        .take(MAX_HOLDER_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    let holder: LockHolder = serde_json::from_slice(&text).ok()?;
    // Info left by a holder that was killed before it could clear it.
    let proc_dir = Path::new("/proc");
    if proc_dir.join("self").exists() && !proc_dir.join(holder.pid.to_string()).exists() {
        return None;
    }
    Some(holder)
}

fn timeout_error(path: &Path, lock_path: &Path, waited: Duration) -> Error {
    let holder = read_holder(lock_path);
    let by = match &holder {
        Some(h) => format!(" by pid {} ({}, since {})", h.pid, h.operation, h.since),
        None => String::new(),
    };
    Error::new(
        ErrorCode::ConcurrentModification,
        format!(
            "{} is locked{by}; gave up after {} ms. Retry after {LOCK_RETRY_AFTER_MS} ms or wait longer (lock timeout)",
            path.display(),
            waited.as_millis()
        ),
    )
    .with_retry_after(LOCK_RETRY_AFTER_MS)
    .with_details(serde_json::json!({
        "path": path.display().to_string(),
        "lock_path": lock_path.display().to_string(),
        "waited_ms": waited.as_millis() as u64,
        "holder": holder,
    }))
}

/// A tiny xorshift, seeded per process, to spread the poll pauses of many
/// waiters: scales a pause to between 50 % and 100 % of itself.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or_default();
        Jitter((u64::from(std::process::id()) << 32 ^ nanos) | 1)
    }

    fn scale(&mut self, pause: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let percent = 50 + self.0 % 51;
        pause * percent as u32 / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_times_out_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let held = FileLock::acquire(&path, Duration::ZERO, "exec").unwrap();
        assert_eq!(held.lock_path(), dir.path().join("c.json.lock"));

        // flock locks belong to an open file, so a second open in the same
        // process conflicts like another process would.
        let started = Instant::now();
        let err = FileLock::acquire(&path, Duration::from_millis(30), "set").unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(err.code, ErrorCode::ConcurrentModification);
        assert_eq!(err.retry_after_ms, Some(LOCK_RETRY_AFTER_MS));
        let details = err.details.unwrap();
        assert_eq!(details["holder"]["pid"], std::process::id());
        assert_eq!(details["holder"]["operation"], "exec");
        assert!(err.message.contains("is locked by pid"), "{}", err.message);

        drop(held);
        assert_eq!(read_holder(&dir.path().join("c.json.lock")), None);
        let again = FileLock::acquire(&path, Duration::ZERO, "set").unwrap();
        assert_eq!(read_holder(again.lock_path()).unwrap().operation, "set");
    }

    #[test]
    fn a_waiter_gets_the_lock_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let held = FileLock::acquire(&path, Duration::ZERO, "set").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter_path = path.clone();
        let waiter = std::thread::spawn(move || {
            tx.send(()).unwrap();
            FileLock::acquire(&waiter_path, Duration::from_secs(30), "set").map(drop)
        });
        rx.recv().unwrap();
        drop(held);
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        let mut jitter = Jitter::new();
        for _ in 0..1000 {
            let d = jitter.scale(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}
