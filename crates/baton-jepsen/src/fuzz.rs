//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), kept
//! here so that `cargo test` can replay them over random bytes on machines
//! without a nightly toolchain. Both panic on any violation; both are bounded
//! (input size, commands per input).
//!
//! - [`decode_request`]: arbitrary bytes through the server's body decoding
//!   (empty body reads as `{}`, errors name the field path) into every
//!   request and log type; whatever decodes must re-encode to the same thing,
//!   and a decoded command must apply to a state machine without panicking.
//! - [`apply_commands`]: arbitrary bytes drive a generator of a bounded
//!   sequence of commands over a few agents and keys, with stamps that jump
//!   forwards and backwards, applied to a `StateMachine` with small limits.
//!   After every command the invariants below are checked, and at a point the
//!   bytes choose the state is snapshotted, restored, and both copies must
//!   then behave identically.

use baton_core::{
    Command, Compare, CompareOp, Error, Event, EventKind, Fence, Limits, LockAcquire, LockMode,
    LockState, Op, Patch, Reply, Response, StateMachine, Txn, TxnOp, TxnOpResult, envelope,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Inputs longer than this are cut (the server's body limit is far larger;
/// the decoder's behaviour does not depend on length beyond this).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Most commands one `apply_commands` input is turned into.
pub const MAX_COMMANDS: usize = 256;

/// A snapshot as the twin compares it. (Replies kept for idempotency used to
/// read back differently from a snapshot; they are now stored as the JSON
/// that was sent, so snapshots compare byte for byte.)
fn settled_snapshot(machine: &StateMachine) -> Vec<u8> {
    machine.snapshot()
}

/// A reply as the client sees it: its envelope.
fn settled_reply(reply: &Reply) -> serde_json::Value {
    baton_core::envelope(reply)
}

// ---- decode_request ------------------------------------------------------------

/// The server's body decoding (`baton_server`'s `decode_body`, which is not
/// public): an all-whitespace body reads as `{}`; errors carry the field path.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Error::invalid(&field, error.into_inner())
    })
}

/// A log entry as the sequencer writes it: the command and its time stamp.
#[derive(Debug, PartialEq, serde::Serialize, Deserialize)]
struct LogRecord {
    t: u64,
    c: Command,
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// Decodes `bytes` as `T`; if it decodes, re-encoding and decoding again
/// gives the same value (unless floats are involved: serde_json's default
/// float parsing is not exactly round-trip).
fn decodes_stably<T>(bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    match decode_body::<T>(bytes) {
        Ok(decoded) => {
            let encoded = serde_json::to_value(&decoded).expect("a decoded request re-encodes");
            if !has_float(&encoded) {
                let again: T = serde_json::from_value(encoded.clone()).unwrap_or_else(|e| {
                    panic!("{encoded} was encoded from a decoded request but does not decode: {e}")
                });
                assert_eq!(again, decoded, "decode(encode(x)) != x for {encoded}");
            }
            Some(decoded)
        }
        Err(error) => {
            // The error reaches the client as an envelope naming a field.
            assert_eq!(error.code.http_status(), 400);
            let body = envelope::<Value>(&Err(error));
            assert_eq!(body["ok"], false);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            None
        }
    }
}

/// Fuzz target `decode_request`: must never panic.
pub fn decode_request(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT_BYTES)];
    let mut commands = Vec::new();
    if let Some(command) = decodes_stably::<Command>(data) {
        commands.push(command);
    }
    if let Some(op) = decodes_stably::<Op>(data) {
        commands.push(Command::new("fuzz", op));
    }
    if let Some(record) = decodes_stably::<LogRecord>(data) {
        commands.push(record.c);
    }
    if let Some(txn) = decodes_stably::<Txn>(data) {
        commands.push(Command::new("fuzz", Op::Txn(txn)));
    }
    if let Some(acquire) = decodes_stably::<LockAcquire>(data) {
        commands.push(Command::new("fuzz", Op::LockAcquire(acquire)));
    }
    let _ = decodes_stably::<TxnOp>(data);
    let _ = decodes_stably::<Compare>(data);
    let _ = decodes_stably::<Fence>(data);
    let _ = decodes_stably::<Patch>(data);
    let _ = decode_body::<Limits>(data);
    // Whatever decoded must apply (answer or refuse) without panicking, on a
    // fresh machine and on one that already holds some state.
    for command in commands {
        let mut machine = StateMachine::new(small_limits());
        let output = machine.apply(1, 1_000, &command);
        let _ = envelope(&output.reply);
        machine.apply(2, 1_000_000, &Command::tick());
        let mut busy = seeded_machine();
        let seq = busy.revision() + 1;
        let output = busy.apply(seq, 2_000, &command);
        let _ = envelope(&output.reply);
        let restored =
            StateMachine::restore(&busy.snapshot(), small_limits()).expect("a snapshot restores");
        assert!(
            settled_snapshot(&restored) == settled_snapshot(&busy),
            "snapshot → restore → snapshot changed the bytes"
        );
    }
}

