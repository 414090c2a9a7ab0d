//! `baton once …`: single-flight refresh of a shared value (an API token, a
//! cache entry). `get` answers the value while it is fresh; when it is stale
//! the first caller gets the claim and refreshes, and everyone else waits for
//! the value it publishes. `run` does all of it around a refresh command.

use std::ffi::OsString;
use std::time::Duration;

use baton_client::{ApiRequest, Client, OnceRequest, OnceResult};
use baton_core::{Error, ErrorCode};
use clap::{Args, Subcommand};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::run::{Signals, Target, sleep_until_some, status_code};
use super::{ConnArgs, Spinner, WriteArgs, block_on, call, json_arg, parse_duration_ms, text};
use crate::output::{OutputMode, emit, value_text};

/// The most of a refresh command's stdout that `once run` keeps: past it the
/// value is refused (the server's own value limit is smaller by default).
const MAX_COMMAND_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Polling for a claim held by another process of the same agent: first and
/// longest pause between asks.
const SAME_AGENT_POLL_FIRST: Duration = Duration::from_millis(50);
const SAME_AGENT_POLL_MAX: Duration = Duration::from_millis(400);

#[derive(Debug, Args)]
#[command(after_help = "\
The value lives in an ordinary key (read it with `baton kv get KEY`). When it
is older than --max-age, the first caller gets a claim to refresh it; the
others wait (up to --wait) for the value the claimant publishes instead of
refreshing too. If the claimant gives up or its --claim-ttl runs out, the
next waiter gets the claim. So one refresh runs however many agents ask.

Examples:
  baton once run cred/token --max-age 10m --claim-ttl 30s --wait 20s -- ./refresh-token.sh
  baton once get cred/token --max-age 10m --claim-ttl 30s --wait 20s
  baton once fulfil cred/token 42 '\"tok-123\"'
  baton once abandon cred/token 42")]
pub struct OnceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: OnceCommand,
}

/// How fresh the value must be, and how a refresh is claimed and awaited.
#[derive(Debug, Args)]
struct Freshness {
    /// The value is fresh while younger than this; older, it is refreshed
    #[arg(long, required = true, value_parser = parse_duration_ms, value_name = "DURATION")]
    max_age: u64,
    /// How long a refresh claim lasts; there is no renewal, so it must cover the refresh
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    claim_ttl: u64,
    /// How long to wait for another caller's refresh (0: exit 6 at once if one is running)
    #[arg(long, default_value = "0", value_parser = parse_duration_ms, value_name = "DURATION")]
    wait: u64,
}

impl Freshness {
    fn request(&self, key: &str) -> OnceRequest {
        OnceRequest::new(key, self.max_age, self.claim_ttl).wait_ms(self.wait)
    }
}

