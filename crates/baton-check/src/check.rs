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

/// How many of the operations that returned last before a violation was
/// detected are candidates for its window. Older operations stay in the proof
/// as recorded ("context"): disregarding the outputs of many operations at
/// once takes away what keeps the search fast.
pub const SHRINK_NEIGHBOURHOOD: usize = 64;

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
/// 2. Weakening: an operation's output is replaced by "took effect or not,
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
        let no_weakening = vec![false; self.indices.len()];

        // 1. The earliest cut. The whole history is illegal, and so is the
        //    cut at its last return (later invokes are all unknown outcomes).
        let (mut lo, mut hi) = (0, times.len().saturating_sub(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.illegal(times[mid], &no_weakening) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let cut = times.get(hi).copied().unwrap_or(u64::MAX);

        // 2. Weaken what is not needed, oldest chunks first, among the
        //    operations that returned last before the cut.
        let up_to_cut: Vec<usize> = returned
            .iter()
            .copied()
            .filter(|&p| ret_at(p).is_some_and(|t| t <= cut))
            .collect();
        let context = up_to_cut.len().saturating_sub(SHRINK_NEIGHBOURHOOD);
        let candidates = &up_to_cut[context..];
        let mut weakened = vec![false; self.indices.len()];
        let mut chunks = Vec::new();
        if candidates.len() > 1 {
            // (Weakening all of them at once would trivially succeed.)
            push_halves(&mut chunks, 0, candidates.len());
        }
        while let Some((start, end)) = chunks.pop() {
            if self.budget_left == 0 {
                self.exhausted = true;
                break;
            }
            candidates[start..end]
                .iter()
                .for_each(|&p| weakened[p] = true);
            if self.illegal(cut, &weakened) {
                continue;
            }
            candidates[start..end]
                .iter()
                .for_each(|&p| weakened[p] = false);
            if end - start > 1 {
                push_halves(&mut chunks, start, end);
            }
        }

        let mut window: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&p| !weakened[p])
            .collect();
        window.sort_by_key(|&p| (self.history[self.indices[p]].invoke, p));
        let explanation = self.explain(cut, &weakened, &window, context);
        CheckResult::Illegal {
            key: self.key.to_string(),
            window: window.iter().map(|&p| self.indices[p]).collect(),
            explanation,
            minimal: !self.exhausted,
        }
    }

    /// The key's history up to `cut`, with `weakened` outputs unseen.
    /// Returns the search operations and the position each one came from.
    fn ops(&self, cut: u64, weakened: &[bool]) -> (SearchOps<'a, M>, Vec<usize>) {
        let mut ops = Vec::with_capacity(self.indices.len());
        let mut positions = Vec::with_capacity(self.indices.len());
        for (p, &index) in self.indices.iter().enumerate() {
            let op = &self.history[index];
            if op.invoke > cut {
                continue;
            }
            let mut search_op = known(op);
            match search_op.ret {
                Some(at) if at <= cut => {
                    if weakened[p] {
                        search_op.output = None;
                    }
                }
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
    fn illegal(&mut self, cut: u64, weakened: &[bool]) -> bool {
        if self.budget_left == 0 {
            self.exhausted = true;
            return false;
        }
        let (ops, _) = self.ops(cut, weakened);
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

    fn explain(&self, cut: u64, weakened: &[bool], window: &[usize], context: usize) -> String {
        let others = self.indices.len() - window.len() - context;
        let given = if context == 0 {
            String::new()
        } else {
            format!(", given the {context} operation(s) that returned before them as recorded")
        };
        let mut text = format!(
            "key {:?} is not linearizable: these {} operation(s) cannot all have happened as recorded, \
             in any order that respects real time, whatever the key's {others} other operation(s) did or did not do{given}:\n",
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
        let (ops, positions) = self.ops(cut, weakened);
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
            if placed.is_empty() {
                let _ = write!(
                    text,
                    "Closest attempt: none of them can take effect first, from state {:?}.",
                    furthest.state
                );
            } else {
                let _ = write!(
                    text,
                    "Closest attempt: {} took effect in that order, leaving state {:?}; then none of {} can take effect.",
                    placed.join(", "),
                    furthest.state,
                    stuck.join(", ")
                );
            }
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
