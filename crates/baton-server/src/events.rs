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
    /// Every revision up to this one has all its events pushed (the state
    /// machine is applied before its events arrive here, so a reader must
    /// not take the machine's revision for how far the ring goes).
    through: u64,
}

impl Ring {
    /// Where a read from `start` begins, or COMPACTED if the ring no longer
    /// holds all of it.
    fn first_revision(&self, start: Start) -> Result<u64, Error> {
        let revision = match start {
            Start::Oldest => return Ok(self.complete_from),
            Start::Revision(revision) => revision.max(1),
            Start::After((revision, _)) => revision.max(1),
            Start::Now => return Ok(self.through + 1),
        };
        if revision < self.complete_from {
            return Err(Error::new(
                ErrorCode::Compacted,
                format!(
                    "revision {revision} is compacted: events are kept from revision {}; read current state and watch from there",
                    self.complete_from
                ),
            )
            .with_details(serde_json::json!({ "from_revision": revision, "oldest_revision": self.complete_from })));
        }
        Ok(revision)
    }
}

/// Where a page or a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest revision every event of which is still kept.
    Oldest,
    /// This revision (COMPACTED if it is no longer kept whole).
    Revision(u64),
    /// Just after this position, `(revision, index)`: a watch resumed with
    /// `Last-Event-ID`.
    After((u64, u32)),
    /// Only what happens from now on (a watch without a start).
    Now,
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
struct Live(broadcast::Receiver<Weak<Recorded>>);

impl Live {
    /// The next event, or how the watcher fell behind.
    async fn recv(&mut self) -> Result<Stamped, RecvError> {
        let weak = self.0.recv().await?;
        // Gone from the ring: this watcher is behind everything kept.
        weak.upgrade()
            .ok_or(RecvError::Lagged(self.0.len() as u64 + 1))
    }
}

/// One watcher's stream: the kept events it asked for, then live ones.
///
/// The backlog holds weak references too, for the same reason as [`Live`]:
/// a watcher that asked for the whole ring and stopped reading would
/// otherwise keep every event of it alive after the ring let them go.
#[derive(Debug)]
pub struct Watch {
    backlog: VecDeque<Weak<Recorded>>,
    live: Live,
    prefix: String,
    /// The position of the last event handed out, or just before the first
    /// one wanted: a live event at or before it is one the backlog had, or
    /// one from before the watch's start.
    last: (u64, u32),
}

impl Watch {
    /// The next event under the prefix, or how this watcher fell behind
    /// (then it must be cut off: the events it missed are gone).
    pub async fn next(&mut self) -> Result<Stamped, RecvError> {
        if let Some(weak) = self.backlog.pop_front() {
            let stamped = weak
                .upgrade()
                .ok_or(RecvError::Lagged(self.backlog.len() as u64 + 1))?;
            self.last = stamped.position();
            return Ok(stamped);
        }
        loop {
            let stamped = self.live.recv().await?;
            if stamped.position() > self.last && stamped.matches_prefix(&self.prefix) {
                self.last = stamped.position();
                return Ok(stamped);
            }
        }
    }