#[derive(Debug, Subcommand)]
enum OnceCommand {
    /// The fresh value, or the claim to refresh it (status claimed + claim_id, exit 0)
    #[command(after_help = "\
Example:
  baton once get cred/token --max-age 10m --claim-ttl 30s --wait 20s

Answers status fresh with the value, or status claimed with a claim_id: then
refresh the value and publish it with `baton once fulfil KEY CLAIM_ID VALUE`
(or give up with `baton once abandon KEY CLAIM_ID`). Exit 6 if another agent
was still refreshing when --wait ended; exit 8 if your session (--session)
holds the claim already.")]
    Get {
        /// The key holding the value, as namespace/name
        key: String,
        #[command(flatten)]
        freshness: Freshness,
    },
    /// Publish the refreshed value under your claim; waiters get it; exit 7 if the claim lapsed
    #[command(
        visible_alias = "fulfill",
        after_help = "\
Examples:
  baton once fulfil cred/token 42 '{\"token\":\"tok-123\",\"expires_in\":3600}'
  ./refresh-token.sh | jq -R . | baton once fulfil cred/token 42 -"
    )]
    Fulfil {
        /// The key holding the value
        key: String,
        /// The claim_id from `baton once get`
        claim_id: u64,
        /// The new value as JSON (strings in quotes: '\"text\"'); - reads stdin
        value: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Give up your claim without a value; the next waiter gets it
    #[command(after_help = "Example:\n  baton once abandon cred/token 42")]
    Abandon {
        /// The key holding the value
        key: String,
        /// The claim_id from `baton once get`
        claim_id: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Print the fresh value; if it is stale and the claim is yours, run COMMAND and publish its output
    Run(RunArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
If the value is fresh, it is printed. If this caller gets the claim, COMMAND
runs; its stdout (trimmed; JSON if it parses, else a string) is published as
the new value and printed. Everyone else waits for that value and prints it.
So N agents running the same line share one refresh, with no glue code.

The command sees BATON_ONCE_KEY, BATON_ONCE_CLAIM_ID, BATON_URL and
BATON_AGENT (read the old value with `baton kv get \"$BATON_ONCE_KEY\"`);
its stderr passes through. It runs in its own process group (--foreground
keeps it in baton's, for a refresh that reads the terminal).

Exit code: 0 with the value; if the command fails, its code (the claim is
abandoned so the next waiter refreshes; nothing is printed on stdout);
7 if --claim-ttl ran out before the command finished (it is stopped and its
output not published); 6 if another caller was still refreshing when --wait
ended. Processes of the same agent share the agent's claim: the others ask
again every 50-400 ms until the value is published or --wait ends.

Examples:
  baton once run cred/token --max-age 10m --claim-ttl 30s --wait 20s -- ./refresh-token.sh
  TOKEN=$(baton once run cred/token --max-age 50m --wait 30s -o text -- gcloud auth print-access-token)")]
struct RunArgs {
    /// The key holding the value, as namespace/name
    key: String,
    #[command(flatten)]
    freshness: Freshness,
    /// After SIGTERM (claim ran out, or a signal to baton), how long the
    /// command has to exit before SIGKILL
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms, value_name = "DURATION")]
    grace: u64,
    /// Keep the command in baton's process group (for a refresh that reads
    /// the terminal); signals then reach only the command itself
    #[arg(long)]
    foreground: bool,
    /// The refresh command and its arguments, after `--`; it prints the new value
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(args: OnceArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    match &args.command {
        OnceCommand::Get { key, freshness } => {
            let spinner = (freshness.wait > 0).then(|| {
                Spinner::start(
                    mode,
                    format!("waiting up to {} for {key}", text::duration(freshness.wait)),
                )
            });
            let reply = super::answer(conn, None, ApiRequest::once(&freshness.request(key)));
            drop(spinner);
            emit(mode, &reply, |v| text::typed(v, get_text))
        }
        OnceCommand::Fulfil {
            key,
            claim_id,
            value,
            write,
        } => {
            let request = json_arg("value", Some(value), false)
                .map(|value| ApiRequest::once_fulfil(key, *claim_id, &value));
            call(mode, conn, Some(write), request, |v| {
                text::typed(v, |r: OnceResult| {
                    format!(
                        "{key}: published version {}; waiters have it",
                        r.version.unwrap_or(0)
                    )
                })
            })
        }
        OnceCommand::Abandon {
            key,
            claim_id,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::once_abandon(key, *claim_id)),
            |_| format!("claim {claim_id} on {key} abandoned; the next waiter refreshes"),
        ),
        OnceCommand::Run(run_args) => match block_on(once_run(conn, run_args, mode)) {
            Ok(Ok(RunOutcome::Value(result))) => {
                let reply = serde_json::to_value(&result).map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("cannot encode the answer: {e}"),
                    )
                });
                emit(mode, &reply, |v| value_text(&v["value"]))
            }
            Ok(Ok(RunOutcome::Exit(code))) => code,
            Ok(Err(error)) | Err(error) => emit(mode, &Err(error), |_| String::new()),
        },
    }
}

