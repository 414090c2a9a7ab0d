//! Baton's core: the deterministic state machine behind every primitive.
//!
//! It must never depend on tokio, a clock, files or threads: time enters only
//! as the timestamp the sequencer stamps on a command.

pub mod error;

pub use error::{Error, ErrorCode, envelope};
