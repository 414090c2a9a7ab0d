//! Baton's core: the deterministic state machine behind every primitive.
//!
//! `StateMachine::apply(seq, time, &command) -> Output` is the only way state
//! changes; reads (`get`, `list`, `lock_state`, `check_fence`, ...) are plain
//! functions of the applied state. `next_deadline()` says when the caller must
//! apply a `Tick` so that leases, key TTLs and lock waits fire on time.
//!
//! This crate must never depend on tokio, a clock, files or threads: time
//! enters only as the timestamp the sequencer stamps on a command, and the
//! same commands with the same stamps give byte-identical snapshots.

pub mod command;
pub mod error;
pub mod event;
mod kv;
pub mod limits;
mod locks;
mod machine;
mod once;
mod queue;
mod quota;
pub mod reply;
pub mod validate;

pub use command::{
    Command, Compare, CompareOp, Fence, LockAcquire, LockMode, Op, Patch, SYSTEM_AGENT, Txn, TxnOp,
};
pub use error::{Envelope, Error, ErrorCode, envelope};
pub use event::{Event, EventKind, Outcome, keys_match_prefix};
pub use limits::Limits;
pub use machine::{Output, StateMachine, Wakeup};
pub use reply::*;
