//! How fast the checker is on long, busy histories. Not a test: it prints
//! timings. Run it optimized:
//!
//! ```sh
//! cargo run --release -p baton-check --example check_speed
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use baton_check::models::{BoundedCounter, Lock, RegisterInput, RegisterOutput, VersionedRegister};
use baton_check::{CheckResult, Model, Operation, Outcome, check};
use common::{CounterRef, LockRef, Reference, RegisterRef, Rng, SimConfig, simulate};

/// 32 clients; a request takes up to 1 ms, and a client pauses up to 0.2 ms
/// between requests (times in µs), so about 30 requests are in flight at once.
fn config(ops: usize, keys: usize, unknown_per_mille: u64) -> SimConfig {
    SimConfig {
        clients: 32,
        ops,
        keys,
        max_latency: 1000,
        max_think: 200,
        unknown_per_mille,
    }
}

fn time<M: Model>(
    label: &str,
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> CheckResult {
    let start = Instant::now();
    let result = check(model, history).expect("well-formed history");
    let elapsed = start.elapsed();
    let verdict = match &result {
        CheckResult::Linearizable => "linearizable".to_string(),
        CheckResult::Illegal {
            window, minimal, ..
        } => format!(
            "illegal, window of {} ops (minimal: {minimal})",
            window.len()
        ),
        CheckResult::Timeout { keys } => format!("timeout on {} key(s)", keys.len()),
    };
    println!(
        "{label:<58} {:>9.1} ms  {verdict}",
        elapsed.as_secs_f64() * 1000.0
    );
    result
}

fn history<R: Reference>(
    mut reference: R,
    seed: u64,
    config: &SimConfig,
) -> Vec<Operation<R::Input, R::Output>> {
    simulate(&mut reference, &mut Rng::new(seed), config)
}

fn main() {
    let register = VersionedRegister::<String>::new();
    let h = history(RegisterRef::default(), 1, &config(5000, 1, 0));
    time("register: 5,000 ops, 32 clients, 1 key", &register, &h);
    let h = history(RegisterRef::default(), 2, &config(5000, 1, 10));
    time(
        "register: 5,000 ops, 32 clients, 1 key, 1% unknown",
        &register,
        &h,
    );
    let h = history(RegisterRef::default(), 3, &config(5000, 16, 10));
    time(
        "register: 5,000 ops, 32 clients, 16 keys, 1% unknown",
        &register,
        &h,
    );
    let h = history(RegisterRef::default(), 4, &config(50_000, 64, 10));
    time(
        "register: 50,000 ops, 32 clients, 64 keys, 1% unknown",
        &register,
        &h,
    );
    let h = history(CounterRef::new(true), 5, &config(5000, 1, 10));
    time(
        "counter: 5,000 ops, 32 clients, 1 key, 1% unknown",
        &BoundedCounter::new(),
        &h,
    );
    let h = history(CounterRef::default(), 5, &config(5000, 1, 10));
    time("counter without versions: same", &BoundedCounter::new(), &h);
    let h = history(CounterRef::default(), 5, &config(5000, 1, 0));
    time(
        "counter without versions, no unknown outcomes",
        &BoundedCounter::new(),
        &h,
    );
    let h = history(LockRef::default(), 6, &config(5000, 1, 10));
    time(
        "lock: 5,000 ops, 32 clients, 1 key, 1% unknown",
        &Lock::<String>::new(),
        &h,
    );

    // A stale read in the middle of a long history: finding and shrinking it.
    let mut h = history(RegisterRef::default(), 1, &config(5000, 1, 0));
    let middle = h.len() / 2;
    let index = (middle..h.len())
        .find(|&i| {
            matches!(
                (&h[i].input, &h[i].outcome),
                (
                    RegisterInput::Get,
                    Outcome::Returned {
                        output: RegisterOutput::Found { .. },
                        ..
                    }
                )
            )
        })
        .expect("a read");
    if let Outcome::Returned {
        output: RegisterOutput::Found { version, .. },
        ..
    } = &mut h[index].outcome
    {
        *version -= 1;
    }
    if let CheckResult::Illegal { explanation, .. } = time(
        "register: 5,000 ops, 32 clients, 1 key, one bad read",
        &register,
        &h,
    ) {
        println!("\n{explanation}");
    }
}
