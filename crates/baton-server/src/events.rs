//! The recent event stream, kept in memory for `watch` and `events`:
//! a bounded ring (what a late watcher can catch up on) plus a broadcast
//! channel (live delivery). Events are rebuilt on restart by replaying the log
//! after the snapshot; anything older answers COMPACTED, never silence.

use baton_core::{Error, ErrorCode, Event, keys_match_prefix};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast::{self, error::RecvError};

/// An event with its stream position: (revision, index within the revision).
///
/// Kept as its JSON only (and its keys, for prefix filtering): the decoded
/// `Event` beside its JSON doubled the ring's memory (~1.4 KB per event for
/// a 256-byte put).
#[derive(Debug)]
pub struct Recorded {
    pub revision: u64,
    pub index: u32,
    /// The event's keys.
    pub keys: Box<[Box<str>]>,
    /// The event's JSON, serialized once for every watcher and reader.
    pub json: Box<RawValue>,
}

/// A kept event, shared by the ring and whoever is sending it.
pub type Stamped = Arc<Recorded>;

/// What a kept event costs beyond its JSON and keys: the shared allocation's
/// header, the struct, its ring slot and the allocator's rounding.
const KEPT_EVENT_OVERHEAD_BYTES: usize = 96;

impl Recorded {
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

    /// The memory this event holds while kept, as counted against
    /// `event_buffer_bytes`.
    fn cost(&self) -> usize {
        self.json.get().len()
            + self.keys.iter().map(|k| k.len()).sum::<usize>()
            + KEPT_EVENT_OVERHEAD_BYTES
    }
}

impl serde::Serialize for Recorded {
    /// As its JSON, written out as kept.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

struct Ring {
    events: VecDeque<Stamped>,
    /// What the kept events cost, by [`Recorded::cost`].
    bytes: usize,
    /// Every event with a revision >= this is still in the ring.
    complete_from: u64,
}

/// The kept events, as `/v1/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    pub events: usize,
    pub bytes: usize,
    pub from_revision: u64,
}

/// Live delivery to one watcher. The channel holds weak references only:
/// its `watcher_lag` slots keep their last values until overwritten, and
/// strong ones would keep up to that many events alive past the ring's
/// byte budget (4,096 puts of 1 MB: 4 GB). An event that has left the
/// ring before a watcher got to it means the watcher fell behind what is
/// kept: it is cut off, as when it falls `watcher_lag` events behind.
#[derive(Debug)]
pub struct Live(broadcast::Receiver<Weak<Recorded>>);

impl Live {
    /// The next event, or how the watcher fell behind.
    pub async fn recv(&mut self) -> Result<Stamped, RecvError> {
        let weak = self.0.recv().await?;
        // Gone from the ring: this watcher is behind everything kept.
        weak.upgrade()
            .ok_or(RecvError::Lagged(self.0.len() as u64 + 1))
    }
}

pub struct EventLog {
    ring: Mutex<Ring>,
    capacity: usize,
    capacity_bytes: usize,
    live: broadcast::Sender<Weak<Recorded>>,
}

