//! Tool results: the JSON envelope of every transport as structured content,
//! plus a short text that a language model reads first. Lost leases come
//! before anything else, and every error says what to do next.

use baton_core::{Error, ErrorCode, envelope};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

use crate::session::Notice;

/// A tool that ran: its `result` and one line saying what happened.
pub struct Done {
    pub result: Value,
    pub summary: String,
}

impl Done {
    pub fn new(result: impl serde::Serialize, summary: impl Into<String>) -> Result<Done, Error> {
        let result = serde_json::to_value(result).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot encode the result: {e}"),
            )
        })?;
        Ok(Done {
            result,
            summary: summary.into(),
        })
    }
}

/// The MCP result of one tool call. Structured content is the envelope
/// (`{"ok": true, "result": ...}` or `{"ok": false, "error": ...}`), with
/// `lease_lost` added when a lease was lost since the previous call; the text
/// is the summary, then the same envelope for clients that show only text.
pub fn tool_result(
    tool: &str,
    outcome: Result<Done, Error>,
    notices: Vec<Notice>,
) -> CallToolResult {
    let is_error = outcome.is_err();
    let (mut structured, summary) = match outcome {
        Ok(done) => (envelope::<Value>(&Ok(done.result)), done.summary),
        Err(error) => {
            let text = error_text(tool, &error);
            (envelope::<Value>(&Err(error)), text)
        }
    };
    let mut text = String::new();
    for notice in &notices {
        text.push_str(&notice.message);
        text.push('\n');
    }
    text.push_str(&summary);
    if !notices.is_empty()
        && let Value::Object(map) = &mut structured
    {
        map.insert(
            "lease_lost".to_string(),
            serde_json::to_value(&notices).unwrap_or(Value::Null),
        );
    }
    let content = vec![
        ContentBlock::text(text),
        ContentBlock::text(structured.to_string()),
    ];
    let mut result = if is_error {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content = Some(structured);
    result
}

/// `CODE: message (retry after N ms). What to do: ...`
pub fn error_text(tool: &str, error: &Error) -> String {
    let mut text = format!("{}: {}", error.code, error.message);
    if let Some(ms) = error.retry_after_ms {
        text.push_str(&format!(" (retry after {ms} ms)"));
    }
    text.push_str(". What to do: ");
    text.push_str(hint(tool, error));
    text
}

/// What an agent should do about an error from `tool`.
pub fn hint(tool: &str, error: &Error) -> &'static str {
    match (error.code, tool) {
        (ErrorCode::ConcurrentModification, "lock_acquire") => {
            "the keys are held by others (details.holders). Wait retry_after_ms and call lock_acquire again, or pass wait_ms to queue; do not write to those keys meanwhile."
        }
        (ErrorCode::ConcurrentModification, "semaphore_acquire") => {
            "not enough permits are free (details.holders hold them). Wait retry_after_ms and call semaphore_acquire again, or pass wait_ms to queue (FIFO); do not use a slot you have no permit for."
        }
        (ErrorCode::ConcurrentModification, "once_get") => {
            "another agent is refreshing this value right now. Do NOT refresh it yourself: call once_get again with wait_ms (e.g. 20000) to wait for its value, or wait retry_after_ms."
        }
        (ErrorCode::Deadlock, "once_get") => {
            "your session already holds the refresh claim (details.claim_id): refresh the value and once_fulfil it, or once_abandon it; do not ask again."
        }
        (ErrorCode::Deadlock, "semaphore_acquire") => {
            "you already hold (or wait for) permits of this key, or waiting would deadlock (details). Permits are not re-entrant: use the lock you have (held lists it), or lock_release it first."
        }
        (ErrorCode::Fenced, "once_fulfil") => {
            "your refresh claim is no longer current (claim_ttl_ms ran out, or it passed to another agent): NOTHING was published. Do not publish or use your refreshed value elsewhere; another agent may have refreshed it since. Call once_get to get the current value (and the claim, if it is still stale)."
        }
        (ErrorCode::Fenced, "once_abandon") => {
            "the claim had already ended (published, expired or passed on); nothing to do. Call once_get for the current value."
        }
        (ErrorCode::Fenced, "queue_ack" | "queue_nack") => {
            "your claim on the item expired (visibility_ms passed) and the item was redelivered to another worker. Do NOT repeat its side effects and do not ack it again; the other delivery finishes it. Claim the next item, with a longer visibility_ms if the work takes long."
        }
        (ErrorCode::Fenced, "quota_commit") => {
            "the reservation had already ended (its ttl_ms ran out, or it was settled): nothing was recorded. Do not commit again; reserve with a longer ttl_ms next time."
        }
        (ErrorCode::QuotaExceeded, "quota_reserve") => {
            "not enough of the quota is available; nothing was reserved. Do NOT make the costly call. Wait retry_after_ms (given when expiring reservations will free enough) and reserve again, or reserve less; without retry_after_ms it cannot fit until the capacity grows or a new period starts."
        }
        (ErrorCode::NotFound, "quota_get" | "quota_reserve" | "quota_set") => {
            "there is no such quota. Check the name, or create it with quota_set {quota, capacity}."
        }
        (ErrorCode::NotFound, "rate_status") => {
            "nobody has taken from this bucket yet (or the name is wrong); rate_take creates it."
        }
        _ => generic_hint(error),
    }
}

