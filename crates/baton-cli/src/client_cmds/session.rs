//! `baton session …`: open, keep alive, close, kill, list and read sessions.

use baton_client::{ApiRequest, SessionInfo};
use baton_core::Error;
use clap::{Args, Subcommand};

use super::{ConnArgs, RetryArgs, call, parse_duration_ms, text};
use crate::output::OutputMode;

#[derive(Debug, Args)]
#[command(after_help = "\
A session is an agent's liveness: keep it alive, or everything taken in it
(locks, waits) is released when its TTL runs out.

Examples:
  export BATON_SESSION=$(baton session open --ttl 60s -o json | jq .result.session_id)
  baton session keepalive
  baton lock acquire jobs/nightly --wait 10s      # held until the session ends
  baton session close
  baton session kill 42 --reason 'stuck agent'    # admin: take its locks away")]
pub struct SessionArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Open a session for this agent; prints its id
    #[command(after_help = "Example:\n  baton session open --ttl 60s")]
    Open {
        /// How long the session lives without a keepalive
        #[arg(long, default_value = "60s", value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: u64,
        #[command(flatten)]
        write: RetryArgs,
    },
    /// Extend a session's life by its TTL from now
    #[command(
        after_help = "Example:\n  baton session keepalive 42\n  BATON_SESSION=42 baton session keepalive"
    )]
    Keepalive {
        /// The session [default: --session / BATON_SESSION]
        id: Option<u64>,
        #[command(flatten)]
        write: RetryArgs,
    },
    /// Close a session: its locks are released, its waits cancelled
    #[command(after_help = "Example:\n  baton session close 42")]
    Close {
        /// The session [default: --session / BATON_SESSION]
        id: Option<u64>,
        #[command(flatten)]
        write: RetryArgs,
    },
    /// Admin: end any agent's session now; its locks are taken away
    #[command(after_help = "Example:\n  baton session kill 42 --reason 'stuck since 12:00'")]
    Kill {
        /// The session to end
        id: u64,
        /// Why, for the audit trail
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: RetryArgs,
    },
    /// List live sessions
    #[command(after_help = "Example:\n  baton session list")]
    List,
    /// Show one session (exit 7 if it has ended, 3 if unknown)
    #[command(after_help = "Example:\n  baton session get 42")]
    Get {
        /// The session [default: --session / BATON_SESSION]
        id: Option<u64>,
    },
}

pub fn run(args: SessionArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    let id = |id: Option<u64>| {
        id.or(conn.session).ok_or_else(|| {
            Error::invalid(
                "id",
                "which session? give its id, or set --session / BATON_SESSION",
            )
        })
    };
    let one = |value: &serde_json::Value| text::typed(value, |s: SessionInfo| text::session(&s));
    match &args.command {
        SessionCommand::Open { ttl, write } => call(
            mode,
            conn,
            Some(&write.write()),
            Ok(ApiRequest::session_open(*ttl)),
            |v| {
                text::typed(v, |s: SessionInfo| {
                    format!(
                        "{}\nexport BATON_SESSION={}",
                        text::session(&s),
                        s.session_id
                    )
                })
            },
        ),
        SessionCommand::Keepalive { id: session, write } => call(
            mode,
            conn,
            Some(&write.write()),
            id(*session).map(ApiRequest::session_keepalive),
            one,
        ),
        SessionCommand::Close { id: session, write } => call(
            mode,
            conn,
            Some(&write.write()),
            id(*session).map(ApiRequest::session_close),
            |v| {
                text::typed(v, |s: SessionInfo| {
                    format!("session {} closed; what it held is released", s.session_id)
                })
            },
        ),
        SessionCommand::Kill { id, reason, write } => call(
            mode,
            conn,
            Some(&write.write()),
            Ok(ApiRequest::session_kill(*id, reason.as_deref())),
            |v| {
                text::typed(v, |s: SessionInfo| {
                    format!(
                        "session {} of agent {:?} killed; its locks were taken away",
                        s.session_id, s.agent
                    )
                })
            },
        ),
        SessionCommand::List => call(mode, conn, None, Ok(ApiRequest::session_list()), |v| {
            text::typed(v, |list: SessionList| text::sessions(&list.sessions))
        }),
        SessionCommand::Get { id: session } => call(
            mode,
            conn,
            None,
            id(*session).map(ApiRequest::session_get),
            one,
        ),
    }
}

#[derive(serde::Deserialize)]
struct SessionList {
    sessions: Vec<SessionInfo>,
}
