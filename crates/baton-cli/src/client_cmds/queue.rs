//! `baton queue …`: FIFO work queues for the single-writer pattern. Producers
//! enqueue; a worker claims the oldest ready item for a visibility timeout,
//! then acks it (done) or nacks it (give it back); an item whose claim runs
//! out comes back, and after its max attempts it is dead-lettered.

use baton_client::{EnqueueResult, QueueClaim, QueueSettled, QueueStatus};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{ConnArgs, WriteArgs, call, json_arg, parse_duration_ms, text};
use crate::output::{OutputMode, value_text};

#[derive(Debug, Args)]
#[command(after_help = "\
Delivery is at least once: a worker that dies or overruns --visibility has
its item delivered again, and its late ack is refused with exit 7 (FENCED)
so the result of a stale delivery is never used twice.

Examples:
  baton queue enqueue jobs/mail '{\"to\":\"ops@example.com\"}' --idempotency-key mail-42
  baton queue claim jobs/mail --visibility 30s     # item_id, claim_token, item
  baton queue ack jobs/mail 7 42
  baton queue nack jobs/mail 7 42 --delay 10s      # try again later
  baton queue status jobs/mail")]
pub struct QueueArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Append an item (JSON) to a queue, created on first use
    #[command(after_help = "\
Examples:
  baton queue enqueue jobs/mail '{\"to\":\"ops@example.com\"}' --idempotency-key mail-42
  echo '\"resize img-9\"' | baton queue enqueue jobs/images - --max-attempts 3")]
    Enqueue {
        /// The queue, as namespace/name
        queue: String,
        /// The item as JSON (strings in quotes: '\"text\"'); - reads stdin
        item: String,
        /// Deliveries before the item is dead-lettered [default: 5]
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Claim the oldest ready item for --visibility (or learn that nothing is ready: empty true)
    #[command(after_help = "\
Example:
  baton queue claim jobs/mail --visibility 30s

Ack (or nack) with the item_id and claim_token before the visibility ends,
or the item is delivered again. Nothing ready is not an error: exit 0 with
empty: true and how many items are in flight or delayed.")]
    Claim {
        /// The queue, as namespace/name
        queue: String,
        /// How long the item is yours before it is delivered again
        #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
        visibility: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Done with a claimed item: it leaves the queue; exit 7 if the claim ran out
    #[command(after_help = "Example:\n  baton queue ack jobs/mail 7 42")]
    Ack {
        /// The queue, as namespace/name
        queue: String,
        /// The item_id from `claim`
        item_id: u64,
        /// The claim_token from `claim`
        claim_token: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Give a claimed item back (after --delay); dead-lettered after its max attempts
    #[command(after_help = "\
Examples:
  baton queue nack jobs/mail 7 42
  baton queue nack jobs/mail 7 42 --delay 10s")]
    Nack {
        /// The queue, as namespace/name
        queue: String,
        /// The item_id from `claim`
        item_id: u64,
        /// The claim_token from `claim`
        claim_token: u64,
        /// Keep the item out of reach this long before it is ready again
        #[arg(long, default_value = "0", value_parser = parse_duration_ms, value_name = "DURATION")]
        delay: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Ready, in flight, delayed and dead-lettered items, the oldest's age, the dead letters
    #[command(after_help = "Example:\n  baton queue status jobs/mail")]
    Status {
        /// The queue, as namespace/name
        queue: String,
    },
}

pub fn run(args: QueueArgs, mode: OutputMode) -> i32 {
    use baton_client::ApiRequest;
    let conn = &args.conn;
    let settled = |v: &Value| {
        text::typed(v, |s: QueueSettled| {
            format!("item {} of {}: {}", s.item_id, s.queue, s.outcome)
        })
    };
    match &args.command {
        QueueCommand::Enqueue {
            queue,
            item,
            max_attempts,
            write,
        } => {
            let request = json_arg("item", Some(item), false)
                .map(|item| ApiRequest::queue_enqueue(queue, &item, *max_attempts));
            call(mode, conn, Some(write), request, |v| {
                text::typed(v, |e: EnqueueResult| {
                    format!(
                        "item {} enqueued on {}; {} ready",
                        e.item_id, e.queue, e.depth
                    )
                })
            })
        }
        QueueCommand::Claim {
            queue,
            visibility,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::queue_claim(queue, *visibility)),
            |v| text::typed(v, claim_text),
        ),
        QueueCommand::Ack {
            queue,
            item_id,
            claim_token,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::queue_ack(queue, *item_id, *claim_token)),
            settled,
        ),
        QueueCommand::Nack {
            queue,
            item_id,
            claim_token,
            delay,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::queue_nack(
                queue,
                *item_id,
                *claim_token,
                *delay,
            )),
            settled,
        ),
        QueueCommand::Status { queue } => {
            call(mode, conn, None, Ok(ApiRequest::queue_status(queue)), |v| {
                text::typed(v, |s: QueueStatus| status_text(&s))
            })
        }
    }
}

