//! Simulated clients for the checker's own tests and the speed example: many
//! clients run against a tiny, obviously correct, sequential implementation
//! of each primitive, and the recorder sees realistic overlapping intervals.
//!
//! Every operation gets a real linearization point inside its interval; the
//! implementation applies operations in that order, so the recorded history is
//! linearizable by construction.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use baton_check::Operation;
use baton_check::models::{
    CounterInput, CounterOutput, LockInput, LockOutput, RegisterInput, RegisterOutput,
};

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The shape of a simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub clients: usize,
    pub ops: usize,
    pub keys: usize,
    /// Each request takes 1..=max_latency time units.
    pub max_latency: u64,
    /// A client waits 0..=max_think between requests.
    pub max_think: u64,
    /// Share of requests whose reply is lost (per mille). Half of those took effect.
    pub unknown_per_mille: u64,
}

/// A sequential implementation, and what clients ask of it.
pub trait Reference {
    type Input: Clone;
    type Output: Clone;
    /// What `client` sends next on `key` (it may use what the client saw before).
    fn choose(&mut self, rng: &mut Rng, client: usize, key: &str) -> Self::Input;
    /// Applies the request at its linearization point.
    fn apply(&mut self, key: &str, input: &Self::Input) -> Self::Output;
    /// The client learns the reply; `None` if it never does.
    fn observe(
        &mut self,
        client: usize,
        key: &str,
        input: &Self::Input,
        output: Option<&Self::Output>,
    );
}

/// Runs `config.ops` requests from `config.clients` clients against `reference`.
pub fn simulate<R: Reference>(
    reference: &mut R,
    rng: &mut Rng,
    config: &SimConfig,
) -> Vec<Operation<R::Input, R::Output>> {
    struct Slot {
        client: usize,
        key: String,
        invoke: u64,
        ret: u64,
        lin: u64,
        unknown: bool,
        takes_effect: bool,
    }
    let mut slots = Vec::with_capacity(config.ops);
    for client in 0..config.clients {
        let count = config.ops / config.clients + usize::from(client < config.ops % config.clients);
        let mut now = rng.below(config.max_latency + 1);
        for _ in 0..count {
            let invoke = now;
            let ret = invoke + 1 + rng.below(config.max_latency);
            let lin = invoke + rng.below(ret - invoke + 1);
            let unknown = rng.chance(config.unknown_per_mille);
            let takes_effect = !unknown || rng.chance(500);
            let key = format!("k{}", rng.below(config.keys as u64));
            slots.push(Slot {
                client,
                key,
                invoke,
                ret,
                lin,
                unknown,
                takes_effect,
            });
            now = ret + rng.below(config.max_think + 1);
        }
    }
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| (slots[i].lin, slots[i].client));

    let mut history = Vec::with_capacity(slots.len());
    for i in order {
        let slot = &slots[i];
        let input = reference.choose(rng, slot.client, &slot.key);
        let output = slot
            .takes_effect
            .then(|| reference.apply(&slot.key, &input));
        if slot.unknown {
            reference.observe(slot.client, &slot.key, &input, None);
            history.push(Operation::unknown(
                slot.client as u64,
                slot.key.clone(),
                slot.invoke,
                input,
            ));
        } else {
            let output = output.expect("a returned request took effect");
            reference.observe(slot.client, &slot.key, &input, Some(&output));
            history.push(Operation::returned(
                slot.client as u64,
                slot.key.clone(),
                slot.invoke,
                slot.ret,
                input,
                output,
            ));
        }
    }
    history
}

/// Versioned state as Baton's core keeps it: versions are log sequence numbers.
#[derive(Default)]
pub struct RegisterRef {
    lsn: u64,
    values: HashMap<String, (String, u64)>,
    /// The version each client last saw on each key (0: absent).
    seen: HashMap<(usize, String), u64>,
    writes: u64,
}

