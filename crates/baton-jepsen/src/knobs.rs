//! Run sizes from the environment, with defaults sized for CI (debug build,
//! 2 cores): the whole jepsen test set finishes in a few minutes. Longer runs
//! raise them (see the crate README).

use std::path::PathBuf;
use std::time::Duration;

/// How big a run is. Every field has an environment variable.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// `BATON_JEPSEN_SECONDS`: length of one workload run (default 20 s).
    pub run_time: Duration,
    /// `BATON_JEPSEN_RUNS`: workload runs per crash test (default 3).
    pub runs: usize,
    /// `BATON_JEPSEN_CLIENTS`: concurrent clients, each its own agent (default 16).
    pub clients: usize,
    /// `BATON_JEPSEN_OPS`: most operations per client per run (default 4000).
    pub ops_per_client: usize,
    /// `BATON_JEPSEN_SEED`: the seed of the first run (default: from the clock).
    pub seed: u64,
    /// `BATON_JEPSEN_FUZZ_SECONDS`: time per fuzz body in the cargo-test replays (default 8 s).
    pub fuzz_time: Duration,
    /// `BATON_JEPSEN_WAITER_SLACK_MS`: how late past its deadline a lock
    /// waiter's answer may arrive (scheduling, fsync, a loaded debug build; default 5000).
    pub waiter_slack_ms: u64,
    /// `BATON_BIN`: the `baton` binary (default `<workspace>/target/debug/baton`;
    /// `scripts/test` builds it before the tests run).
    pub baton_bin: PathBuf,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The workspace root (this crate lives in `<root>/crates/baton-jepsen`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Where cargo puts its output (`CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let baton_bin = std::env::var_os("BATON_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("debug").join("baton"));
        Knobs {
            run_time: Duration::from_secs(env_u64("BATON_JEPSEN_SECONDS", 20)),
            runs: env_u64("BATON_JEPSEN_RUNS", 3) as usize,
            clients: env_u64("BATON_JEPSEN_CLIENTS", 16) as usize,
            ops_per_client: env_u64("BATON_JEPSEN_OPS", 4000) as usize,
            seed: env_u64("BATON_JEPSEN_SEED", crate::rng::Rng::seed_from_time()),
            fuzz_time: Duration::from_secs(env_u64("BATON_JEPSEN_FUZZ_SECONDS", 8)),
            waiter_slack_ms: env_u64("BATON_JEPSEN_WAITER_SLACK_MS", 5000),
            baton_bin,
        }
    }
}