/// A machine with a session, a held lock, a waiter, a key and a counter.
fn seeded_machine() -> StateMachine {
    let mut machine = StateMachine::new(small_limits());
    let setup = [
        Command::new("a", Op::SessionOpen { ttl_ms: 5_000 }),
        Command::new(
            "a",
            Op::LockAcquire(LockAcquire {
                keys: vec!["k/0".into()],
                mode: LockMode::Exclusive,
                ttl_ms: Some(1_000),
                wait_ms: 0,
                lock_delay_ms: 0,
                read: false,
            }),
        ),
        Command::new(
            "b",
            Op::LockAcquire(LockAcquire {
                keys: vec!["k/0".into()],
                mode: LockMode::Exclusive,
                ttl_ms: Some(1_000),
                wait_ms: 500,
                lock_delay_ms: 0,
                read: false,
            }),
        ),
        Command::new(
            "a",
            Op::Put {
                key: "k/1".into(),
                value: json!({"v": 1}),
                if_version: None,
                if_absent: false,
                ttl_ms: None,
            },
        ),
        Command::new(
            "a",
            Op::CounterAdd {
                key: "k/2".into(),
                delta: 3,
                min: None,
                max: Some(10),
            },
        ),
    ];
    for (i, command) in setup.iter().enumerate() {
        machine.apply(i as u64 + 1, 1_000, command);
    }
    machine
}

// ---- apply_commands ------------------------------------------------------------

/// Small bounds, so that inputs reach every limit.
pub fn small_limits() -> Limits {
    Limits {
        max_keys_per_lock: 3,
        max_ops_per_txn: 6,
        max_waiters_per_key: 3,
        max_sessions: 4,
        max_locks: 12,
        max_keys: 6,
        history_depth: 3,
        idempotency_entries: 6,
        idempotency_retention_ms: 2_000,
        ended_records: 8,
        max_list_page: 50,
        ..Limits::default()
    }
}

/// Reads choices from the fuzzer's bytes; zeros once they run out.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn exhausted(&self) -> bool {
        self.at >= self.data.len()
    }

    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n.max(1)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn chance(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| (n << 8) | u64::from(self.byte()))
    }
}

const AGENTS: [&str; 3] = ["a", "b", "c"];
const KEYS: [&str; 4] = ["k/0", "k/1", "k/2", "q/0"];
const TTLS: [u64; 6] = [0, 5, 10, 50, 500, 5_000];
const WAITS: [u64; 4] = [0, 0, 20, 700];

/// What the generator has seen, to aim later commands at live ids.
#[derive(Default)]
struct Seen {
    sessions: Vec<u64>,
    locks: Vec<u64>,
    tokens: Vec<u64>,
    reservations: Vec<u64>,
    claims: Vec<u64>,
}

impl Seen {
    fn pick_id(pool: &[u64], bytes: &mut Bytes) -> u64 {
        if pool.is_empty() || bytes.byte().is_multiple_of(8) {
            bytes.below(40) as u64
        } else {
            pool[bytes.below(pool.len())]
        }
    }
}

fn value(bytes: &mut Bytes) -> Value {
    match bytes.below(7) {
        0 => json!(bytes.below(5)),
        1 => json!({ "v": bytes.below(5) }),
        2 => json!("text"),
        3 => Value::Null,
        4 => json!([1, { "a": bytes.below(3) }]),
        5 => json!(i64::MAX),
        _ => json!({ "a": { "b": bytes.below(3) }, "c": null }),
    }
}