impl Reference for RegisterRef {
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn choose(&mut self, rng: &mut Rng, client: usize, key: &str) -> RegisterInput {
        self.writes += 1;
        let value = format!("v{}", self.writes);
        let seen = self
            .seen
            .get(&(client, key.to_string()))
            .copied()
            .unwrap_or(0);
        match rng.below(100) {
            0..=34 => RegisterInput::Get,
            35..=54 => RegisterInput::Put { value },
            55..=79 => RegisterInput::PutIfVersion {
                value,
                expected: seen,
            },
            80..=87 => RegisterInput::PutIfAbsent { value },
            _ => RegisterInput::Delete,
        }
    }

    fn apply(&mut self, key: &str, input: &RegisterInput) -> RegisterOutput {
        // Every command takes a sequence number; reads too, so versions skip.
        self.lsn += 1;
        let current = self.values.get(key).cloned();
        let write = |values: &mut HashMap<String, (String, u64)>, value: &str| {
            values.insert(key.to_string(), (value.to_string(), self.lsn));
            RegisterOutput::Written { version: self.lsn }
        };
        match input {
            RegisterInput::Get => match current {
                Some((value, version)) => RegisterOutput::Found { value, version },
                None => RegisterOutput::NotFound,
            },
            RegisterInput::Put { value } => write(&mut self.values, value),
            RegisterInput::PutIfVersion { value, expected } => {
                if current.as_ref().map_or(0, |c| c.1) == *expected {
                    write(&mut self.values, value)
                } else {
                    RegisterOutput::Conflict { current }
                }
            }
            RegisterInput::PutIfAbsent { value } => match current {
                None => write(&mut self.values, value),
                Some(current) => RegisterOutput::Conflict {
                    current: Some(current),
                },
            },
            RegisterInput::Delete => match self.values.remove(key) {
                Some(_) => RegisterOutput::Deleted,
                None => RegisterOutput::NotFound,
            },
        }
    }

    fn observe(
        &mut self,
        client: usize,
        key: &str,
        _input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) {
        let seen = match output {
            Some(RegisterOutput::Found { version, .. } | RegisterOutput::Written { version }) => {
                *version
            }
            Some(RegisterOutput::Conflict { current }) => current.as_ref().map_or(0, |c| c.1),
            Some(RegisterOutput::NotFound | RegisterOutput::Deleted) => 0,
            None => return,
        };
        self.seen.insert((client, key.to_string()), seen);
    }
}

/// Counters with the bounds every test client uses.
pub const COUNTER_MIN: i64 = 0;
pub const COUNTER_MAX: i64 = 10;

#[derive(Default)]
pub struct CounterRef {
    /// Record the key's version in replies, as Baton does.
    pub with_versions: bool,
    lsn: u64,
    values: HashMap<String, (i64, u64)>,
}

impl CounterRef {
    pub fn new(with_versions: bool) -> Self {
        CounterRef {
            with_versions,
            ..CounterRef::default()
        }
    }
}

impl Reference for CounterRef {
    type Input = CounterInput;
    type Output = CounterOutput;

    fn choose(&mut self, rng: &mut Rng, _client: usize, _key: &str) -> CounterInput {
        if rng.chance(300) {
            CounterInput::Get
        } else {
            let delta = [-2, -1, 1, 1, 2, 3][rng.below(6) as usize];
            CounterInput::Add {
                delta,
                min: Some(COUNTER_MIN),
                max: Some(COUNTER_MAX),
            }
        }
    }

    fn apply(&mut self, key: &str, input: &CounterInput) -> CounterOutput {
        self.lsn += 1;
        let (value, version) = self.values.entry(key.to_string()).or_insert((0, 0));
        let reply = |value: i64, version: u64, with_versions: bool| CounterOutput::Value {
            value,
            version: with_versions.then_some(version),
        };
        match *input {
            CounterInput::Get => reply(*value, *version, self.with_versions),
            CounterInput::Add { delta, min, max } => {
                let next = *value + delta;
                if min.is_some_and(|min| next < min) || max.is_some_and(|max| next > max) {
                    CounterOutput::Refused
                } else {
                    (*value, *version) = (next, self.lsn);
                    reply(next, self.lsn, self.with_versions)
                }
            }
        }
    }

