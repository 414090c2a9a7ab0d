//! `baton kv …` and `baton counter …`: versioned JSON state with
//! compare-and-set, patches, transactions and bounded counters.

use baton_client::{
    ApiRequest, CounterResult, DeleteResult, GetResult, HistoryResult, ListResult, PatchRequest,
    PutOptions, WriteResult,
};
use baton_core::{Error, ErrorCode};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{ConnArgs, StateWriteArgs, call, json_arg, parse_duration_ms, text};
use crate::output::{OutputMode, value_text};

#[derive(Debug, Args)]
#[command(after_help = "\
Every write makes a new version (the revision that wrote it). Pass the version
you read with --if-version: if someone wrote in between, the write is refused
with exit 6 and the current version and value, so you can redo your change.

Examples:
  baton kv put config/app '{\"region\":\"us-east-1\"}'
  baton kv get config/app
  baton kv put config/app '{\"region\":\"eu-west-1\"}' --if-version 4
  baton kv patch config/app --merge '{\"replicas\":3}'
  baton kv list config/
  echo '{\"compares\":[{\"key\":\"a/x\",\"exists\":false}],\"success\":[{\"op\":\"put\",\"key\":\"a/x\",\"value\":1}]}' | baton kv txn")]
pub struct KvArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Args)]
struct IfVersion {
    /// Apply only if the key is still at this version (0: absent); else exit 6
    #[arg(long, value_name = "VERSION")]
    if_version: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value (JSON mode: with version and revision); exit 3 if absent
    #[command(after_help = "Example:\n  baton kv get config/app")]
    Get {
        /// The key, as namespace/name
        key: String,
    },
    /// Write a JSON value, optionally only if unchanged (--if-version) or new (--if-absent)
    #[command(after_help = "\
Examples:
  baton kv put config/app '{\"region\":\"us-east-1\"}' --if-version 4
  baton kv put drafts/plan '\"first draft\"' --ttl 10m
  baton kv put jobs/42 '{\"state\":\"new\"}' --if-absent
  baton kv put inv/count 4 --fence inv/sku-1:17 --release 17   # write, then release lock 17 in the same commit
  cat value.json | baton kv put config/app -")]
    Put {
        /// The key, as namespace/name
        key: String,
        /// The value as JSON (strings in quotes: '\"text\"'); - reads stdin
        value: String,
        #[command(flatten)]
        if_version: IfVersion,
        /// Write only if the key does not exist; else exit 6
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// The key disappears this long after the write
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
        #[command(flatten)]
        write: StateWriteArgs,
    },
    /// Change part of a value: RFC 7396 merge patch or RFC 6902 JSON Patch
    #[command(after_help = "\
Examples:
  baton kv patch config/app --merge '{\"replicas\":3,\"debug\":null}'
  baton kv patch config/app --json-patch '[{\"op\":\"test\",\"path\":\"/replicas\",\"value\":3},{\"op\":\"replace\",\"path\":\"/replicas\",\"value\":4}]'")]
    Patch {
        /// The key, as namespace/name
        key: String,
        /// A merge patch object (null removes a member); - reads stdin
        #[arg(
            long,
            value_name = "JSON",
            required_unless_present = "json_patch",
            conflicts_with = "json_patch"
        )]
        merge: Option<String>,
        /// A JSON Patch array; a failing `test` op is exit 6; - reads stdin
        #[arg(long, value_name = "JSON")]
        json_patch: Option<String>,
        #[command(flatten)]
        if_version: IfVersion,
        #[command(flatten)]
        write: StateWriteArgs,
    },
    /// Delete a key (deleting an absent key is fine: deleted=false)
    #[command(
        visible_alias = "delete",
        after_help = "Example:\n  baton kv del config/app --if-version 7"
    )]
    Del {
        /// The key, as namespace/name
        key: String,
        #[command(flatten)]
        if_version: IfVersion,
        #[command(flatten)]
        write: StateWriteArgs,
    },
    /// List keys under a prefix, one page at a time
    #[command(after_help = "\