/// `once get` for people: the bare value when fresh, else what to do with the claim.
fn get_text(result: OnceResult) -> String {
    match (result.status.as_str(), result.claim_id) {
        ("claimed", Some(claim)) => {
            let until = result
                .expires_at
                .map(|at| format!(" until {}", text::time(at)))
                .unwrap_or_default();
            format!(
                "claim {claim} on {key}{until}: refresh the value, then\n  \
                 baton once fulfil {key} {claim} VALUE\n\
                 or give up with `baton once abandon {key} {claim}`",
                key = result.key
            )
        }
        _ => result.value.as_deref().map(value_text).unwrap_or_default(),
    }
}

enum RunOutcome {
    /// The fresh value: found, awaited, or published by our command.
    Value(OnceResult),
    /// Exit with this code and print nothing (the command failed or was
    /// interrupted; the claim was abandoned).
    Exit(i32),
}

async fn once_run(conn: &ConnArgs, args: &RunArgs, mode: OutputMode) -> Result<RunOutcome, Error> {
    let mut signals = Signals::install()?;
    let client = conn.client()?;
    let spinner = (args.freshness.wait > 0).then(|| {
        Spinner::start(
            mode,
            format!(
                "waiting up to {} for {}",
                text::duration(args.freshness.wait),
                args.key
            ),
        )
    });
    let claim = match claim_or_value(&client, args, &mut signals).await? {
        Ok(claim) => claim,
        Err(outcome) => return Ok(outcome),
    };
    drop(spinner);
    let claim_id = claim.claim_id.ok_or_else(|| {
        Error::new(
            ErrorCode::Internal,
            format!("{} answered a claim without a claim_id", client.url()),
        )
    })?;
    refresh(&client, args, mode, claim_id, &mut signals).await
}

