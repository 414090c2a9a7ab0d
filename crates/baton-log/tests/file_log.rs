//! FileLog behaviour the conformance suite cannot cover: the data-directory
//! lock (within a process and across processes), crash recovery (torn tails),
//! segments and truncation, and refusing damaged or foreign files.
//!
//! Cross-process tests re-run this test binary as a child with
//! `BATON_LOG_TEST_CHILD` set; the child runs `child_process_entry` only.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use baton_log::{FileLog, FileLogOptions, LOCK_FILE_NAME, Log, LogError};

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

    // The log was not closed; whatever a torn write left is cut on open.
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

fn segment_path(dir: &Path, first_seq: u64) -> std::path::PathBuf {
    dir.join(format!("log-{first_seq:020}.seg"))
}

/// The sorted names of the files in `dir` that end with `suffix`.
fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

fn small_segments() -> FileLogOptions {
    FileLogOptions { segment_bytes: 200 }
}

fn entry(seq: u64) -> Vec<u8> {
    format!("entry-{seq}").into_bytes()
}

/// Appends batches of 1..=3 entries until the log holds `last` entries.
fn fill(log: &mut FileLog, last: u64) {
    while log.last_seq().unwrap() < last {
        let next = log.last_seq().unwrap() + 1;
        let end = (next + next % 3).min(last);
        let batch: Vec<Vec<u8>> = (next..=end).map(entry).collect();
        assert_eq!(log.append(&batch).unwrap(), next..=end);
    }
}

fn assert_entries(log: &FileLog, first: u64, last: u64) {
    assert_eq!(log.first_seq().unwrap(), first);
    assert_eq!(log.last_seq().unwrap(), last);
    let entries = log.read_from(0, usize::MAX).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
    for e in entries {
        assert_eq!(e.data, entry(e.seq));
    }
}

#[test]
fn every_cut_of_the_tail_reopens_to_the_whole_batches_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut log = FileLog::open(&dir).unwrap();
    // Where the frames end after every acknowledged batch.
    let mut acked = vec![(log.active_segment_len(), 0)];
    for size in [1, 3, 2, 1, 1, 2, 3, 1] {
        let next = log.last_seq().unwrap() + 1;
        let batch: Vec<Vec<u8>> = (next..next + size).map(entry).collect();
        log.append(&batch).unwrap();
        acked.push((log.active_segment_len(), log.last_seq().unwrap()));
    }
    drop(log);
    let whole = std::fs::read(segment_path(&dir, 1)).unwrap();
    let (header_len, _) = acked[0];
    let (frames_end, all) = *acked.last().unwrap();
    assert!(
        whole.len() as u64 >= frames_end + baton_log::PREALLOCATE_BYTES / 2,
        "zeros are preallocated after the frames"
    );
    assert!(whole[frames_end as usize..].iter().all(|&b| b == 0));
    // Every cut inside the frames, a few into the zeros, and the whole file.
    let cuts = (header_len as usize..frames_end as usize + 64).chain([whole.len()]);
    for cut in cuts {
        let copy = tmp.path().join(format!("cut-{cut}"));
        std::fs::create_dir(&copy).unwrap();
        std::fs::write(segment_path(&copy, 1), &whole[..cut]).unwrap();
        let mut reopened = FileLog::open(&copy).unwrap();
        // The last acknowledged batch that fits in the cut.
        let (len, last) = *acked
            .iter()
            .rev()
            .find(|(len, _)| *len <= cut as u64)
            .unwrap();
        assert_entries(&reopened, 1, last.min(all));
        let inside_a_frame = (cut as u64) < frames_end && len != cut as u64;
        assert_eq!(
            reopened.repaired_tail().is_some(),
            inside_a_frame,
            "cut {cut}"
        );
        // Appends continue right after the last whole batch, and survive.
        reopened.append(&[entry(last + 1)]).unwrap();
        drop(reopened);
        let again = FileLog::open(&copy).unwrap();
        assert!(again.repaired_tail().is_none());
        assert_entries(&again, 1, last + 1);
        std::fs::remove_dir_all(&copy).unwrap();
    }
}

/// A torn write whose first bytes never reached the disk but later ones
/// did: zeros, then garbage. The garbage must be cut, not skipped over.
#[test]
fn garbage_after_zeros_in_the_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut log = FileLog::open(&dir).unwrap();
    fill(&mut log, 5);
    let end = log.active_segment_len() as usize;
    drop(log);
    let path = segment_path(&dir, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[end + 40..end + 48].copy_from_slice(b"leftover");
    std::fs::write(&path, bytes).unwrap();
    let mut log = FileLog::open(&dir).unwrap();
    assert!(log.repaired_tail().is_some());
    assert_entries(&log, 1, 5);
    fill(&mut log, 6);
    drop(log);
    let log = FileLog::open(&dir).unwrap();
    assert!(log.repaired_tail().is_none());
    assert_entries(&log, 1, 6);
}

