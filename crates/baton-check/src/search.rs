//! The search for one key: Wing & Gong's algorithm with Lowe's memoization,
//! laid out like Porcupine's `checkSingle` (an event list with lift/unlift,
//! a stack of lifted calls, a cache of visited configurations).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::model::{Model, Order};

/// One operation as the search sees it (after partitioning, truncating and
/// weakening by the caller).
pub(crate) struct SearchOp<'a, I, O> {
    pub invoke: u64,
    /// `None`: the operation may take effect at any time after `invoke`, or never.
    pub ret: Option<u64>,
    pub input: &'a I,
    /// `None`: any output the model allows. With `ret = Some(_)` this means
    /// "took effect or not, somewhere in `[invoke, ret]`, output unseen".
    pub output: Option<&'a O>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Linearizable,
    Illegal,
    /// The step budget ran out first.
    Exhausted,
}

/// The longest partial linearization seen, counted in operations with a
/// known output: what an explanation shows.
pub(crate) struct Furthest<S> {
    /// Indices into the searched slice, in linearization order.
    pub order: Vec<usize>,
    /// The model state after `order`.
    pub state: S,
}

pub(crate) struct Report<S> {
    pub verdict: Verdict,
    pub steps: u64,
    pub furthest: Option<Furthest<S>>,
}

const NONE: u32 = u32::MAX;
const HEAD: u32 = 0;

/// The largest budget the search honours: cache indices are `u32`, and the
/// cache gains at most one entry per step.
const MAX_BUDGET: u64 = (u32::MAX - 1) as u64;

/// Checks whether `ops` has a linearization under `model`, spending at most
/// `budget` steps (one step = one attempt to lift a call, or one backtrack).
/// With `track`, also reports the furthest partial linearization.
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[SearchOp<'_, M::Input, M::Output>],
    budget: u64,
    track: bool,
) -> Report<M::State> {
    // A pure read whose output nobody saw constrains nothing: leave it out.
    let kept: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].output.is_some() || !model.is_read_only(ops[i].input, None))
        .collect();
    let relevant: Vec<SearchOp<'_, M::Input, M::Output>> = kept
        .iter()
        .map(|&i| SearchOp {
            invoke: ops[i].invoke,
            ret: ops[i].ret,
            input: ops[i].input,
            output: ops[i].output,
        })
        .collect();
    let mut searcher = Searcher::new(model, &relevant, budget.min(MAX_BUDGET), track);
    let verdict = searcher.run();
    let furthest = searcher.furthest.take().map(|f| Furthest {
        order: f.order.iter().map(|&i| kept[i]).collect(),
        state: f.state,
    });
    Report {
        verdict,
        steps: searcher.steps,
        furthest,
    }
}

/// A lifted call: which operation, the state before it, and the other states
/// it could still lead to (for outputs nobody saw).
struct Frame<S> {
    id: u32,
    prev_state: S,
    rest: Vec<S>,
    /// Placed as a read-only operation without branching: if this fails,
    /// so does the configuration before it.
    forced: bool,
}

/// What forcing read-only operations did.
enum Forced {
    /// One was placed.
    Lifted,
    /// One fits, but placing it reaches a configuration already explored
    /// and failed: so does this one.
    Dead,
    /// None fits.
    Nothing,
}

struct Searcher<'m, 'o, 'a, M: Model> {
    model: &'m M,
    ops: &'o [SearchOp<'a, M::Input, M::Output>],
    /// Operation ids are positions in invoke order; `by_invoke[id]` is the index in `ops`.
    by_invoke: Vec<u32>,
    /// The event list: node 0 is the head sentinel, the last node the tail sentinel.
    next: Vec<u32>,
    prev: Vec<u32>,
    node_op: Vec<u32>,
    node_is_return: Vec<bool>,
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
    /// Per operation id: output known and the model calls it read-only.
    read_only: Vec<bool>,
    /// Per operation id: the model's `order` hint for a known output.
    order: Vec<Option<Order>>,
    /// Order numbers of the operations with a known output that are not
    /// linearized yet (number -> how many).
    pending_orders: BTreeMap<u64, u32>,
    /// The linearized set, and its Zobrist hash (XOR of per-operation keys).
    bits: Vec<u64>,
    set_hash: u64,
    zobrist: Vec<u64>,
    /// Highest word of `bits` ever set: the cache key never reaches past it.
    hi_word: usize,
    state: M::State,
    stack: Vec<Frame<M::State>>,
    /// Operations with a return event that are not linearized yet.
    returned_left: usize,
    cache: Cache<M::State>,
    steps: u64,
    budget: u64,
    track: bool,
    known_depth: usize,
    furthest_known: usize,
    furthest: Option<Furthest<M::State>>,
}

