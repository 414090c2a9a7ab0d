//! `baton watch`, `baton events` and `baton status`: the event stream, the
//! audit trail and the server's counts.

use std::io::Write;

use baton_client::{ApiRequest, EventPage, Status};
use baton_core::envelope;
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

use super::{ConnArgs, answer, block_on, text};
use crate::output::{OutputMode, emit, error_text};

#[derive(Debug, Args)]
#[command(after_help = "\
Prints one line per event as it happens, until interrupted. JSON mode: one
event object per line (NDJSON); if the stream ends (the server stopped, or cut
this watcher off for falling behind), a last line {\"ok\":false,\"error\":…}
says so and the exit code is the error's.

Examples:
  baton watch --prefix inventory/
  baton watch --prefix config/ --from-revision 120 -o json | jq .kind")]
pub struct WatchArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only events on keys that start with this [default: all]
    #[arg(long, default_value = "")]
    prefix: String,
    /// Start with the events of this revision (replays what is still kept;
    /// exit 3 COMPACTED if it is gone) [default: from now]
    #[arg(long, value_name = "REVISION")]
    from_revision: Option<u64>,
}

pub fn watch(args: WatchArgs, mode: OutputMode) -> i32 {
    let outcome = args.conn.client().and_then(|client| {
        block_on(async move {
            let mut stream = client.watch(&args.prefix, args.from_revision).await?;
            let mut stdout = std::io::stdout();
            while let Some(item) = stream.next().await {
                let event = item?;
                let line = match mode {
                    OutputMode::Json => serde_json::to_string(&event).unwrap_or_default(),
                    OutputMode::Text => text::event(&event),
                };
                // A closed stdout (`| head`) ends the watch quietly.
                if writeln!(stdout, "{line}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        })?
    });
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            match mode {
                OutputMode::Json => println!("{}", envelope::<()>(&Err(error.clone()))),
                OutputMode::Text => eprintln!("{}", error_text(&error)),
            }
            error.code.exit_code()
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  baton events --prefix inventory/ --limit 20
  baton events --from-revision 120      # continue from a page's next_revision")]
pub struct EventsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only events on keys that start with this [default: all]
    #[arg(long, default_value = "")]
    prefix: String,
    /// From this revision on (exit 3 COMPACTED if it is no longer kept)
    #[arg(long, value_name = "REVISION")]
    from_revision: Option<u64>,
    /// At most this many events
    #[arg(long)]
    limit: Option<u64>,
}

pub fn events(args: EventsArgs, mode: OutputMode) -> i32 {
    let request = ApiRequest::events(&args.prefix, args.from_revision, args.limit);
    let reply = answer(&args.conn, None, request);
    emit(mode, &reply, |v| {
        text::typed(v, |page: EventPage| {
            let mut lines: Vec<String> = page.events.iter().map(text::event).collect();
            if lines.is_empty() {
                lines.push("no events".to_string());
            }
            lines.push(format!("next: --from-revision {}", page.next_revision));
            lines.join("\n")
        })
    })
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  baton status\n  baton status --url http://10.0.0.5:7700")]
pub struct StatusArgs {
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn status(args: StatusArgs, mode: OutputMode) -> i32 {
    let reply = answer(&args.conn, None, ApiRequest::status());
    let url = args.conn.url.clone();
    emit(mode, &reply, |v| {
        text::typed(v, |status: Status| {
            let mut rows = vec![
                ("revision".to_string(), status.revision.to_string()),
                ("time".to_string(), text::time(status.time)),
                ("sessions".to_string(), status.sessions.to_string()),
                ("locks held".to_string(), status.locks_held.to_string()),
                (
                    "locks waiting".to_string(),
                    status.locks_waiting.to_string(),
                ),
                ("keys".to_string(), status.keys.to_string()),
            ];
            for (name, value) in &status.other {
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                rows.push((name.replace('_', " "), value));
            }
            let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
            let mut lines = vec![format!("baton {} at {url}", status.version)];
            lines.extend(
                rows.iter()
                    .map(|(name, value)| format!("{name:<width$}  {value}")),
            );
            lines.join("\n")
        })
    })
}
