//! `baton lock …` and `baton fence check`: locks with leases and fencing
//! tokens, and the question "is this token still current?".

use baton_client::{ApiRequest, FenceCheck, KeyLocksInfo, LockInfo, LockRequest, ReleaseResult};
use baton_core::{Error, LockState};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{ConnArgs, RetryArgs, Spinner, WriteArgs, answer, parse_duration_ms, text};
use crate::output::{OutputMode, emit};

#[derive(Debug, Args)]
#[command(after_help = "\
A lock is taken on all its keys or none. Its fencing token only ever grows:
pass it with writes (--fence KEY:TOKEN) so a holder that lost the lock cannot
write any more. A lock needs a lease: --ttl, or a session (--session).

Examples:
  baton lock acquire inventory/sku-1 --ttl 30s --wait 5s
  baton lock acquire orders/1 orders/2 --ttl 1m        # both or neither
  baton lock renew 17 --ttl 30s
  baton lock status 17
  baton lock status --key inventory/sku-1
  baton lock release 17
  baton lock list --prefix inventory/")]
pub struct LockArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(Debug, Subcommand)]
enum LockCommand {
    /// Take one or more keys, all or nothing; exit 6 if still held after --wait
    #[command(after_help = "\
Examples:
  baton lock acquire inventory/sku-1 --ttl 30s --wait 5s
  baton lock acquire reports/q3 --shared --ttl 1m
  baton lock acquire jobs/nightly --ttl 30s --lock-delay 1s
  baton lock acquire config/app --ttl 30s --read   # and its value, no kv get

Exit codes: 6 still held when the wait ended (with the holders and retry
after), 8 deadlock (the cycle is in the details).")]
    Acquire {
        /// Keys to lock, e.g. inventory/sku-1
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Share the keys with other shared holders (readers)
        #[arg(long)]
        shared: bool,
        /// The lock's lease; without it the lock lives as long as --session
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
        /// Queue this long if the keys are taken (0: answer at once)
        #[arg(long, default_value = "0", value_parser = parse_duration_ms, value_name = "DURATION")]
        wait: u64,
        /// If this lock expires (is not released), keep its keys blocked this long
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        lock_delay: Option<u64>,
        /// Also answer with the locked keys' values as of the grant (`values`)
        #[arg(long)]
        read: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Release a lock (or cancel its wait); releasing twice is fine
    #[command(after_help = "Example:\n  baton lock release 17")]
    Release {
        /// The lock id from `acquire`
        id: u64,
        #[command(flatten)]
        retry: RetryArgs,
    },
    /// Extend a held lock's lease from now; exit 7 if it is no longer yours
    #[command(after_help = "Example:\n  baton lock renew 17 --ttl 30s")]
    Renew {
        /// The lock id from `acquire`
        id: u64,
        /// New lease [default: the lock's own TTL]
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
        #[command(flatten)]
        retry: RetryArgs,
    },
    /// Show a lock by id ("am I still the holder?"), or a key's holders and waiters
    #[command(after_help = "\
Examples:
  baton lock status 17
  baton lock status --key inventory/sku-1")]
    Status {
        /// The lock id
        #[arg(required_unless_present = "key", conflicts_with = "key")]
        id: Option<u64>,
        /// Show this key's holders and waiters instead
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Keys that are locked or awaited
    #[command(after_help = "Example:\n  baton lock list --prefix inventory/")]
    List {
        /// Only keys that start with this
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys
        #[arg(long)]
        limit: Option<u64>,
    },
}

pub fn run(args: LockArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    match args.command {
        LockCommand::Acquire {
            keys,
            shared,
            ttl,
            wait,
            lock_delay,
            read,
            write,
        } => {
            let mut request = if shared {
                LockRequest::shared(keys.iter().cloned())
            } else {
                LockRequest::exclusive(keys.iter().cloned())
            }
            .wait_ms(wait)
            .lock_delay_ms(lock_delay.unwrap_or(0));
            if let Some(ttl) = ttl {
                request = request.ttl_ms(ttl);
            }
            if read {
                request = request.read();
            }
            let spinner = (wait > 0).then(|| {
                Spinner::start(
                    mode,
                    format!(
                        "waiting up to {} for {}",
                        text::duration(wait),
                        keys.join(", ")
                    ),
                )
            });
            let reply = answer(conn, Some(&write), ApiRequest::lock_acquire(&request));
            drop(spinner);
            emit(mode, &reply, |v| {
                text::typed(v, |lock: LockInfo| {
                    let mut out = text::lock(&lock);
                    if let (Some(token), Some(key)) = (lock.fence_token, lock.keys.first()) {
                        out.push_str(&format!(
                            "\nwrite with --fence {key}:{token}; release with the last write (--release {id}) or `baton lock release {id}`",
                            id = lock.lock_id
                        ));
                    }
                    if let Some(values) = &lock.values {
                        for key in &lock.keys {
                            out.push_str(&match values.iter().find(|e| &e.key == key) {
                                Some(entry) => {
                                    format!("\n{key} = {} (version {})", entry.value, entry.version)
                                }
                                None => format!("\n{key}: does not exist"),
                            });
                        }
                    }
                    out
                })
            })
        }
        LockCommand::Release { id, retry } => {
            let reply = answer(conn, Some(&retry.write()), ApiRequest::lock_release(id));
            emit(mode, &reply, |v| text::typed(v, release_text))
        }
        LockCommand::Renew { id, ttl, retry } => {
            let reply = answer(conn, Some(&retry.write()), ApiRequest::lock_renew(id, ttl));
            emit(mode, &reply, |v| {
                text::typed(v, |l: LockInfo| text::lock(&l))
            })
        }
        LockCommand::Status { id, key } => {
            let request = match (id, key) {
                (Some(id), _) => ApiRequest::lock_state(id),
                (None, Some(key)) => ApiRequest::key_locks(&key),
                (None, None) => unreachable!("clap requires an id or --key"),
            };
            let reply = answer(conn, None, request);
            emit(mode, &reply, status_text)
        }
        LockCommand::List { prefix, limit } => {
            let reply = answer(conn, None, ApiRequest::lock_list(&prefix, limit));
            emit(mode, &reply, |v| {
                text::typed(v, |list: KeyList| text::key_locks(&list.keys))
            })
        }
    }
}

#[derive(serde::Deserialize)]
struct KeyList {
    keys: Vec<KeyLocksInfo>,
}

fn release_text(release: ReleaseResult) -> String {
    let ended = release
        .ended_at
        .map(|at| format!(" at {}", text::time(at)))
        .unwrap_or_default();
    if release.released {
        format!("lock {} {}", release.lock_id, release.outcome.as_str())
    } else {
        format!(
            "lock {} had already ended ({}){ended}; nothing to release",
            release.lock_id,
            release.outcome.as_str()
        )
    }
}

/// A lock by id (live or ended) or a key's holders and waiters.
fn status_text(value: &Value) -> String {
    if value.get("holders").is_some() {
        return text::typed(value, |k: KeyLocksInfo| text::key_locks(&[k]));
    }
    text::typed(value, |state: LockState| match state {
        LockState::Live(lock) => text::lock(&lock),
        LockState::Ended {
            lock_id,
            status,
            ended_at,
        } => format!(
            "lock {lock_id} ended ({}) at {}",
            status.as_str(),
            text::time(ended_at)
        ),
    })
}

#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  baton fence check inventory/sku-1 17    # valid: true while lock 17's grant holds the key")]
pub struct FenceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: FenceCommand,
}

#[derive(Debug, Subcommand)]
enum FenceCommand {
    /// Is TOKEN the fencing token of a current holder of KEY? (for systems outside Baton)
    #[command(after_help = "Example:\n  baton fence check inventory/sku-1 17")]
    Check {
        /// The locked key
        key: String,
        /// The fencing token to check
        token: u64,
    },
}

pub fn run_fence(args: FenceArgs, mode: OutputMode) -> i32 {
    let FenceCommand::Check { key, token } = &args.command;
    let reply: Result<Value, Error> =
        answer(&args.conn, None, ApiRequest::fence_check(key, *token));
    emit(mode, &reply, |v| {
        text::typed(v, |check: FenceCheck| {
            let current = if check.current_tokens.is_empty() {
                "no holder now".to_string()
            } else {
                format!(
                    "current: {}",
                    check
                        .current_tokens
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            if check.valid {
                format!(
                    "fence {} on {} is current ({current})",
                    check.token, check.key
                )
            } else {
                format!(
                    "fence {} on {} is NOT current ({current}); writes with it are refused",
                    check.token, check.key
                )
            }
        })
    })
}