    fn observe(&mut self, _: usize, _: &str, _: &CounterInput, _: Option<&CounterOutput>) {}
}

/// One exclusive lock per key, with fencing tokens from a log sequence.
#[derive(Default)]
pub struct LockRef {
    lsn: u64,
    holders: HashMap<String, u64>,
    resources: HashMap<String, String>,
    /// The token each client believes it holds, per key.
    holding: HashMap<(usize, String), u64>,
    /// The last token each client held, for stale fenced writes.
    last_held: HashMap<(usize, String), u64>,
    /// Clients whose grant may have happened without them seeing the token.
    ghosts: HashSet<(usize, String)>,
    writes: u64,
}

impl Reference for LockRef {
    type Input = LockInput;
    type Output = LockOutput;

    fn choose(&mut self, rng: &mut Rng, client: usize, key: &str) -> LockInput {
        let id = (client, key.to_string());
        self.writes += 1;
        let value = format!("w{}", self.writes);
        if self.ghosts.contains(&id) {
            // The harness's rule: a grant nobody saw ends by lease expiry.
            return LockInput::Expire { token: None };
        }
        match self.holding.get(&id) {
            Some(&token) => match rng.below(10) {
                0..=4 => LockInput::FencedWrite { token, value },
                5..=7 => LockInput::Release { token },
                _ => LockInput::Read,
            },
            None => match (rng.below(10), self.last_held.get(&id)) {
                (0..=1, Some(&token)) => LockInput::FencedWrite { token, value },
                (2, Some(&token)) => LockInput::Release { token },
                (0..=6, _) => LockInput::Acquire,
                _ => LockInput::Read,
            },
        }
    }

    fn apply(&mut self, key: &str, input: &LockInput) -> LockOutput {
        self.lsn += 1;
        let holder = self.holders.get(key).copied();
        match input {
            LockInput::Acquire => match holder {
                Some(_) => LockOutput::Busy,
                None => {
                    self.holders.insert(key.to_string(), self.lsn);
                    LockOutput::Granted { token: self.lsn }
                }
            },
            LockInput::Release { token } | LockInput::Expire { token: Some(token) } => {
                if holder == Some(*token) {
                    self.holders.remove(key);
                    LockOutput::Released
                } else {
                    LockOutput::NotHolder
                }
            }
            LockInput::Expire { token: None } => match self.holders.remove(key) {
                Some(_) => LockOutput::Released,
                None => LockOutput::NotHolder,
            },
            LockInput::FencedWrite { token, value } => {
                if holder == Some(*token) {
                    self.resources.insert(key.to_string(), value.clone());
                    LockOutput::Written
                } else {
                    LockOutput::Fenced
                }
            }
            LockInput::Read => LockOutput::Value(self.resources.get(key).cloned()),
        }
    }

    fn observe(
        &mut self,
        client: usize,
        key: &str,
        input: &LockInput,
        output: Option<&LockOutput>,
    ) {
        let id = (client, key.to_string());
        match (input, output) {
            (LockInput::Acquire, Some(LockOutput::Granted { token })) => {
                self.holding.insert(id.clone(), *token);
                self.last_held.insert(id, *token);
            }
            (LockInput::Acquire, None) => {
                self.ghosts.insert(id);
            }
            (LockInput::Expire { .. }, _) => {
                self.ghosts.remove(&id);
            }
            (LockInput::Release { .. }, _)
            | (LockInput::FencedWrite { .. }, Some(LockOutput::Fenced) | None) => {
                self.holding.remove(&id);
            }
            _ => {}
        }
    }
}
