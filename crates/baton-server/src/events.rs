//! The recent event stream, kept in memory for `watch` and `events`:
//! a bounded ring (what a late watcher can catch up on) plus a broadcast
//! channel (live delivery). Events are rebuilt on restart by replaying the log
//! after the snapshot; anything older answers COMPACTED, never silence.

use baton_core::{Error, ErrorCode, Event, keys_match_prefix};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// An event with its stream position: (revision, index within the revision).
///
/// Kept as its JSON only (and its keys, for prefix filtering): the ring holds
/// up to `event_buffer` of these, and the decoded `Event` beside its JSON
/// doubled the ring's memory (~1.4 KB per event for a 256-byte put).
#[derive(Debug, Clone)]
pub struct Stamped {
    pub revision: u64,
    pub index: u32,
    /// The event's keys.
    pub keys: Arc<[Box<str>]>,
    /// The event's JSON, serialized once for every watcher and reader.
    pub json: Arc<RawValue>,
}

impl Stamped {
    /// The SSE id: `<revision>.<index>`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.revision, self.index)
    }

    pub fn position(&self) -> (u64, u32) {
        (self.revision, self.index)
    }

    /// Whether a watcher of `prefix` should see this event.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        keys_match_prefix(&self.keys, prefix)
    }
}

struct Ring {
    events: VecDeque<Stamped>,
    /// Every event with a revision >= this is still in the ring.
    complete_from: u64,
}

pub struct EventLog {
    ring: Mutex<Ring>,
    capacity: usize,
    live: broadcast::Sender<Stamped>,
}

impl EventLog {
    /// `complete_from`: the first revision whose events the log will see
    /// (snapshot seq + 1 after a restart).
    pub fn new(capacity: usize, watcher_lag: usize, complete_from: u64) -> Self {
        let (live, _) = broadcast::channel(watcher_lag.max(1));
        EventLog {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                complete_from,
            }),
            capacity: capacity.max(1),
            live,
        }
    }

    /// Append the events of one applied command (in order).
    pub fn push(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().expect("event ring lock");
        for (index, event) in events.into_iter().enumerate() {
            let json = serde_json::value::to_raw_value(&event).expect("events serialize");
            let stamped = Stamped {
                revision: event.revision,
                index: index as u32,
                keys: event.keys.into_iter().map(String::into_boxed_str).collect(),
                json: json.into(),
            };
            ring.events.push_back(stamped.clone());
            while ring.events.len() > self.capacity {
                let dropped = ring.events.pop_front().expect("non-empty");
                ring.complete_from = ring.complete_from.max(dropped.revision + 1);
            }
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(stamped);
        }
    }

    /// Subscribe to live events, then take the kept events after `after`
    /// (a position) or from `from_revision`, matching `prefix`. Subscribing
    /// first means nothing falls between the backlog and the live stream.
    pub fn subscribe(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
        after: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<(Vec<Stamped>, broadcast::Receiver<Stamped>), Error> {
        let ring = self.ring.lock().expect("event ring lock");
        let receiver = self.live.subscribe();
        let start = match (after, from_revision) {
            (Some((revision, _)), _) => Some(revision),
            (None, Some(revision)) => Some(revision),
            (None, None) => None,
        };
        let Some(start) = start.map(|s| s.max(1)) else {
            return Ok((Vec::new(), receiver));
        };
        if start < ring.complete_from {
            return Err(Error::new(
                ErrorCode::Compacted,
                format!(
                    "revision {start} is compacted: events are kept from revision {}; read current state and watch from there",
                    ring.complete_from
                ),
            )
            .with_details(serde_json::json!({ "from_revision": start, "oldest_revision": ring.complete_from })));
        }
        let backlog = ring
            .events
            .iter()
            .filter(|s| match after {
                Some(position) => s.position() > position,
                None => s.revision >= start,
            })
            .filter(|s| s.matches_prefix(prefix))
            .take(limit)
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }

    /// The oldest revision whose events are all still kept.
    pub fn complete_from(&self) -> u64 {
        self.ring.lock().expect("event ring lock").complete_from
    }
}
