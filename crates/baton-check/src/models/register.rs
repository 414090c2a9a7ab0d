//! Versioned state (Baton's `get` / `put` with `if_version` / `if_absent` /
//! `delete`) for one key.

use std::fmt::Debug;
use std::hash::Hash;

use super::Issued;
use crate::model::{Model, Order};

/// One key of versioned state, with values of type `V`.
///
/// `V` must be hashable: record JSON values as canonical strings (e.g.
/// `serde_json::to_string` of a value without `preserve_order`), or as any
/// small type that identifies them.
///
/// Rules, as Baton's core applies them:
/// - Every successful write gives the key a new version, greater than any
///   version the key had before, even across delete and re-create.
/// - Version 0 means "absent": `PutIfVersion { expected: 0 }` is "put if absent".
/// - A conflict reports the current value and version (or that the key is
///   absent) and changes nothing.
///
/// Merge patches and JSON patches are not modelled: record a patch whose reply
/// carries the resulting value as a `Put` of that value, and keep other
/// unmodelled writes off the keys a history checks.
#[derive(Clone, Debug)]
pub struct VersionedRegister<V = String> {
    initial: Option<(V, u64)>,
}

impl<V> Default for VersionedRegister<V> {
    fn default() -> Self {
        VersionedRegister::new()
    }
}

impl<V> VersionedRegister<V> {
    /// Every key starts absent.
    pub fn new() -> Self {
        VersionedRegister { initial: None }
    }

    /// Every key starts holding `value` at `version`.
    pub fn starting_with(value: V, version: u64) -> Self {
        VersionedRegister {
            initial: Some((value, version)),
        }
    }
}

/// A request on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput<V = String> {
    /// Read the value and its version.
    Get,
    /// Write unconditionally.
    Put { value: V },
    /// Write if the current version is `expected` (0: if absent).
    PutIfVersion { value: V, expected: u64 },
    /// Write if the key is absent.
    PutIfAbsent { value: V },
    /// Remove the key.
    Delete,
}

/// A reply on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput<V = String> {
    /// `Get` of a present key.
    Found { value: V, version: u64 },
    /// `Get` of an absent key; `Delete` of an absent key (`deleted: false`);
    /// also accepted for a conditional put on an absent key.
    NotFound,
    /// A put succeeded and the key now has `version`.
    Written { version: u64 },
    /// A conditional put was refused (CONCURRENT_MODIFICATION): `current` is
    /// the value and version it reported, `None` if the key was absent.
    Conflict { current: Option<(V, u64)> },
    /// `Delete` removed a present key (`deleted: true`).
    Deleted,
}

/// The key as far as the checker knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegisterState<V = String> {
    /// The current value; `None` when absent.
    pub value: Option<V>,
    /// The version of the current value; when absent, of the last value the
    /// key had (the next write is still above it).
    pub version: Issued,
}

impl<V: Clone + Eq> RegisterState<V> {
    /// Could the current version be `expected`, in Baton's sense (0 = absent)?
    fn version_could_be(&self, expected: u64) -> bool {
        match self.value {
            None => expected == 0,
            Some(_) => expected != 0 && self.version.could_be(expected),
        }
    }

    /// The state after a conditional write that succeeded with `version`,
    /// if `version` is a legal new version.
    fn written_if(&self, expected: u64, value: &V, version: u64) -> Option<Self> {
        if !self.version_could_be(expected) {
            return None;
        }
        // A match pins an unseen current version to `expected`.
        let floor = if expected == 0 {
            self.version.next_floor()
        } else {
            expected.saturating_add(1)
        };
        (version >= floor).then(|| RegisterState {
            value: Some(value.clone()),
            version: Issued::Exact(version),
        })
    }