fn claim_text(claim: QueueClaim) -> String {
    match claim {
        QueueClaim::Item(item) => format!(
            "item {id} of {queue} (attempt {} of {}), yours until {}:\n{}\n\
             ack with `baton queue ack {queue} {id} {token}` (or nack)",
            item.attempt,
            item.max_attempts,
            text::time(item.visible_at),
            value_text(&item.item),
            id = item.item_id,
            queue = item.queue,
            token = item.claim_token,
        ),
        QueueClaim::Empty(empty) => format!(
            "{}: nothing ready ({} in flight, {} delayed)",
            empty.queue, empty.in_flight, empty.delayed
        ),
    }
}

/// Counts on one line, then the dead letters, if any, as a table.
fn status_text(s: &QueueStatus) -> String {
    let mut out = format!(
        "queue {}: {} ready, {} in flight, {} delayed, {} dead-lettered",
        s.queue, s.ready, s.in_flight, s.delayed, s.dead_lettered
    );
    if let Some(age) = s.oldest_age_ms {
        out.push_str(&format!("; oldest {}", text::duration(age)));
    }
    if !s.dead_letters.is_empty() {
        let mut table = text::table(&["ITEM", "ATTEMPTS", "DEAD AT", "VALUE"]);
        for dead in &s.dead_letters {
            table.add_row(vec![
                dead.item_id.to_string(),
                dead.attempts.to_string(),
                text::time(dead.dead_at),
                dead.item.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&text::table_text(&table));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_and_statuses_render_for_people() {
        let item: QueueClaim = serde_json::from_value(json!({
            "queue": "jobs/mail", "item_id": 7, "item": "hello", "attempt": 2, "max_attempts": 5,
            "claim_token": 42, "visible_at": 0, "enqueued_at": 0
        }))
        .unwrap();
        let text = claim_text(item);
        assert!(
            text.starts_with("item 7 of jobs/mail (attempt 2 of 5)"),
            "{text}"
        );
        assert!(text.contains("\nhello\n"), "{text}");
        assert!(
            text.ends_with("`baton queue ack jobs/mail 7 42` (or nack)"),
            "{text}"
        );
        let status: QueueStatus = serde_json::from_value(json!({
            "queue": "jobs/mail", "ready": 1, "in_flight": 0, "delayed": 0, "dead_lettered": 1,
            "oldest_age_ms": 1500,
            "dead_letters": [{"item_id": 3, "item": {"n": 1}, "attempts": 5, "dead_at": 0}]
        }))
        .unwrap();
        let text = status_text(&status);
        assert!(
            text.starts_with(
                "queue jobs/mail: 1 ready, 0 in flight, 0 delayed, 1 dead-lettered; oldest 1s 500ms"
            ),
            "{text}"
        );
        assert!(text.lines().nth(1).unwrap().starts_with("ITEM"), "{text}");
    }
}
