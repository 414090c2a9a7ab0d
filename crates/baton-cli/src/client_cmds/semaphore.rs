//! `baton semaphore …`: counting semaphores, a pool of C permits shared by
//! many agents. A permit grant is a lock (shared, with a weight), so it is
//! released and renewed with `baton lock release|renew ID`.

use baton_client::{ApiRequest, KeyLocksInfo, LockInfo, SemaphoreRequest};
use clap::{Args, Subcommand};

use super::{ConnArgs, Spinner, WriteArgs, answer, call, parse_duration_ms, text};
use crate::output::{OutputMode, emit};

#[derive(Debug, Args)]
#[command(after_help = "\
A semaphore never hands out more than its capacity: at most C permits are
held at once, whoever asks. Waiters queue FIFO (one asking for many permits
is not overtaken by later small asks). A grant is a lock with a fencing
token: release it with `baton lock release ID`, renew it with `baton lock
renew ID`.

Examples:
  baton semaphore acquire gpu/pool --permits 1 --capacity 3 --ttl 30s --wait 10s
  baton lock release 17                                   # give the permit back
  baton semaphore status gpu/pool")]
pub struct SemaphoreArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: SemaphoreCommand,
}

#[derive(Debug, Subcommand)]
enum SemaphoreCommand {
    /// Take N of the C permits; prints lock_id and fence_token; exit 6 if none are free after --wait
    #[command(after_help = "\
Examples:
  baton semaphore acquire gpu/pool --permits 1 --capacity 3 --ttl 30s
  baton semaphore acquire gpu/pool --permits 2 --capacity 3 --ttl 5m --wait 1m

Release with `baton lock release LOCK_ID`. Exit codes: 6 not enough permits
free when the wait ended (with the holders and retry after), 8 you already
hold permits of this key (release them first), 2 a --capacity other than the
one the semaphore is in use with.")]
    Acquire {
        /// The semaphore's key, e.g. gpu/pool
        key: String,
        /// How many permits to take, 1 to the capacity
        #[arg(long, default_value_t = 1, value_name = "N")]
        permits: u64,
        /// The semaphore's permits in all (every caller names the same)
        #[arg(long, required = true, value_name = "C")]
        capacity: u64,
        /// The permits' lease; without it they live as long as --session
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
        /// Queue this long if not enough permits are free (0: answer at once)
        #[arg(long, default_value = "0", value_parser = parse_duration_ms, value_name = "DURATION")]
        wait: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Who holds permits, how many are held of the capacity, who waits
    #[command(after_help = "Example:\n  baton semaphore status gpu/pool")]
    Status {
        /// The semaphore's key
        key: String,
    },
}

pub fn run(args: SemaphoreArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    match args.command {
        SemaphoreCommand::Acquire {
            key,
            permits,
            capacity,
            ttl,
            wait,
            write,
        } => {
            let mut request = SemaphoreRequest::new(&key, permits, capacity).wait_ms(wait);
            if let Some(ttl) = ttl {
                request = request.ttl_ms(ttl);
            }
            let spinner = (wait > 0).then(|| {
                Spinner::start(
                    mode,
                    format!(
                        "waiting up to {} for {permits} of {capacity} permit(s) of {key}",
                        text::duration(wait)
                    ),
                )
            });
            let reply = answer(conn, Some(&write), ApiRequest::semaphore_acquire(&request));
            drop(spinner);
            emit(mode, &reply, |v| text::typed(v, acquired_text))
        }
        SemaphoreCommand::Status { key } => {
            call(mode, conn, None, Ok(ApiRequest::key_locks(&key)), |v| {
                text::typed(v, |info: KeyLocksInfo| status_text(&info))
            })
        }
    }
}

fn acquired_text(lock: LockInfo) -> String {
    let mut out = text::lock(&lock);
    if let (Some(token), Some(key)) = (lock.fence_token, lock.keys.first()) {
        out.push_str(&format!(
            "\nwrite with --fence {key}:{token}; release with `baton lock release {}`",
            lock.lock_id
        ));
    }
    out
}

/// `semaphore gpu/pool: 2 of 3 permits held, 1 free, 1 waiting`, then a
/// row per holder and waiter.
fn status_text(info: &KeyLocksInfo) -> String {
    let held: u64 = info.permits_held.unwrap_or_else(|| {
        info.holders
            .iter()
            .map(|l| l.permits.unwrap_or_default())
            .sum()
    });
    let head = match info.capacity {
        Some(capacity) => format!(
            "semaphore {}: {held} of {capacity} permits held, {} free, {} waiting",
            info.key,
            capacity.saturating_sub(held),
            info.waiters.len()
        ),
        None if info.holders.is_empty() && info.waiters.is_empty() => {
            return format!(
                "semaphore {}: no permits held, nobody waiting (its capacity is set by the next acquire)",
                info.key
            );
        }
        None => {
            return format!(
                "{} is held as a plain lock, not a semaphore\n{}",
                info.key,
                text::key_locks(std::slice::from_ref(info))
            );
        }
    };
    if info.holders.is_empty() && info.waiters.is_empty() {
        return head;
    }
    let mut table = text::table(&[
        "LOCK", "STATE", "PERMITS", "AGENT", "SESSION", "FENCE", "UNTIL",
    ]);
    for (state, lock) in info
        .holders
        .iter()
        .map(|l| ("held", l))
        .chain(info.waiters.iter().map(|l| ("waiting", l)))
    {
        table.add_row(vec![
            lock.lock_id.to_string(),
            state.to_string(),
            lock.permits.unwrap_or_default().to_string(),
            lock.agent.clone(),
            lock.session.map(|s| s.to_string()).unwrap_or_default(),
            lock.fence_token.map(|t| t.to_string()).unwrap_or_default(),
            lock.expires_at
                .or(lock.wait_deadline)
                .map(text::time)
                .unwrap_or_default(),
        ]);
    }
    format!("{head}\n{}", text::table_text(&table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_shows_permits_held_of_the_capacity_and_who_holds_them() {
        let info: KeyLocksInfo = serde_json::from_value(json!({
            "key": "gpu/pool", "capacity": 3, "permits_held": 2,
            "holders": [
                {"lock_id": 5, "status": "held", "agent": "a", "keys": ["gpu/pool"], "mode": "shared", "fence_token": 5, "permits": 2}
            ],
            "waiters": [
                {"lock_id": 9, "status": "waiting", "agent": "b", "keys": ["gpu/pool"], "mode": "shared", "permits": 2}
            ]
        }))
        .unwrap();
        let text = status_text(&info);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "semaphore gpu/pool: 2 of 3 permits held, 1 free, 1 waiting"
        );
        assert!(lines[1].starts_with("LOCK"), "{text}");
        assert!(
            lines[2].starts_with("5") && lines[2].contains("held"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("9") && lines[3].contains("waiting"),
            "{text}"
        );

        let idle: KeyLocksInfo =
            serde_json::from_value(json!({"key": "gpu/pool", "holders": [], "waiters": []}))
                .unwrap();
        assert!(status_text(&idle).contains("no permits held"));
    }
}