Examples:
  baton kv list config/
  baton kv list config/ --after config/m --limit 100   # the next page")]
    List {
        /// Only keys that start with this [default: all]
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this key (the `next_after` of the previous page)
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// At most this many entries
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Past versions of a key, newest first
    #[command(after_help = "Example:\n  baton kv history config/app --limit 5")]
    History {
        /// The key, as namespace/name
        key: String,
        /// At most this many versions
        #[arg(long)]
        limit: Option<u64>,
    },
    /// All-or-nothing: if every compare holds run `success`, else `failure`
    #[command(after_help = "\
The txn is JSON: {\"compares\": [{\"key\", \"version\"|\"value\"|\"exists\", \"op\"?}],
\"success\": [op], \"failure\": [op]}, op = {\"op\": \"get\"|\"put\"|\"patch\"|\"delete\"|
\"counter_add\", \"key\", ...}.

Examples:
  baton kv txn '{\"compares\":[{\"key\":\"cfg/a\",\"version\":4}],\"success\":[{\"op\":\"put\",\"key\":\"cfg/a\",\"value\":2}]}'
  baton kv txn < txn.json")]
    Txn {
        /// The txn as JSON; - or nothing reads stdin
        txn: Option<String>,
        #[command(flatten)]
        write: StateWriteArgs,
    },
}

pub fn run(args: KvArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    let written = |v: &Value| text::typed(v, write_text);
    match &args.command {
        KvCommand::Get { key } => call(mode, conn, None, Ok(ApiRequest::kv_get(key)), |v| {
            text::typed(v, |got: GetResult| value_text(&got.entry.value))
        }),
        KvCommand::Put {
            key,
            value,
            if_version,
            if_absent,
            ttl,
            write,
        } => {
            let request = json_arg("value", Some(value), false).map(|value| {
                let options = PutOptions {
                    if_version: if_version.if_version,
                    if_absent: *if_absent,
                    ttl_ms: *ttl,
                };
                ApiRequest::kv_put(key, &value, options)
            });
            call(mode, conn, Some(&write.args()), request, written)
        }
        KvCommand::Patch {
            key,
            merge,
            json_patch,
            if_version,
            write,
        } => {
            let patch = match (merge, json_patch) {
                (Some(merge), _) => json_arg("merge", Some(merge), false).map(PatchRequest::Merge),
                (None, Some(ops)) => {
                    json_arg("json_patch", Some(ops), false).map(PatchRequest::JsonPatch)
                }
                (None, None) => Err(Error::invalid("merge", "give --merge or --json-patch")),
            };
            let request =
                patch.map(|patch| ApiRequest::kv_patch(key, &patch, if_version.if_version));
            call(mode, conn, Some(&write.args()), request, written)
        }
        KvCommand::Del {
            key,
            if_version,
            write,
        } => call(
            mode,
            conn,
            Some(&write.args()),
            Ok(ApiRequest::kv_delete(key, if_version.if_version)),
            |v| {
                text::typed(v, |d: DeleteResult| {
                    let done = if d.deleted {
                        format!("{}: deleted", d.key)
                    } else {
                        format!("{}: was not there; nothing deleted", d.key)
                    };
                    done + &released_text(d.released_lock_id)
                })
            },
        ),
        KvCommand::List {
            prefix,
            after,
            limit,
        } => call(
            mode,
            conn,
            None,
            Ok(ApiRequest::kv_list(prefix, after.as_deref(), *limit)),
            |v| text::typed(v, list_text),
        ),
        KvCommand::History { key, limit } => call(
            mode,
            conn,
            None,
            Ok(ApiRequest::kv_history(key, *limit)),
            |v| text::typed(v, history_text),
        ),
        KvCommand::Txn { txn, write } => {
            let request = json_arg("txn", txn.as_deref(), true).and_then(|body| {
                if body.is_object() {
                    Ok(ApiRequest::txn(body))
                } else {
                    Err(Error::invalid(
                        "txn",
                        "must be a JSON object {\"compares\", \"success\", \"failure\"}",
                    ))
                }
            });
            call(mode, conn, Some(&write.args()), request, |v| {
                let succeeded = v["succeeded"].as_bool().unwrap_or(false);
                format!(
                    "txn {} at revision {}{}\n{}",
                    if succeeded {
                        "succeeded: ran `success`"
                    } else {
                        "compares failed: ran `failure`"
                    },
                    v["revision"],
                    released_text(v["released_lock_id"].as_u64()),
                    value_text(&v["results"])
                )
            })
        }
    }
}

fn write_text(w: WriteResult) -> String {
    let mut out = match w.previous_version {
        Some(previous) => format!("{}: version {} (was {previous})", w.key, w.version),
        None => format!("{}: version {} (created)", w.key, w.version),
    };
    if let Some(at) = w.expires_at {
        out.push_str(&format!(", expires {}", text::time(at)));
    }
    out.push_str(&released_text(w.released_lock_id));
    out
}

/// `; released lock N` when the write released one (`--release`).
fn released_text(released_lock_id: Option<u64>) -> String {
    released_lock_id.map_or_else(String::new, |id| format!("; released lock {id}"))
}

fn list_text(list: ListResult) -> String {
    if list.entries.is_empty() {
        return format!("no keys (revision {})", list.revision);
    }
    let mut table = text::table(&["KEY", "VERSION", "VALUE"]);
    for entry in &list.entries {
        let mut value = entry.value.to_string();
        if value.chars().count() > 60 {
            value = value.chars().take(57).collect::<String>() + "...";
        }
        table.add_row(vec![entry.key.clone(), entry.version.to_string(), value]);
    }
    let mut out = text::table_text(&table);
    if let Some(after) = list.next_after {
        out.push_str(&format!("\nmore: --after {after}"));
    }
    out
}

fn history_text(history: HistoryResult) -> String {
    if history.versions.is_empty() {
        return format!("{}: no history", history.key);
    }
    let mut table = text::table(&["VERSION", "TIME", "AGENT", "VALUE"]);
    for version in &history.versions {
        table.add_row(vec![
            version.version.to_string(),
            text::time(version.time),
            version.agent.clone(),
            version.value.to_string(),
        ]);
    }
    text::table_text(&table)
}

#[derive(Debug, Args)]
#[command(after_help = "\
A counter is a state key holding an integer. `add` never crosses --min/--max:
it is refused with exit 9 (QUOTA_EXCEEDED) instead.

Examples:
  baton counter add slots/gpu 1 --max 4       # take a slot, at most 4
  baton counter add slots/gpu -1 --min 0      # give it back
  baton counter get slots/gpu")]
pub struct CounterArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: CounterCommand,
}