impl<'m, 'o, 'a, M: Model> Searcher<'m, 'o, 'a, M> {
    fn new(
        model: &'m M,
        ops: &'o [SearchOp<'a, M::Input, M::Output>],
        budget: u64,
        track: bool,
    ) -> Self {
        let n = ops.len();
        let mut by_invoke: Vec<u32> = (0..n as u32).collect();
        by_invoke.sort_by_key(|&i| (ops[i as usize].invoke, i));

        // (time, is_return, id): at equal times calls sort before returns, so
        // "returned at t" and "invoked at t" count as concurrent.
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * n);
        for (id, &index) in by_invoke.iter().enumerate() {
            let op = &ops[index as usize];
            events.push((op.invoke, false, id as u32));
            if let Some(ret) = op.ret {
                events.push((ret, true, id as u32));
            }
        }
        events.sort_unstable();

        let nodes = events.len() + 2;
        let mut node_op = vec![NONE; nodes];
        let mut node_is_return = vec![false; nodes];
        let mut call_node = vec![NONE; n];
        let mut ret_node = vec![NONE; n];
        for (k, &(_, is_return, id)) in events.iter().enumerate() {
            let node = k as u32 + 1;
            node_op[node as usize] = id;
            node_is_return[node as usize] = is_return;
            if is_return {
                ret_node[id as usize] = node;
            } else {
                call_node[id as usize] = node;
            }
        }
        let next: Vec<u32> = (0..nodes as u32)
            .map(|k| if k + 1 < nodes as u32 { k + 1 } else { NONE })
            .collect();
        let prev: Vec<u32> = (0..nodes as u32).map(|k| k.wrapping_sub(1)).collect();

        let mut read_only = vec![false; n];
        let mut order = vec![None; n];
        let mut pending_orders = BTreeMap::new();
        for (id, &index) in by_invoke.iter().enumerate() {
            let op = &ops[index as usize];
            if let Some(output) = op.output {
                read_only[id] = model.is_read_only(op.input, Some(output));
                order[id] = model.order(op.input, output);
                if let Some(Order::Issues(n) | Order::Observes(n)) = order[id] {
                    *pending_orders.entry(n).or_insert(0) += 1;
                }
            }
        }

        let zobrist = (0..n as u64)
            .map(|id| mix64(id.wrapping_add(0x2545_f491_4f6c_dd1d)))
            .collect();
        let returned_left = ops.iter().filter(|op| op.ret.is_some()).count();
        let state = model.init();
        let furthest = track.then(|| Furthest {
            order: Vec::new(),
            state: state.clone(),
        });
        Searcher {
            model,
            ops,
            by_invoke,
            next,
            prev,
            node_op,
            node_is_return,
            call_node,
            ret_node,
            read_only,
            order,
            pending_orders,
            bits: vec![0; n.div_ceil(64).max(1)],
            set_hash: 0,
            zobrist,
            hi_word: 0,
            state,
            stack: Vec::new(),
            returned_left,
            cache: Cache::default(),
            steps: 0,
            budget,
            track,
            known_depth: 0,
            furthest_known: 0,
            furthest,
        }
    }

    fn run(&mut self) -> Verdict {
        let mut cursor = self.next[HEAD as usize];
        // A fresh configuration has not had its read-only operations forced yet.
        let mut fresh = true;
        loop {
            // Every operation that returned is linearized; the rest had
            // unknown outcomes and may simply never have happened.
            if self.returned_left == 0 {
                return Verdict::Linearizable;
            }
            if self.steps >= self.budget {
                return Verdict::Exhausted;
            }
            if fresh {
                match self.force_read_only() {
                    Forced::Lifted => continue,
                    Forced::Dead => {
                        match self.backtrack() {
                            Some(walk) => (cursor, fresh) = walk,
                            None => return Verdict::Illegal,
                        }
                        continue;
                    }
                    Forced::Nothing => (cursor, fresh) = (self.next[HEAD as usize], false),
                }
            }
            self.steps += 1;
            // A remaining return event always comes before the tail, so with
            // `returned_left > 0` the cursor is on a real node.
            assert!(
                (cursor as usize) < self.next.len() - 1,
                "the walk passed every return event"
            );
            if self.node_is_return[cursor as usize] {
                // The operation returning here is still pending and nothing
                // before it fits: no way to extend this prefix. Undo the last
                // lift and move past it.
                match self.backtrack() {
                    Some(walk) => (cursor, fresh) = walk,
                    None => return Verdict::Illegal,
                }
            } else {
                if self.try_lift(self.node_op[cursor as usize]) {
                    fresh = true;
                } else {
                    cursor = self.next[cursor as usize];
                }
            }
        }
    }

    /// Places the first read-only operation that fits without changing the
    /// state. That never needs a choice: if any order works from here, one
    /// that places it now works too (it can move to the front of that order,
    /// since it changes nothing wherever it stands).
    fn force_read_only(&mut self) -> Forced {
        let mut node = self.next[HEAD as usize];
        while (node as usize) < self.next.len() - 1 && !self.node_is_return[node as usize] {
            let id = self.node_op[node as usize];
            if self.read_only[id as usize] && self.ret_node[id as usize] != NONE {
                self.steps += 1;
                let op = &self.ops[self.by_invoke[id as usize] as usize];
                let output = op.output.expect("read-only operations have a known output");
                if self
                    .model
                    .step(&self.state, op.input, output)
                    .is_some_and(|next| next == self.state)
                {
                    let same = self.state.clone();
                    if !self.visit(id, &same) {
                        return Forced::Dead;
                    }
                    self.enter(id, same, Vec::new(), true);
                    return Forced::Lifted;
                }
            }
            node = self.next[node as usize];
        }
        Forced::Nothing
    }

    /// Tries to linearize operation `id` next; true if it was lifted.
    fn try_lift(&mut self, id: u32) -> bool {
        let op = &self.ops[self.by_invoke[id as usize] as usize];
        match op.output {
            Some(output) => {
                // Issuing number n while an operation that issued or saw a
                // smaller number is still unplaced strands that operation.
                if let (Some(Order::Issues(n)), Some((&smallest, _))) = (
                    self.order[id as usize],
                    self.pending_orders.first_key_value(),
                ) && smallest < n
                {
                    return false;
                }
                match self.model.step(&self.state, op.input, output) {
                    Some(next) if self.visit(id, &next) => {
                        self.enter(id, next, Vec::new(), false);
                        true
                    }
                    _ => false,
                }
            }
            None => {
                let mut candidates = self.model.step_unknown(&self.state, op.input);
                if op.ret.is_some() {
                    // Returned, output disregarded: it may have had no
                    // effect, and it cannot be skipped, so "no effect" must
                    // be one of its choices (tried last).
                    if !candidates.contains(&self.state) {
                        candidates.push(self.state.clone());
                    }
                } else {
                    // No return: "no effect" is the same as never lifting it.
                    candidates.retain(|s| *s != self.state);
                }
                candidates.reverse();
                self.enter_first_new(id, candidates)
            }
        }
    }

    /// Lifts `id` with the first of `candidates` (popped from the back) that
    /// leads to an unvisited configuration.
    fn enter_first_new(&mut self, id: u32, mut candidates: Vec<M::State>) -> bool {
        while let Some(next) = candidates.pop() {
            if self.visit(id, &next) {
                self.enter(id, next, candidates, false);
                return true;
            }
        }
        false
    }

    /// Marks `id` linearized and records the configuration (set + `next`) in
    /// the cache. If it was visited before, undoes the mark and returns false.
    fn visit(&mut self, id: u32, next: &M::State) -> bool {
        // Operations below the head's call are all linearized, so the set is
        // "everything below word w0" plus the words from w0 on: a short key.
        let head_op = self.node_op[self.next[HEAD as usize] as usize] as usize;
        self.set_bit(id);
        let mut w0 = head_op / 64;
        while w0 < self.bits.len() && self.bits[w0] == u64::MAX {
            w0 += 1;
        }
        let mut end = self.hi_word + 1;
        while end > w0 && self.bits[end - 1] == 0 {
            end -= 1;
        }
        let tail = &self.bits[w0..end.max(w0)];
        let mut hasher = FxHasher::default();
        next.hash(&mut hasher);
        let hash = mix64(self.set_hash ^ mix64(hasher.finish()));
        if self.cache.insert_if_new(hash, w0 as u32, tail, next) {
            true
        } else {
            self.clear_bit(id);
            false
        }
    }

    fn enter(&mut self, id: u32, next: M::State, rest: Vec<M::State>, forced: bool) {
        let prev_state = std::mem::replace(&mut self.state, next);
        self.stack.push(Frame {
            id,
            prev_state,
            rest,
            forced,
        });
        self.lift(id);
        if let Some(Order::Issues(n) | Order::Observes(n)) = self.order[id as usize] {
            match self.pending_orders.get_mut(&n) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    self.pending_orders.remove(&n);
                }
            }
        }
        if self.ret_node[id as usize] != NONE {
            self.returned_left -= 1;
        }
        if self.track {
            self.known_depth += usize::from(self.op(id).output.is_some());
            if self.known_depth > self.furthest_known {
                self.furthest_known = self.known_depth;
                let order = self
                    .stack
                    .iter()
                    .map(|f| self.by_invoke[f.id as usize] as usize)
                    .collect();
                self.furthest = Some(Furthest {
                    order,
                    state: self.state.clone(),
                });
            }
        }
    }

    /// Undoes the last lift and tries that operation's other possible
    /// states; returns where the walk goes on (and whether that is a fresh
    /// configuration), or `None` when nothing is left to undo: no
    /// linearization exists.
    fn backtrack(&mut self) -> Option<(u32, bool)> {
        loop {
            let Frame {
                id,
                prev_state,
                rest,
                forced,
            } = self.stack.pop()?;
            self.unlift(id);
            self.clear_bit(id);
            if self.ret_node[id as usize] != NONE {
                self.returned_left += 1;
            }
            if let Some(Order::Issues(n) | Order::Observes(n)) = self.order[id as usize] {
                *self.pending_orders.entry(n).or_insert(0) += 1;
            }
            if self.track {
                self.known_depth -= usize::from(self.op(id).output.is_some());
            }
            self.state = prev_state;
            if forced {
                continue;
            }
            if self.enter_first_new(id, rest) {
                return Some((self.next[HEAD as usize], true));
            }
            return Some((self.next[self.call_node[id as usize] as usize], false));
        }
    }

    fn op(&self, id: u32) -> &SearchOp<'a, M::Input, M::Output> {
        &self.ops[self.by_invoke[id as usize] as usize]
    }

    fn set_bit(&mut self, id: u32) {
        let word = id as usize / 64;
        self.bits[word] |= 1 << (id % 64);
        self.set_hash ^= self.zobrist[id as usize];
        self.hi_word = self.hi_word.max(word);
    }

    fn clear_bit(&mut self, id: u32) {
        self.bits[id as usize / 64] &= !(1 << (id % 64));
        self.set_hash ^= self.zobrist[id as usize];
    }

    /// Removes an operation's call and return from the event list. The
    /// removed nodes keep their links, so `unlift` in reverse order restores
    /// them (dancing links).
    fn lift(&mut self, id: u32) {
        self.unlink(self.call_node[id as usize]);
        let ret = self.ret_node[id as usize];
        if ret != NONE {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, id: u32) {
        let ret = self.ret_node[id as usize];
        if ret != NONE {
            self.relink(ret);
        }
        self.relink(self.call_node[id as usize]);
    }

    fn unlink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NONE {
            self.prev[next as usize] = prev;
        }
    }

    fn relink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NONE {
            self.prev[next as usize] = node;
        }
    }
}