fn patch(bytes: &mut Bytes) -> Patch {
    if bytes.chance() {
        Patch::Merge {
            patch: value(bytes),
        }
    } else {
        let op = bytes.pick(&["add", "remove", "replace", "test", "move", "copy", "bogus"]);
        let path = bytes.pick(&["", "/v", "/a/b", "/0", "/-", "/c"]);
        let ops = match bytes.below(3) {
            0 => json!([{ "op": op, "path": path, "value": value(bytes) }]),
            1 => json!([{ "op": op, "path": path, "from": "/a" }]),
            _ => json!({ "not": "an array" }),
        };
        Patch::Json { ops }
    }
}

fn bound(bytes: &mut Bytes) -> Option<i64> {
    match bytes.below(5) {
        0 => None,
        1 => Some(i64::MIN),
        2 => Some(i64::MAX),
        _ => Some(bytes.below(21) as i64 - 10),
    }
}

fn delta(bytes: &mut Bytes) -> i64 {
    match bytes.below(6) {
        0 => i64::MAX,
        1 => i64::MIN,
        _ => bytes.below(11) as i64 - 5,
    }
}

fn txn_op(bytes: &mut Bytes) -> TxnOp {
    let key = bytes.pick(&KEYS).to_string();
    match bytes.below(5) {
        0 => TxnOp::Get { key },
        1 => TxnOp::Put {
            key,
            value: value(bytes),
            ttl_ms: bytes.chance().then(|| bytes.pick(&TTLS)),
        },
        2 => TxnOp::Patch {
            key,
            patch: patch(bytes),
        },
        3 => TxnOp::Delete { key },
        _ => TxnOp::CounterAdd {
            key,
            delta: delta(bytes),
            min: bound(bytes),
            max: bound(bytes),
        },
    }
}

fn compare(bytes: &mut Bytes) -> Compare {
    let key = bytes.pick(&KEYS).to_string();
    let (version, value_, exists) = match bytes.below(4) {
        0 => (Some(bytes.below(30) as u64), None, None),
        1 => (None, Some(value(bytes)), None),
        2 => (None, None, Some(bytes.chance())),
        _ => (Some(1), Some(json!(1)), None),
    };
    Compare {
        key,
        version,
        value: value_,
        exists,
        op: bytes.pick(&[CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Gt]),
    }
}

