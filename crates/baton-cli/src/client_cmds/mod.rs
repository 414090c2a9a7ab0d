//! The `baton` subcommands that talk to a Baton server over HTTP. Each one
//! maps its arguments onto one `baton_client` request and prints exactly the
//! server's `result` (JSON mode) or a short rendering of it (text mode);
//! the exit code is the error code's (`ErrorCode::exit_code`).

mod events;
mod kv;
mod lock;
mod once;
mod queue;
mod quota;
mod rate;
mod run;
mod semaphore;
mod session;
mod text;

use std::future::Future;
use std::time::Duration;

use baton_client::{ApiRequest, Client};
use baton_core::{Error, ErrorCode};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::output::{OutputMode, emit};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sessions: an agent's liveness; what a session holds ends with it
    Session(session::SessionArgs),
    /// Locks with leases and fencing tokens, all-or-nothing over many keys
    Lock(lock::LockArgs),
    /// Versioned JSON state: get, compare-and-set, patch, txn, history
    Kv(kv::KvArgs),
    /// Atomic counters that never cross their bounds
    Counter(kv::CounterArgs),
    /// Fencing tokens: is this token still current?
    Fence(lock::FenceArgs),
    /// Follow the events under a prefix as they happen
    Watch(events::WatchArgs),
    /// Query the audit trail: what happened, by whom, at which revision
    Events(events::EventsArgs),
    /// The server's version and counts of sessions, locks and keys
    Status(events::StatusArgs),
    /// Run a command while holding locks; the lease is renewed while it runs
    Run(run::RunArgs),
    /// Quotas: reserve part of a capacity, then commit what was spent or release it
    Quota(quota::QuotaArgs),
    /// Shared token-bucket rate limits: take tokens, see who spends them
    Rate(rate::RateArgs),
    /// Single-flight refresh: one caller refreshes a stale value, the others wait for it
    Once(once::OnceArgs),
    /// Work queues: enqueue, claim with a visibility timeout, ack or nack
    Queue(queue::QueueArgs),
    /// Counting semaphores: take N of C permits; release with `baton lock release`
    Semaphore(semaphore::SemaphoreArgs),
}

/// Runs one client subcommand and returns the process exit code.
pub fn run(command: ClientCommand, mode: OutputMode) -> i32 {
    match command {
        ClientCommand::Session(args) => session::run(args, mode),
        ClientCommand::Lock(args) => lock::run(args, mode),
        ClientCommand::Kv(args) => kv::run(args, mode),
        ClientCommand::Counter(args) => kv::run_counter(args, mode),
        ClientCommand::Fence(args) => lock::run_fence(args, mode),
        ClientCommand::Watch(args) => events::watch(args, mode),
        ClientCommand::Events(args) => events::events(args, mode),
        ClientCommand::Status(args) => events::status(args, mode),
        ClientCommand::Run(args) => run::run(args, mode),
        ClientCommand::Quota(args) => quota::run(args, mode),
        ClientCommand::Rate(args) => rate::run(args, mode),
        ClientCommand::Once(args) => once::run(args, mode),
        ClientCommand::Queue(args) => queue::run(args, mode),
        ClientCommand::Semaphore(args) => semaphore::run(args, mode),
    }
}

/// Where the server is and who is asking. Global within each subcommand, so
/// the flags go before or after the sub-subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// URL of the Baton server
    #[arg(
        long,
        global = true,
        env = "BATON_URL",
        value_name = "URL",
        default_value = baton_client::DEFAULT_URL,
        help_heading = "Connection"
    )]
    pub url: String,

    /// Who is calling: locks and idempotency keys belong to it
    /// [default: $USER@<hostname>, else cli-<pid>]
    #[arg(
        long,
        global = true,
        env = "BATON_AGENT",
        value_name = "ID",
        help_heading = "Connection"
    )]
    pub agent: Option<String>,

    /// Act in this session: locks taken in it end with it
    #[arg(
        long,
        global = true,
        env = "BATON_SESSION",
        value_name = "ID",
        help_heading = "Connection"
    )]
    pub session: Option<u64>,
}

