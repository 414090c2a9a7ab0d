//! Baton's bounded counter (`add(key, delta, min, max)`) for one key.

use super::Issued;
use crate::model::{Model, Order};

/// One counter key. Its value starts at `initial` (0 for a key that does not
/// exist yet, as in Baton).
///
/// `Add` succeeds, and returns the new value, exactly when `value + delta`
/// neither overflows nor leaves `[min, max]` (a missing bound does not
/// apply); otherwise it is refused and nothing changes.
///
/// A counter is a versioned key in Baton: a successful add gives it a new
/// version (greater than every earlier one) and a read returns the version
/// too. Record them when you can (`version: Some(..)`): the model then checks
/// them, and the search uses them to order operations, which keeps it fast
/// with many clients and lost replies. Without versions a single hot counter
/// with many concurrent clients *and* lost replies can exhaust the budget.
#[derive(Clone, Debug, Default)]
pub struct BoundedCounter {
    /// The value of every key before the history starts.
    pub initial: i64,
}

impl BoundedCounter {
    /// Counters that start at 0.
    pub fn new() -> Self {
        BoundedCounter { initial: 0 }
    }
}

/// A request on one counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterInput {
    /// Add `delta` unless the result would leave `[min, max]`.
    Add {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Read the value.
    Get,
}

/// A reply on one counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterOutput {
    /// The value after an `Add`, or the value a `Get` read, with the key's
    /// version if the recorder kept it.
    Value { value: i64, version: Option<u64> },
    /// An `Add` was refused (QUOTA_EXCEEDED); nothing changed.
    Refused,
}

/// The counter as far as the checker knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterState {
    pub value: i64,
    /// The version of the last successful add.
    pub version: Issued,
}

/// The value after adding `delta`, if the add is allowed.
fn add_within(value: i64, delta: i64, min: Option<i64>, max: Option<i64>) -> Option<i64> {
    let next = value.checked_add(delta)?;
    let within = min.is_none_or(|min| next >= min) && max.is_none_or(|max| next <= max);
    within.then_some(next)
}

impl Model for BoundedCounter {
    type State = CounterState;
    type Input = CounterInput;
    type Output = CounterOutput;

    fn init(&self) -> CounterState {
        CounterState {
            value: self.initial,
            version: Issued::Nothing,
        }
    }

    fn step(
        &self,
        state: &CounterState,
        input: &CounterInput,
        output: &CounterOutput,
    ) -> Option<CounterState> {
        match (input, output) {
            (CounterInput::Add { delta, min, max }, CounterOutput::Value { value, version }) => {
                if add_within(state.value, *delta, *min, *max) != Some(*value) {
                    return None;
                }
                let version = match version {
                    Some(v) if *v >= state.version.next_floor() => Issued::Exact(*v),
                    Some(_) => return None,
                    None => state.version.issue_unseen(),
                };
                Some(CounterState {
                    value: *value,
                    version,
                })
            }
            (CounterInput::Add { delta, min, max }, CounterOutput::Refused) => {
                add_within(state.value, *delta, *min, *max)
                    .is_none()
                    .then(|| state.clone())
            }
            (CounterInput::Get, CounterOutput::Value { value, version }) => {
                if *value != state.value {
                    return None;
                }
                match version {
                    // Version 0 is "never written", as for any Baton key.
                    Some(0) => (state.version == Issued::Nothing).then(|| state.clone()),
                    Some(v) => state.version.could_be(*v).then_some(CounterState {
                        value: *value,
                        version: Issued::Exact(*v),
                    }),
                    None => Some(state.clone()),
                }
            }
            (CounterInput::Get, CounterOutput::Refused) => None,
        }
    }

    fn step_unknown(&self, state: &CounterState, input: &CounterInput) -> Vec<CounterState> {
        match input {
            CounterInput::Add { delta, min, max } => add_within(state.value, *delta, *min, *max)
                .map(|value| CounterState {
                    value,
                    version: state.version.issue_unseen(),
                })
                .into_iter()
                .collect(),
            CounterInput::Get => Vec::new(),
        }
    }

    fn is_read_only(&self, input: &CounterInput, output: Option<&CounterOutput>) -> bool {
        matches!(
            (input, output),
            (CounterInput::Get, _) | (_, Some(CounterOutput::Refused))
        )
    }

    fn order(&self, input: &CounterInput, output: &CounterOutput) -> Option<Order> {
        match (input, output) {
            (
                CounterInput::Add { .. },
                CounterOutput::Value {
                    version: Some(v), ..
                },
            ) => Some(Order::Issues(*v)),
            (
                CounterInput::Get,
                CounterOutput::Value {
                    version: Some(v), ..
                },
            ) if *v > 0 => Some(Order::Observes(*v)),
            _ => None,
        }
    }
}