fn op(bytes: &mut Bytes, seen: &Seen) -> Op {
    let key = bytes.pick(&KEYS).to_string();
    match bytes.below(24) {
        0 => Op::Tick,
        1 => Op::SessionOpen {
            ttl_ms: bytes.pick(&TTLS),
        },
        2 => Op::SessionKeepalive {
            session_id: Seen::pick_id(&seen.sessions, bytes),
        },
        3 => Op::SessionClose {
            session_id: Seen::pick_id(&seen.sessions, bytes),
        },
        4 => Op::SessionKill {
            session_id: Seen::pick_id(&seen.sessions, bytes),
            reason: bytes.chance().then(|| "fuzz".to_string()),
        },
        5..=7 => {
            let count = 1 + bytes.below(3);
            let keys = (0..count).map(|_| bytes.pick(&KEYS).to_string()).collect();
            Op::LockAcquire(LockAcquire {
                keys,
                mode: if bytes.below(4) == 0 {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                },
                ttl_ms: (!bytes.chance()).then(|| bytes.pick(&TTLS)),
                wait_ms: bytes.pick(&WAITS),
                lock_delay_ms: bytes.pick(&[0, 0, 30]),
                read: bytes.chance(),
            })
        }
        8 => Op::LockRelease {
            lock_id: Seen::pick_id(&seen.locks, bytes),
        },
        9 => Op::LockRenew {
            lock_id: Seen::pick_id(&seen.locks, bytes),
            ttl_ms: bytes.chance().then(|| bytes.pick(&TTLS)),
        },
        10 | 11 => Op::Put {
            key,
            value: value(bytes),
            if_version: bytes.chance().then(|| bytes.below(30) as u64),
            if_absent: bytes.below(4) == 0,
            ttl_ms: (bytes.below(4) == 0).then(|| bytes.pick(&TTLS)),
        },
        12 => Op::Patch {
            key,
            patch: patch(bytes),
            if_version: bytes.chance().then(|| bytes.below(30) as u64),
        },
        13 => Op::Delete {
            key,
            if_version: bytes.chance().then(|| bytes.below(30) as u64),
        },
        14 => {
            let compares = (0..bytes.below(3)).map(|_| compare(bytes)).collect();
            let success = (0..bytes.below(4)).map(|_| txn_op(bytes)).collect();
            let failure = (0..bytes.below(3)).map(|_| txn_op(bytes)).collect();
            Op::Txn(Txn {
                compares,
                success,
                failure,
            })
        }
        15 | 16 => Op::CounterAdd {
            key,
            delta: delta(bytes),
            min: bound(bytes),
            max: bound(bytes),
        },
        17 => Op::QuotaSet {
            quota: key,
            capacity: bytes.below(10) as u64,
            reset_used: bytes.chance(),
        },
        18 => Op::QuotaReserve {
            quota: key,
            amount: bytes.below(6) as u64,
            ttl_ms: bytes.pick(&TTLS),
        },
        19 => {
            let reservation_id = Seen::pick_id(&seen.reservations, bytes);
            if bytes.chance() {
                Op::QuotaCommit {
                    reservation_id,
                    actual: bytes.below(6) as u64,
                }
            } else {
                Op::QuotaRelease { reservation_id }
            }
        }
        20 => Op::RateTake {
            bucket: key,
            tokens: bytes.below(5) as u64,
            rate_per_sec: bytes.pick(&[0, 1, 10, 1000]),
            burst: bytes.below(6) as u64,
            wait_ms: 0,
        },
        21 => Op::Once {
            key,
            max_age_ms: bytes.pick(&TTLS),
            claim_ttl_ms: bytes.pick(&TTLS),
            wait_ms: bytes.pick(&WAITS),
        },
        22 => {
            let claim_id = Seen::pick_id(&seen.claims, bytes);
            if bytes.chance() {
                Op::OnceFulfil {
                    key,
                    claim_id,
                    value: value(bytes),
                }
            } else {
                Op::OnceAbandon { key, claim_id }
            }
        }
        _ => Op::CancelWait {
            id: Seen::pick_id(&seen.locks, bytes),
        },
    }
}

fn command(bytes: &mut Bytes, seen: &Seen) -> Command {
    let op = op(bytes, seen);
    let mut command = Command::new(bytes.pick(&AGENTS), op);
    if bytes.below(4) == 0 {
        command.session = Some(Seen::pick_id(&seen.sessions, bytes));
    }
    if bytes.below(4) == 0 {
        command.idempotency_key = Some(bytes.pick(&["i0", "i1", ""]).to_string());
    }
    if bytes.below(5) == 0 {
        command.fence = Some(Fence {
            key: bytes.pick(&KEYS).to_string(),
            token: Seen::pick_id(&seen.tokens, bytes),
        });
    }
    command
}

/// The next stamp: mostly small steps, sometimes a lease-sized jump, a jump
/// far ahead, or a jump back (a wall clock that was set back).
fn next_time(bytes: &mut Bytes, time: u64) -> u64 {
    match bytes.below(8) {
        0..=2 => time + bytes.below(20) as u64,
        3 | 4 => time + 100 + bytes.u64() % 5_000,
        5 => time + 1_000_000 + bytes.u64() % 1_000_000_000,
        6 => time.saturating_sub(1 + bytes.u64() % 50_000),
        _ => time,
    }
}

/// Cross-command facts the invariants need.
#[derive(Default)]
struct Watch {
    /// Highest fence token granted per lock key.
    last_token: BTreeMap<String, u64>,
    /// Locks whose end was announced: they never hold anything again.
    ended: BTreeSet<u64>,
    /// Each state key's version after the last command.
    versions: BTreeMap<String, u64>,
}

