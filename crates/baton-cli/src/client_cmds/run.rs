//! `baton run --lock KEY … -- COMMAND`: hold locks for exactly as long as a
//! command runs. The keys are taken in one request, the lease is renewed
//! every ttl/3 while the command runs, and released when it ends. If the
//! lease is lost, the command is stopped (SIGTERM, then SIGKILL after
//! `--grace`) so it cannot go on writing with a stale fence, and `baton run`
//! exits 7 (FENCED).

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use baton_client::{Client, LockInfo, LockRequest};
use baton_core::{Error, ErrorCode};
use clap::Args;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::{ConnArgs, Spinner, block_on, parse_duration_ms, text};
use crate::output::{OutputMode, emit};

#[derive(Debug, Args)]
#[command(after_help = "\
The command sees BATON_LOCK_ID, BATON_FENCE (the fencing token),
BATON_FENCE_KEY (the first --lock key), BATON_SESSION, BATON_URL and
BATON_AGENT, so its own baton calls can write with
--fence \"$BATON_FENCE_KEY:$BATON_FENCE\" and are refused once the lock is lost.
Without --session, `baton run` opens a session of its own for the run (so
concurrent runs by one agent queue instead of deadlocking) and closes it after.

The command runs in its own process group, and signals go to the whole
group; use --foreground for a command that reads from the terminal.
Ctrl-C or SIGTERM to `baton run` is passed on to the command; the lock is
released when it has exited. Exit code: the command's (128+N if killed by
signal N); 7 if the lease was lost; 6 if the keys were still held after
--wait; 10 if the server cannot be reached. On success `baton run` prints
nothing of its own; an error is printed after the command's output (JSON
mode: one envelope line on stdout).

Examples:
  baton run --lock deploy/prod -- ./deploy.sh
  baton run --lock inventory/sku-1 --lock inventory/sku-2 --wait 1m -- ./rebalance
  baton run --lock reports/q3 --shared --ttl 10s -- cat report.json")]
pub struct RunArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// A key to lock; repeat for more (all are taken in one request)
    #[arg(long = "lock", required = true, value_name = "KEY")]
    locks: Vec<String>,
    /// Shared (reader) locks instead of exclusive
    #[arg(long)]
    shared: bool,
    /// Lease of the lock; renewed every ttl/3 while the command runs
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    ttl: u64,
    /// How long to queue for the keys before giving up (exit 6)
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms, value_name = "DURATION")]
    wait: u64,
    /// If the lock expires (is not released), keep its keys blocked this long
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    lock_delay: Option<u64>,
    /// After SIGTERM, how long the command has to exit before SIGKILL
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms, value_name = "DURATION")]
    grace: u64,
    /// Keep the command in baton's process group (for commands that read the
    /// terminal); signals then reach only the command itself
    #[arg(long)]
    foreground: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(args: RunArgs, mode: OutputMode) -> i32 {
    match block_on(run_locked(&args, mode)).and_then(|outcome| outcome) {
        Ok(code) => code,
        Err(error) => emit(mode, &Err(error), |_| String::new()),
    }
}