impl ConnArgs {
    pub fn agent(&self) -> String {
        self.agent.clone().unwrap_or_else(default_agent)
    }

    pub fn client(&self) -> Result<Client, Error> {
        let client = Client::new(&self.url, self.agent())?;
        Ok(match self.session {
            Some(session) => client.with_session(session),
            None => client,
        })
    }
}

/// Options every mutation takes.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Make this call safe to retry: a repeat with the same key gets the
    /// first answer instead of applying twice
    #[arg(long, value_name = "KEY", help_heading = "Write safety")]
    pub idempotency_key: Option<String>,

    /// Refuse (exit 7, FENCED) unless TOKEN is still the fencing token of a
    /// holder of KEY, e.g. --fence inventory/sku-1:17
    #[arg(long, value_name = "KEY:TOKEN", value_parser = parse_fence, help_heading = "Write safety")]
    pub fence: Option<(String, u64)>,

    /// Set from `StateWriteArgs`: only the state mutations take `--release`.
    #[arg(skip)]
    pub release: Option<u64>,
}

impl WriteArgs {
    pub fn apply(&self, mut client: Client) -> Client {
        if let Some(key) = &self.idempotency_key {
            client = client.with_idempotency_key(key);
        }
        if let Some((key, token)) = &self.fence {
            client = client.with_fence(key, *token);
        }
        if let Some(lock_id) = self.release {
            client = client.with_release(lock_id);
        }
        client
    }
}

/// Options of the state mutations (kv put/patch/del/txn, counter add):
/// every mutation's, plus releasing a held lock in the same commit.
#[derive(Debug, Clone, Args)]
pub struct StateWriteArgs {
    #[command(flatten)]
    pub write: WriteArgs,

    /// Release lock LOCK_ID (one you hold) in the same commit, once the write
    /// has applied: no `baton lock release` needed. If the write is refused,
    /// or the lock is not yours and held (exit 3, 4 or 7), nothing applies
    /// and the lock stays as it was; a txn whose compares failed keeps it
    #[arg(long, value_name = "LOCK_ID", help_heading = "Write safety")]
    pub release: Option<u64>,
}

impl StateWriteArgs {
    pub fn args(&self) -> WriteArgs {
        WriteArgs {
            release: self.release,
            ..self.write.clone()
        }
    }
}

/// The idempotency key alone, for mutations whose endpoint takes no fence.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// Make this call safe to retry: a repeat with the same key gets the
    /// first answer instead of applying twice
    #[arg(long, value_name = "KEY", help_heading = "Write safety")]
    pub idempotency_key: Option<String>,
}

impl RetryArgs {
    pub fn write(&self) -> WriteArgs {
        WriteArgs {
            idempotency_key: self.idempotency_key.clone(),
            fence: None,
            release: None,
        }
    }
}

/// `$USER@<hostname>`: stable across invocations, so a lock taken by one
/// `baton` call can be renewed or released by the next, and a retry with an
/// idempotency key is the same agent's. Without `USER` or `LOGNAME` (as in
/// most containers), the user is `uid-<uid>`; only with neither a user nor
/// a host is it `cli-<pid>` (unique per process).
pub fn default_agent() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            // The owner of this process's /proc entry is its real user.
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid-{}", m.uid()))
        });
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match (user, host) {
        (Some(user), Some(host)) => format!("{user}@{host}"),
        (Some(user), None) => user,
        _ => format!("cli-{}", std::process::id()),
    }
}

/// `KEY:TOKEN`, split at the last colon (keys may contain colons).
pub fn parse_fence(text: &str) -> Result<(String, u64), String> {
    let (key, token) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not KEY:TOKEN, e.g. inventory/sku-1:17"))?;
    if key.is_empty() {
        return Err(format!(
            "{text:?} has no key before the colon; write KEY:TOKEN"
        ));
    }
    let token = token
        .parse::<u64>()
        .map_err(|_| format!("{token:?} is not a token number; write KEY:TOKEN, e.g. {key}:17"))?;
    Ok((key.to_string(), token))
}