/// Asks until there is a value (`Err(outcome)`) or the claim is ours
/// (`Ok(claim)`), within --wait.
async fn claim_or_value(
    client: &Client,
    args: &RunArgs,
    signals: &mut Signals,
) -> Result<Result<OnceResult, RunOutcome>, Error> {
    let deadline = Instant::now() + Duration::from_millis(args.freshness.wait);
    let mut pause = SAME_AGENT_POLL_FIRST;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = args
            .freshness
            .request(&args.key)
            .wait_ms(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        // Dropping the request on a signal leaves the wait (the server
        // drops a waiter whose client went away).
        let answer = tokio::select! {
            answer = client.once(&request) => answer,
            signal = signals.recv() => return Ok(Err(RunOutcome::Exit(128 + signal as i32))),
        };
        match answer {
            Ok(result) if result.status == "claimed" => return Ok(Ok(result)),
            Ok(result) if result.status == "fresh" => return Ok(Err(RunOutcome::Value(result))),
            Ok(result) => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!(
                        "{} answered once with status {:?}; are client and server the same version?",
                        client.url(),
                        result.status
                    ),
                ));
            }
            // The claim is held by this agent: another `baton once run` of
            // ours (or one that died; its claim runs out). Wait like the
            // server makes other agents wait, by asking again.
            Err(error) if error.code == ErrorCode::Deadlock => {
                if Instant::now() + pause >= deadline {
                    return Err(still_refreshing_by_us(client, args, &error));
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    signal = signals.recv() => return Ok(Err(RunOutcome::Exit(128 + signal as i32))),
                }
                pause = (pause * 2).min(SAME_AGENT_POLL_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

/// What a same-agent claim means to `once run`: someone else is refreshing.
fn still_refreshing_by_us(client: &Client, args: &RunArgs, error: &Error) -> Error {
    let claim = error
        .details
        .as_ref()
        .and_then(|d| d.get("claim_id"))
        .and_then(Value::as_u64);
    let claim_text = claim.map(|c| format!(" (claim {c})")).unwrap_or_default();
    Error::new(
        ErrorCode::ConcurrentModification,
        format!(
            "another process of agent {:?} was still refreshing {:?}{claim_text} when the wait ended; retry with a longer --wait",
            client.agent(),
            args.key
        ),
    )
    .with_retry_after(SAME_AGENT_POLL_MAX.as_millis() as u64)
    .with_details(serde_json::json!({ "key": args.key, "claimant": client.agent(), "claim_id": claim }))
}

/// Runs the refresh command under claim `claim_id` and publishes its output.
async fn refresh(
    client: &Client,
    args: &RunArgs,
    mode: OutputMode,
    claim_id: u64,
    signals: &mut Signals,
) -> Result<RunOutcome, Error> {
    let claim_ends = Instant::now() + Duration::from_millis(args.freshness.claim_ttl);
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .stdout(std::process::Stdio::piped())
        .env("BATON_ONCE_KEY", &args.key)
        .env("BATON_ONCE_CLAIM_ID", claim_id.to_string())
        .env("BATON_URL", client.url())
        .env("BATON_AGENT", client.agent());
    if !args.foreground {
        command.process_group(0);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            abandon(client, args, mode, claim_id).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::InvalidArgument
            };
            return Err(Error::new(
                code,
                format!(
                    "cannot run {}: {e}; check the command name and PATH (claim {claim_id} on {} abandoned)",
                    program.to_string_lossy(),
                    args.key
                ),
            ));
        }
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let output = tokio::spawn(read_bounded(stdout));
    let target = Target {
        pid: Pid::from_raw(child.id().unwrap_or(0) as i32),
        group: !args.foreground,
    };
    let grace = Duration::from_millis(args.grace);

    let mut lapsed = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = tokio::time::sleep_until(claim_ends), if !lapsed => {
                // The server has handed the claim on by now: whatever the
                // command makes could not be published. Stop it.
                lapsed = true;
                target.send(Signal::SIGTERM);
                kill_at.get_or_insert(Instant::now() + grace);
            }
            _ = sleep_until_some(kill_at) => {
                target.send(Signal::SIGKILL);
                kill_at = None;
            }
            signal = signals.recv() => {
                target.send(signal);
                kill_at.get_or_insert(Instant::now() + grace);
            }
        }
    };
    let code = status_code(status);
    let output = output.await.unwrap_or(Ok(CommandOutput::default()));
    if lapsed {
        return Err(Error::new(
            ErrorCode::Fenced,
            format!(
                "the claim on {:?} (claim {claim_id}) ran out after --claim-ttl {} while the command ran; it was stopped and nothing was published, and another caller may refresh now; raise --claim-ttl",
                args.key,
                text::duration(args.freshness.claim_ttl)
            ),
        )
        .with_details(serde_json::json!({ "key": args.key, "claim_id": claim_id, "command_exit": code })));
    }
    if code != 0 {
        abandon(client, args, mode, claim_id).await;
        warn(
            mode,
            &format!(
                "{} exited with {code}; claim {claim_id} on {} abandoned, the next waiter refreshes",
                program.to_string_lossy(),
                args.key
            ),
        );
        return Ok(RunOutcome::Exit(code));
    }
    let value = match output.and_then(|output| command_value(&output, program)) {
        Ok(value) => value,
        Err(error) => {
            abandon(client, args, mode, claim_id).await;
            return Err(error);
        }
    };
    match client.once_fulfil(&args.key, claim_id, &value).await {
        Ok(result) => Ok(RunOutcome::Value(result)),
        // The claim is gone: nothing to abandon, and the value must not be used.
        Err(error) if error.code == ErrorCode::Fenced => Err(error),
        Err(error) => {
            abandon(client, args, mode, claim_id).await;
            Err(error)
        }
    }
}

#[derive(Debug, Default)]
struct CommandOutput {
    bytes: Vec<u8>,
    /// More than MAX_COMMAND_OUTPUT_BYTES came (and was drained, not kept).
    overflowed: bool,
}

/// Reads a command's stdout to its end, keeping at most
/// MAX_COMMAND_OUTPUT_BYTES so that a runaway command cannot exhaust memory
/// (or block on a full pipe).
async fn read_bounded(mut stdout: tokio::process::ChildStdout) -> Result<CommandOutput, Error> {
    let mut output = CommandOutput::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdout.read(&mut buf).await.map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot read the command's output: {e}"),
            )
        })?;
        if n == 0 {
            return Ok(output);
        }
        let room = MAX_COMMAND_OUTPUT_BYTES - output.bytes.len();
        output.bytes.extend_from_slice(&buf[..n.min(room)]);
        output.overflowed |= n > room;
    }
}