fn record_ids(reply: &Reply, seen: &mut Seen) {
    match reply {
        Ok(Response::Session(info)) => seen.sessions.push(info.session_id),
        Ok(Response::Lock(info)) => {
            seen.locks.push(info.lock_id);
            seen.tokens.extend(info.fence_token);
        }
        Ok(Response::Reservation(info)) => {
            if let Ok(Value::Object(map)) = serde_json::to_value(info)
                && let Some(id) = map.get("reservation_id").and_then(Value::as_u64)
            {
                seen.reservations.push(id);
            }
        }
        Ok(Response::Once(result)) => {
            if let Ok(value) = serde_json::to_value(result)
                && let Some(id) = value["claim_id"].as_u64()
            {
                seen.claims.push(id);
            }
        }
        _ => {}
    }
    for list in [
        &mut seen.sessions,
        &mut seen.locks,
        &mut seen.tokens,
        &mut seen.reservations,
        &mut seen.claims,
    ] {
        if list.len() > 16 {
            list.remove(0);
        }
    }
}

/// One applied command, as the invariants see it.
struct Applied<'a> {
    seq: u64,
    time: u64,
    now_before: u64,
    command: &'a Command,
    reply: &'a Reply,
    events: &'a [Event],
}

/// The invariants after applying a command.
fn check_after(machine: &StateMachine, watch: &mut Watch, applied: Applied) {
    let Applied {
        seq,
        time,
        now_before,
        command,
        reply,
        events,
    } = applied;
    let now = machine.now();
    assert_eq!(machine.revision(), seq, "the revision is the last seq");
    assert_eq!(
        now,
        now_before.max(time),
        "time follows the stamps forwards and never goes back (stamp {time}, was {now_before})"
    );
    if let Some(deadline) = machine.next_deadline() {
        assert!(
            deadline > now,
            "after {command:?} at {now}, a deadline at {deadline} is due but did not fire"
        );
    }
    // Events: fence tokens grow per key and are this command's seq; ended locks stay ended.
    for event in events {
        assert_eq!(event.revision, seq, "events carry the command's revision");
        match event.kind {
            EventKind::LockGranted => {
                let token = event.fence_token.expect("a grant has a fence token");
                assert_eq!(token, seq, "the fencing token is the grant's seq");
                let lock_id = event.lock_id.expect("a grant names its lock");
                assert!(
                    !watch.ended.contains(&lock_id),
                    "lock {lock_id} was granted after it ended"
                );
                for key in &event.keys {
                    let last = watch.last_token.entry(key.clone()).or_insert(0);
                    // Strictly greater than any earlier command's grant; shared
                    // holders granted together by one command share its seq
                    // (two exclusive holders are caught by the holder invariant).
                    assert!(token >= *last, "{key}: token {token} after {last}");
                    *last = token;
                }
            }
            EventKind::LockReleased | EventKind::LeaseLost | EventKind::LockWaitEnded => {
                if let Some(id) = event.lock_id {
                    watch.ended.insert(id);
                }
            }
            _ => {}
        }
    }
    // Holders: at most one exclusive, never an ended lock, leases not past due,
    // fences current; waiters not past their deadline.
    for info in machine.locks_by_prefix("", usize::MAX) {
        let exclusive = info
            .holders
            .iter()
            .filter(|h| h.mode == LockMode::Exclusive)
            .count();
        assert!(
            exclusive == 0 || info.holders.len() == 1,
            "{}: two holders of an exclusive lock: {:?}",
            info.key,
            info.holders
        );
        for holder in &info.holders {
            assert!(
                !watch.ended.contains(&holder.lock_id),
                "ended lock {} holds {}",
                holder.lock_id,
                info.key
            );
            if let Some(expires_at) = holder.expires_at {
                assert!(
                    expires_at > now,
                    "lock {} on {} outlived its lease ({expires_at} <= {now})",
                    holder.lock_id,
                    info.key
                );
            }
            let token = holder.fence_token.expect("a holder has a token");
            let fence = machine
                .check_fence(&info.key, token)
                .expect("fence check answers");
            assert!(
                fence.valid,
                "holder {}'s token {token} is not current on {}",
                holder.lock_id, info.key
            );
            assert!(
                matches!(machine.lock_state(holder.lock_id), Ok(LockState::Live(_))),
                "holder {} is not live",
                holder.lock_id
            );
        }
        for waiter in &info.waiters {
            if let Some(deadline) = waiter.wait_deadline {
                assert!(
                    deadline > now,
                    "waiter {} on {} is past its deadline ({deadline} <= {now})",
                    waiter.lock_id,
                    info.key
                );
            }
        }
    }
    // Versions change only to this command's seq.
    for key in KEYS {
        let version = machine.get(key).map(|r| r.entry.version).ok();
        let before = watch.versions.get(key).copied();
        if let Some(version) = version
            && Some(version) != before
        {
            assert_eq!(
                version, seq,
                "{key} changed to version {version} by command {seq}"
            );
        }
        match version {
            Some(version) => watch.versions.insert(key.to_string(), version),
            None => watch.versions.remove(key),
        };
    }
    // A counter add never crosses its bounds: it ends within them, or, if
    // the counter was already past one, no further past it than before.
    let check_counter = |value: i64, delta: i64, min: Option<i64>, max: Option<i64>| {
        let above = max.is_some_and(|m| value > m);
        let below = min.is_some_and(|m| value < m);
        assert!(
            (!above || delta <= 0) && (!below || delta >= 0),
            "counter {value} (after adding {delta}) outside [{min:?}, {max:?}]"
        );
    };
    if let (
        Op::CounterAdd {
            delta, min, max, ..
        },
        Ok(Response::Counter(result)),
    ) = (&command.op, reply)
    {
        check_counter(result.value, *delta, *min, *max);
    }
    if let (Op::Txn(txn), Ok(Response::Txn(result))) = (&command.op, reply) {
        let branch = if result.succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for (op, result) in branch.iter().zip(&result.results) {
            if let (
                TxnOp::CounterAdd {
                    delta, min, max, ..
                },
                TxnOpResult::Counter(counter),
            ) = (op, result)
            {
                check_counter(counter.value, *delta, *min, *max);
            }
        }
    }
    // Every reply fits the envelope.
    let _ = envelope(reply);
}

