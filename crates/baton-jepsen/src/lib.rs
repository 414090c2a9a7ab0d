//! Jepsen-style proof that Baton keeps its promises under concurrency and
//! faults. Test tooling only: nothing in Baton depends on this crate, and it
//! must never be linked into `baton serve`.
//!
//! - [`workload`]: 16+ real HTTP clients, each its own agent, doing a random
//!   mix of get / put / put-if-version / put-if-absent / delete / merge and
//!   JSON patch / txn / counter add / lock acquire, fenced write, release,
//!   over a few contended keys. Every operation is recorded as
//!   (client, invoke, input, return, output); a timeout, a dropped
//!   connection or a 503 is an unknown outcome.
//! - [`server`]: the servers under test: the real `baton serve` binary
//!   (SIGKILL and restart on the same data dir) and an in-process server whose
//!   log injects append failures ([`baton_log::FaultyLog`]).
//! - [`invariants`]: what every run must satisfy: each key's history is
//!   linearizable ([`baton_check`] with the register, counter and lock
//!   models), no acknowledged write is lost across restarts, fencing tokens
//!   strictly increase per key, no two holders of an exclusive lock at once
//!   (from the clients' fenced writes and from the server's audit trail), and
//!   every lock waiter is answered by its deadline.
//! - [`report`]: a run's numbers, and the failing history saved as JSON under
//!   `target/jepsen-failures/` for debugging.
//! - [`fuzz`]: the bodies of the cargo-fuzz targets (`fuzz/`), also replayed
//!   over random bytes by `cargo test` where no nightly toolchain is at hand.
//!
//! Everything is bounded in operations and time, and talks to loopback only.
//! Sizes come from the environment (see [`Knobs`]) with CI-sized defaults.

pub mod fuzz;
pub mod rng;
#[cfg(feature = "harness")]
pub mod scenarios;

#[cfg(feature = "harness")]
pub mod knobs;
#[cfg(feature = "harness")]
pub use knobs::Knobs;

#[cfg(feature = "harness")]
pub mod http;
#[cfg(feature = "harness")]
pub mod invariants;
#[cfg(feature = "harness")]
pub mod recorder;
#[cfg(feature = "harness")]
pub mod report;
#[cfg(feature = "harness")]
pub mod server;
#[cfg(feature = "harness")]
pub mod workload;
