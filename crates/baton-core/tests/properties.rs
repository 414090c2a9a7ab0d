//! Property tests: random command sequences from several agents over a few
//! keys with random time steps, checking after every step the invariants a
//! coordination service lives by, and comparing state replies with a
//! deliberately simple reference model.

use baton_core::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const AGENTS: [&str; 3] = ["a", "b", "c"];
const LOCK_KEYS: [&str; 3] = ["l/0", "l/1", "l/2"];
const STATE_KEYS: [&str; 2] = ["s/0", "s/1"];
const COUNTER_MIN: i64 = 0;
const COUNTER_MAX: i64 = 5;

#[derive(Debug, Clone)]
enum Step {
    Wait(u64),
    OpenSession(usize),
    Keepalive(usize),
    CloseSession(usize),
    KillSession(usize),
    Acquire {
        agent: usize,
        keys: Vec<usize>,
        shared: bool,
        ttl: u64,
        wait: u64,
        with_session: bool,
    },
    ReleaseSome {
        agent: usize,
        pick: usize,
    },
    RenewSome {
        agent: usize,
        pick: usize,
    },
    Put {
        agent: usize,
        key: usize,
        value: i64,
        guard: Option<bool>,
    },
    Delete {
        agent: usize,
        key: usize,
    },
    CounterAdd {
        agent: usize,
        delta: i64,
    },
    FencedPut {
        agent: usize,
        pick: usize,
    },
    /// A put that releases a lock that `owner` took (maybe another agent's,
    /// maybe ended or still waiting) in the same command.
    PutReleasing {
        agent: usize,
        owner: usize,
        pick: usize,
        key: usize,
        value: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u64..1500).prop_map(Step::Wait),
        1 => (0..3usize).prop_map(Step::OpenSession),
        1 => (0..3usize).prop_map(Step::Keepalive),
        1 => (0..3usize).prop_map(Step::CloseSession),
        1 => (0..3usize).prop_map(Step::KillSession),
        5 => (0..3usize, proptest::collection::vec(0..3usize, 1..3), any::<bool>(), 50u64..2000, prop_oneof![Just(0u64), 1u64..3000], any::<bool>())
            .prop_map(|(agent, keys, shared, ttl, wait, with_session)| Step::Acquire { agent, keys, shared, ttl, wait, with_session }),
        3 => (0..3usize, any::<usize>()).prop_map(|(agent, pick)| Step::ReleaseSome { agent, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(agent, pick)| Step::RenewSome { agent, pick }),
        3 => (0..3usize, 0..2usize, -3i64..3, proptest::option::of(any::<bool>()))
            .prop_map(|(agent, key, value, guard)| Step::Put { agent, key, value, guard }),
        1 => (0..3usize, 0..2usize).prop_map(|(agent, key)| Step::Delete { agent, key }),
        3 => (0..3usize, -2i64..3).prop_map(|(agent, delta)| Step::CounterAdd { agent, delta }),
        2 => (0..3usize, any::<usize>()).prop_map(|(agent, pick)| Step::FencedPut { agent, pick }),
        3 => (0..3usize, 0..3usize, any::<usize>(), 0..2usize, -3i64..3)
            .prop_map(|(agent, owner, pick, key, value)| Step::PutReleasing { agent, owner, pick, key, value }),
    ]
}

/// The reference model for versioned state: a map and nothing clever.
#[derive(Default)]
struct Model {
    kv: BTreeMap<String, (Value, u64)>,
}

struct Run {
    machine: StateMachine,
    seq: u64,
    time: u64,
    model: Model,
    sessions: [Option<u64>; 3],
    /// Locks each agent believes it has (held or waiting).
    mine: [Vec<u64>; 3],
    /// Highest fence token granted per lock key.
    max_fence: BTreeMap<String, u64>,
    /// Waiting lock id -> wait deadline.
    waiting: BTreeMap<u64, u64>,
}