/// A duration with a unit (`500ms`, `30s`, `5m`, `1h 30m`) in whole
/// milliseconds. A bare number other than 0 is refused: seconds or
/// milliseconds would be a guess.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    if text.parse::<f64>().is_ok() {
        return Err(format!(
            "{text:?} has no unit; write e.g. {text}s or {text}ms"
        ));
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 500ms, 30s or 5m"))?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

/// Runs `future` on a fresh single-threaded runtime: each `baton` process
/// makes one or a few calls, so one thread is plenty.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    Ok(runtime.block_on(future))
}

/// Sends one request and returns the server's `result`.
pub fn answer(
    conn: &ConnArgs,
    write: Option<&WriteArgs>,
    request: ApiRequest,
) -> Result<Value, Error> {
    let client = conn.client()?;
    let client = match write {
        Some(write) => write.apply(client),
        None => client,
    };
    block_on(client.send_json(request))?
}

/// Sends one request and prints its answer; returns the exit code.
pub fn call(
    mode: OutputMode,
    conn: &ConnArgs,
    write: Option<&WriteArgs>,
    request: Result<ApiRequest, Error>,
    render: impl FnOnce(&Value) -> String,
) -> i32 {
    let reply = request.and_then(|request| answer(conn, write, request));
    emit(mode, &reply, render)
}

/// The JSON value of an argument, or of stdin when it is `-` (or absent
/// and `stdin_default`).
pub fn json_arg(field: &str, text: Option<&str>, stdin_default: bool) -> Result<Value, Error> {
    let text = match text {
        Some("-") => read_stdin(field)?,
        Some(text) => text.to_string(),
        None if stdin_default => read_stdin(field)?,
        None => {
            return Err(Error::invalid(
                field,
                "missing; give JSON, or - to read stdin",
            ));
        }
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            field,
            format!("not valid JSON ({e}); quote strings as JSON, e.g. '\"text\"'"),
        )
    })
}

fn read_stdin(field: &str) -> Result<String, Error> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::invalid(field, format!("cannot read stdin: {e}")))?;
    Ok(text)
}

/// A spinner on stderr while a lock wait is in progress, only for people:
/// text mode with stderr on a terminal. Dropping it clears it.
pub struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    pub fn start(mode: OutputMode, message: String) -> Spinner {
        use std::io::IsTerminal;
        if mode != OutputMode::Text || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_become_milliseconds() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("30").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("soon").unwrap_err().contains("500ms"));
    }

    #[test]
    fn fences_split_at_the_last_colon() {
        assert_eq!(parse_fence("inv/sku-1:17"), Ok(("inv/sku-1".into(), 17)));
        assert_eq!(parse_fence("a/b:c:5"), Ok(("a/b:c".into(), 5)));
        assert!(parse_fence("inv/sku-1").is_err());
        assert!(parse_fence(":5").is_err());
        assert!(parse_fence("a/b:x").unwrap_err().contains("token"));
    }

    #[test]
    fn exit_codes_are_the_error_codes() {
        use crate::output::exit_code;
        for code in ErrorCode::ALL {
            let reply: Result<(), Error> = Err(Error::new(code, "x"));
            assert_eq!(exit_code(&reply), code.exit_code());
        }
        let exit = |code| exit_code::<()>(&Err(Error::new(code, "x")));
        assert_eq!(exit(ErrorCode::ConcurrentModification), 6);
        assert_eq!(exit(ErrorCode::Fenced), 7);
        assert_eq!(exit(ErrorCode::Deadlock), 8);
        assert_eq!(exit(ErrorCode::RateLimited), 9);
        assert_eq!(exit(ErrorCode::QuotaExceeded), 9);
        assert_eq!(exit(ErrorCode::Unavailable), 10);
        assert_eq!(exit(ErrorCode::InvalidArgument), 2);
    }

    #[test]
    fn the_default_agent_is_never_empty() {
        assert!(!default_agent().is_empty());
    }

    #[test]
    fn json_args_name_the_field_when_invalid() {
        assert_eq!(
            json_arg("value", Some("{\"a\":1}"), false),
            Ok(serde_json::json!({"a": 1}))
        );
        let error = json_arg("value", Some("text"), false).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.starts_with("value: not valid JSON"));
    }
}
