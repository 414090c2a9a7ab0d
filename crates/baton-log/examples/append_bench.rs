//! Measures FileLog: durable appends/s by batch size, reading 1M entries, and
//! restart time (open + load snapshot + replay the tail) from a 1M-entry log,
//! after a clean shutdown and after a crash.
//!
//! cargo run --release -p baton-log --example append_bench [-- <data dir>]
//!
//! The data dir (default: a temp dir) must be on the disk the server would use:
//! fsync cost is what this measures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_log::{FileLog, Log, Snapshot};

const ENTRY_BYTES: usize = 200;
const BATCH_SIZES: [usize; 3] = [1, 64, 512];
/// Each batch size runs this long (or until `MAX_APPENDS_PER_RUN`).
const RUN_TIME: Duration = Duration::from_secs(3);
const MAX_APPENDS_PER_RUN: usize = 500_000;
const BIG_LOG_ENTRIES: u64 = 1_000_000;
const READ_CHUNK: usize = 10_000;
/// The snapshot sits this far behind the head, so restart replays this tail.
const TAIL_AFTER_SNAPSHOT: u64 = 10_000;
const SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("crash-child") {
        crash_child(Path::new(&args[2]));
    }
    let _temp;
    let root = match args.get(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            _temp = tempfile::tempdir().expect("temp dir");
            _temp.path().to_path_buf()
        }
    };
    println!("data under {}", root.display());
    println!("entries of {ENTRY_BYTES} bytes");

    for batch_size in BATCH_SIZES {
        let dir = root.join(format!("batch-{batch_size}"));
        let mut log = FileLog::open(&dir).expect("open");
        let batch = vec![vec![0xab_u8; ENTRY_BYTES]; batch_size];
        let start = Instant::now();
        let mut appended = 0;
        let mut latencies = Vec::new();
        while start.elapsed() < RUN_TIME && appended < MAX_APPENDS_PER_RUN {
            let t = Instant::now();
            log.append(&batch).expect("append");
            latencies.push(t.elapsed());
            appended += batch_size;
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "batch {batch_size:>4}: {:>9.0} appends/s  {:>7.0} commits/s  commit p50 {:>7.2} ms  p99 {:>7.2} ms  ({appended} appends in {secs:.2} s)",
            appended as f64 / secs,
            latencies.len() as f64 / secs,
            millis(latencies[latencies.len() / 2]),
            millis(latencies[latencies.len() * 99 / 100]),
        );
    }

    let dir = root.join("big");
    let mut log = FileLog::open(&dir).expect("open");
    let batch = vec![vec![0xcd_u8; ENTRY_BYTES]; 512];
    let start = Instant::now();
    while log.last_seq().unwrap() < BIG_LOG_ENTRIES {
        let left = (BIG_LOG_ENTRIES - log.last_seq().unwrap()) as usize;
        log.append(&batch[..left.min(batch.len())]).expect("append");
    }
    println!(
        "built a {BIG_LOG_ENTRIES}-entry log in {:.2} s; segments {} MB",
        start.elapsed().as_secs_f64(),
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
            / 1_000_000
    );
    let snapshot_seq = BIG_LOG_ENTRIES - TAIL_AFTER_SNAPSHOT;
    let t = Instant::now();
    log.save_snapshot(&Snapshot {
        seq: snapshot_seq,
        data: vec![0x5a; SNAPSHOT_BYTES],
    })
    .expect("save snapshot");
    println!(
        "save_snapshot of {} MB: {:.1} ms",
        SNAPSHOT_BYTES / 1_000_000,
        millis(t.elapsed())
    );

    let t = Instant::now();
    let all = log.read_from(1, usize::MAX).expect("read");
    assert_eq!(all.len() as u64, BIG_LOG_ENTRIES);
    println!(
        "read_from(1, all) of {BIG_LOG_ENTRIES} entries in one call: {:.1} ms",
        millis(t.elapsed())
    );
    drop(all);
    let t = Instant::now();
    let read = read_all_in_chunks(&log, 1);
    assert_eq!(read, BIG_LOG_ENTRIES);
    println!(
        "read_from of {BIG_LOG_ENTRIES} entries in chunks of {READ_CHUNK}: {:.1} ms",
        millis(t.elapsed())
    );
    drop(log);

    restart("clean shutdown", &dir, snapshot_seq);

    let status = Command::new(std::env::current_exe().unwrap())
        .arg("crash-child")
        .arg(&dir)
        .status()
        .expect("run crash child");
    assert!(!status.success(), "the crash child aborts");
    restart("crash (abort, no close)", &dir, snapshot_seq);
}

/// Times what a server restart does: open, load the snapshot, replay the tail.
fn restart(after: &str, dir: &Path, snapshot_seq: u64) {
    let t = Instant::now();
    let log = FileLog::open(dir).expect("reopen");
    let opened = t.elapsed();
    let snapshot = log.load_snapshot().expect("load").expect("a snapshot");
    assert_eq!(snapshot.seq, snapshot_seq);
    let tail = read_all_in_chunks(&log, snapshot.seq + 1);
    println!(
        "restart after {after}: {:.1} ms total (open {:.1} ms), replayed {tail} entries after the snapshot",
        millis(t.elapsed()),
        millis(opened),
    );
}

fn read_all_in_chunks(log: &FileLog, from: u64) -> u64 {
    let mut next = from;
    let mut count = 0;
    loop {
        let chunk = log.read_from(next, READ_CHUNK).expect("read");
        let Some(last) = chunk.last() else {
            return count;
        };
        next = last.seq + 1;
        count += chunk.len() as u64;
    }
}

/// Appends one batch, then dies without closing the database.
fn crash_child(dir: &Path) -> ! {
    let mut log = FileLog::open(dir).expect("open in crash child");
    log.append(&vec![vec![0xee; ENTRY_BYTES]; 64])
        .expect("append in crash child");
    std::process::abort();
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
