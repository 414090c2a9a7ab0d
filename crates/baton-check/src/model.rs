//! The sequential specification a history is checked against.

use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification of one key (object): which outputs an input may
/// produce from a state, and the state that follows.
///
/// Keep a model small and obviously correct: it *is* the definition of
/// "right" for the checker. The search clones, hashes and compares states a
/// lot, so keep `State` small too.
pub trait Model {
    /// Everything about the object that a later output can depend on.
    type State: Clone + Eq + Hash + Debug;
    /// A request (without the key: histories are split by key first).
    type Input: Debug;
    /// A reply.
    type Output: Debug;

    /// The state of every key before the history starts.
    fn init(&self) -> Self::State;

    /// Applies `input` that was observed to produce `output`: the next state,
    /// or `None` if `output` is impossible from `state`.
    ///
    /// Must be deterministic: the output has to say enough to fix the next
    /// state. (Where it does not, the model keeps less precise knowledge in
    /// its state, as the shipped models do with unseen versions.)
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Applies `input` whose output nobody saw: every state it may lead to.
    ///
    /// Must cover every `step(state, input, o)` for every output `o` (it may
    /// over-approximate). It may leave out `state` itself: the checker always
    /// allows an operation with an unknown output to have had no effect.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Optional hint that makes many concurrent reads cheap: true if an
    /// operation with this output never changes the state. Precisely: if
    /// `step(s, input, output) == Some(s)`, then for every state `t` reachable
    /// from `s`, `step(t, input, output)` is `None` or `Some(t)`. With
    /// `output = None` (output unseen): true only if no output of `input`
    /// ever changes the state (a pure read).
    ///
    /// The checker then places such an operation as soon as it fits without
    /// trying the orders where it comes later (which cannot succeed where this
    /// one fails), and ignores pure reads whose output is unseen. A wrong
    /// `true` can make the checker miss linearizations.
    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }

    /// Optional hint for objects that number their changes (versions,
    /// fencing tokens): where the output puts the operation in that
    /// numbering. Must agree with `step`: in every legal sequential run, an
    /// operation with `Order::Issues(v)` comes after every operation with
    /// `Issues(u)` or `Observes(u)` for `u < v`.
    ///
    /// The checker then never tries an order that breaks this, which keeps
    /// the search nearly linear on versioned objects under heavy concurrency.
    fn order(&self, input: &Self::Input, output: &Self::Output) -> Option<Order> {
        let _ = (input, output);
        None
    }
}

/// Where an operation's output places it in an object's numbering of its
/// changes (see [`Model::order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// The operation made the change numbered `n` (a write that returned version `n`).
    Issues(u64),
    /// The operation saw change `n` as the current one (a read of version `n`).
    Observes(u64),
}