#[test]
fn segments_roll_and_truncation_deletes_whole_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut log = FileLog::open_with(&dir, small_segments()).unwrap();
    fill(&mut log, 60);
    let before = names_ending(&dir, ".seg");
    assert!(before.len() >= 5, "200-byte segments roll: {before:?}");
    assert_entries(&log, 1, 60);
    // Reads that cross segment boundaries, in small chunks.
    let mut next = 1;
    while let Some(last) = log.read_from(next, 7).unwrap().last() {
        next = last.seq + 1;
    }
    assert_eq!(next, 61);

    log.save_snapshot(&baton_log::Snapshot {
        seq: 40,
        data: b"s".to_vec(),
    })
    .unwrap();
    log.truncate_before(41).unwrap();
    assert_entries(&log, 41, 60);
    let after = names_ending(&dir, ".seg");
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    drop(log);
    let mut log = FileLog::open_with(&dir, small_segments()).unwrap();
    assert_entries(&log, 41, 60);
    fill(&mut log, 70);
    drop(log);
    // Truncating everything keeps the active segment, so the head survives.
    let mut log = FileLog::open_with(&dir, small_segments()).unwrap();
    log.save_snapshot(&baton_log::Snapshot {
        seq: 70,
        data: b"all".to_vec(),
    })
    .unwrap();
    log.truncate_before(71).unwrap();
    drop(log);
    let log = FileLog::open_with(&dir, small_segments()).unwrap();
    assert_eq!(
        (log.first_seq().unwrap(), log.last_seq().unwrap()),
        (71, 70)
    );
    assert_eq!(log.load_snapshot().unwrap().unwrap().data, b"all");
}

#[test]
fn a_damaged_frame_before_the_tail_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut log = FileLog::open_with(&dir, small_segments()).unwrap();
    fill(&mut log, 40);
    drop(log);
    let first = segment_path(&dir, 1);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let err = FileLog::open_with(&dir, small_segments()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("is damaged at byte"), "{err}");
    assert!(
        err.to_string().contains("restore the data directory"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(tmp.path(), 1), vec![0x5a; 8192]).unwrap();
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a Baton log segment"),
        "{err}"
    );
}

#[test]
fn a_gap_in_seqs_is_reported_as_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(tmp.path()).unwrap();
    fill(&mut log, 3);
    drop(log);
    // A segment that starts after a gap (4..=9 missing).
    let header = std::fs::read(segment_path(tmp.path(), 1)).unwrap()[..16].to_vec();
    std::fs::write(segment_path(tmp.path(), 10), header).unwrap();
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("gap"), "{err}");
}

