//! Quotas with reservations (reserve, then settle), and shared token-bucket
//! rate limits.
//!
//! Quota rule: `used + reserved <= capacity` always holds; a reservation that
//! expires returns its amount to the pool. Lowering the capacity below what
//! is already used or reserved takes nothing away, it only refuses new
//! reservations until enough is settled.
//!
//! Bucket rule: tokens are counted in thousandths so that refill is exact
//! integer arithmetic: a bucket of `rate_per_sec` gains `rate_per_sec`
//! milli-tokens per ms, up to `burst` tokens. So over any interval of `t` ms
//! a bucket grants at most `burst + rate_per_sec * t / 1000` tokens.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::command::Command;
use crate::error::{Error, ErrorCode};
use crate::event::EventKind;
use crate::machine::{Deadline, Effects, EndedKind, StateMachine, Wakeup};
use crate::reply::{
    AgentUsage, BucketInfo, EndReason, QuotaInfo, RateResult, Reply, ReservationInfo, Response,
    SettleResult,
};
use crate::validate;

/// Milli-tokens per token.
const MILLI: u64 = 1000;
/// The usage row that sums agents beyond `max_usage_agents_per_bucket`.
const OTHER_AGENTS: &str = "(other)";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Quota {
    pub capacity: u64,
    pub used: u64,
    pub reserved: u64,
    pub reservations: BTreeSet<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub quota: String,
    pub agent: String,
    pub amount: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    pub rate_per_sec: u64,
    pub burst: u64,
    pub milli_tokens: u64,
    pub updated_at: u64,
    pub usage: BTreeMap<String, u64>,
    /// Queued callers (ids of their `rate_take`), served strictly in order.
    #[serde(default)]
    pub waiters: VecDeque<u64>,
    /// Mirror of the bucket's refill deadline: when the head can be served.
    #[serde(default)]
    pub refill_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RateWaiter {
    pub bucket: String,
    pub agent: String,
    pub session: Option<u64>,
    pub tokens: u64,
    pub deadline: u64,
}

fn rate_limited(
    name: &str,
    available: u64,
    tokens: u64,
    rate_per_sec: u64,
    burst: u64,
    retry_after_ms: u64,
) -> Error {
    Error::new(
        ErrorCode::RateLimited,
        format!("bucket {name:?} has {available} of {tokens} tokens (rate {rate_per_sec}/s, burst {burst}); retry after {retry_after_ms} ms"),
    )
    .with_retry_after(retry_after_ms)
    .with_details(json!({ "bucket": name, "available": available, "requested": tokens }))
}

impl Bucket {
    /// Milli-tokens available at `now` (refill is lazy).
    fn available_at(&self, now: u64) -> u64 {
        let elapsed = now.saturating_sub(self.updated_at);
        self.milli_tokens
            .saturating_add(elapsed.saturating_mul(self.rate_per_sec))
            .min(self.burst.saturating_mul(MILLI))
    }
}

impl Quota {
    fn available(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used.saturating_add(self.reserved))
    }
}

impl StateMachine {
    fn quota_info(name: &str, quota: &Quota) -> QuotaInfo {
        QuotaInfo {
            quota: name.to_string(),
            capacity: quota.capacity,
            used: quota.used,
            reserved: quota.reserved,
            available: quota.available(),
            reservations: quota.reservations.len(),
        }
    }

    fn check_capacity_of_tables(&self) -> Result<(), Error> {
        if self.quotas.len() + self.buckets.len() >= self.limits.max_quotas_and_buckets {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} quotas and buckets exist, the limit (max_quotas_and_buckets)",
                    self.limits.max_quotas_and_buckets
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn quota_set(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        capacity: u64,
        reset_used: bool,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("quota", name, &self.limits)?;
        if !self.quotas.contains_key(name) {
            self.check_capacity_of_tables()?;
        }
        let quota = self
            .quotas
            .entry(name.to_string())
            .or_insert_with(|| Quota {
                capacity,
                used: 0,
                reserved: 0,
                reservations: BTreeSet::new(),
            });
        quota.capacity = capacity;
        if reset_used {
            quota.used = 0;
        }
        let info = Self::quota_info(name, quota);
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::QuotaSet,
            vec![name.to_string()],
        );
        event.detail = Some(json!({ "capacity": capacity, "reset_used": reset_used }));
        fx.events.push(event);
        Ok(Response::Quota(info))
    }

