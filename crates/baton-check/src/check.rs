//! Splits a history by key, checks each key, and shrinks a violation to a
//! small window of operations that proves it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::history::{HistoryError, MAX_OPS_PER_KEY, Operation, Outcome};
use crate::model::Model;
use crate::search::{SearchOp, Verdict, search};

/// Default for [`CheckOptions::step_budget`]. A step is one attempt to place
/// an operation or one backtrack, roughly 50–200 ns; the search keeps at most
/// one cache entry per step (a few dozen bytes plus a model state), so this
/// also bounds memory to a few hundred MB per key.
pub const DEFAULT_STEP_BUDGET: u64 = 5_000_000;

/// Default for [`CheckOptions::shrink_budget`].
pub const DEFAULT_SHRINK_BUDGET: u64 = 20_000_000;

/// How many of the writes that returned last before a violation was detected
/// are candidates for leaving its window. Older writes stay in the proof as
/// recorded ("context"): disregarding the outputs of many writes at once
/// takes away what keeps the search fast. (Reads and refusals are all
/// candidates: leaving them out is cheap.)
pub const SHRINK_NEIGHBOURHOOD: usize = 24;

/// Bounds on the work the checker does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// The most search steps spent on one key (and on each search while
    /// shrinking). A key that needs more is reported in
    /// [`CheckResult::Timeout`].
    pub step_budget: u64,
    /// The most search steps spent, in total, shrinking the window of an
    /// illegal key. When it runs out the window is still a proof of the
    /// violation, only perhaps not the smallest one.
    pub shrink_budget: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            step_budget: DEFAULT_STEP_BUDGET,
            shrink_budget: DEFAULT_SHRINK_BUDGET,
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key has an order of its operations that respects real time and
    /// the model.
    Linearizable,
    /// Key `key` has none.
    Illegal {
        /// The key whose operations cannot be linearized (the first such key
        /// in key order).
        key: String,
        /// Indices into the history of the window: returned operations whose
        /// outputs cannot all be true, in any real-time order, whatever the
        /// key's other recent operations did or did not do (operations that
        /// returned before the last [`SHRINK_NEIGHBOURHOOD`] ones count as
        /// recorded). Sorted by invoke time.
        window: Vec<usize>,
        /// The window, one operation a line, and what went wrong, for people.
        explanation: String,
        /// False when shrinking ran out of budget: the window still proves the
        /// violation but may hold operations that are not needed.
        minimal: bool,
    },
    /// No key is illegal, but for these keys the search ran out of budget
    /// before an answer: nothing is known about them.
    Timeout {
        /// The undecided keys, in key order.
        keys: Vec<String>,
    },
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::Illegal { explanation, .. } => write!(f, "{explanation}"),
            CheckResult::Timeout { keys } => write!(
                f,
                "undecided: the search ran out of budget on {} key(s) ({}); raise CheckOptions::step_budget \
                 or record shorter histories with fewer unknown outcomes",
                keys.len(),
                keys.iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Checks `history` against `model` with the default budgets.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<CheckResult, HistoryError> {
    check_with(model, history, &CheckOptions::default())
}

/// Checks `history` against `model`: every key on its own, in key order. The
/// first illegal key is reported (with its window); keys after it are not
/// checked.
pub fn check_with<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    options: &CheckOptions,
) -> Result<CheckResult, HistoryError> {
    let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Outcome::Returned { at, .. } = op.outcome
            && at < op.invoke
        {
            return Err(HistoryError::ReturnBeforeInvoke {
                index,
                invoke: op.invoke,
                ret: at,
            });
        }
        keys.entry(op.key.as_str()).or_default().push(index);
    }
    if let Some((key, indices)) = keys
        .iter()
        .find(|(_, indices)| indices.len() > MAX_OPS_PER_KEY)
    {
        return Err(HistoryError::TooManyOperations {
            key: key.to_string(),
            operations: indices.len(),
        });
    }

    let mut timed_out = Vec::new();
    for (key, indices) in keys {
        let ops: Vec<_> = indices.iter().map(|&i| known(&history[i])).collect();
        match search(model, &ops, options.step_budget, false).verdict {
            Verdict::Linearizable => {}
            Verdict::Exhausted => timed_out.push(key.to_string()),
            Verdict::Illegal => {
                let shrinker = Shrinker {
                    model,
                    history,
                    key,
                    indices: &indices,
                    step_budget: options.step_budget,
                    budget_left: options.shrink_budget,
                    exhausted: false,
                    treatment: vec![Treatment::Known; indices.len()],
                };
                return Ok(shrinker.violation());
            }
        }
    }
    if timed_out.is_empty() {
        Ok(CheckResult::Linearizable)
    } else {
        Ok(CheckResult::Timeout { keys: timed_out })
    }
}