#[test]
fn a_newer_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(FileLog::open(tmp.path()).unwrap());
    let path = segment_path(tmp.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, LogError::UnsupportedFormat { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn a_data_directory_of_the_old_redb_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("baton.redb"), b"old").unwrap();
    let err = FileLog::open(tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::UnsupportedFormat {
                found: 1,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_damaged_snapshot_is_reported_not_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(tmp.path()).unwrap();
    fill(&mut log, 5);
    log.save_snapshot(&baton_log::Snapshot {
        seq: 5,
        data: vec![1; 100],
    })
    .unwrap();
    drop(log);
    let path = tmp.path().join(format!("snapshot-{:020}.snap", 5));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let log = FileLog::open(tmp.path()).unwrap();
    let err = log.load_snapshot().unwrap_err();
    assert!(err.to_string().contains("fails its checksum"), "{err}");
}

#[test]
fn snapshots_saved_from_another_thread_count_for_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = FileLog::open_with(tmp.path(), small_segments()).unwrap();
    fill(&mut log, 30);
    let store = log
        .snapshot_store()
        .expect("FileLog saves snapshots off-thread");
    std::thread::spawn(move || {
        store
            .save(&baton_log::Snapshot {
                seq: 20,
                data: b"at 20".to_vec(),
            })
            .unwrap()
    })
    .join()
    .unwrap();
    // Appends went on meanwhile in a real server; the saved snapshot is the
    // latest and lets truncation go up to it.
    fill(&mut log, 35);
    assert_eq!(log.load_snapshot().unwrap().unwrap().seq, 20);
    log.truncate_before(21).unwrap();
    assert_entries(&log, 21, 35);
    // Only the latest snapshot file is kept.
    log.save_snapshot(&baton_log::Snapshot {
        seq: 35,
        data: b"at 35".to_vec(),
    })
    .unwrap();
    assert_eq!(names_ending(tmp.path(), ".snap").len(), 1);
}

#[test]
fn leftover_temp_files_are_swept_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    drop(FileLog::open(tmp.path()).unwrap());
    let stale = tmp.path().join(format!("snapshot-{:020}.snap.tmp", 9));
    std::fs::write(&stale, b"half a snapshot").unwrap();
    let log = FileLog::open(tmp.path()).unwrap();
    assert!(!stale.exists());
    assert_eq!(log.load_snapshot().unwrap(), None);
    // A crash between saving a snapshot and deleting the one it replaces.
    let mut log = log;
    log.append(&[entry(1), entry(2)]).unwrap();
    log.save_snapshot(&baton_log::Snapshot {
        seq: 1,
        data: b"1".to_vec(),
    })
    .unwrap();
    let older = tmp.path().join(format!("snapshot-{:020}.snap", 1));
    let kept = std::fs::read(&older).unwrap();
    log.save_snapshot(&baton_log::Snapshot {
        seq: 2,
        data: b"2".to_vec(),
    })
    .unwrap();
    drop(log);
    std::fs::write(&older, kept).unwrap();
    let log = FileLog::open(tmp.path()).unwrap();
    assert!(!older.exists(), "the replaced snapshot is deleted on open");
    assert_eq!(log.load_snapshot().unwrap().unwrap().data, b"2");
}

#[test]
fn open_creates_missing_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/c");
    let log = FileLog::open(&dir).unwrap();
    assert_eq!(log.dir(), dir);
    assert!(dir.join(LOCK_FILE_NAME).is_file());
    assert!(segment_path(&dir, 1).is_file());
}

/// Reads that start anywhere in a multi-megabyte segment (so they start
/// from its sparse index) return exactly the entries asked for, before and
/// after a reopen.
#[test]
fn reads_from_anywhere_in_a_long_segment_return_the_right_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let big = |seq: u64| {
        let mut data = entry(seq);
        data.resize(1500, b'.');
        data
    };
    let mut log = FileLog::open(tmp.path()).unwrap();
    for first in (1..=3000u64).step_by(2) {
        log.append(&[big(first), big(first + 1)]).unwrap();
    }
    assert!(log.active_segment_len() > 4 * 1024 * 1024);
    for round in 0..2 {
        for from in [1, 2, 777, 1500, 2048, 2999, 3000, 1200, 5] {
            let got = log.read_from(from, 4).unwrap();
            let want: Vec<u64> = (from..=(from + 3).min(3000)).collect();
            assert_eq!(
                got.iter().map(|e| e.seq).collect::<Vec<_>>(),
                want,
                "round {round}, from {from}"
            );
            for e in got {
                assert_eq!(e.data, big(e.seq));
            }
        }
        drop(log);
        log = FileLog::open(tmp.path()).unwrap();
    }
}

/// Segments that a snapshot covers are not verified at open (a restart
/// does not replay them), but reading a damaged frame there still fails.
#[test]
fn damage_in_a_segment_the_snapshot_covers_is_found_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut log = FileLog::open_with(&dir, small_segments()).unwrap();
    fill(&mut log, 40);
    log.save_snapshot(&baton_log::Snapshot {
        seq: 40,
        data: b"all".to_vec(),
    })
    .unwrap();
    drop(log);
    let first = segment_path(&dir, 1);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[50] ^= 0xff; // inside the first entry of the first frame
    std::fs::write(&first, bytes).unwrap();
    let log = FileLog::open_with(&dir, small_segments()).unwrap();
    assert_eq!(log.last_seq().unwrap(), 40);
    let err = log.read_from(1, 10).unwrap_err();
    assert!(err.to_string().contains("is damaged at byte"), "{err}");
}

#[test]
fn a_missing_data_directory_is_created_with_its_parents_and_a_file_in_the_way_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/data");
    let mut log = FileLog::open(&dir).unwrap();
    log.append(&[b"x".to_vec()]).unwrap();
    drop(log);
    assert_eq!(FileLog::open(&dir).unwrap().last_seq().unwrap(), 1);

    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let text = match FileLog::open(&file.join("data")) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("opened a data directory under a file"),
    };
    assert!(text.contains("creating data directory"), "{text}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a directory",
        "nothing touched"
    );
}
