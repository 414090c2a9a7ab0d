//! Once: single-flight refresh of a shared credential or cache entry.
//!
//! `once(key, max_age)` answers the key's value while it is younger than
//! `max_age`. When it is stale (or absent), the first caller gets a claim
//! (with a fencing token and a TTL) and refreshes; everyone else waits,
//! bounded, for the value the claimant then fulfils, instead of refreshing
//! too. If the claimant abandons its claim, the claim expires, or the
//! session it was taken in ends, the next waiter in line gets the claim. So
//! exactly one refresh runs per staleness period, however many agents ask.
//! The value lives in an ordinary state key; the previous value stays
//! readable in that key's history (rotating tokens).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::command::Command;
use crate::error::{Error, ErrorCode};
use crate::event::EventKind;
use crate::locks::SAME_STEP_REGRANT_DELAY_MS;
use crate::machine::{Deadline, Effects, StateMachine, Wakeup};
use crate::reply::EndReason;
use crate::reply::{OnceResult, Reply, Response};
use crate::validate;

/// A refresh in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Also its fencing token: the seq of the command that granted it.
    pub id: u64,
    pub agent: String,
    /// The claimant's session, if it asked with one.
    #[serde(default)]
    pub session: Option<u64>,
    pub ttl_ms: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct OnceState {
    pub claim: Option<Claim>,
    /// Waiter ids (the seq of their `once` call), in arrival order.
    pub waiters: VecDeque<u64>,
    /// A claim ended in the step that granted it: no claim is granted
    /// before this time (see `pass_claim`), whoever asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passing_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OnceWaiter {
    pub key: String,
    pub agent: String,
    #[serde(default)]
    pub session: Option<u64>,
    pub claim_ttl_ms: u64,
    pub deadline: u64,
}

impl StateMachine {
    /// The key's value, if younger than `max_age_ms`.
    fn fresh_value(&self, key: &str, max_age_ms: u64) -> Option<OnceResult> {
        let stored = self.kv.get(key)?;
        let age_ms = self.now.saturating_sub(stored.updated_at);
        (age_ms < max_age_ms).then(|| OnceResult {
            key: key.to_string(),
            status: "fresh".into(),
            value: Some(stored.value.clone()),
            version: Some(stored.version),
            age_ms: Some(age_ms),
            claim_id: None,
            expires_at: None,
        })
    }

    fn claim_result(&self, key: &str, claim: &Claim) -> OnceResult {
        let stored = self.kv.get(key);
        OnceResult {
            key: key.to_string(),
            status: "claimed".into(),
            value: stored.map(|s| s.value.clone()),
            version: stored.map(|s| s.version),
            age_ms: stored.map(|s| self.now.saturating_sub(s.updated_at)),
            claim_id: Some(claim.id),
            expires_at: Some(claim.expires_at),
        }
    }