/// Visited configurations: (linearized set, state). The set is stored
/// compactly as "all operations below word `w0`, plus these words".
struct Cache<S> {
    /// Hash → first entry of its collision chain.
    heads: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    entries: Vec<CacheEntry<S>>,
    words: Vec<u64>,
}

struct CacheEntry<S> {
    next: u32,
    w0: u32,
    start: usize,
    len: u32,
    state: S,
}

impl<S> Default for Cache<S> {
    fn default() -> Self {
        Cache {
            heads: HashMap::default(),
            entries: Vec::new(),
            words: Vec::new(),
        }
    }
}

impl<S: Clone + Eq> Cache<S> {
    /// Records the configuration; false if it was already there.
    fn insert_if_new(&mut self, hash: u64, w0: u32, tail: &[u64], state: &S) -> bool {
        let index = self.entries.len() as u32;
        let chain = match self.heads.entry(hash) {
            Entry::Occupied(mut head) => {
                let mut i = *head.get();
                while i != NONE {
                    let entry = &self.entries[i as usize];
                    if entry.w0 == w0
                        && self.words[entry.start..entry.start + entry.len as usize] == *tail
                        && entry.state == *state
                    {
                        return false;
                    }
                    i = entry.next;
                }
                std::mem::replace(head.get_mut(), index)
            }
            Entry::Vacant(slot) => {
                slot.insert(index);
                NONE
            }
        };
        let start = self.words.len();
        self.words.extend_from_slice(tail);
        self.entries.push(CacheEntry {
            next: chain,
            w0,
            start,
            len: tail.len() as u32,
            state: state.clone(),
        });
        true
    }
}

/// The finalizer of SplitMix64: a cheap, well-mixed 64-bit hash of a 64-bit value.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The Fx hash (rustc's): fast, not DoS-resistant, which is fine for states
/// the checker made itself.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// For map keys that are already well-mixed hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
