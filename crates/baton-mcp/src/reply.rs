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
    match error.code {
        ErrorCode::ConcurrentModification if tool == "lock_acquire" => {
            "the keys are held by others (details.holders). Wait retry_after_ms and call lock_acquire again, or pass wait_ms to queue; do not write to those keys meanwhile."
        }
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
            "a shared rate limit refused the call; nothing was applied. Wait retry_after_ms, then try again."
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