    /// Give the claim for `key` to `agent`, with id (and fence) `seq`.
    fn grant_claim(
        &mut self,
        seq: u64,
        key: &str,
        agent: &str,
        session: Option<u64>,
        ttl_ms: u64,
        fx: &mut Effects,
    ) -> OnceResult {
        let claim = Claim {
            id: seq,
            agent: agent.to_string(),
            session,
            ttl_ms,
            expires_at: self.now.saturating_add(ttl_ms),
        };
        self.set_deadline(
            None,
            Some(claim.expires_at),
            Deadline::OnceClaim(key.to_string()),
        );
        let result = self.claim_result(key, &claim);
        self.onces.entry(key.to_string()).or_default().claim = Some(claim);
        let mut event = self.event(
            seq,
            agent,
            None,
            EventKind::OnceClaimed,
            vec![key.to_string()],
        );
        event.fence_token = Some(seq);
        fx.events.push(event);
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn once(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        max_age_ms: u64,
        claim_ttl_ms: u64,
        wait_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        validate::ttl("claim_ttl_ms", claim_ttl_ms, &self.limits)?;
        if wait_ms > self.limits.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!("at most {} ms (max_wait_ms)", self.limits.max_wait_ms),
            ));
        }
        if let Some(fresh) = self.fresh_value(key, max_age_ms) {
            return Ok(Response::Once(fresh));
        }
        let state = self.onces.get(key);
        let claim = state.and_then(|s| s.claim.clone());
        let queued = state.map_or(0, |s| s.waiters.len());
        // No claim but callers in line, or a claim ended in the step that
        // granted it: the claim passes on shortly (`pass_claim`), and a
        // newcomer does not jump the line or take the same claim id.
        let passing = state.is_some_and(|s| s.passing_at.is_some());
        if claim.is_none() && queued == 0 && !passing {
            return Ok(Response::Once(self.grant_claim(
                seq,
                key,
                &command.agent,
                command.session,
                claim_ttl_ms,
                fx,
            )));
        }
        // The same session asking again would wait for itself. Without a
        // session, two processes of one agent are told apart by nothing, so
        // the second simply waits like anyone else.
        if let Some(claim) = &claim
            && claim.agent == command.agent
            && claim.session.is_some()
            && claim.session == command.session
        {
            return Err(Error::new(
                ErrorCode::Deadlock,
                format!("your session already holds the refresh claim {} for {key:?}: fulfil or abandon it instead of asking again", claim.id),
            )
            .with_details(json!({ "claim_id": claim.id })));
        }
        let retry_after_ms = claim.as_ref().map_or(SAME_STEP_REGRANT_DELAY_MS, |claim| {
            claim.expires_at.saturating_sub(self.now).max(1)
        });
        if wait_ms == 0 {
            let what = match &claim {
                Some(claim) => format!(
                    "agent {:?} is refreshing {key:?} (claim {})",
                    claim.agent, claim.id
                ),
                None => format!("the refresh claim of {key:?} is changing hands"),
            };
            return Err(Error::new(
                ErrorCode::ConcurrentModification,
                format!("{what}; wait for its value, retry after {retry_after_ms} ms at most"),
            )
            .with_retry_after(retry_after_ms)
            .with_details(json!({
                "key": key,
                "claimant": claim.as_ref().map(|c| &c.agent),
                "claim_id": claim.as_ref().map(|c| c.id),
            })));
        }
        if queued >= self.limits.max_waiters_per_key {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!("{queued} callers already wait for {key:?} (max_waiters_per_key)"),
            )
            .with_retry_after(retry_after_ms));
        }
        let deadline = self.now.saturating_add(wait_ms);
        self.onces
            .entry(key.to_string())
            .or_default()
            .waiters
            .push_back(seq);
        self.once_waiters.insert(
            seq,
            OnceWaiter {
                key: key.to_string(),
                agent: command.agent.clone(),
                session: command.session,
                claim_ttl_ms,
                deadline,
            },
        );
        self.set_deadline(None, Some(deadline), Deadline::OnceWait(seq));
        fx.pending = Some(seq);
        Ok(Response::Once(OnceResult {
            key: key.to_string(),
            status: "waiting".into(),
            value: None,
            version: None,
            age_ms: None,
            claim_id: claim.map(|c| c.id),
            expires_at: Some(deadline),
        }))
    }

    pub(crate) fn once_fulfil(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        claim_id: u64,
        value: &Value,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        let size = validate::value("value", value, &self.limits)? as u64;
        self.check_claim(key, claim_id, &command.agent)?;
        // Every refusal before the claim is taken: the core has no rollback,
        // and a fulfil refused after it would lose the claim (the holder
        // could not retry, and the next caller would refresh again).
        self.check_capacity(
            usize::from(!self.kv.contains_key(key)),
            self.write_bytes(key, size),
        )?;
        let claim = self
            .onces
            .get_mut(key)
            .and_then(|s| s.claim.take())
            .expect("checked above");
        self.set_deadline(
            Some(claim.expires_at),
            None,
            Deadline::OnceClaim(key.to_string()),
        );
        self.put(seq, command, key, value, None, false, None, fx)?;
        let stored = &self.kv[key];
        let result = OnceResult {
            key: key.to_string(),
            status: "fresh".into(),
            value: Some(stored.value.clone()),
            version: Some(stored.version),
            age_ms: Some(0),
            claim_id: None,
            expires_at: None,
        };
        let waiters: Vec<u64> = self
            .onces
            .get_mut(key)
            .map(|s| s.waiters.drain(..).collect())
            .unwrap_or_default();
        for id in waiters {
            if let Some(waiter) = self.once_waiters.remove(&id) {
                self.set_deadline(Some(waiter.deadline), None, Deadline::OnceWait(id));
                fx.wakeups.push(Wakeup {
                    id,
                    reply: Ok(Response::Once(result.clone())),
                });
            }
        }
        self.forget_idle_once(key);
        Ok(Response::Once(result))
    }

    fn check_claim(&self, key: &str, claim_id: u64, agent: &str) -> Result<(), Error> {
        match self.onces.get(key).and_then(|s| s.claim.as_ref()) {
            Some(claim) if claim.id == claim_id && claim.agent == agent => Ok(()),
            Some(claim) if claim.id == claim_id => Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "claim {claim_id} on {key:?} belongs to agent {:?}",
                    claim.agent
                ),
            )),
            _ => Err(Error::new(
                ErrorCode::Fenced,
                format!(
                    "claim {claim_id} on {key:?} is no longer current (it expired or was abandoned); do not publish your value: call once again"
                ),
            )),
        }
    }

    /// The claimant gives up: the next waiter gets the claim.
    pub(crate) fn once_abandon(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        claim_id: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        self.check_claim(key, claim_id, &command.agent)?;
        let claim = self
            .onces
            .get_mut(key)
            .and_then(|s| s.claim.take())
            .expect("checked above");
        self.set_deadline(
            Some(claim.expires_at),
            None,
            Deadline::OnceClaim(key.to_string()),
        );
        self.pass_claim(seq, key, claim.id, fx);
        Ok(Response::Empty {})
    }

    /// Claim `ended` ended without a value: hand the claim to the next
    /// waiter, if any. A claim's id is also its fence: the seq of the
    /// command that granted it. So a claim ended in the step that granted it
    /// (its session killed by the command whose deadlines passed it on)
    /// passes on a millisecond later, in a later command, with a new id.
    fn pass_claim(&mut self, seq: u64, key: &str, ended: u64, fx: &mut Effects) {
        if ended == seq {
            // Even with nobody in line: a `once` later in this step would
            // otherwise claim anew with this same id.
            let at = self.now.saturating_add(SAME_STEP_REGRANT_DELAY_MS);
            let state = self.onces.entry(key.to_string()).or_default();
            let old = state.passing_at.replace(at);
            self.set_deadline(old, Some(at), Deadline::OnceClaim(key.to_string()));
            return;
        }
        while let Some(id) = self.onces.get_mut(key).and_then(|s| s.waiters.pop_front()) {
            let Some(waiter) = self.once_waiters.remove(&id) else {
                continue;
            };
            self.set_deadline(Some(waiter.deadline), None, Deadline::OnceWait(id));
            let result = self.grant_claim(
                seq,
                key,
                &waiter.agent,
                waiter.session,
                waiter.claim_ttl_ms,
                fx,
            );
            fx.wakeups.push(Wakeup {
                id,
                reply: Ok(Response::Once(result)),
            });
            return;
        }
        self.forget_idle_once(key);
    }

    /// A claim's deadline: it expires, or a pass put off by `pass_claim`
    /// is due.
    pub(crate) fn expire_claim(&mut self, seq: u64, key: &str, fx: &mut Effects) {
        let Some(state) = self.onces.get_mut(key) else {
            return;
        };
        match &state.claim {
            None => {
                state.passing_at = None;
                return self.pass_claim(seq, key, 0, fx);
            }
            // A put-off pass due after a newcomer claimed an idle key anew.
            Some(claim) if claim.expires_at > self.now => return,
            Some(_) => {}
        }
        let claim = state.claim.take().expect("matched above");
        let mut event = self.event(
            seq,
            &claim.agent,
            None,
            EventKind::LeaseLost,
            vec![key.to_string()],
        );
        event.fence_token = Some(claim.id);
        event.detail = Some(json!({ "claim_id": claim.id, "reason": "once claim expired" }));
        fx.events.push(event);
        self.pass_claim(seq, key, claim.id, fx);
    }

    /// A session's refresh claims end with it, as its locks do: the next
    /// waiter gets the claim now rather than after the claim's TTL, and a
    /// late fulfil from the ended claimant is FENCED. A close gives the
    /// claim up as an abandon does; an expiry or a kill takes it away.
    pub(crate) fn end_session_claims(
        &mut self,
        seq: u64,
        session: u64,
        reason: EndReason,
        fx: &mut Effects,
    ) {
        let keys: Vec<String> = self
            .onces
            .iter()
            .filter(|(_, state)| {
                state
                    .claim
                    .as_ref()
                    .is_some_and(|claim| claim.session == Some(session))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            let claim = self
                .onces
                .get_mut(&key)
                .and_then(|s| s.claim.take())
                .expect("collected above");
            self.set_deadline(
                Some(claim.expires_at),
                None,
                Deadline::OnceClaim(key.clone()),
            );
            if matches!(reason, EndReason::Expired | EndReason::Killed) {
                let mut event = self.event(
                    seq,
                    &claim.agent,
                    Some(session),
                    EventKind::LeaseLost,
                    vec![key.clone()],
                );
                event.fence_token = Some(claim.id);
                event.detail = Some(json!({
                    "claim_id": claim.id,
                    "reason": format!("its session {session} ended ({})", reason.as_str()),
                }));
                fx.events.push(event);
            }
            self.pass_claim(seq, &key, claim.id, fx);
        }
    }

    pub(crate) fn fail_once_waiter(&mut self, id: u64, error: Error, fx: &mut Effects) {
        let Some(waiter) = self.once_waiters.remove(&id) else {
            return;
        };
        if waiter.deadline != u64::MAX {
            self.set_deadline(Some(waiter.deadline), None, Deadline::OnceWait(id));
        }
        if let Some(state) = self.onces.get_mut(&waiter.key) {
            state.waiters.retain(|w| *w != id);
        }
        self.forget_idle_once(&waiter.key);
        fx.wakeups.push(Wakeup {
            id,
            reply: Err(error),
        });
    }

    pub(crate) fn once_wait_timed_out(&mut self, id: u64, fx: &mut Effects) {
        let Some(waiter) = self.once_waiters.get(&id) else {
            return;
        };
        let claimant = self
            .onces
            .get(&waiter.key)
            .and_then(|s| s.claim.as_ref())
            .map(|c| (c.agent.clone(), c.expires_at));
        let (who, retry_after_ms) = match claimant {
            Some((agent, at)) => (
                format!("agent {agent:?}"),
                at.saturating_sub(self.now).max(1),
            ),
            None => ("nobody".to_string(), 1),
        };
        let error = Error::new(
            ErrorCode::ConcurrentModification,
            format!("{:?} was still being refreshed by {who} when the wait ended; retry after {retry_after_ms} ms", waiter.key),
        )
        .with_retry_after(retry_after_ms);
        self.fail_once_waiter(id, error, fx);
    }

    fn forget_idle_once(&mut self, key: &str) {
        if self
            .onces
            .get(key)
            .is_some_and(|s| s.claim.is_none() && s.waiters.is_empty() && s.passing_at.is_none())
        {
            self.onces.remove(key);
        }
    }

    /// The fresh-or-stale value of a once key, as a read.
    pub fn once_status(&self, key: &str) -> Result<Value, Error> {
        validate::key("key", key, &self.limits)?;
        let state = self.onces.get(key);
        Ok(json!({
            "key": key,
            "claim": state.and_then(|s| s.claim.as_ref()).map(|c| json!({"claim_id": c.id, "agent": c.agent, "expires_at": c.expires_at})),
            "waiters": state.map_or(0, |s| s.waiters.len()),
            "value": self.kv.get(key).map(|s| Arc::clone(&s.value)),
            "updated_at": self.kv.get(key).map(|s| s.updated_at),
        }))
    }
}