    pub(crate) fn quota_reserve(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        amount: u64,
        ttl_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("quota", name, &self.limits)?;
        validate::ttl("ttl_ms", ttl_ms, &self.limits)?;
        if amount == 0 {
            return Err(Error::invalid("amount", "reserve at least 1"));
        }
        let Some(quota) = self.quotas.get(name) else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "quota {name:?} does not exist; create it with quota_set (baton quota set {name} CAPACITY)"
                ),
            ));
        };
        if amount > quota.available() {
            return Err(self.quota_refusal(name, quota, amount));
        }
        if self.reservations.len() >= self.limits.max_reservations {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} reservations are live, the limit (max_reservations)",
                    self.limits.max_reservations
                ),
            ));
        }
        let expires_at = self.now.saturating_add(ttl_ms);
        let quota = self.quotas.get_mut(name).expect("checked above");
        quota.reserved += amount;
        quota.reservations.insert(seq);
        let available = quota.available();
        self.reservations.insert(
            seq,
            Reservation {
                quota: name.to_string(),
                agent: command.agent.clone(),
                amount,
                expires_at,
            },
        );
        self.set_deadline(None, Some(expires_at), Deadline::Reservation(seq));
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::Reserved,
            vec![name.to_string()],
        );
        event.detail =
            Some(json!({ "reservation_id": seq, "amount": amount, "expires_at": expires_at }));
        fx.events.push(event);
        Ok(Response::Reservation(ReservationInfo {
            reservation_id: seq,
            quota: name.to_string(),
            amount,
            expires_at,
            available,
        }))
    }

    /// QUOTA_EXCEEDED, with `retry_after_ms` when expiring reservations would free enough.
    fn quota_refusal(&self, name: &str, quota: &Quota, amount: u64) -> Error {
        let mut expiring: Vec<(u64, u64)> = quota
            .reservations
            .iter()
            .map(|id| {
                (
                    self.reservations[id].expires_at,
                    self.reservations[id].amount,
                )
            })
            .collect();
        expiring.sort_unstable();
        let mut freed = quota.available();
        let mut retry_after = None;
        for (at, reserved) in expiring {
            freed += reserved;
            if freed >= amount {
                retry_after = Some(at.saturating_sub(self.now).max(1));
                break;
            }
        }
        let hint = match retry_after {
            Some(ms) => format!("; reservations expiring within {ms} ms would free enough"),
            None => "; even with every reservation returned it would not fit: commit less, or raise the capacity".to_string(),
        };
        let mut error = Error::new(
            ErrorCode::QuotaExceeded,
            format!("quota {name:?} has {} of {} left; {amount} asked{hint}", quota.available(), quota.capacity),
        )
        .with_details(json!({ "quota": name, "capacity": quota.capacity, "used": quota.used, "reserved": quota.reserved, "requested": amount }));
        error.retry_after_ms = retry_after;
        error
    }

    /// Commit (`actual` given) or release (`None`) a reservation.
    pub(crate) fn quota_settle(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        actual: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        let Some(reservation) = self.reservations.get(&id) else {
            return match (self.ended.get(&id), actual) {
                (Some(ended), None) if ended.kind == EndedKind::Reservation => {
                    Ok(Response::Settled(SettleResult {
                        reservation_id: id,
                        settled: false,
                        outcome: ended.reason.as_str().to_string(),
                        committed: 0,
                        returned: 0,
                    }))
                }
                (Some(ended), Some(_)) if ended.kind == EndedKind::Reservation => Err(Error::new(
                    ErrorCode::Fenced,
                    format!(
                        "reservation {id} already ended ({}) at {}; its amount is back in the pool: reserve again",
                        ended.reason.as_str(),
                        validate::rfc3339(ended.at)
                    ),
                )),
                _ => Err(Error::new(
                    ErrorCode::NotFound,
                    format!("reservation {id} is unknown (never existed, or ended long ago)"),
                )),
            };
        };
        if reservation.agent != command.agent {
            return Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "reservation {id} belongs to agent {:?}, not {:?}",
                    reservation.agent, command.agent
                ),
            ));
        }
        if let Some(actual) = actual
            && actual > reservation.amount
        {
            return Err(Error::invalid(
                "actual",
                format!(
                    "{actual} is more than the {} reserved; reserve more first",
                    reservation.amount
                ),
            ));
        }
        let reservation = self.reservations.remove(&id).expect("checked above");
        self.set_deadline(
            Some(reservation.expires_at),
            None,
            Deadline::Reservation(id),
        );
        let committed = actual.unwrap_or(0);
        let quota = self
            .quotas
            .get_mut(&reservation.quota)
            .expect("a reservation's quota exists");
        quota.reserved -= reservation.amount;
        quota.used += committed;
        quota.reservations.remove(&id);
        let (kind, outcome) = match actual {
            Some(_) => (EventKind::ReservationCommitted, "committed"),
            None => (EventKind::ReservationReleased, "released"),
        };
        self.remember_end(id, EndedKind::Reservation, EndReason::Released);
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            kind,
            vec![reservation.quota.clone()],
        );
        event.detail = Some(
            json!({ "reservation_id": id, "committed": committed, "returned": reservation.amount - committed }),
        );
        fx.events.push(event);
        Ok(Response::Settled(SettleResult {
            reservation_id: id,
            settled: true,
            outcome: outcome.to_string(),
            committed,
            returned: reservation.amount - committed,
        }))
    }

    pub(crate) fn expire_reservation(&mut self, seq: u64, id: u64, fx: &mut Effects) {
        let Some(reservation) = self.reservations.remove(&id) else {
            return;
        };
        if let Some(quota) = self.quotas.get_mut(&reservation.quota) {
            quota.reserved -= reservation.amount;
            quota.reservations.remove(&id);
        }
        self.remember_end(id, EndedKind::Reservation, EndReason::Expired);
        let mut event = self.event(
            seq,
            &reservation.agent,
            None,
            EventKind::ReservationExpired,
            vec![reservation.quota],
        );
        event.detail = Some(json!({ "reservation_id": id, "returned": reservation.amount }));
        fx.events.push(event);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rate_take(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        tokens: u64,
        rate_per_sec: u64,
        burst: u64,
        wait_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("bucket", name, &self.limits)?;
        if rate_per_sec == 0 {
            return Err(Error::invalid(
                "rate_per_sec",
                "a bucket must refill: give at least 1 token per second",
            ));
        }
        if burst == 0 || burst > u64::MAX / MILLI {
            return Err(Error::invalid("burst", "must be at least 1"));
        }
        if tokens == 0 || tokens > burst {
            return Err(Error::invalid(
                "tokens",
                format!("take 1 to {burst} tokens (the burst); more could never be granted"),
            ));
        }
        if !self.buckets.contains_key(name) {
            self.check_capacity_of_tables()?;
        }
        if wait_ms > self.limits.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!("at most {} ms (max_wait_ms)", self.limits.max_wait_ms),
            ));
        }
        let now = self.now;
        let bucket = self
            .buckets
            .entry(name.to_string())
            .or_insert_with(|| Bucket {
                rate_per_sec,
                burst,
                milli_tokens: burst * MILLI,
                updated_at: now,
                usage: BTreeMap::new(),
                waiters: VecDeque::new(),
                refill_at: None,
            });
        // The latest configuration wins; refill up to now under the old rate first.
        bucket.milli_tokens = bucket.available_at(now);
        bucket.updated_at = now;
        bucket.rate_per_sec = rate_per_sec;
        bucket.burst = burst;
        bucket.milli_tokens = bucket.milli_tokens.min(burst * MILLI);
        let need = tokens * MILLI;
        // No barging: with callers queued, a new one goes behind them.
        if bucket.waiters.is_empty() && bucket.milli_tokens >= need {
            let result = self.grant_tokens(seq, name, &command.agent, command.session, tokens, fx);
            return Ok(Response::Rate(result));
        }
        // Saturating: burst (and so each waiter's tokens) may be as large as
        // u64::MAX / MILLI, and several such waiters overflow a plain sum.
        let ahead: u64 = bucket
            .waiters
            .iter()
            .map(|id| self.rate_waiters[id].tokens)
            .fold(0, u64::saturating_add);
        let retry_after_ms = ahead
            .saturating_add(tokens)
            .saturating_mul(MILLI)
            .saturating_sub(bucket.milli_tokens)
            .div_ceil(rate_per_sec)
            .max(1);
        if wait_ms == 0 {
            return Err(rate_limited(
                name,
                bucket.milli_tokens / MILLI,
                tokens,
                rate_per_sec,
                burst,
                retry_after_ms,
            ));
        }
        if bucket.waiters.len() >= self.limits.max_waiters_per_key {
            return Err(Error::new(
                ErrorCode::RateLimited,
                format!(
                    "{} callers already wait on bucket {name:?} (max_waiters_per_key)",
                    bucket.waiters.len()
                ),
            )
            .with_retry_after(retry_after_ms));
        }
        let deadline = now.saturating_add(wait_ms);
        bucket.waiters.push_back(seq);
        self.rate_waiters.insert(
            seq,
            RateWaiter {
                bucket: name.to_string(),
                agent: command.agent.clone(),
                session: command.session,
                tokens,
                deadline,
            },
        );
        self.set_deadline(None, Some(deadline), Deadline::RateWait(seq));
        self.schedule_refill(name);
        fx.pending = Some(seq);
        Ok(Response::Rate(RateResult {
            bucket: name.to_string(),
            taken: 0,
            remaining: 0,
            rate_per_sec,
            burst,
        }))
    }

    /// Take `tokens` (known to be there) and account them to `agent`.
    fn grant_tokens(
        &mut self,
        seq: u64,
        name: &str,
        agent: &str,
        session: Option<u64>,
        tokens: u64,
        fx: &mut Effects,
    ) -> RateResult {
        let max_agents = self.limits.max_usage_agents_per_bucket;
        let bucket = self
            .buckets
            .get_mut(name)
            .expect("granting from a live bucket");
        bucket.milli_tokens -= tokens * MILLI;
        let who = if bucket.usage.contains_key(agent) || bucket.usage.len() < max_agents {
            agent.to_string()
        } else {
            OTHER_AGENTS.to_string()
        };
        *bucket.usage.entry(who).or_insert(0) += tokens;
        let result = RateResult {
            bucket: name.to_string(),
            taken: tokens,
            remaining: bucket.milli_tokens / MILLI,
            rate_per_sec: bucket.rate_per_sec,
            burst: bucket.burst,
        };
        let mut event = self.event(
            seq,
            agent,
            session,
            EventKind::RateTaken,
            vec![name.to_string()],
        );
        event.detail = Some(json!({ "tokens": tokens }));
        fx.events.push(event);
        result
    }

    /// Keep one refill deadline per bucket: when its head waiter can be served.
    fn schedule_refill(&mut self, name: &str) {
        let Some(bucket) = self.buckets.get(name) else {
            return;
        };
        let at = bucket.waiters.front().map(|id| {
            let need = self.rate_waiters[id].tokens * MILLI;
            let missing = need.saturating_sub(bucket.available_at(self.now));
            // Saturating: a huge burst at 1 token/s is centuries away.
            self.now
                .saturating_add(missing.div_ceil(bucket.rate_per_sec))
        });
        let old = bucket.refill_at;
        self.buckets.get_mut(name).expect("exists").refill_at = at;
        self.set_deadline(old, at, Deadline::BucketRefill(name.to_string()));
    }

    /// Serve queued callers in order while the tokens last.
    pub(crate) fn refill_bucket(&mut self, seq: u64, name: &str, fx: &mut Effects) {
        let now = self.now;
        let Some(bucket) = self.buckets.get_mut(name) else {
            return;
        };
        bucket.refill_at = None; // popped already
        bucket.milli_tokens = bucket.available_at(now);
        bucket.updated_at = now;
        while let Some(&id) = self.buckets[name].waiters.front() {
            let waiter = &self.rate_waiters[&id];
            if self.buckets[name].milli_tokens < waiter.tokens * MILLI {
                break;
            }
            let waiter = self.rate_waiters.remove(&id).expect("queued waiter");
            self.buckets
                .get_mut(name)
                .expect("exists")
                .waiters
                .pop_front();
            self.set_deadline(Some(waiter.deadline), None, Deadline::RateWait(id));
            let result =
                self.grant_tokens(seq, name, &waiter.agent, waiter.session, waiter.tokens, fx);
            fx.wakeups.push(Wakeup {
                id,
                reply: Ok(Response::Rate(result)),
            });
        }
        self.schedule_refill(name);
    }

    /// A queued caller's wait ended (`timed_out`) or was withdrawn.
    pub(crate) fn end_rate_wait(&mut self, id: u64, timed_out: bool, fx: &mut Effects) {
        let Some(waiter) = self.rate_waiters.get(&id) else {
            return;
        };
        let error = match self.buckets.get(&waiter.bucket) {
            Some(bucket) if timed_out => {
                let (available, rate) =
                    (bucket.available_at(self.now) / MILLI, bucket.rate_per_sec);
                let retry = (waiter.tokens.saturating_sub(available) * MILLI)
                    .div_ceil(rate)
                    .max(1);
                rate_limited(
                    &waiter.bucket,
                    available,
                    waiter.tokens,
                    rate,
                    bucket.burst,
                    retry,
                )
            }
            _ => Error::new(
                ErrorCode::RateLimited,
                format!(
                    "the wait for bucket {:?} was cancelled by its caller",
                    waiter.bucket
                ),
            ),
        };
        self.fail_rate_wait(id, error, fx);
    }

    /// A queued caller's wait fails with `error`, taking nothing.
    pub(crate) fn fail_rate_wait(&mut self, id: u64, error: Error, fx: &mut Effects) {
        let Some(waiter) = self.rate_waiters.remove(&id) else {
            return;
        };
        // Not indexed any more when the deadline is what fired.
        self.deadlines
            .remove(&(waiter.deadline, Deadline::RateWait(id)));
        let Some(bucket) = self.buckets.get_mut(&waiter.bucket) else {
            return;
        };
        bucket.waiters.retain(|w| *w != id);
        fx.wakeups.push(Wakeup {
            id,
            reply: Err(error),
        });
        // The head may have changed: serve or reschedule.
        self.schedule_refill(&waiter.bucket);
    }

    // ---- reads --------------------------------------------------------------

    pub fn quota(&self, name: &str) -> Result<QuotaInfo, Error> {
        validate::key("quota", name, &self.limits)?;
        self.quotas
            .get(name)
            .map(|q| Self::quota_info(name, q))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("quota {name:?} does not exist"),
                )
            })
    }

    /// A bucket's tokens as of the core's current time, and who spends it.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo, Error> {
        validate::key("bucket", name, &self.limits)?;
        let bucket = self.buckets.get(name).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("bucket {name:?} does not exist"),
            )
        })?;
        let mut usage: Vec<AgentUsage> = bucket
            .usage
            .iter()
            .map(|(agent, tokens)| AgentUsage {
                agent: agent.clone(),
                tokens: *tokens,
            })
            .collect();
        usage.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.agent.cmp(&b.agent)));
        Ok(BucketInfo {
            bucket: name.to_string(),
            rate_per_sec: bucket.rate_per_sec,
            burst: bucket.burst,
            available: bucket.available_at(self.now) / MILLI,
            usage,
        })
    }
}
