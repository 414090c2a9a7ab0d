//! FileLog behaviour the conformance suite cannot cover: the data-directory
//! lock (within a process and across processes), crash recovery, and refusing
//! damaged or foreign files.
//!
//! Cross-process tests re-run this test binary as a child with
//! `BATON_LOG_TEST_CHILD` set; the child runs `child_process_entry` only.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use baton_log::{DB_FILE_NAME, FileLog, Log, LogError};

const CHILD_ROLE_ENV: &str = "BATON_LOG_TEST_CHILD";
const CHILD_DIR_ENV: &str = "BATON_LOG_TEST_DIR";

fn assert_locked(result: Result<FileLog, LogError>, dir: &Path) {
    match result {
        Err(err @ LogError::Locked { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains(&dir.display().to_string()),
                "names the directory: {text}"
            );
            assert!(text.contains("is locked"), "{text}");
        }
        Err(other) => panic!("expected a Locked error, got: {other}"),
        Ok(_) => panic!("a second open of {} succeeded", dir.display()),
    }
}

#[test]
fn second_open_in_the_same_process_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut first = FileLog::open(&dir).unwrap();
    first.append(&[b"a".to_vec()]).unwrap();

    assert_locked(FileLog::open(&dir), &dir);
    // The refused open must not have released the first handle's lock...
    assert_locked(FileLog::open(&dir), &dir);
    // ...nor disturbed it.
    assert_eq!(first.append(&[b"b".to_vec()]).unwrap(), 2..=2);

    drop(first);
    let reopened = FileLog::open(&dir).unwrap();
    assert_eq!(reopened.last_seq().unwrap(), 2);
}

/// Spawns this test binary running only `child_process_entry` in `role`.
fn spawn_child(role: &str, dir: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_entry", "--exact", "--nocapture"])
        .env(CHILD_ROLE_ENV, role)
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-exec the test binary");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads the child's stdout until a line starting with `prefix`; returns the
/// rest of that line, or `None` at end of output.
fn read_until(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Some(rest.to_string());
        }
    }
}

#[test]
fn open_held_by_another_process_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut child, mut stdout) = spawn_child("hold", &dir);
    assert!(
        read_until(&mut stdout, "READY").is_some(),
        "child did not open the log"
    );

    assert_locked(FileLog::open(&dir), &dir);

    // Closing the child's stdin lets it exit; its lock goes with it.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let log = FileLog::open(&dir).unwrap();
    assert_eq!(log.last_seq().unwrap(), 3, "the child's append is durable");
}

#[test]
fn acknowledged_appends_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut child, mut stdout) = spawn_child("crash", &dir);
    let mut acked = 0;
    while let Some(seq) = read_until(&mut stdout, "ACKED ") {
        acked = seq.parse().unwrap();
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child aborts without closing the log"
    );
    assert_eq!(acked, 500, "child acknowledged every batch before aborting");

    // The file was not closed cleanly; redb repairs it on open.
    let log = FileLog::open(&dir).unwrap();
    assert!(log.last_seq().unwrap() >= acked);
    let entries = log.read_from(1, usize::MAX).unwrap();
    assert_eq!(entries.len() as u64, log.last_seq().unwrap());
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.data, format!("entry-{}", entry.seq).into_bytes());
    }
}

/// The child side of the cross-process tests; a no-op in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR_ENV).unwrap());
    let mut log = FileLog::open(&dir).unwrap();
    let mut out = std::io::stdout();
    match role.as_str() {
        "hold" => {
            log.append(&[b"1".to_vec(), b"2".to_vec(), b"3".to_vec()])
                .unwrap();
            writeln!(out, "READY").unwrap();
            out.flush().unwrap();
            // Hold the log until the parent closes our stdin.
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink()).unwrap();
        }
        "crash" => {
            for _ in 0..50 {
                let next = log.last_seq().unwrap() + 1;
                let batch: Vec<Vec<u8>> = (next..next + 10)
                    .map(|seq| format!("entry-{seq}").into_bytes())
                    .collect();
                let range = log.append(&batch).unwrap();
                writeln!(out, "ACKED {}", range.end()).unwrap();
                out.flush().unwrap();
            }
            // Die like kill -9: no destructors, the database is never closed.
            std::process::abort();
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn a_file_that_is_not_a_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(DB_FILE_NAME), vec![0x5a; 8192]).unwrap();
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(matches!(err, LogError::Storage { .. }), "{err}");
}

#[test]
fn a_gap_in_seqs_is_reported_as_damage() {
    let tmp = tempfile::tempdir().unwrap();
    drop(FileLog::open(tmp.path()).unwrap());
    {
        let db = redb::Database::create(tmp.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut entries = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("entries"))
                .unwrap();
            for seq in [1u64, 2, 4] {
                entries.insert(seq, b"x".as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("gap"), "{err}");
}

#[test]
fn a_newer_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(FileLog::open(tmp.path()).unwrap());
    {
        let db = redb::Database::create(tmp.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, LogError::UnsupportedFormat { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn open_creates_missing_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/c");
    let log = FileLog::open(&dir).unwrap();
    assert_eq!(log.dir(), dir);
    assert!(dir.join(DB_FILE_NAME).is_file());
}