impl StateMachine {
    /// Withdraw a waiting lock request or `once` wait (its caller went away).
    pub(crate) fn cancel_wait(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        fx: &mut Effects,
    ) -> Reply {
        if let Some(lock) = self.locks.get(&id) {
            if lock.agent != command.agent {
                return Err(Error::new(
                    ErrorCode::PermissionDenied,
                    format!("request {id} belongs to agent {:?}", lock.agent),
                ));
            }
            if !lock.is_held() {
                self.end_lock(seq, id, crate::reply::EndReason::Cancelled, fx);
            }
        } else if let Some(waiter) = self.once_waiters.get(&id) {
            if waiter.agent != command.agent {
                return Err(Error::new(
                    ErrorCode::PermissionDenied,
                    format!("request {id} belongs to agent {:?}", waiter.agent),
                ));
            }
            let error = Error::new(
                ErrorCode::ConcurrentModification,
                format!("once wait {id} was cancelled by its caller"),
            );
            self.fail_once_waiter(id, error, fx);
        } else if let Some(waiter) = self.rate_waiters.get(&id) {
            if waiter.agent != command.agent {
                return Err(Error::new(
                    ErrorCode::PermissionDenied,
                    format!("request {id} belongs to agent {:?}", waiter.agent),
                ));
            }
            self.end_rate_wait(id, false, fx);
        }
        Ok(Response::Empty {})
    }
}