/// An operation as recorded.
fn known<I, O>(op: &Operation<I, O>) -> SearchOp<'_, I, O> {
    match &op.outcome {
        Outcome::Returned { at, output } => SearchOp {
            invoke: op.invoke,
            ret: Some(*at),
            input: &op.input,
            output: Some(output),
        },
        Outcome::Unknown => SearchOp {
            invoke: op.invoke,
            ret: None,
            input: &op.input,
            output: None,
        },
    }
}

type SearchOps<'a, M> = Vec<SearchOp<'a, <M as Model>::Input, <M as Model>::Output>>;

/// Finds a small window of one illegal key's operations.
///
/// 1. The earliest *cut* — a return time `t` such that the key's history up
///    to `t` is already non-linearizable — by binary search. "The history up
///    to `t`" keeps the operations invoked by `t`; those that had not
///    returned by then count as unknown. That is exactly what an observer at
///    `t` knew, so if it is linearizable at `t` it is at every earlier cut,
///    and the binary search is exact.
/// 2. Reads and refusals that are not needed are left out (they change
///    nothing, so leaving them out only removes constraints).
/// 3. Weakening: a write's output is replaced by "took effect or not,
///    somewhere in its time window, output unseen". That can only make the
///    history easier to linearize, so whatever stays non-linearizable after
///    weakening is a proof that the operations still known are contradictory
///    by themselves. Chunks of operations are weakened at once and split when
///    that makes the history linearizable (as in delta debugging); what is
///    never weakened is the window. Only the last [`SHRINK_NEIGHBOURHOOD`]
///    operations to return are candidates; older ones stay as recorded.
struct Shrinker<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    key: &'a str,
    /// The key's operations, as history indices; "positions" index this.
    indices: &'a [usize],
    step_budget: u64,
    budget_left: u64,
    /// Some search ran out of steps: the window may not be minimal.
    exhausted: bool,
    /// Per position: how the next search sees the operation.
    treatment: Vec<Treatment>,
}

/// How a shrinking search sees an operation that returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Treatment {
    /// As recorded.
    Known,
    /// Left out: only for reads and refusals, which change nothing, so
    /// leaving them out only removes constraints.
    Dropped,
    /// Took effect or not, somewhere in its time window; output disregarded.
    Weakened,
}

