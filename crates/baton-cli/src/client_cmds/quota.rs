//! `baton quota …`: a capacity shared by many agents. Reserve before you
//! spend, then commit what you actually spent or release the reservation; a
//! reservation that is neither returns to the pool when its TTL ends.

use baton_client::{ApiRequest, QuotaInfo, ReservationInfo, SettleResult};
use clap::{Args, Subcommand};

use super::{ConnArgs, RetryArgs, WriteArgs, call, parse_duration_ms, text};
use crate::output::OutputMode;

#[derive(Debug, Args)]
#[command(after_help = "\
A quota never hands out more than its capacity: a reservation that does not
fit is refused with exit 9 (QUOTA_EXCEEDED), with retry_after_ms when
reservations about to expire would free enough.

Examples:
  baton quota set llm/tokens-per-day 1000000
  id=$(baton quota reserve llm/tokens-per-day 4000 --ttl 5m -o json | jq .result.reservation_id)
  baton quota commit \"$id\" 3120          # spent 3120; 880 go back
  baton quota release \"$id\"              # or: spent nothing
  baton quota get llm/tokens-per-day
  baton quota set llm/tokens-per-day 1000000 --reset-used   # a new day")]
pub struct QuotaArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: QuotaCommand,
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Create a quota or change its capacity (live reservations stay)
    #[command(after_help = "\
Examples:
  baton quota set gpu/hours 20
  baton quota set gpu/hours 20 --reset-used      # start a new period")]
    Set {
        /// The quota, as namespace/name
        quota: String,
        /// How much there is in total
        capacity: u64,
        /// Forget what was committed so far (a new period)
        #[arg(long)]
        reset_used: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Show capacity, committed use, reserved and available
    #[command(after_help = "Example:\n  baton quota get gpu/hours")]
    Get {
        /// The quota, as namespace/name
        quota: String,
    },
    /// Hold AMOUNT of a quota for --ttl; prints the reservation_id; exit 9 if it does not fit
    #[command(after_help = "\
Example:
  baton quota reserve gpu/hours 3 --ttl 5m

Then `baton quota commit ID ACTUAL` or `baton quota release ID`; without
either, the amount returns to the pool when the TTL ends.")]
    Reserve {
        /// The quota, as namespace/name
        quota: String,
        /// How much to hold, at least 1
        amount: u64,
        /// How long the reservation holds before it returns to the pool
        #[arg(long, required = true, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Consume ACTUAL of a reservation (at most its amount); the rest returns to the pool
    #[command(after_help = "Example:\n  baton quota commit 42 2     # reserved 3, spent 2")]
    Commit {
        /// The reservation_id from `reserve`
        reservation_id: u64,
        /// How much was actually spent
        actual: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Return a whole reservation to the pool; releasing twice is fine
    #[command(after_help = "Example:\n  baton quota release 42")]
    Release {
        /// The reservation_id from `reserve`
        reservation_id: u64,
        #[command(flatten)]
        retry: RetryArgs,
    },
}

pub fn run(args: QuotaArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    let settled = |v: &serde_json::Value| text::typed(v, settle_text);
    match &args.command {
        QuotaCommand::Set {
            quota,
            capacity,
            reset_used,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::quota_set(quota, *capacity, *reset_used)),
            |v| text::typed(v, |q: QuotaInfo| quota_text(&q)),
        ),
        QuotaCommand::Get { quota } => {
            call(mode, conn, None, Ok(ApiRequest::quota_get(quota)), |v| {
                text::typed(v, |q: QuotaInfo| quota_text(&q))
            })
        }
        QuotaCommand::Reserve {
            quota,
            amount,
            ttl,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::quota_reserve(quota, *amount, *ttl)),
            |v| text::typed(v, reservation_text),
        ),
        QuotaCommand::Commit {
            reservation_id,
            actual,
            write,
        } => call(
            mode,
            conn,
            Some(write),
            Ok(ApiRequest::quota_commit(*reservation_id, *actual)),
            settled,
        ),
        QuotaCommand::Release {
            reservation_id,
            retry,
        } => call(
            mode,
            conn,
            Some(&retry.write()),
            Ok(ApiRequest::quota_release(*reservation_id)),
            settled,
        ),
    }
}

/// `quota gpu/hours: 12 of 20 available (used 5, reserved 3 in 1 reservation)`.
fn quota_text(q: &QuotaInfo) -> String {
    let plural = if q.reservations == 1 { "" } else { "s" };
    format!(
        "quota {}: {} of {} available (used {}, reserved {} in {} reservation{plural})",
        q.quota, q.available, q.capacity, q.used, q.reserved, q.reservations
    )
}

fn reservation_text(r: ReservationInfo) -> String {
    format!(
        "reservation {id}: {} of {} until {}; {} left in the quota\n\
         commit what you spend with `baton quota commit {id} ACTUAL`, or `baton quota release {id}`",
        r.amount,
        r.quota,
        text::time(r.expires_at),
        r.available,
        id = r.reservation_id,
    )
}

fn settle_text(s: SettleResult) -> String {
    match (s.settled, s.outcome.as_str()) {
        (true, "committed") => format!(
            "reservation {} committed: {} used, {} returned to the pool",
            s.reservation_id, s.committed, s.returned
        ),
        (true, outcome) => format!(
            "reservation {} {outcome}: {} returned to the pool",
            s.reservation_id, s.returned
        ),
        (false, outcome) => format!(
            "reservation {} had already ended ({outcome}); nothing to release",
            s.reservation_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_settlements_render_on_one_line() {
        let q = QuotaInfo {
            quota: "gpu/hours".into(),
            capacity: 20,
            used: 5,
            reserved: 3,
            available: 12,
            reservations: 1,
        };
        assert_eq!(
            quota_text(&q),
            "quota gpu/hours: 12 of 20 available (used 5, reserved 3 in 1 reservation)"
        );
        let settled = SettleResult {
            reservation_id: 42,
            settled: true,
            outcome: "committed".into(),
            committed: 2,
            returned: 1,
        };
        assert_eq!(
            settle_text(settled.clone()),
            "reservation 42 committed: 2 used, 1 returned to the pool"
        );
        let expired = SettleResult {
            settled: false,
            outcome: "expired".into(),
            ..settled
        };
        assert_eq!(
            settle_text(expired),
            "reservation 42 had already ended (expired); nothing to release"
        );
    }
}
