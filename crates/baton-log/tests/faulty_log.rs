//! FaultyLog injects exactly the faults its plan asks for, and an injected
//! failure leaves the inner log untouched (except a lost acknowledgement,
//! which by definition did write).

use std::sync::mpsc;

use baton_log::{FaultyLog, Log, LogError, MemLog, Snapshot};

fn one(byte: u8) -> Vec<Vec<u8>> {
    vec![vec![byte]]
}

fn assert_injected(err: LogError, expect_written: bool) {
    match err {
        LogError::Injected { written, .. } => assert_eq!(written, expect_written),
        other => panic!("expected an injected fault, got: {other}"),
    }
}

#[test]
fn next_appends_fail_then_recover() {
    let mut log = FaultyLog::new(MemLog::new());
    let plan = log.plan();
    log.append(&one(1)).unwrap();

    plan.fail_next_appends(2);
    assert_injected(log.append(&one(2)).unwrap_err(), false);
    assert_injected(log.append(&one(3)).unwrap_err(), false);
    assert_eq!(log.inner().last_seq().unwrap(), 1, "nothing appended");

    assert_eq!(log.append(&one(4)).unwrap(), 2..=2);
    let data: Vec<_> = log
        .read_from(1, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(data, vec![vec![1], vec![4]]);
    assert_eq!(plan.injected_failures(), 2);
}

#[test]
fn all_appends_fail_until_healed() {
    let mut log = FaultyLog::new(MemLog::new());
    let plan = log.plan();
    plan.fail_all_appends();
    for byte in 0..5 {
        assert_injected(log.append(&one(byte)).unwrap_err(), false);
    }
    assert_eq!(log.last_seq().unwrap(), 0);
    plan.heal();
    assert_eq!(log.append(&one(9)).unwrap(), 1..=1);
    assert_eq!(plan.injected_failures(), 5);
}

#[test]
fn a_lost_acknowledgement_did_write() {
    let mut log = FaultyLog::new(MemLog::new());
    let plan = log.plan();
    plan.lose_next_append_acks(1);
    assert_injected(log.append(&[vec![1], vec![2]]).unwrap_err(), true);
    assert_eq!(log.last_seq().unwrap(), 2, "the whole batch is in the log");
    assert_eq!(log.append(&one(3)).unwrap(), 3..=3);
}

#[test]
fn snapshot_saves_fail_and_keep_the_previous_snapshot() {
    let mut log = FaultyLog::new(MemLog::new());
    let plan = log.plan();
    log.append(&one(1)).unwrap();
    let old = Snapshot {
        seq: 1,
        data: b"old".to_vec(),
    };
    log.save_snapshot(&old).unwrap();
    log.append(&one(2)).unwrap();

    plan.fail_snapshot_saves(true);
    let new = Snapshot {
        seq: 2,
        data: b"new".to_vec(),
    };
    assert_injected(log.save_snapshot(&new).unwrap_err(), false);
    assert_eq!(log.load_snapshot().unwrap(), Some(old));
    // Appends are unaffected by a snapshot fault.
    log.append(&one(3)).unwrap();

    plan.fail_snapshot_saves(false);
    log.save_snapshot(&new).unwrap();
    assert_eq!(log.load_snapshot().unwrap(), Some(new));
}

/// The control handle works while another thread (the server's writer) owns
/// the log; the channels order the steps, no sleeps.
#[test]
fn faults_flip_while_another_thread_owns_the_log() {
    let log = FaultyLog::new(MemLog::new());
    let plan = log.plan();
    let (requests, inbox) = mpsc::channel::<u8>();
    let (replies, outcomes) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut log = log;
        for byte in inbox {
            replies.send(log.append(&one(byte)).is_ok()).unwrap();
        }
        log.into_inner()
    });

    requests.send(1).unwrap();
    assert!(outcomes.recv().unwrap());
    plan.fail_all_appends();
    requests.send(2).unwrap();
    assert!(!outcomes.recv().unwrap());
    plan.heal();
    requests.send(3).unwrap();
    assert!(outcomes.recv().unwrap());
    drop(requests);

    let inner = writer.join().unwrap();
    let data: Vec<_> = inner
        .read_from(1, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(data, vec![vec![1], vec![3]]);
}