    /// The state after a refusal that reported `current`, if it is possible.
    fn conflict_if(&self, expected: u64, current: Option<&(V, u64)>) -> Option<Self> {
        match current {
            None => (self.value.is_none() && expected != 0).then(|| self.clone()),
            Some((value, version)) => (self.value.as_ref() == Some(value)
                && self.version.could_be(*version)
                && *version != expected)
                .then(|| RegisterState {
                    value: Some(value.clone()),
                    version: Issued::Exact(*version),
                }),
        }
    }

    /// The state after a conditional write that took effect with an unseen version.
    fn written_unseen_if(&self, expected: u64, value: &V) -> Option<Self> {
        if !self.version_could_be(expected) {
            return None;
        }
        let version = if expected == 0 {
            self.version.issue_unseen()
        } else {
            Issued::AtLeast(expected.saturating_add(1))
        };
        Some(RegisterState {
            value: Some(value.clone()),
            version,
        })
    }
}

impl<V: Clone + Eq + Hash + Debug> Model for VersionedRegister<V> {
    type State = RegisterState<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Self::State {
        match &self.initial {
            None => RegisterState {
                value: None,
                version: Issued::Nothing,
            },
            Some((value, version)) => RegisterState {
                value: Some(value.clone()),
                version: Issued::Exact(*version),
            },
        }
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State> {
        use RegisterInput as In;
        use RegisterOutput as Out;
        match (input, output) {
            (In::Get, Out::Found { value, version }) => (state.value.as_ref() == Some(value)
                && state.version.could_be(*version))
            .then(|| RegisterState {
                value: Some(value.clone()),
                version: Issued::Exact(*version),
            }),
            (In::Get, Out::NotFound) => state.value.is_none().then(|| state.clone()),

            (In::Put { value }, Out::Written { version }) => {
                (*version >= state.version.next_floor()).then(|| RegisterState {
                    value: Some(value.clone()),
                    version: Issued::Exact(*version),
                })
            }

            (In::PutIfVersion { value, expected }, Out::Written { version }) => {
                state.written_if(*expected, value, *version)
            }
            (In::PutIfVersion { expected, .. }, Out::Conflict { current }) => {
                state.conflict_if(*expected, current.as_ref())
            }
            (In::PutIfVersion { expected, .. }, Out::NotFound) => {
                state.conflict_if(*expected, None)
            }

            (In::PutIfAbsent { value }, Out::Written { version }) => {
                state.written_if(0, value, *version)
            }
            (In::PutIfAbsent { .. }, Out::Conflict { current }) => {
                state.conflict_if(0, current.as_ref())
            }

            (In::Delete, Out::Deleted) => state.value.is_some().then(|| RegisterState {
                value: None,
                version: state.version,
            }),
            (In::Delete, Out::NotFound) => state.value.is_none().then(|| state.clone()),

            _ => None,
        }
    }

    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State> {
        let next = match input {
            RegisterInput::Get => None,
            RegisterInput::Put { value } => Some(RegisterState {
                value: Some(value.clone()),
                version: state.version.issue_unseen(),
            }),
            RegisterInput::PutIfVersion { value, expected } => {
                state.written_unseen_if(*expected, value)
            }
            RegisterInput::PutIfAbsent { value } => state.written_unseen_if(0, value),
            RegisterInput::Delete => state.value.is_some().then(|| RegisterState {
                value: None,
                version: state.version,
            }),
        };
        next.into_iter().collect()
    }

    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        // A read or a refusal changes nothing (it may pin an unseen version,
        // but only from a state where that version was not known yet).
        matches!(
            (input, output),
            (RegisterInput::Get, _)
                | (
                    _,
                    Some(RegisterOutput::Conflict { .. } | RegisterOutput::NotFound)
                )
        )
    }

    fn order(&self, _input: &Self::Input, output: &Self::Output) -> Option<Order> {
        match output {
            RegisterOutput::Written { version } => Some(Order::Issues(*version)),
            RegisterOutput::Found { version, .. }
            | RegisterOutput::Conflict {
                current: Some((_, version)),
            } => Some(Order::Observes(*version)),
            _ => None,
        }
    }
}