/// The new value from the command's stdout: trimmed, JSON if it parses,
/// else a string. Nothing, or something that is not text, is refused.
fn command_value(output: &CommandOutput, program: &std::ffi::OsStr) -> Result<Value, Error> {
    let program = program.to_string_lossy();
    if output.overflowed {
        return Err(Error::invalid(
            "COMMAND",
            format!(
                "{program} printed more than {MAX_COMMAND_OUTPUT_BYTES} bytes; print only the new value"
            ),
        ));
    }
    let text = std::str::from_utf8(&output.bytes).map_err(|_| {
        Error::invalid(
            "COMMAND",
            format!(
                "{program} printed bytes that are not UTF-8 text; print text or JSON (e.g. base64)"
            ),
        )
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid(
            "COMMAND",
            format!("{program} exited 0 but printed nothing; print the new value on stdout"),
        ));
    }
    Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
}

/// Gives the claim up so the next waiter refreshes; best effort (an
/// unreachable server lets the claim run out instead).
async fn abandon(client: &Client, args: &RunArgs, mode: OutputMode, claim_id: u64) {
    if let Err(error) = client.once_abandon(&args.key, claim_id).await {
        warn(
            mode,
            &format!(
                "could not abandon claim {claim_id} on {} ({}); it runs out after --claim-ttl",
                args.key, error.message
            ),
        );
    }
}

/// A note for people on stderr; JSON mode keeps stderr quiet.
fn warn(mode: OutputMode, message: &str) {
    if mode == OutputMode::Text {
        eprintln!("baton once run: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(text: &str) -> CommandOutput {
        CommandOutput {
            bytes: text.as_bytes().to_vec(),
            overflowed: false,
        }
    }

    #[test]
    fn command_output_is_json_if_it_parses_else_a_trimmed_string() {
        let sh = std::ffi::OsStr::new("sh");
        assert_eq!(command_value(&output("tok-1\n"), sh), Ok(json!("tok-1")));
        assert_eq!(
            command_value(&output(" {\"token\":\"t\",\"ttl\":60}\n"), sh),
            Ok(json!({"token": "t", "ttl": 60}))
        );
        assert_eq!(command_value(&output("42"), sh), Ok(json!(42)));
        assert_eq!(
            command_value(&output("\"quoted\""), sh),
            Ok(json!("quoted"))
        );
        let empty = command_value(&output(" \n"), sh).unwrap_err();
        assert_eq!(empty.code, ErrorCode::InvalidArgument);
        assert!(empty.message.contains("printed nothing"), "{empty:?}");
        let binary = CommandOutput {
            bytes: vec![0xff, 0xfe],
            overflowed: false,
        };
        assert!(
            command_value(&binary, sh)
                .unwrap_err()
                .message
                .contains("UTF-8")
        );
        let huge = CommandOutput {
            bytes: Vec::new(),
            overflowed: true,
        };
        assert!(
            command_value(&huge, sh)
                .unwrap_err()
                .message
                .contains("more than")
        );
    }

    #[test]
    fn a_claim_renders_what_to_do_next() {
        let claimed: OnceResult = serde_json::from_value(json!({
            "key": "cred/token", "status": "claimed", "claim_id": 42, "expires_at": 0
        }))
        .unwrap();
        let text = get_text(claimed);
        assert!(
            text.starts_with("claim 42 on cred/token until 1970-01-01T00:00:00.000Z"),
            "{text}"
        );
        assert!(
            text.contains("baton once fulfil cred/token 42 VALUE"),
            "{text}"
        );
        let fresh: OnceResult = serde_json::from_value(json!({
            "key": "cred/token", "status": "fresh", "value": "tok-1", "version": 3, "age_ms": 5
        }))
        .unwrap();
        assert_eq!(get_text(fresh), "tok-1");
    }
}