/// What to do about an error, whichever tool it came from.
fn generic_hint(error: &Error) -> &'static str {
    match error.code {
        ErrorCode::ConcurrentModification => {
            "someone changed the key since you read it. Re-read it (state_get; details.current_version and details.current_value hold the current state), redo your change on the current value, and write again with if_version = the new version. Never retry the same write blindly."
        }
        ErrorCode::Fenced => {
            "you no longer hold the lock (or your session ended): stop writing under it. Nothing was applied. Acquire the lock again to get a new fence token, re-read the state, then redo the work."
        }
        ErrorCode::Deadlock => {
            "waiting would deadlock (details name the cycle). Release the locks you hold, then take every key you need in ONE lock_acquire call."
        }
        ErrorCode::QuotaExceeded => {
            "a bound would be crossed; nothing was applied. Take less, or wait retry_after_ms (if given) for capacity to come back."
        }
        ErrorCode::RateLimited => {
            "a shared rate limit refused the call; nothing was taken. Do NOT call the limited API yet: wait retry_after_ms (exact), then take again, or pass wait_ms to rate_take to queue for the tokens."
        }
        ErrorCode::NotFound => {
            "it does not exist (or ended long ago). Check the key or id (state_list, locks_list, held); create a missing key with state_put (if_absent)."
        }
        ErrorCode::InvalidArgument => "fix the named field and call again; nothing was applied.",
        ErrorCode::IdempotencyMismatch => {
            "this idempotency_key was already used for a different request; use a new key for a new request."
        }
        ErrorCode::Compacted => {
            "that revision is no longer kept. Read the current state instead (state_get, or events_recent without from_revision)."
        }
        ErrorCode::Unavailable => {
            "Baton did not apply the call or cannot be reached. If no server is running, start one with `baton serve` (or point BATON_URL / --url at one). If the message says the call may have been applied, retry with the same idempotency_key."
        }
        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => {
            "you are not allowed to do this (e.g. the lock or session belongs to another agent). Do not retry; ask the owner or an operator."
        }
        ErrorCode::Internal => "this is a bug in Baton. Report the message; retrying may not help.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_tool_errors_with_the_envelope() {
        let error =
            Error::new(ErrorCode::ConcurrentModification, "version 3 != 2").with_retry_after(5);
        let result = tool_result("state_put", Err(error), Vec::new());
        assert_eq!(result.is_error, Some(true));
        let structured = result.structured_content.unwrap();
        assert_eq!(structured["ok"], false);
        assert_eq!(structured["error"]["code"], "CONCURRENT_MODIFICATION");
        let text = result.content[0].as_text().unwrap().text.clone();
        assert!(text.starts_with("CONCURRENT_MODIFICATION: version 3 != 2 (retry after 5 ms)"));
        assert!(text.contains("Re-read"));
    }

    #[test]
    fn lost_leases_come_first() {
        let notice = Notice {
            what: "session",
            id: 7,
            status: "expired".into(),
            keys: vec!["a/b".into()],
            locks: Vec::new(),
            message: "LEASE LOST: your Baton session 7 ended (expired)".into(),
        };
        let done = Done::new(serde_json::json!({"x": 1}), "ok").unwrap();
        let result = tool_result("state_get", Ok(done), vec![notice]);
        assert_eq!(result.is_error, Some(false));
        let text = result.content[0].as_text().unwrap().text.clone();
        assert!(text.starts_with("LEASE LOST: your Baton session 7"));
        let structured = result.structured_content.unwrap();
        assert_eq!(structured["ok"], true);
        assert_eq!(structured["lease_lost"][0]["id"], 7);
    }
}