impl EventLog {
    /// Keeps the newest `capacity` events, and fewer when they cost more than
    /// `capacity_bytes` (the newest is always kept). `complete_from`: the
    /// first revision whose events the log will see (snapshot seq + 1 after
    /// a restart).
    pub fn new(
        capacity: usize,
        capacity_bytes: usize,
        watcher_lag: usize,
        complete_from: u64,
    ) -> Self {
        let (live, _) = broadcast::channel(watcher_lag.max(1));
        EventLog {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                complete_from,
            }),
            capacity: capacity.max(1),
            capacity_bytes,
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
            let stamped = Arc::new(Recorded {
                revision: event.revision,
                index: index as u32,
                keys: event.keys.into_iter().map(String::into_boxed_str).collect(),
                json,
            });
            ring.bytes += stamped.cost();
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(Arc::downgrade(&stamped));
            ring.events.push_back(stamped);
            while ring.events.len() > self.capacity
                || (ring.bytes > self.capacity_bytes && ring.events.len() > 1)
            {
                let dropped = ring.events.pop_front().expect("non-empty");
                ring.bytes -= dropped.cost();
                ring.complete_from = ring.complete_from.max(dropped.revision + 1);
            }
        }
    }

    /// How many events are kept, what they cost, and from which revision
    /// every event is still there.
    pub fn kept(&self) -> Kept {
        let ring = self.ring.lock().expect("event ring lock");
        Kept {
            events: ring.events.len(),
            bytes: ring.bytes,
            from_revision: ring.complete_from,
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
    ) -> Result<(Vec<Stamped>, Live), Error> {
        let ring = self.ring.lock().expect("event ring lock");
        let receiver = Live(self.live.subscribe());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{EventKind, Outcome};
    use serde_json::json;

    /// A put of `value_bytes` at `revision`, as the state machine reports it.
    fn put(revision: u64, value_bytes: usize) -> Event {
        Event {
            revision,
            time: 1_000,
            agent: "a".into(),
            session: None,
            kind: EventKind::Put,
            namespace: Some("docs".into()),
            keys: vec!["docs/report".into()],
            outcome: Outcome::OK,
            lock_id: None,
            fence_token: None,
            version: Some(revision),
            value: Some(Arc::new(json!("x".repeat(value_bytes)))),
            detail: None,
        }
    }

    const KB: usize = 1024;

    #[test]
    fn large_events_are_kept_within_the_byte_budget_and_the_rest_is_compacted() {
        let log = EventLog::new(100_000, 64 * KB, 16, 1);
        for revision in 1..=100 {
            log.push(vec![put(revision, 10 * KB)]);
            let kept = log.kept();
            assert!(kept.bytes <= 64 * KB, "{kept:?} over the budget");
        }
        let kept = log.kept();
        assert_eq!(
            kept.events, 6,
            "{kept:?}: six events of ~10 KB fit in 64 KB"
        );
        assert_eq!(kept.from_revision, 95);

        let compacted = log.subscribe("", Some(94), None, usize::MAX).unwrap_err();
        assert_eq!(compacted.code, ErrorCode::Compacted);
        let (backlog, _) = log.subscribe("docs/", Some(95), None, usize::MAX).unwrap();
        assert_eq!(
            backlog.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (95..=100).collect::<Vec<_>>()
        );
        let last: Event = serde_json::from_str(backlog[5].json.get()).unwrap();
        assert_eq!(last, put(100, 10 * KB), "kept as the same JSON");
    }

    #[test]
    fn an_event_larger_than_the_budget_is_still_kept_alone() {
        let log = EventLog::new(100_000, 4 * KB, 16, 1);
        log.push(vec![put(1, 100)]);
        log.push(vec![put(2, 10 * KB)]);
        let kept = log.kept();
        assert_eq!((kept.events, kept.from_revision), (1, 2), "{kept:?}");
        let (backlog, _) = log.subscribe("", Some(2), None, usize::MAX).unwrap();
        assert_eq!(backlog[0].revision, 2);
    }

    #[test]
    fn the_count_bounds_the_ring_too() {
        let log = EventLog::new(3, usize::MAX, 16, 1);
        for revision in 1..=10 {
            log.push(vec![put(revision, 10)]);
        }
        let kept = log.kept();
        assert_eq!((kept.events, kept.from_revision), (3, 8), "{kept:?}");
    }

    /// Live delivery holds no event the ring has let go: a watcher that keeps
    /// up gets every event; one that falls behind what the ring keeps is cut
    /// off, however few events it is behind by count.
    #[tokio::test]
    async fn a_watcher_behind_the_kept_bytes_is_cut_off_and_holds_no_memory() {
        let log = EventLog::new(100_000, 64 * KB, 4096, 1);
        let (_, mut keeping_up) = log.subscribe("", None, None, 0).unwrap();
        let (_, mut asleep) = log.subscribe("", None, None, 0).unwrap();
        for revision in 1..=20 {
            log.push(vec![put(revision, 10 * KB)]);
            assert_eq!(keeping_up.recv().await.unwrap().revision, revision);
        }
        // Twenty events, well under the 4,096 the channel holds, but only
        // the newest six are kept: the first one this watcher would get is gone.
        match asleep.recv().await {
            Err(RecvError::Lagged(_)) => {}
            other => panic!("expected a cut-off, got {other:?}"),
        }
        assert_eq!(log.kept().events, 6);
    }
}
