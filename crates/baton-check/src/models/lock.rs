//! An exclusive lock with fencing tokens, guarding one resource, for one key.

use std::fmt::Debug;
use std::hash::Hash;

use super::Issued;
use crate::model::{Model, Order};

/// One exclusive lock and the resource it protects (a value of type `V`
/// written through Baton's fenced writes).
///
/// Rules:
/// - `Acquire` is granted only while the lock is free, with a fencing token
///   greater than every token granted before; it answers `Busy` only while
///   the lock is held. At most one holder at a time.
/// - `Release { token }` frees the lock only if `token` is the holder's
///   (`Released`); otherwise it changes nothing (`NotHolder`, Baton's
///   `released: false`).
/// - `FencedWrite { token, value }` sets the resource only if `token` is the
///   current holder's (`Written`); otherwise it is refused (`Fenced`) and
///   changes nothing. A released token is no longer current.
/// - `Read` returns the resource's value (`None` before any write).
///
/// Lease expiry has no clock here. Either use TTLs longer than the run, or
/// record a possible expiry as an `Expire` operation with an unknown outcome,
/// invoked at the earliest moment the lease could have run out; the checker
/// then lets the lease end at any moment from then on, or never.
#[derive(Clone, Debug)]
pub struct Lock<V = String> {
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<V> Lock<V> {
    /// A lock that starts free, with a resource that was never written.
    pub fn new() -> Self {
        Lock {
            _value: std::marker::PhantomData,
        }
    }
}

impl<V> Default for Lock<V> {
    fn default() -> Self {
        Lock::new()
    }
}

/// A request on one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockInput<V = String> {
    /// Try to take the lock (without waiting).
    Acquire,
    /// Give the lock back.
    Release { token: u64 },
    /// The lease of the holder with `token` (`None`: whoever holds the lock,
    /// for a grant whose token nobody saw) ends by itself.
    Expire { token: Option<u64> },
    /// Write the protected resource, fenced with `token`.
    FencedWrite { token: u64, value: V },
    /// Read the protected resource.
    Read,
}

/// A reply on one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutput<V = String> {
    /// `Acquire` succeeded with this fencing token.
    Granted { token: u64 },
    /// `Acquire` found the lock held (CONCURRENT_MODIFICATION).
    Busy,
    /// `Release` or `Expire` freed the lock.
    Released,
    /// `Release` or `Expire` named a token that was not the holder's.
    NotHolder,
    /// `FencedWrite` was accepted.
    Written,
    /// `FencedWrite` was refused (FENCED).
    Fenced,
    /// `Read` returned this value.
    Value(Option<V>),
}

/// The lock and its resource as far as the checker knows them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockState<V = String> {
    /// Is the lock held? Its holder's token is then `last_token`.
    pub held: bool,
    /// The last fencing token granted.
    pub last_token: Issued,
    /// The protected resource.
    pub resource: Option<V>,
}

impl<V: Clone> LockState<V> {
    /// Could `token` be the current holder's?
    fn held_by(&self, token: u64) -> bool {
        self.held && self.last_token.could_be(token)
    }

    /// Is `token` surely the current holder's?
    fn surely_held_by(&self, token: u64) -> bool {
        self.held && self.last_token == Issued::Exact(token)
    }

    /// The lock freed by the holder of `token` (which pins an unseen token).
    fn released_by(&self, token: u64) -> Self {
        LockState {
            held: false,
            last_token: Issued::Exact(token),
            resource: self.resource.clone(),
        }
    }

    /// The state after the lease of `token` (`None`: of whoever holds it)
    /// ended, if it could have.
    fn expired(&self, token: Option<u64>) -> Option<Self> {
        match token {
            Some(token) => self.held_by(token).then(|| self.released_by(token)),
            None => self.held.then(|| LockState {
                held: false,
                ..self.clone()
            }),
        }
    }
}

impl<V: Clone + Eq + Hash + Debug> Model for Lock<V> {
    type State = LockState<V>;
    type Input = LockInput<V>;
    type Output = LockOutput<V>;

    fn init(&self) -> Self::State {
        LockState {
            held: false,
            last_token: Issued::Nothing,
            resource: None,
        }
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State> {
        use LockInput as In;
        use LockOutput as Out;
        match (input, output) {
            (In::Acquire, Out::Granted { token }) => {
                (!state.held && *token >= state.last_token.next_floor()).then(|| LockState {
                    held: true,
                    last_token: Issued::Exact(*token),
                    resource: state.resource.clone(),
                })
            }
            (In::Acquire, Out::Busy) => state.held.then(|| state.clone()),

            (In::Release { token }, Out::Released) => {
                state.held_by(*token).then(|| state.released_by(*token))
            }
            (In::Release { token }, Out::NotHolder) => {
                (!state.surely_held_by(*token)).then(|| state.clone())
            }

            (In::Expire { token }, Out::Released) => state.expired(*token),
            (In::Expire { token: Some(token) }, Out::NotHolder) => {
                (!state.surely_held_by(*token)).then(|| state.clone())
            }
            (In::Expire { token: None }, Out::NotHolder) => (!state.held).then(|| state.clone()),

            (In::FencedWrite { token, value }, Out::Written) => {
                state.held_by(*token).then(|| LockState {
                    held: true,
                    last_token: Issued::Exact(*token),
                    resource: Some(value.clone()),
                })
            }
            (In::FencedWrite { token, .. }, Out::Fenced) => {
                (!state.surely_held_by(*token)).then(|| state.clone())
            }

            (In::Read, Out::Value(value)) => (state.resource == *value).then(|| state.clone()),

            _ => None,
        }
    }

    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State> {
        let next = match input {
            LockInput::Acquire => (!state.held).then(|| LockState {
                held: true,
                last_token: state.last_token.issue_unseen(),
                resource: state.resource.clone(),
            }),
            LockInput::Release { token } => {
                state.held_by(*token).then(|| state.released_by(*token))
            }
            LockInput::Expire { token } => state.expired(*token),
            LockInput::FencedWrite { token, value } => state.held_by(*token).then(|| LockState {
                held: true,
                last_token: Issued::Exact(*token),
                resource: Some(value.clone()),
            }),
            LockInput::Read => None,
        };
        next.into_iter().collect()
    }

    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        matches!(
            (input, output),
            (LockInput::Read, _)
                | (
                    _,
                    Some(
                        LockOutput::Busy
                            | LockOutput::NotHolder
                            | LockOutput::Fenced
                            | LockOutput::Value(_)
                    )
                )
        )
    }

    fn order(&self, input: &Self::Input, output: &Self::Output) -> Option<Order> {
        match (input, output) {
            (_, LockOutput::Granted { token }) => Some(Order::Issues(*token)),
            (
                LockInput::FencedWrite { token, .. }
                | LockInput::Release { token }
                | LockInput::Expire { token: Some(token) },
                LockOutput::Written | LockOutput::Released,
            ) => Some(Order::Observes(*token)),
            _ => None,
        }
    }
}