    /// The position of the last event handed out (or just before the first
    /// one wanted), as a `Last-Event-ID` to resume from.
    pub fn last(&self) -> (u64, u32) {
        self.last
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
                through: complete_from.saturating_sub(1),
            }),
            capacity: capacity.max(1),
            capacity_bytes,
            live,
        }
    }

    /// Append the events of the command applied at `revision` (in order;
    /// none is fine: the ring still learns that the revision is done).
    pub fn push(&self, revision: u64, events: Vec<Event>) {
        let mut ring = self.ring.lock().expect("event ring lock");
        ring.through = revision;
        for (index, event) in events.into_iter().enumerate() {
            debug_assert_eq!(event.revision, revision);
            let json = serde_json::value::to_raw_value(&event).expect("events serialize");
            let stamped = Arc::new(Recorded {
                revision,
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

    /// Up to `limit` kept events from `start` under `prefix`, and the
    /// revision to read from next. A page never ends inside a revision (a
    /// release and the grant it makes share one, and resuming at the next
    /// revision would skip the rest): a revision cut by the limit is left
    /// whole for the next page, and a revision that alone fills the page
    /// is returned whole, over the limit. An empty or short page's next
    /// revision is the one after everything the ring has seen, read under
    /// the same lock, so nothing pushed meanwhile is skipped.
    pub fn page(
        &self,
        prefix: &str,
        start: Start,
        limit: usize,
    ) -> Result<(Vec<Stamped>, u64), Error> {
        let limit = limit.max(1);
        let ring = self.ring.lock().expect("event ring lock");
        let from = ring.first_revision(start)?;
        let mut page: Vec<Stamped> = Vec::new();
        let matching = ring
            .events
            .iter()
            .filter(|s| s.revision >= from && s.matches_prefix(prefix));
        for stamped in matching {
            if page.len() >= limit {
                let (first, last) = (page[0].revision, page[page.len() - 1].revision);
                if stamped.revision != last {
                    return Ok((page, last + 1));
                }
                if first != last {
                    page.retain(|s| s.revision != last);
                    return Ok((page, last));
                }
            }
            page.push(stamped.clone());
        }
        Ok((page, from.max(ring.through + 1)))
    }

    /// Subscribe to live events, then take the kept events from `start`
    /// under `prefix`. Subscribing under the ring's lock means nothing falls
    /// between the backlog and the live stream.
    pub fn watch(&self, prefix: &str, start: Start) -> Result<Watch, Error> {
        let ring = self.ring.lock().expect("event ring lock");
        let live = Live(self.live.subscribe());
        let from = ring.first_revision(start)?;
        let after = match start {
            Start::After(position) => position,
            _ => (from - 1, u32::MAX),
        };
        let backlog: VecDeque<Weak<Recorded>> = ring
            .events
            .iter()
            .filter(|s| s.position() > after && s.matches_prefix(prefix))
            .map(Arc::downgrade)
            .collect();
        Ok(Watch {
            backlog,
            live,
            prefix: prefix.to_string(),
            last: after,
        })
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
            log.push(revision, vec![put(revision, 10 * KB)]);
            let kept = log.kept();
            assert!(kept.bytes <= 64 * KB, "{kept:?} over the budget");
        }
        let kept = log.kept();
        assert_eq!(
            kept.events, 6,
            "{kept:?}: six events of ~10 KB fit in 64 KB"
        );
        assert_eq!(kept.from_revision, 95);

        let compacted = log.page("", Start::Revision(94), usize::MAX).unwrap_err();
        assert_eq!(compacted.code, ErrorCode::Compacted);
        let (backlog, next) = log.page("docs/", Start::Revision(95), usize::MAX).unwrap();
        assert_eq!(next, 101);
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
        log.push(1, vec![put(1, 100)]);
        log.push(2, vec![put(2, 10 * KB)]);
        let kept = log.kept();
        assert_eq!((kept.events, kept.from_revision), (1, 2), "{kept:?}");
        let (backlog, _) = log.page("", Start::Oldest, usize::MAX).unwrap();
        assert_eq!(backlog[0].revision, 2);
    }

    #[test]
    fn the_count_bounds_the_ring_too() {
        let log = EventLog::new(3, usize::MAX, 16, 1);
        for revision in 1..=10 {
            log.push(revision, vec![put(revision, 10)]);
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
        let mut keeping_up = log.watch("", Start::Now).unwrap();
        let mut asleep = log.watch("", Start::Now).unwrap();
        for revision in 1..=20 {
            log.push(revision, vec![put(revision, 10 * KB)]);
            assert_eq!(keeping_up.next().await.unwrap().revision, revision);
        }
        // Twenty events, well under the 4,096 the channel holds, but only
        // the newest six are kept: the first one this watcher would get is gone.
        match asleep.next().await {
            Err(RecvError::Lagged(_)) => {}
            other => panic!("expected a cut-off, got {other:?}"),
        }
        assert_eq!(log.kept().events, 6);
    }

    /// Several events in one revision (a release and the grant it makes,
    /// every key that expired in one tick).
    fn puts(revision: u64, count: usize) -> Vec<Event> {
        (0..count).map(|_| put(revision, 10)).collect()
    }

    #[test]
    fn a_page_never_ends_inside_a_revision_and_never_drops_one() {
        let log = EventLog::new(100_000, usize::MAX, 16, 1);
        log.push(1, puts(1, 2));
        log.push(2, puts(2, 3));
        log.push(3, Vec::new()); // a command with no events
        // The limit falls inside revision 2: it is left whole for the next page.
        let (page, next) = log.page("", Start::Oldest, 3).unwrap();
        assert_eq!(page.iter().map(|e| e.revision).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(next, 2);
        // Alone it fills the page: all of it, over the limit. Revision 3
        // filed no events, so the next page starts after it.
        let (page, next) = log.page("", Start::Revision(next), 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.position()).collect::<Vec<_>>(),
            [(2, 0), (2, 1), (2, 2)]
        );
        assert_eq!(next, 4);
        let (page, next) = log.page("", Start::Revision(next), 2).unwrap();
        assert!(page.is_empty());
        assert_eq!(next, 4);
        // A start beyond that stays where it was asked.
        assert_eq!(log.page("", Start::Revision(9), 2).unwrap().1, 9);
    }

    /// A watch from a revision gets nothing before it, from the backlog or live.
    #[tokio::test]
    async fn a_watch_from_a_revision_gets_nothing_before_it() {
        let log = EventLog::new(100_000, usize::MAX, 16, 1);
        log.push(1, puts(1, 1));
        let mut watch = log.watch("", Start::Revision(3)).unwrap();
        log.push(2, puts(2, 1));
        log.push(3, puts(3, 1));
        assert_eq!(watch.next().await.unwrap().revision, 3);
    }

    /// The backlog a watch has yet to send holds no event the ring let go:
    /// a watcher that asked for everything and stopped reading is cut off
    /// instead of keeping the events alive.
    #[tokio::test]
    async fn a_watch_backlog_holds_no_memory_the_ring_let_go() {
        let log = EventLog::new(100_000, 64 * KB, 4096, 1);
        for revision in 1..=6 {
            log.push(revision, vec![put(revision, 10 * KB)]);
        }
        let mut watch = log.watch("", Start::Oldest).unwrap();
        let first = watch.next().await.unwrap();
        assert_eq!(first.revision, 1);
        let second = Arc::downgrade(&log.page("", Start::Revision(2), 1).unwrap().0[0]);
        for revision in 7..=12 {
            log.push(revision, vec![put(revision, 10 * KB)]);
        }
        assert!(
            second.upgrade().is_none(),
            "evicted and freed, though unsent"
        );
        match watch.next().await {
            Err(RecvError::Lagged(_)) => {}
            other => panic!("expected a cut-off, got {other:?}"),
        }
        assert_eq!(watch.last(), (1, 0), "resume after the last event sent");
    }
}
