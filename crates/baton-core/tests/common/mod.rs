//! Helpers shared by the core's tests: a machine driven with explicit
//! sequence numbers and times, like the sequencer does.

#![allow(dead_code)]

use baton_core::*;
use serde_json::Value;

pub struct Harness {
    pub machine: StateMachine,
    pub seq: u64,
    pub time: u64,
    pub events: Vec<Event>,
    pub wakeups: Vec<Wakeup>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Harness {
            machine: StateMachine::new(limits),
            seq: 0,
            time: 1_000_000,
            events: Vec::new(),
            wakeups: Vec::new(),
        }
    }

    /// A copy of the machine at this point, to try things on.
    pub fn clone_machine(&self) -> Harness {
        Harness {
            machine: self.machine.clone(),
            seq: self.seq,
            time: self.time,
            events: Vec::new(),
            wakeups: Vec::new(),
        }
    }

    pub fn run(&mut self, command: Command) -> Reply {
        self.seq += 1;
        let out = self.machine.apply(self.seq, self.time, &command);
        self.events.extend(out.events);
        self.wakeups.extend(out.wakeups);
        out.reply
    }

    pub fn op(&mut self, agent: &str, op: Op) -> Reply {
        self.run(Command::new(agent, op))
    }

    /// Move time forward and apply a tick, as the sequencer does at a deadline.
    pub fn advance(&mut self, ms: u64) {
        self.time += ms;
        self.run(Command::tick()).expect("tick never fails");
    }

    pub fn open_session(&mut self, agent: &str, ttl_ms: u64) -> u64 {
        match self.op(agent, Op::SessionOpen { ttl_ms }) {
            Ok(Response::Session(info)) => info.session_id,
            other => panic!("session open failed: {other:?}"),
        }
    }

    pub fn acquire(
        &mut self,
        agent: &str,
        session: Option<u64>,
        keys: &[&str],
        mode: LockMode,
        ttl_ms: Option<u64>,
        wait_ms: u64,
    ) -> Reply {
        let mut command = Command::new(
            agent,
            Op::LockAcquire(LockAcquire {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                mode,
                ttl_ms,
                wait_ms,
                lock_delay_ms: 0,
                read: false,
            }),
        );
        command.session = session;
        self.run(command)
    }

    pub fn put(&mut self, agent: &str, key: &str, value: Value) -> Reply {
        self.op(
            agent,
            Op::Put {
                key: key.into(),
                value,
                if_version: None,
                if_absent: false,
                ttl_ms: None,
            },
        )
    }

    pub fn take_wakeups(&mut self) -> Vec<Wakeup> {
        std::mem::take(&mut self.wakeups)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

pub fn lock(reply: &Reply) -> &LockInfo {
    match reply {
        Ok(Response::Lock(info)) => info,
        other => panic!("expected a lock, got {other:?}"),
    }
}

pub fn err(reply: &Reply) -> &Error {
    match reply {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

pub fn write(reply: &Reply) -> &WriteResult {
    match reply {
        Ok(Response::Write(w)) => w,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// A plain put, optionally conditional on the key's version.
pub fn put_op(key: &str, value: Value, if_version: Option<u64>) -> Op {
    Op::Put {
        key: key.into(),
        value,
        if_version,
        if_absent: false,
        ttl_ms: None,
    }
}
