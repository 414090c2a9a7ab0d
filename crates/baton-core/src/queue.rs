//! Work queues for the single-writer pattern: enqueue, claim with a
//! visibility timeout and a claim token (a fence), ack or nack; an item whose
//! claim expires comes back; after `max_attempts` deliveries it is
//! dead-lettered. Delivery is at-least-once and FIFO by enqueue order: a
//! returned item goes back to its place, ahead of newer items.
//!
//! Rules a reader can rely on: an item is in exactly one of ready, claimed,
//! delayed; at most one claim of an item is live at any time, and only the
//! live claim's token can ack or nack it; every enqueued item is eventually
//! acked, dead-lettered, or still in the queue — never lost.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::command::Command;
use crate::error::{Error, ErrorCode};
use crate::event::EventKind;
use crate::machine::{Deadline, Effects, Map, Set, StateMachine};
use crate::reply::{
    DeadLetter, EnqueueResult, QueueEmpty, QueueItem, QueueSettled, QueueStatus, Reply, Response,
};
use crate::validate;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ItemState {
    Ready,
    Claimed {
        token: u64,
        agent: String,
        until: u64,
    },
    Delayed {
        until: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Item {
    pub value: Arc<Value>,
    pub enqueued_at: u64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub state: ItemState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub(crate) struct Queue {
    /// Persistent like the state's own maps: a queue can hold many items, and
    /// a write while a snapshot is encoding must not copy them all.
    pub items: Map<u64, Item>,
    /// Ready item ids; the smallest (oldest) is claimed first.
    pub ready: Set<u64>,
    pub dead: VecDeque<DeadLetter>,
    /// What the queue counts against `max_queue_bytes`: the compact JSON of
    /// its items and dead letters. 0 in snapshots from before it was
    /// recorded, and then measured on restore.
    #[serde(default)]
    pub bytes: u64,
}

impl Queue {
    /// `bytes`, measured from the contents.
    pub(crate) fn measure(&self) -> u64 {
        let items = self.items.values().map(|i| &i.value);
        let dead = self.dead.iter().map(|d| &d.item);
        items
            .chain(dead)
            .map(|value| validate::json_size(value) as u64)
            .sum()
    }

    fn counts(&self) -> (usize, usize) {
        let in_flight = self
            .items
            .values()
            .filter(|i| matches!(i.state, ItemState::Claimed { .. }))
            .count();
        let delayed = self.items.len() - in_flight - self.ready.len();
        (in_flight, delayed)
    }
}

impl StateMachine {
    pub(crate) fn queue_enqueue(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        item: &Value,
        max_attempts: Option<u32>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("queue", name, &self.limits)?;
        let size = validate::value("item", item, &self.limits)? as u64;
        let max_attempts = max_attempts.unwrap_or(self.limits.default_max_attempts);
        if max_attempts == 0 {
            return Err(Error::invalid("max_attempts", "at least 1 delivery"));
        }
        if self.queue_items >= self.limits.max_queue_items {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} items are queued, the limit (max_queue_items); let consumers catch up",
                    self.limits.max_queue_items
                ),
            )
            .with_retry_after(1000));
        }
        let limit = self.limits.max_queue_bytes;
        if self.queue_bytes.saturating_add(size) > limit {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "queued items and dead letters hold {} bytes, and this item is {size}; the limit is {limit} (max_queue_bytes): let consumers catch up",
                    self.queue_bytes
                ),
            )
            .with_retry_after(1000)
            .with_details(json!({ "queue_bytes": self.queue_bytes, "adding": size, "max_queue_bytes": limit })));
        }
        if !self.queues.contains_key(name)
            && self.quotas.len() + self.buckets.len() + self.queues.len()
                >= self.limits.max_quotas_and_buckets
        {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                "too many quotas, buckets and queues (max_quotas_and_buckets)",
            ));
        }
        let now = self.now;
        self.queue_bytes += size;
        self.queue_items += 1;
        let queue = self.queues.entry(name.to_string()).or_default();
        queue.bytes += size;
        queue.items.insert(
            seq,
            Item {
                value: Arc::new(item.clone()),
                enqueued_at: now,
                attempts: 0,
                max_attempts,
                state: ItemState::Ready,
            },
        );
        queue.ready.insert(seq);
        let depth = queue.ready.len();
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::Enqueued,
            vec![name.to_string()],
        );
        event.detail = Some(json!({ "item_id": seq }));
        fx.events.push(event);
        Ok(Response::Enqueued(EnqueueResult {
            queue: name.to_string(),
            item_id: seq,
            depth,
        }))
    }

    pub(crate) fn queue_claim(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        visibility_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("queue", name, &self.limits)?;
        validate::ttl("visibility_ms", visibility_ms, &self.limits)?;
        let now = self.now;
        let Some(queue) = self.queues.get_mut(name) else {
            return Ok(Response::QueueEmpty(QueueEmpty {
                queue: name.to_string(),
                empty: true,
                in_flight: 0,
                delayed: 0,
            }));
        };
        let Some(id) = queue.ready.remove_min() else {
            let (in_flight, delayed) = queue.counts();
            return Ok(Response::QueueEmpty(QueueEmpty {
                queue: name.to_string(),
                empty: true,
                in_flight,
                delayed,
            }));
        };
        let until = now.saturating_add(visibility_ms);
        let item = queue.items.get_mut(&id).expect("ready items exist");
        item.attempts += 1;
        item.state = ItemState::Claimed {
            token: seq,
            agent: command.agent.clone(),
            until,
        };
        let result = QueueItem {
            queue: name.to_string(),
            item_id: id,
            item: item.value.clone(),
            attempt: item.attempts,
            max_attempts: item.max_attempts,
            claim_token: seq,
            visible_at: until,
            enqueued_at: item.enqueued_at,
        };
        self.set_deadline(None, Some(until), Deadline::QueueItem(name.to_string(), id));
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::QueueClaimed,
            vec![name.to_string()],
        );
        event.fence_token = Some(seq);
        event.detail = Some(json!({ "item_id": id, "attempt": result.attempt }));
        fx.events.push(event);
        Ok(Response::QueueItem(result))
    }

    /// Ack (`delay_ms` None) or nack a claimed item.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn queue_settle(
        &mut self,
        seq: u64,
        command: &Command,
        name: &str,
        id: u64,
        token: u64,
        delay_ms: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("queue", name, &self.limits)?;
        if let Some(delay) = delay_ms
            && delay > self.limits.max_ttl_ms
        {
            return Err(Error::invalid(
                "delay_ms",
                format!("at most {} ms", self.limits.max_ttl_ms),
            ));
        }
        let item = self.queues.get(name).and_then(|q| q.items.get(&id));
        let until = match item.map(|i| &i.state) {
            Some(ItemState::Claimed {
                token: current,
                until,
                ..
            }) if *current == token => *until,
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::Fenced,
                    format!("claim {token} on item {id} of {name:?} is no longer current (it expired and the item was redelivered); its result must not be used"),
                )
                .with_details(json!({ "queue": name, "item_id": id, "claim_token": token })));
            }
            None => {
                return Err(Error::new(
                    ErrorCode::Fenced,
                    format!("item {id} of {name:?} is no longer in the queue (acked, or dead-lettered after its claim expired)"),
                )
                .with_details(json!({ "queue": name, "item_id": id })));
            }
        };
        self.set_deadline(Some(until), None, Deadline::QueueItem(name.to_string(), id));
        let outcome = match delay_ms {
            None => {
                let queue = self.queues.get_mut(name).expect("checked");
                let item = queue.items.remove(&id).expect("checked");
                self.queue_items -= 1;
                let size = validate::json_size(&item.value) as u64;
                queue.bytes -= size;
                self.queue_bytes -= size;
                "acked"
            }
            Some(delay) => self.requeue(name, id, delay),
        };
        let kind = if delay_ms.is_none() {
            EventKind::QueueAcked
        } else {
            EventKind::QueueNacked
        };
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            kind,
            vec![name.to_string()],
        );
        event.detail = Some(json!({ "item_id": id, "outcome": outcome }));
        fx.events.push(event);
        if outcome == "dead_lettered" {
            self.dead_letter_event(seq, name, id, fx);
        }
        self.forget_idle_queue(name);
        Ok(Response::QueueSettled(QueueSettled {
            queue: name.to_string(),
            item_id: id,
            outcome: outcome.to_string(),
        }))
    }

    /// Put a claimed item back (ready, delayed, or dead-lettered if out of attempts).
    fn requeue(&mut self, name: &str, id: u64, delay_ms: u64) -> &'static str {
        let now = self.now;
        let max_dead = self.limits.max_dead_letters_per_queue;
        let queue = self.queues.get_mut(name).expect("item's queue exists");
        let item = queue.items.get_mut(&id).expect("item exists");
        if item.attempts >= item.max_attempts {
            let item = queue.items.remove(&id).expect("item exists");
            self.queue_items -= 1;
            queue.dead.push_back(DeadLetter {
                item_id: id,
                item: item.value,
                attempts: item.attempts,
                dead_at: now,
            });
            while queue.dead.len() > max_dead {
                let dropped = queue.dead.pop_front().expect("longer than the limit");
                let size = validate::json_size(&dropped.item) as u64;
                queue.bytes -= size;
                self.queue_bytes -= size;
            }
            return "dead_lettered";
        }
        if delay_ms == 0 {
            item.state = ItemState::Ready;
            queue.ready.insert(id);
            "requeued"
        } else {
            let until = now.saturating_add(delay_ms);
            item.state = ItemState::Delayed { until };
            self.set_deadline(None, Some(until), Deadline::QueueItem(name.to_string(), id));
            "delayed"
        }
    }

    fn dead_letter_event(&mut self, seq: u64, name: &str, id: u64, fx: &mut Effects) {
        let mut event = self.event(
            seq,
            crate::command::SYSTEM_AGENT,
            None,
            EventKind::DeadLettered,
            vec![name.to_string()],
        );
        event.detail = Some(json!({ "item_id": id }));
        fx.events.push(event);
    }

    /// A claim's visibility ran out, or a delay ended.
    pub(crate) fn queue_item_due(&mut self, seq: u64, name: &str, id: u64, fx: &mut Effects) {
        let Some(item) = self.queues.get_mut(name).and_then(|q| q.items.get_mut(&id)) else {
            return;
        };
        match item.state.clone() {
            ItemState::Delayed { .. } => {
                item.state = ItemState::Ready;
                self.queues.get_mut(name).expect("exists").ready.insert(id);
            }
            ItemState::Claimed { agent, token, .. } => {
                let outcome = self.requeue(name, id, 0);
                let mut event = self.event(
                    seq,
                    &agent,
                    None,
                    EventKind::QueueClaimExpired,
                    vec![name.to_string()],
                );
                event.fence_token = Some(token);
                event.detail = Some(json!({ "item_id": id, "outcome": outcome }));
                fx.events.push(event);
                if outcome == "dead_lettered" {
                    self.dead_letter_event(seq, name, id, fx);
                }
                self.forget_idle_queue(name);
            }
            ItemState::Ready => {}
        }
    }

    fn forget_idle_queue(&mut self, name: &str) {
        if self
            .queues
            .get(name)
            .is_some_and(|q| q.items.is_empty() && q.dead.is_empty())
        {
            self.queues.remove(name);
        }
    }

    /// Depth, in-flight, delayed, dead letters and the oldest item's age.
    pub fn queue_status(&self, name: &str) -> Result<QueueStatus, Error> {
        validate::key("queue", name, &self.limits)?;
        let Some(queue) = self.queues.get(name) else {
            return Ok(QueueStatus {
                queue: name.to_string(),
                ready: 0,
                in_flight: 0,
                delayed: 0,
                dead_lettered: 0,
                oldest_age_ms: None,
                dead_letters: Vec::new(),
            });
        };
        let (in_flight, delayed) = queue.counts();
        Ok(QueueStatus {
            queue: name.to_string(),
            ready: queue.ready.len(),
            in_flight,
            delayed,
            dead_lettered: queue.dead.len(),
            oldest_age_ms: queue
                .items
                .values()
                .map(|i| self.now.saturating_sub(i.enqueued_at))
                .max(),
            dead_letters: queue.dead.iter().rev().take(20).rev().cloned().collect(),
        })
    }
}
