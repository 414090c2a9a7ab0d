//! A linearizability checker for histories recorded from real clients.
//!
//! Concurrency tests (see `STYLE.md`) run many clients against Baton, record
//! each operation's invoke and return times, input and output, and then ask:
//! is there one total order of these operations that (a) respects real time —
//! an operation that returned before another was invoked comes first — and
//! (b) is a legal sequential run of a simple model of the service? If yes the
//! history is *linearizable*. If no, Baton lost an update, served a stale
//! read, granted a lock twice, or something of that kind, and this crate says
//! which few operations prove it.
//!
//! This crate is a pure library: no I/O, no clock, no threads, no
//! dependencies. Times are whatever `u64` the recorder used (ns or µs since
//! the run started); only their order matters.
//!
//! # Using it
//!
//! ```
//! use baton_check::{check, CheckResult, Operation};
//! use baton_check::models::{RegisterInput, RegisterOutput, VersionedRegister};
//!
//! let history = vec![
//!     // client 1 writes "a" and gets version 7 ...
//!     Operation::returned(1, "doc", 0, 10, RegisterInput::Put { value: "a".to_string() }, RegisterOutput::Written { version: 7 }),
//!     // ... then client 2, strictly later, still reads the old absent key: a stale read.
//!     Operation::returned(2, "doc", 20, 30, RegisterInput::Get, RegisterOutput::NotFound),
//! ];
//! let result = check(&VersionedRegister::new(), &history).expect("well-formed history");
//! assert!(matches!(result, CheckResult::Illegal { .. }));
//! println!("{result}");
//! ```
//!
//! An operation whose outcome the client never learned (timeout, dropped
//! connection, crash) is recorded with [`Outcome::Unknown`]: it may have taken
//! effect at any moment after its invoke, with any output the model allows,
//! or never.
//!
//! # The algorithm
//!
//! Histories are split by [`Operation::key`] and every key is checked on its
//! own (linearizability is compositional: a history is linearizable iff every
//! per-object sub-history is). For each key the checker runs the Wing & Gong
//! depth-first search with Lowe's memoization, the algorithm behind Porcupine
//! (`checkSingle`) and Knossos:
//!
//! 1. Call and return events are sorted by time into a doubly linked list
//!    (a call sorts before a return at the same instant, so such operations
//!    count as concurrent).
//! 2. Walking from the head, a call whose operation the model accepts from the
//!    current state is *lifted*: its call and return leave the list, the
//!    operation joins the linearized set, and the walk restarts at the head.
//!    A return reached while its operation is still pending means the current
//!    prefix cannot be extended, so the search backtracks (*unlifts* the last
//!    lifted operation and tries the next call after it).
//! 3. Every (linearized set, model state) pair reached is cached; reaching one
//!    again is a dead end already explored, which is what makes the search
//!    practical on thousands of operations.
//!
//! Operations with an unknown outcome have no return event, so they never
//! force a backtrack; the key is linearizable as soon as every operation that
//! did return has been linearized.
//!
//! # What it reports
//!
//! - [`CheckResult::Linearizable`]: every key has a valid order.
//! - [`CheckResult::Illegal`]: a key has none. The report carries a *window*:
//!   a small set of the key's returned operations whose outputs cannot all be
//!   true at once, whatever the key's other recent writes did or did not do
//!   (reads and refusals outside the window count as changing nothing, as
//!   recorded; writes older than [`SHRINK_NEIGHBOURHOOD`] count as recorded).
//!   It is found by locating the earliest return after which the key stops
//!   being linearizable (exact binary search), then leaving out the reads
//!   that are not needed and disregarding the outputs of the writes that are
//!   not needed while the history stays non-linearizable.
//! - [`CheckResult::Timeout`]: the search budget ran out before an answer.
//!   That is "don't know", never "linearizable" and never "illegal".
//!
//! # Guarantees and limits
//!
//! - Sound and complete for the model it is given, within the budget: an
//!   `Illegal` verdict is a proof, and a linearizable history is never
//!   rejected. The shipped models approximate one thing on purpose: a version
//!   or fencing token that no client saw (an unknown write or grant) is kept
//!   as a lower bound, so a few violations that involve such unseen numbers
//!   can go unreported (never the other way round).
//! - The search is exponential in the worst case (linearizability checking is
//!   NP-complete). [`CheckOptions::step_budget`] bounds the work per key; many
//!   concurrent operations with unknown outcomes on one key are what makes
//!   the search expensive. Versions and fencing tokens in outputs (see
//!   [`Model::order`]) and read-only hints ([`Model::is_read_only`]) keep a
//!   single key with 32+ concurrent clients fast; a counter recorded without
//!   versions, on one hot key, with lost replies, can still run out of budget.
//! - The checker cannot tell a client's clock skew from a bug: record all
//!   times from one monotonic clock.

mod check;
mod history;
mod model;
pub mod models;
mod search;

pub use check::{
    CheckOptions, CheckResult, DEFAULT_SHRINK_BUDGET, DEFAULT_STEP_BUDGET, SHRINK_NEIGHBOURHOOD,
    check, check_with,
};
pub use history::{HistoryError, MAX_OPS_PER_KEY, Operation, Outcome};
pub use model::{Model, Order};