/// Fuzz target `apply`: must never panic.
pub fn apply_commands(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT_BYTES)];
    let mut bytes = Bytes { data, at: 0 };
    let split_at = bytes.below(MAX_COMMANDS);
    let mut machine = StateMachine::new(small_limits());
    let mut twin: Option<StateMachine> = None;
    let mut watch = Watch::default();
    let mut seen = Seen::default();
    let mut time = 1_000_000u64;
    for seq in 1..=MAX_COMMANDS as u64 {
        if bytes.exhausted() {
            break;
        }
        if seq as usize == split_at + 1 {
            let snapshot = settled_snapshot(&machine);
            let restored = StateMachine::restore(&machine.snapshot(), small_limits())
                .expect("a snapshot restores");
            let again = settled_snapshot(&restored);
            assert!(
                again == snapshot,
                "snapshot → restore → snapshot changed the bytes:\n before: {}\n after:  {}",
                String::from_utf8_lossy(&snapshot),
                String::from_utf8_lossy(&again)
            );
            twin = Some(restored);
        }
        time = next_time(&mut bytes, time);
        let command = command(&mut bytes, &seen);
        let now_before = machine.now();
        let output = machine.apply(seq, time, &command);
        check_after(
            &machine,
            &mut watch,
            Applied {
                seq,
                time,
                now_before,
                command: &command,
                reply: &output.reply,
                events: &output.events,
            },
        );
        if let Some(twin) = twin.as_mut() {
            let other = twin.apply(seq, time, &command);
            assert_eq!(
                (settled_reply(&other.reply), &other.events),
                (settled_reply(&output.reply), &output.events),
                "a restored machine answered {command:?} differently"
            );
            let wakeups = |o: &baton_core::Output| {
                o.wakeups
                    .iter()
                    .map(|w| (w.id, settled_reply(&w.reply)))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                wakeups(&other),
                wakeups(&output),
                "wakeups differ after {command:?}"
            );
        }
        record_ids(&output.reply, &mut seen);
        for wakeup in &output.wakeups {
            record_ids(&wakeup.reply, &mut seen);
        }
    }
    if let Some(twin) = twin {
        let (ours, theirs) = (settled_snapshot(&machine), settled_snapshot(&twin));
        assert!(
            ours == theirs,
            "a restored machine diverged:\n original: {}\n restored: {}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }
}