#[derive(Debug, Subcommand)]
enum CounterCommand {
    /// Add DELTA (may be negative); exit 9 if the result would leave [min, max]
    #[command(
        allow_negative_numbers = true,
        after_help = "Example:\n  baton counter add quota/api-calls 1 --min 0 --max 10"
    )]
    Add {
        /// The counter's key
        key: String,
        /// How much to add, e.g. 1 or -1
        delta: i64,
        /// Refuse if the result would be below this
        #[arg(long)]
        min: Option<i64>,
        /// Refuse if the result would be above this
        #[arg(long)]
        max: Option<i64>,
        #[command(flatten)]
        write: StateWriteArgs,
    },
    /// Print a counter's value (0 if it was never written)
    #[command(after_help = "Example:\n  baton counter get quota/api-calls")]
    Get {
        /// The counter's key
        key: String,
    },
}

pub fn run_counter(args: CounterArgs, mode: OutputMode) -> i32 {
    let conn = &args.conn;
    match &args.command {
        CounterCommand::Add {
            key,
            delta,
            min,
            max,
            write,
        } => call(
            mode,
            conn,
            Some(&write.args()),
            Ok(ApiRequest::counter_add(key, *delta, *min, *max)),
            |v| {
                text::typed(v, |c: CounterResult| {
                    format!(
                        "{}: {}{}",
                        c.key,
                        c.value,
                        released_text(c.released_lock_id)
                    )
                })
            },
        ),
        CounterCommand::Get { key } => {
            // A counter never written reads as 0, like `add` treats it.
            let reply = super::answer(conn, None, ApiRequest::kv_get(key)).map_or_else(
                |error| match error.code {
                    ErrorCode::NotFound => Ok(serde_json::json!({
                        "key": key, "value": 0, "version": 0
                    })),
                    _ => Err(error),
                },
                |got| {
                    if got["value"].is_i64() {
                        Ok(got)
                    } else {
                        Err(Error::invalid(
                            "key",
                            format!(
                                "{key:?} holds {}, not an integer counter; read it with `baton kv get`",
                                got["value"]
                            ),
                        ))
                    }
                },
            );
            crate::output::emit(mode, &reply, |v| format!("{}", v["value"]))
        }
    }
}