/// The signals `baton run` passes on to the command.
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Signals, Error> {
        let install = |kind| {
            signal(kind)
                .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot handle signals: {e}")))
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    pub(super) async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}

async fn run_locked(args: &RunArgs, mode: OutputMode) -> Result<i32, Error> {
    let mut signals = Signals::install()?;
    let client = args.conn.client()?;
    // A session of our own makes this run its own party: two runs of one
    // agent then queue for the key instead of refusing as re-entry.
    let (client, own_session) = match args.conn.session {
        Some(_) => (client, None),
        None => {
            let session = client.session_open(args.ttl).await?;
            let id = session.session_id;
            (client.with_session(id), Some(id))
        }
    };
    let outcome = hold_and_run(&client, args, mode, own_session, &mut signals).await;
    if let Some(id) = own_session {
        // Releases anything left; best effort, the session expires anyway.
        let _ = client.session_close(id).await;
    }
    outcome
}

async fn hold_and_run(
    client: &Client,
    args: &RunArgs,
    mode: OutputMode,
    own_session: Option<u64>,
    signals: &mut Signals,
) -> Result<i32, Error> {
    let ttl = Duration::from_millis(args.ttl);
    let renew_every = (ttl / 3).max(Duration::from_millis(5));

    let mut request = if args.shared {
        LockRequest::shared(args.locks.iter().cloned())
    } else {
        LockRequest::exclusive(args.locks.iter().cloned())
    }
    .ttl_ms(args.ttl)
    .wait_ms(args.wait);
    if let Some(delay) = args.lock_delay {
        request = request.lock_delay_ms(delay);
    }

    // Queue for the keys, keeping our session alive while we wait.
    let spinner = (args.wait > 0).then(|| {
        Spinner::start(
            mode,
            format!(
                "waiting up to {} for {}",
                text::duration(args.wait),
                args.locks.join(", ")
            ),
        )
    });
    let lock: LockInfo = {
        let acquire = client.lock_acquire(&request);
        tokio::pin!(acquire);
        let mut keepalive = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
        loop {
            tokio::select! {
                granted = &mut acquire => break granted?,
                _ = keepalive.tick(), if own_session.is_some() => {
                    if let Some(id) = own_session {
                        let _ = client.session_keepalive(id).await;
                    }
                }
                signal = signals.recv() => {
                    // Dropping the request leaves the queue (the server
                    // drops a waiter whose client went away).
                    return Ok(128 + signal as i32);
                }
            }
        }
    };
    let granted_at = Instant::now();
    drop(spinner);

    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("BATON_LOCK_ID", lock.lock_id.to_string())
        .env("BATON_FENCE", lock.fence_token.unwrap_or(0).to_string())
        .env("BATON_FENCE_KEY", &args.locks[0])
        .env("BATON_URL", client.url())
        .env("BATON_AGENT", client.agent());
    if let Some(session) = client.session() {
        command.env("BATON_SESSION", session.to_string());
    }
    if !args.foreground {
        command.process_group(0);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = client.lock_release(lock.lock_id).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::InvalidArgument
            };
            return Err(Error::new(
                code,
                format!(
                    "cannot run {}: {e}; check the command name and PATH",
                    program.to_string_lossy()
                ),
            ));
        }
    };
    let target = Target {
        pid: Pid::from_raw(child.id().unwrap_or(0) as i32),
        group: !args.foreground,
    };
    let grace = Duration::from_millis(args.grace);

    let mut lease_end = granted_at + ttl;
    let mut renew = tokio::time::interval_at(granted_at + renew_every, renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kill_at: Option<Instant> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                let code = status_code(status);
                if let Err(error) = client.lock_release(lock.lock_id).await {
                    warn(mode, &format!("could not release lock {}: {}", lock.lock_id, error.message));
                }
                return Ok(code);
            }
            _ = renew.tick() => {
                let sent = Instant::now();
                match tokio::time::timeout_at(lease_end, client.lock_renew(lock.lock_id, None)).await {
                    Ok(Ok(_)) => lease_end = sent + ttl,
                    Ok(Err(error)) if matches!(error.code, ErrorCode::Fenced | ErrorCode::NotFound) => {
                        return Err(lease_lost(&mut child, target, grace, &lock, &error.message).await);
                    }
                    Ok(Err(error)) => warn(mode, &format!(
                        "could not renew lock {} ({}); retrying until the lease ends",
                        lock.lock_id, error.message
                    )),
                    Err(_) => {} // the lease end is handled below
                }
            }
            _ = tokio::time::sleep_until(lease_end) => {
                let why = format!("no renewal succeeded within the {} lease", text::duration(args.ttl));
                return Err(lease_lost(&mut child, target, grace, &lock, &why).await);
            }
            _ = sleep_until_some(kill_at) => {
                target.send(Signal::SIGKILL);
                kill_at = None;
            }
            signal = signals.recv() => {
                // Pass it on and keep the lease until the command has exited.
                target.send(signal);
                kill_at.get_or_insert(Instant::now() + grace);
            }
        }
    }
}

/// Where signals for the command go: its process group, or just itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    pub(super) pid: Pid,
    pub(super) group: bool,
}

impl Target {
    pub(super) fn send(self, signal: Signal) {
        // Errors mean it has exited already: nothing left to signal.
        let _ = if self.group {
            nix::sys::signal::killpg(self.pid, signal)
        } else {
            nix::sys::signal::kill(self.pid, signal)
        };
    }
}

/// Stops the command (SIGTERM, SIGKILL after `grace`) and describes the loss.
async fn lease_lost(
    child: &mut Child,
    target: Target,
    grace: Duration,
    lock: &LockInfo,
    why: &str,
) -> Error {
    target.send(Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            target.send(Signal::SIGKILL);
            child.wait().await
        }
    };
    Error::new(
        ErrorCode::Fenced,
        format!(
            "lost the lock on {} (lock {}, fence {}): {why}; the command was stopped so it cannot write with a stale fence; run it again to retry",
            lock.keys.join(", "),
            lock.lock_id,
            lock.fence_token.unwrap_or(0)
        ),
    )
    .with_details(serde_json::json!({
        "lock_id": lock.lock_id,
        "keys": lock.keys,
        "fence_token": lock.fence_token,
        "command_pid": target.pid.as_raw(),
        "command_exit": status.ok().map(|status| status_code(Ok(status))),
    }))
}

pub(super) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The shell's convention: the exit code, or 128+N for death by signal N.
pub(super) fn status_code(status: std::io::Result<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => ErrorCode::Internal.exit_code(),
    }
}

/// A note for people on stderr; JSON mode keeps stderr quiet.
fn warn(mode: OutputMode, message: &str) {
    if mode == OutputMode::Text {
        eprintln!("baton run: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status_code(Ok(ExitStatus::from_raw(3 << 8))), 3);
        assert_eq!(status_code(Ok(ExitStatus::from_raw(15))), 143);
    }
}