impl<'a, M: Model> Shrinker<'a, M> {
    fn violation(mut self) -> CheckResult {
        let ret_at = |p: usize| self.history[self.indices[p]].return_time();
        let mut returned: Vec<usize> = (0..self.indices.len())
            .filter(|&p| ret_at(p).is_some())
            .collect();
        returned.sort_by_key(|&p| (ret_at(p), p));
        let mut times: Vec<u64> = returned.iter().filter_map(|&p| ret_at(p)).collect();
        times.dedup();

        // 1. The earliest cut. The whole history is illegal, and so is the
        //    cut at its last return (later invokes are all unknown outcomes).
        let (mut lo, mut hi) = (0, times.len().saturating_sub(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.illegal(times[mid]) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let cut = times.get(hi).copied().unwrap_or(u64::MAX);

        // 2. Leave out the reads and refusals that are not needed (cheap:
        //    what remains keeps its outputs, so the search stays fast).
        let up_to_cut: Vec<usize> = returned
            .iter()
            .copied()
            .filter(|&p| ret_at(p).is_some_and(|t| t <= cut))
            .collect();
        let (reads, writes): (Vec<usize>, Vec<usize>) =
            up_to_cut.iter().partition(|&&p| self.is_read_only(p));
        self.ddmin(cut, &reads, Treatment::Dropped);

        // 3. Disregard the outputs of the writes that are not needed, among
        //    the ones that returned last before the cut.
        let context = writes.len().saturating_sub(SHRINK_NEIGHBOURHOOD);
        self.ddmin(cut, &writes[context..], Treatment::Weakened);

        let mut window: Vec<usize> = up_to_cut
            .iter()
            .copied()
            .filter(|&p| self.treatment[p] == Treatment::Known)
            .collect();
        window.retain(|p| reads.contains(p) || writes[context..].contains(p));
        window.sort_by_key(|&p| (self.history[self.indices[p]].invoke, p));
        let explanation = self.explain(cut, &window, context);
        CheckResult::Illegal {
            key: self.key.to_string(),
            window: window.iter().map(|&p| self.indices[p]).collect(),
            explanation,
            minimal: !self.exhausted,
        }
    }

    fn is_read_only(&self, p: usize) -> bool {
        let op = &self.history[self.indices[p]];
        match &op.outcome {
            Outcome::Returned { output, .. } => self.model.is_read_only(&op.input, Some(output)),
            Outcome::Unknown => false,
        }
    }

    /// Gives `candidates` the treatment `loosen` wherever the history stays
    /// illegal: chunks at once, split when that makes it linearizable (as in
    /// delta debugging), oldest first.
    fn ddmin(&mut self, cut: u64, candidates: &[usize], loosen: Treatment) {
        let mut chunks = Vec::new();
        if candidates.len() > 1 {
            push_halves(&mut chunks, 0, candidates.len());
        } else if candidates.len() == 1 {
            chunks.push((0, 1));
        }
        while let Some((start, end)) = chunks.pop() {
            if self.budget_left == 0 {
                self.exhausted = true;
                break;
            }
            candidates[start..end]
                .iter()
                .for_each(|&p| self.treatment[p] = loosen);
            if self.illegal(cut) {
                continue;
            }
            candidates[start..end]
                .iter()
                .for_each(|&p| self.treatment[p] = Treatment::Known);
            if end - start > 1 {
                push_halves(&mut chunks, start, end);
            }
        }
    }

    /// The key's history up to `cut`, as treated so far. Returns the search
    /// operations and the position each one came from.
    fn ops(&self, cut: u64) -> (SearchOps<'a, M>, Vec<usize>) {
        let mut ops = Vec::with_capacity(self.indices.len());
        let mut positions = Vec::with_capacity(self.indices.len());
        for (p, &index) in self.indices.iter().enumerate() {
            let op = &self.history[index];
            if op.invoke > cut {
                continue;
            }
            let mut search_op = known(op);
            match search_op.ret {
                Some(at) if at <= cut => match self.treatment[p] {
                    Treatment::Known => {}
                    Treatment::Dropped => continue,
                    Treatment::Weakened => search_op.output = None,
                },
                _ => {
                    search_op.ret = None;
                    search_op.output = None;
                }
            }
            ops.push(search_op);
            positions.push(p);
        }
        (ops, positions)
    }

    /// Is the history up to `cut`, weakened, surely non-linearizable? Out of
    /// budget counts as "not surely".
    fn illegal(&mut self, cut: u64) -> bool {
        if self.budget_left == 0 {
            self.exhausted = true;
            return false;
        }
        let (ops, _) = self.ops(cut);
        let report = search(
            self.model,
            &ops,
            self.step_budget.min(self.budget_left),
            false,
        );
        self.budget_left = self.budget_left.saturating_sub(report.steps);
        match report.verdict {
            Verdict::Illegal => true,
            Verdict::Linearizable => false,
            Verdict::Exhausted => {
                self.exhausted = true;
                false
            }
        }
    }

    fn explain(&self, cut: u64, window: &[usize], context: usize) -> String {
        let others = self.indices.len() - window.len() - context;
        let given = if context == 0 {
            String::new()
        } else {
            format!(" (the {context} older write(s) count as recorded)")
        };
        let mut text = format!(
            "key {:?} is not linearizable: these {} operation(s) cannot all have happened as recorded, \
             in any order that respects real time, whatever the key's {others} other operation(s) did or did not do \
             (reads and refusals changing nothing, as recorded){given}:\n",
            self.key,
            window.len(),
        );
        for &p in window {
            let _ = writeln!(text, "  {}", self.describe(p));
        }
        let failing: Vec<String> = window
            .iter()
            .filter(|&&p| self.history[self.indices[p]].return_time() == Some(cut))
            .map(|&p| format!("#{}", self.indices[p]))
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(
                text,
                "The key stopped being linearizable when {} returned at {cut}.",
                failing.join(", ")
            );
        }

        // The closest the search got, to show where the window breaks.
        let (ops, positions) = self.ops(cut);
        let report = search(self.model, &ops, self.step_budget, true);
        if let (Verdict::Illegal, Some(furthest)) = (report.verdict, report.furthest) {
            let placed: Vec<usize> = furthest
                .order
                .iter()
                .map(|&i| positions[i])
                .filter(|p| window.contains(p))
                .collect();
            let stuck: Vec<String> = window
                .iter()
                .filter(|p| !placed.contains(p))
                .map(|&p| format!("#{}", self.indices[p]))
                .collect();
            let placed: Vec<String> = placed
                .iter()
                .map(|&p| format!("#{}", self.indices[p]))
                .collect();
            let placed = if placed.is_empty() {
                String::new()
            } else {
                format!(
                    " (after {} of them took effect in that order)",
                    placed.join(", ")
                )
            };
            let _ = write!(
                text,
                "Closest attempt: the furthest any order got{placed} left the key in state {:?}; \
                 from there none of {} could take effect next.",
                furthest.state,
                stuck.join(", ")
            );
        }
        if self.exhausted {
            text.push_str(
                "\n(Shrinking stopped at its budget: some of these operations may not be needed.)",
            );
        }
        text
    }

    fn describe(&self, p: usize) -> String {
        let index = self.indices[p];
        let op = &self.history[index];
        match &op.outcome {
            Outcome::Returned { at, output } => {
                format!(
                    "#{index} client {} [{}, {}] {:?} -> {:?}",
                    op.client, op.invoke, at, op.input, output
                )
            }
            Outcome::Unknown => format!(
                "#{index} client {} [{}, ?] {:?} -> unknown",
                op.client, op.invoke, op.input
            ),
        }
    }
}

/// Queues the two halves of `start..end` (at least two long), the older
/// half to be tried first.
fn push_halves(chunks: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    let mid = start + (end - start) / 2;
    chunks.push((mid, end));
    chunks.push((start, mid));
}
