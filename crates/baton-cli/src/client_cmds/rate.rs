//! `baton rate …`: shared token-bucket rate limits, e.g. one API key's
//! requests per second across every agent, and who has been spending them.

use baton_client::{ApiRequest, BucketInfo, RateRequest, RateResult};
use clap::{Args, Subcommand};

use super::{ConnArgs, Spinner, WriteArgs, answer, call, parse_duration_ms, text};
use crate::output::{OutputMode, emit};

#[derive(Debug, Args)]
#[command(after_help = "\
A bucket holds up to --burst tokens and refills --rate tokens a second; it is
created on first use and the latest --rate/--burst given win. A take that
does not fit is refused with exit 9 (RATE_LIMITED) and the exact
retry_after_ms after which the tokens will be there; with --wait the take
queues on the server (strict FIFO, no barging) until its tokens are there.

Examples:
  baton rate take api/openai --rate 50 --burst 10 && curl …
  baton rate take api/openai 5 --rate 50 --burst 10 --wait 2s
  baton rate status api/openai            # who spends the bucket")]
pub struct RateArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: RateCommand,
}

#[derive(Debug, Subcommand)]
enum RateCommand {
    /// Take N tokens (default 1) from a bucket; exit 9 with retry_after_ms if they are not there
    #[command(after_help = "\
Examples:
  baton rate take api/openai --rate 50 --burst 10
  baton rate take api/openai 5 --rate 50 --burst 10 --wait 2s

--wait queues the take on the server, first come first served: a later
small take does not overtake an earlier large one. Exit 9 with
retry_after_ms if the tokens were still not there when the wait ended.")]
    Take {
        /// The bucket, as namespace/name
        bucket: String,
        /// How many tokens, 1 to --burst
        #[arg(default_value_t = 1)]
        tokens: u64,
        /// Tokens added per second
        #[arg(long = "rate", required = true, value_name = "PER_SEC")]
        rate_per_sec: u64,
        /// The most tokens the bucket holds (and the most one take can ask)
        #[arg(long, required = true, value_name = "TOKENS")]
        burst: u64,
        /// Queue (FIFO) this long for the tokens instead of exit 9 at once
        #[arg(long, default_value = "0", value_parser = parse_duration_ms, value_name = "DURATION")]
        wait: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// A bucket's tokens now and how many each agent has taken (largest first)
    #[command(after_help = "Example:\n  baton rate status api/openai")]
    Status {
        /// The bucket, as namespace/name
        bucket: String,
    },
}

pub fn run(args: RateArgs, mode: OutputMode) -> i32 {
    match args.command {
        RateCommand::Take {
            bucket,
            tokens,
            rate_per_sec,
            burst,
            wait,
            write,
        } => {
            let request = RateRequest::new(&bucket, rate_per_sec, burst)
                .tokens(tokens)
                .wait_ms(wait);
            let spinner = (wait > 0).then(|| {
                Spinner::start(
                    mode,
                    format!(
                        "waiting up to {} for {tokens} token(s) of {bucket}",
                        text::duration(wait)
                    ),
                )
            });
            let reply = answer(&args.conn, Some(&write), ApiRequest::rate_take(&request));
            drop(spinner);
            emit(mode, &reply, |v| text::typed(v, take_text))
        }
        RateCommand::Status { bucket } => call(
            mode,
            &args.conn,
            None,
            Ok(ApiRequest::bucket(&bucket)),
            |v| text::typed(v, |b: BucketInfo| bucket_text(&b)),
        ),
    }
}

fn take_text(r: RateResult) -> String {
    format!(
        "took {} from {}; {} left (refills {}/s, burst {})",
        r.taken, r.bucket, r.remaining, r.rate_per_sec, r.burst
    )
}

/// The bucket on one line, then a table of who spends it.
fn bucket_text(b: &BucketInfo) -> String {
    let head = format!(
        "bucket {}: {} of {} tokens now, refills {}/s",
        b.bucket, b.available, b.burst, b.rate_per_sec
    );
    if b.usage.is_empty() {
        return format!("{head}\nnobody has taken from it yet");
    }
    let total: u64 = b.usage.iter().map(|u| u.tokens).sum();
    let mut table = text::table(&["AGENT", "TOKENS", "SHARE"]);
    for usage in &b.usage {
        let share = usage.tokens as f64 * 100.0 / total.max(1) as f64;
        table.add_row(vec![
            usage.agent.clone(),
            usage.tokens.to_string(),
            format!("{share:.0}%"),
        ]);
    }
    format!("{head}\n{}", text::table_text(&table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_client::AgentUsage;

    #[test]
    fn buckets_show_who_spends_them() {
        let mut bucket = BucketInfo {
            bucket: "api/openai".into(),
            rate_per_sec: 50,
            burst: 10,
            available: 7,
            usage: vec![
                AgentUsage {
                    agent: "planner".into(),
                    tokens: 30,
                },
                AgentUsage {
                    agent: "coder".into(),
                    tokens: 10,
                },
            ],
        };
        let text = bucket_text(&bucket);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "bucket api/openai: 7 of 10 tokens now, refills 50/s"
        );
        assert!(lines[1].starts_with("AGENT"), "{text}");
        assert!(
            lines[2].starts_with("planner") && lines[2].ends_with("75%"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("coder") && lines[3].ends_with("25%"),
            "{text}"
        );
        bucket.usage.clear();
        assert!(bucket_text(&bucket).ends_with("nobody has taken from it yet"));
    }
}
