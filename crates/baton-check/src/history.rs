//! What a recorder hands the checker: one [`Operation`] per client request.

use std::fmt;

/// The most operations one key may have in a history. The search indexes
/// operations and events with `u32`; a larger key is refused with
/// [`HistoryError::TooManyOperations`] instead of overflowing.
pub const MAX_OPS_PER_KEY: usize = 1 << 28;

/// One client request as the recorder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who sent it. Only used in reports.
    pub client: u64,
    /// The key (object) it acts on. Keys are checked independently.
    pub key: String,
    /// When the request was sent: the operation cannot have taken effect earlier.
    pub invoke: u64,
    /// What was asked.
    pub input: I,
    /// What came back, and when.
    pub outcome: Outcome<O>,
}

/// How an operation ended, as far as the client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The reply arrived at `at` (same clock as `invoke`, `at >= invoke`):
    /// the operation took effect exactly once, somewhere in `[invoke, at]`,
    /// and produced `output`.
    Returned { at: u64, output: O },
    /// No reply (timeout, dropped connection, crash): the operation may have
    /// taken effect at any moment after `invoke`, with any output the model
    /// allows, or never. Its return time counts as +infinity.
    Unknown,
}

impl<I, O> Operation<I, O> {
    /// An operation whose reply arrived at `ret`.
    pub fn returned(
        client: u64,
        key: impl Into<String>,
        invoke: u64,
        ret: u64,
        input: I,
        output: O,
    ) -> Self {
        Operation {
            client,
            key: key.into(),
            invoke,
            input,
            outcome: Outcome::Returned { at: ret, output },
        }
    }

    /// An operation whose outcome the client never learned.
    pub fn unknown(client: u64, key: impl Into<String>, invoke: u64, input: I) -> Self {
        Operation {
            client,
            key: key.into(),
            invoke,
            input,
            outcome: Outcome::Unknown,
        }
    }

    /// The return time, or `None` for an unknown outcome (+infinity).
    pub fn return_time(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Returned { at, .. } => Some(at),
            Outcome::Unknown => None,
        }
    }
}

/// A history the checker cannot judge because the recording is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// Operation `index` returned before it was invoked: the recorder mixed
    /// clocks or swapped the two stamps.
    ReturnBeforeInvoke { index: usize, invoke: u64, ret: u64 },
    /// Key `key` has more operations than [`MAX_OPS_PER_KEY`].
    TooManyOperations { key: String, operations: usize },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeInvoke { index, invoke, ret } => write!(
                f,
                "operation #{index} returned at {ret}, before it was invoked at {invoke}; \
                 record both times from one monotonic clock"
            ),
            HistoryError::TooManyOperations { key, operations } => write!(
                f,
                "key {key:?} has {operations} operations; the checker takes at most {MAX_OPS_PER_KEY} per key \
                 (MAX_OPS_PER_KEY): split the run into shorter histories"
            ),
        }
    }
}

impl std::error::Error for HistoryError {}