impl Run {
    fn apply(&mut self, command: Command) -> Reply {
        self.seq += 1;
        let out = self.machine.apply(self.seq, self.time, &command);
        for event in &out.events {
            if event.kind == EventKind::LockGranted {
                let token = event.fence_token.expect("grants carry a fence");
                assert_eq!(token, self.seq, "fence = seq of the granting command");
                // Strictly increasing across grants; several shared holders
                // granted by one command share that command's token.
                let shared = matches!(
                    self.machine.lock_state(event.lock_id.unwrap()),
                    Ok(LockState::Live(LockInfo {
                        mode: LockMode::Shared,
                        ..
                    }))
                );
                for key in &event.keys {
                    let previous = self.max_fence.insert(key.clone(), token).unwrap_or(0);
                    assert!(
                        token > previous || (shared && token == previous),
                        "fence tokens must strictly increase on {key}"
                    );
                }
            }
            // Expiries remove keys from the model too.
            if event.kind == EventKind::KeyExpired {
                for key in &event.keys {
                    self.model.kv.remove(key);
                }
            }
        }
        for wakeup in &out.wakeups {
            self.waiting.remove(&wakeup.id);
        }
        out.reply
    }

    fn check_invariants(&self) {
        for key in LOCK_KEYS {
            let info = self.machine.key_locks(key).unwrap();
            let exclusive = info
                .holders
                .iter()
                .filter(|l| l.mode == LockMode::Exclusive)
                .count();
            assert!(exclusive <= 1, "two exclusive holders of {key}: {info:?}");
            assert!(
                exclusive == 0 || info.holders.len() == 1,
                "exclusive and shared holders together on {key}"
            );
            for holder in &info.holders {
                if let Some(expires) = holder.expires_at {
                    assert!(
                        expires > self.machine.now(),
                        "a holder outlived its lease on {key}"
                    );
                }
            }
        }
        let now = self.machine.now();
        for (id, deadline) in &self.waiting {
            assert!(
                *deadline > now,
                "waiter {id} was neither granted nor failed by its deadline {deadline} (now {now})"
            );
        }
        if let Ok(counter) = self.machine.get("s/counter") {
            let value = counter.entry.value.as_i64().unwrap();
            assert!(
                (COUNTER_MIN..=COUNTER_MAX).contains(&value),
                "counter out of bounds: {value}"
            );
        }
        for key in STATE_KEYS {
            let real = self
                .machine
                .get(key)
                .ok()
                .map(|g| ((*g.entry.value).clone(), g.entry.version));
            assert_eq!(
                real,
                self.model.kv.get(key).cloned(),
                "state of {key} differs from the model"
            );
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Wait(ms) => {
                self.time += ms;
                // The sequencer ticks at every deadline on the way, never late.
                while let Some(due) = self.machine.next_deadline().filter(|d| *d <= self.time) {
                    let target = self.time;
                    self.time = due.max(self.machine.now());
                    self.apply(Command::tick()).unwrap();
                    self.time = target;
                    self.check_invariants();
                }
                self.apply(Command::tick()).unwrap();
            }
            Step::OpenSession(agent) => {
                if let Ok(Response::Session(info)) = self.apply(Command::new(
                    AGENTS[agent],
                    Op::SessionOpen { ttl_ms: 2000 },
                )) {
                    self.sessions[agent] = Some(info.session_id);
                }
            }
            Step::Keepalive(agent) => {
                if let Some(id) = self.sessions[agent] {
                    let _ = self.apply(Command::new(
                        AGENTS[agent],
                        Op::SessionKeepalive { session_id: id },
                    ));
                }
            }
            Step::CloseSession(agent) | Step::KillSession(agent) => {
                if let Some(id) = self.sessions[agent].take() {
                    let op = if matches!(step, Step::CloseSession(_)) {
                        Op::SessionClose { session_id: id }
                    } else {
                        Op::SessionKill {
                            session_id: id,
                            reason: None,
                        }
                    };
                    let _ = self.apply(Command::new(AGENTS[agent], op));
                }
            }
            Step::Acquire {
                agent,
                keys,
                shared,
                ttl,
                wait,
                with_session,
            } => {
                let keys: Vec<String> = keys.iter().map(|k| LOCK_KEYS[*k].to_string()).collect();
                let mode = if shared {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                };
                let session = if with_session {
                    self.sessions[agent]
                } else {
                    None
                };
                let mut command = Command::new(
                    AGENTS[agent],
                    Op::LockAcquire(LockAcquire {
                        keys: keys.clone(),
                        mode,
                        ttl_ms: Some(ttl),
                        wait_ms: wait,
                        lock_delay_ms: 0,
                        read: false,
                    }),
                );
                command.session = session;
                // The simple rule, from the outside: grantable iff every key's
                // holders and queued requests are all compatible with this mode.
                let free = keys.iter().all(|k| {
                    let info = self.machine.key_locks(k).unwrap();
                    info.delayed_until.is_none()
                        && info
                            .holders
                            .iter()
                            .chain(&info.waiters)
                            .all(|l| l.mode.compatible(mode))
                });
                let reentrant = keys.iter().any(|k| {
                    let info = self.machine.key_locks(k).unwrap();
                    info.holders
                        .iter()
                        .chain(&info.waiters)
                        .any(|l| match session {
                            Some(s) => l.session == Some(s),
                            None => l.session.is_none() && l.agent == AGENTS[agent],
                        })
                });
                let reply = self.apply(command);
                match &reply {
                    Ok(Response::Lock(info)) => {
                        assert!(!reentrant, "re-entrant acquire must be refused");
                        if info.status == LockStatus::Held {
                            assert!(free, "granted a lock whose keys were not free: {info:?}");
                        } else {
                            assert!(wait > 0 && !free);
                            self.waiting
                                .insert(info.lock_id, info.wait_deadline.unwrap());
                        }
                        self.mine[agent].push(info.lock_id);
                    }
                    Err(e) if e.code == ErrorCode::ConcurrentModification => {
                        assert!(!free && wait == 0 && !reentrant)
                    }
                    Err(e) if e.code == ErrorCode::Deadlock => {
                        assert!(reentrant || wait > 0, "{e:?}")
                    }
                    Err(e) if e.code == ErrorCode::Fenced => assert!(session.is_some()),
                    other => panic!("unexpected acquire reply {other:?}"),
                }
            }
            Step::ReleaseSome { agent, pick } | Step::RenewSome { agent, pick } => {
                if self.mine[agent].is_empty() {
                    return;
                }
                let id = self.mine[agent][pick % self.mine[agent].len()];
                let op = if matches!(step, Step::ReleaseSome { .. }) {
                    Op::LockRelease { lock_id: id }
                } else {
                    Op::LockRenew {
                        lock_id: id,
                        ttl_ms: None,
                    }
                };
                let release = matches!(op, Op::LockRelease { .. });
                let reply = self.apply(Command::new(AGENTS[agent], op));
                if release {
                    assert!(
                        matches!(reply, Ok(Response::Release(_))),
                        "release is idempotent: {reply:?}"
                    );
                    self.mine[agent].retain(|l| *l != id);
                    self.waiting.remove(&id);
                }
            }
            Step::Put {
                agent,
                key,
                value,
                guard,
            } => {
                let key = STATE_KEYS[key];
                let current = self.model.kv.get(key).cloned();
                let if_version = match guard {
                    None => None,
                    Some(true) => Some(current.as_ref().map_or(0, |(_, v)| *v)),
                    Some(false) => Some(current.as_ref().map_or(0, |(_, v)| *v) + 1),
                };
                let reply = self.apply(Command::new(
                    AGENTS[agent],
                    Op::Put {
                        key: key.into(),
                        value: json!(value),
                        if_version,
                        if_absent: false,
                        ttl_ms: None,
                    },
                ));
                let expect_ok = guard != Some(false);
                match reply {
                    Ok(Response::Write(w)) => {
                        assert!(expect_ok);
                        assert_eq!(w.previous_version, current.as_ref().map(|(_, v)| *v));
                        self.model.kv.insert(key.into(), (json!(value), self.seq));
                    }
                    Err(e) => {
                        assert!(!expect_ok, "{e:?}");
                        assert_eq!(e.code, ErrorCode::ConcurrentModification);
                        assert_eq!(
                            e.details.unwrap()["current_version"],
                            current.map_or(0, |(_, v)| v)
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
            Step::Delete { agent, key } => {
                let key = STATE_KEYS[key];
                let existed = self.model.kv.remove(key).is_some();
                let reply = self.apply(Command::new(
                    AGENTS[agent],
                    Op::Delete {
                        key: key.into(),
                        if_version: None,
                    },
                ));
                assert!(
                    matches!(reply, Ok(Response::Delete(DeleteResult { deleted, .. })) if deleted == existed)
                );
            }
            Step::CounterAdd { agent, delta } => {
                let before = self
                    .machine
                    .get("s/counter")
                    .map_or(0, |g| g.entry.value.as_i64().unwrap());
                let reply = self.apply(Command::new(
                    AGENTS[agent],
                    Op::CounterAdd {
                        key: "s/counter".into(),
                        delta,
                        min: Some(COUNTER_MIN),
                        max: Some(COUNTER_MAX),
                    },
                ));
                let within = (COUNTER_MIN..=COUNTER_MAX).contains(&(before + delta));
                match reply {
                    Ok(Response::Counter(c)) => assert!(within && c.value == before + delta),
                    Err(e) => assert!(!within && e.code == ErrorCode::QuotaExceeded),
                    other => panic!("{other:?}"),
                }
            }
            Step::FencedPut { agent, pick } => {
                if self.mine[agent].is_empty() {
                    return;
                }
                let id = self.mine[agent][pick % self.mine[agent].len()];
                let Ok(LockState::Live(info)) = self.machine.lock_state(id) else {
                    return;
                };
                let Some(token) = info.fence_token else {
                    return;
                };
                let key = info.keys[0].clone();
                let valid = self.machine.check_fence(&key, token).unwrap().valid;
                let command = Command::new(
                    AGENTS[agent],
                    Op::Put {
                        key: "s/fenced".into(),
                        value: json!(token),
                        if_version: None,
                        if_absent: false,
                        ttl_ms: None,
                    },
                )
                .with_fence(key, token);
                let reply = self.apply(command);
                assert_eq!(
                    reply.is_ok(),
                    valid,
                    "fenced write accepted iff the fence is current: {reply:?}"
                );
            }
            Step::PutReleasing {
                agent,
                owner,
                pick,
                key,
                value,
            } => {
                if self.mine[owner].is_empty() {
                    return;
                }
                let id = self.mine[owner][pick % self.mine[owner].len()];
                let before = self.machine.lock_state(id);
                let held = matches!(
                    &before,
                    Ok(LockState::Live(LockInfo {
                        status: LockStatus::Held,
                        ..
                    }))
                );
                let key = STATE_KEYS[key];
                let command = Command::new(
                    AGENTS[agent],
                    Op::Put {
                        key: key.into(),
                        value: json!(value),
                        if_version: None,
                        if_absent: false,
                        ttl_ms: None,
                    },
                )
                .with_release(id);
                let reply = self.apply(command);
                // All or nothing: the write and the release both, or neither.
                match reply {
                    Ok(Response::Write(w)) => {
                        assert!(held && agent == owner, "released {before:?} for {agent}");
                        assert_eq!(w.released_lock_id, Some(id));
                        assert!(matches!(
                            self.machine.lock_state(id),
                            Ok(LockState::Ended {
                                status: EndReason::Released,
                                ..
                            })
                        ));
                        self.model.kv.insert(key.into(), (json!(value), self.seq));
                        self.mine[owner].retain(|l| *l != id);
                    }
                    Err(e) => {
                        assert!(!held || agent != owner, "refused a valid release: {e:?}");
                        assert_eq!(self.machine.lock_state(id), before);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        self.check_invariants();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(steps in proptest::collection::vec(step(), 1..120)) {
        let mut run = Run {
            machine: StateMachine::new(Limits::default()),
            seq: 0,
            time: 1_000_000,
            model: Model::default(),
            sessions: [None; 3],
            mine: [Vec::new(), Vec::new(), Vec::new()],
            max_fence: BTreeMap::new(),
            waiting: BTreeMap::new(),
        };
        for step in steps {
            run.step(step);
        }
        // Determinism: replaying the snapshot gives the same bytes.
        let bytes = run.machine.snapshot();
        let restored = StateMachine::restore(&bytes, Limits::default()).unwrap();
        prop_assert_eq!(restored.snapshot(), bytes);
    }
}
