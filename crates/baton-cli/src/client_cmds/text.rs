//! Text renderings of server results, for people. JSON mode prints the
//! server's `result` as is; these are one line per thing, tables for lists.
//! A result of an unexpected shape falls back to indented JSON.

use std::time::Duration;

use baton_client::{KeyLocksInfo, LockInfo, SessionInfo};
use baton_core::validate::rfc3339;
use baton_core::{Event, LockMode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output::value_text;

/// Renders `value` as `T` with `render`, or as JSON if it is not a `T`.
pub fn typed<T: DeserializeOwned>(value: &Value, render: impl FnOnce(T) -> String) -> String {
    match serde_json::from_value(value.clone()) {
        Ok(typed) => render(typed),
        Err(_) => value_text(value),
    }
}

pub fn time(ms: u64) -> String {
    rfc3339(ms)
}

pub fn duration(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn mode(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "exclusive",
        LockMode::Shared => "shared",
    }
}

pub fn session(info: &SessionInfo) -> String {
    format!(
        "session {} of agent {:?}, ttl {}, expires {}",
        info.session_id,
        info.agent,
        duration(info.ttl_ms),
        time(info.expires_at)
    )
}

/// `lock 5 held: a/1, a/2 (exclusive), fence 17, expires …`.
pub fn lock(info: &LockInfo) -> String {
    let status = match info.status {
        baton_core::LockStatus::Held => "held",
        baton_core::LockStatus::Waiting => "waiting",
    };
    let permits = match info.permits {
        Some(1) => ", 1 permit".to_string(),
        Some(n) => format!(", {n} permits"),
        None => String::new(),
    };
    let mut out = format!(
        "lock {} {status}: {} ({}{permits})",
        info.lock_id,
        info.keys.join(", "),
        mode(info.mode)
    );
    if let Some(token) = info.fence_token {
        out.push_str(&format!(", fence {token}"));
    }
    if let Some(at) = info.expires_at {
        out.push_str(&format!(", expires {}", time(at)));
    }
    if let Some(at) = info.wait_deadline {
        out.push_str(&format!(", waits until {}", time(at)));
    }
    if let Some(session) = info.session {
        out.push_str(&format!(", session {session}"));
    }
    out.push_str(&format!(", agent {:?}", info.agent));
    out
}

/// Holders and waiters of each key, one row per lock.
pub fn key_locks(keys: &[KeyLocksInfo]) -> String {
    if keys.is_empty() {
        return "no locked or awaited keys".to_string();
    }
    let mut table = table(&[
        "KEY", "LOCK", "STATE", "MODE", "AGENT", "SESSION", "FENCE", "UNTIL",
    ]);
    for key in keys {
        for (state, lock) in key
            .holders
            .iter()
            .map(|l| ("held", l))
            .chain(key.waiters.iter().map(|l| ("waiting", l)))
        {
            let until = lock.expires_at.or(lock.wait_deadline).map(time);
            table.add_row(vec![
                key.key.clone(),
                lock.lock_id.to_string(),
                state.to_string(),
                mode(lock.mode).to_string(),
                lock.agent.clone(),
                lock.session.map(|s| s.to_string()).unwrap_or_default(),
                lock.fence_token.map(|t| t.to_string()).unwrap_or_default(),
                until.unwrap_or_default(),
            ]);
        }
        if let Some(until) = key.delayed_until {
            table.add_row(vec![
                key.key.clone(),
                String::new(),
                "lock-delay".to_string(),
                String::new(),
                String::new(),
                String::new(),
                key.last_fence_token
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                time(until),
            ]);
        }
    }
    table_text(&table)
}

pub fn sessions(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions".to_string();
    }
    let mut table = table(&["SESSION", "AGENT", "TTL", "EXPIRES"]);
    for s in sessions {
        table.add_row(vec![
            s.session_id.to_string(),
            s.agent.clone(),
            duration(s.ttl_ms),
            time(s.expires_at),
        ]);
    }
    table_text(&table)
}

/// One event: `r42 2026-…Z put app/x agent "bot" v42 ok`.
pub fn event(event: &Event) -> String {
    let kind = serde_json::to_value(event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!("r{} {} {kind}", event.revision, time(event.time));
    if !event.keys.is_empty() {
        out.push_str(&format!(" {}", event.keys.join(",")));
    }
    out.push_str(&format!(" agent {:?}", event.agent));
    if let Some(session) = event.session {
        out.push_str(&format!(" session {session}"));
    }
    if let Some(lock) = event.lock_id {
        out.push_str(&format!(" lock {lock}"));
    }
    if let Some(token) = event.fence_token {
        out.push_str(&format!(" fence {token}"));
    }
    if let Some(version) = event.version {
        out.push_str(&format!(" v{version}"));
    }
    if !event.outcome.is_ok() {
        let outcome = serde_json::to_value(event.outcome).unwrap_or_default();
        out.push_str(&format!(
            " refused {}",
            outcome.as_str().unwrap_or_default()
        ));
    }
    if let Some(value) = &event.value {
        out.push_str(&format!(" = {value}"));
    }
    out
}

pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    table
}

/// A table as text: borderless, without the cells' outer padding.
pub fn table_text(table: &comfy_table::Table) -> String {
    table
        .lines()
        .map(|line| {
            line.trim_end()
                .strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locks_render_on_one_line_with_their_fence() {
        let info: LockInfo = serde_json::from_value(json!({
            "lock_id": 5, "status": "held", "agent": "bot", "keys": ["inv/a", "inv/b"],
            "mode": "exclusive", "fence_token": 17, "expires_at": 0
        }))
        .unwrap();
        assert_eq!(
            lock(&info),
            "lock 5 held: inv/a, inv/b (exclusive), fence 17, expires 1970-01-01T00:00:00.000Z, agent \"bot\""
        );
    }

    #[test]
    fn semaphore_grants_show_their_permits() {
        let info: LockInfo = serde_json::from_value(json!({
            "lock_id": 6, "status": "held", "agent": "bot", "keys": ["gpu/pool"],
            "mode": "shared", "fence_token": 6, "permits": 2
        }))
        .unwrap();
        assert_eq!(
            lock(&info),
            "lock 6 held: gpu/pool (shared, 2 permits), fence 6, agent \"bot\""
        );
    }

    #[test]
    fn events_render_on_one_line() {
        let e: Event = serde_json::from_value(json!({
            "revision": 9, "time": 1000, "agent": "a", "kind": "put", "keys": ["app/x"],
            "outcome": "ok", "version": 9, "value": {"n": 1}
        }))
        .unwrap();
        assert_eq!(
            event(&e),
            "r9 1970-01-01T00:00:01.000Z put app/x agent \"a\" v9 = {\"n\":1}"
        );
        let refused: Event = serde_json::from_value(json!({
            "revision": 10, "time": 0, "agent": "a", "kind": "refused", "outcome": "FENCED"
        }))
        .unwrap();
        assert!(event(&refused).ends_with("refused FENCED"));
    }

    #[test]
    fn unexpected_shapes_fall_back_to_json() {
        assert_eq!(
            typed(&json!({"x": 1}), |s: SessionInfo| session(&s)),
            "{\n  \"x\": 1\n}"
        );
    }
}
