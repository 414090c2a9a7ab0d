//! A run's numbers, and its history saved as JSON when anything is wrong.

use baton_check::Operation;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::invariants::{self, AuditSummary, Verdict};
use crate::recorder::{Anomaly, History, Recorder};

/// What one run did and found.
#[derive(Debug)]
pub struct RunReport {
    pub name: String,
    pub seed: u64,
    pub elapsed: Duration,
    pub history: History,
    pub verdicts: Vec<Verdict>,
    pub audit: Option<AuditSummary>,
    /// Everything that went wrong; empty for a clean run.
    pub anomalies: Vec<Anomaly>,
    /// Where the history was saved (only when there are anomalies).
    pub saved: Option<PathBuf>,
}

impl RunReport {
    /// Runs every history check on what `recorder` holds, adds the anomalies
    /// seen during the run (and `extra`), and saves the history if any.
    pub fn conclude(
        name: &str,
        seed: u64,
        started: Instant,
        recorder: &Recorder,
        audit: Option<(AuditSummary, Vec<Anomaly>)>,
        extra: Vec<Anomaly>,
    ) -> RunReport {
        let history = recorder.history();
        let mut anomalies = history.anomalies.clone();
        anomalies.extend(extra);
        let checking = Instant::now();
        let (verdicts, not_linearizable) = invariants::linearizable(&history);
        eprintln!(
            "jepsen: linearizability of {} operations checked in {} ms",
            history.operations(),
            checking.elapsed().as_millis()
        );
        anomalies.extend(not_linearizable);
        anomalies.extend(invariants::fence_tokens_increase(&history));
        let audit = audit.map(|(summary, found)| {
            anomalies.extend(found);
            summary
        });
        let mut report = RunReport {
            name: name.to_string(),
            seed,
            elapsed: started.elapsed(),
            history,
            verdicts,
            audit,
            anomalies,
            saved: None,
        };
        if !report.anomalies.is_empty() {
            match report.save() {
                Ok(path) => {
                    eprintln!("jepsen: failing history saved to {}", path.display());
                    report.saved = Some(path);
                }
                Err(error) => eprintln!("jepsen: could not save the failing history: {error}"),
            }
        }
        report
    }

    pub fn faults_by_kind(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for fault in &self.history.faults {
            *kinds.entry(fault.kind.clone()).or_insert(0) += 1;
        }
        kinds
    }

    /// Panics with the anomalies and the saved history's path, if any.
    pub fn assert_clean(&self) {
        if self.anomalies.is_empty() {
            return;
        }
        let list: Vec<String> = self
            .anomalies
            .iter()
            .take(20)
            .map(|a| format!("- {}: {}", a.kind, a.detail))
            .collect();
        panic!(
            "{} anomalies in run {} (seed {}; rerun with BATON_JEPSEN_SEED={}); history saved to {}:\n{}",
            self.anomalies.len(),
            self.name,
            self.seed,
            self.seed,
            self.saved
                .as_ref()
                .map_or("<not saved>".to_string(), |p| p.display().to_string()),
            list.join("\n")
        );
    }

    /// Writes the history to `target/jepsen-failures/<name>-<ms>.json`.
    pub fn save(&self) -> std::io::Result<PathBuf> {
        let dir = crate::knobs::target_dir().join("jepsen-failures");
        std::fs::create_dir_all(&dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = dir.join(format!("{}-{stamp}.json", self.name));
        let h = &self.history;
        let document = json!({
            "name": self.name,
            "seed": self.seed,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "summary": self.to_string(),
            "anomalies": self.anomalies.iter().map(|a| json!({"kind": a.kind, "detail": a.detail})).collect::<Vec<_>>(),
            "faults": h.faults.iter().map(|f| json!({"at_us": f.at_us, "kind": f.kind, "detail": f.detail})).collect::<Vec<_>>(),
            "waits": h.waits.iter().map(|w| json!({"client": w.client, "key": w.key, "invoke_us": w.invoke_us, "return_us": w.return_us, "wait_ms": w.wait_ms, "outcome": w.outcome})).collect::<Vec<_>>(),
            "acknowledged": h.acknowledged,
            "registers": operations_json(&h.registers),
            "counters": operations_json(&h.counters),
            "locks": operations_json(&h.locks),
        });
        let text = serde_json::to_string_pretty(&document).map_err(std::io::Error::other)?;
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// Operations sorted by invoke, inputs and outputs as their `Debug` text.
fn operations_json<I: Debug, O: Debug>(ops: &[Operation<I, O>]) -> Vec<Value> {
    let mut ops: Vec<&Operation<I, O>> = ops.iter().collect();
    ops.sort_by_key(|o| o.invoke);
    ops.iter()
        .map(|op| match &op.outcome {
            baton_check::Outcome::Returned { at, output } => json!({
                "client": op.client, "key": op.key, "invoke_us": op.invoke, "return_us": at,
                "input": format!("{:?}", op.input), "output": format!("{output:?}"),
            }),
            baton_check::Outcome::Unknown => json!({
                "client": op.client, "key": op.key, "invoke_us": op.invoke, "return_us": null,
                "input": format!("{:?}", op.input), "output": "unknown",
            }),
        })
        .collect()
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.history;
        let (granted, timed_out, other) = invariants::wait_counts(h);
        write!(
            f,
            "run {} (seed {}): {} operations checked in {:.1} s ({} registers, {} counters, {} locks; {} with unknown outcome); faults {:?}; lock waits: {granted} granted, {timed_out} timed out, {other} other; {} atomic txn reads; {} stale-fence writes refused",
            self.name,
            self.seed,
            h.operations(),
            self.elapsed.as_secs_f64(),
            h.registers.len(),
            h.counters.len(),
            h.locks.len(),
            h.unknown(),
            self.faults_by_kind(),
            h.atomic_reads,
            h.stale_writes_fenced,
        )?;
        for verdict in &self.verdicts {
            write!(
                f,
                "; {}: {} ops on {} keys {}",
                verdict.model,
                verdict.operations,
                verdict.keys,
                match &verdict.result {
                    baton_check::CheckResult::Linearizable => "linearizable",
                    baton_check::CheckResult::Illegal { .. } => "NOT LINEARIZABLE",
                    baton_check::CheckResult::Timeout { .. } => "UNDECIDED",
                }
            )?;
        }
        if let Some(audit) = &self.audit {
            write!(
                f,
                "; audit trail from revision {}: {} lock events, {} grants",
                audit.from_revision, audit.events, audit.grants
            )?;
        }
        if !self.history.known_bugs.is_empty() {
            write!(
                f,
                "; known Baton bugs seen (tolerated): {:?}",
                self.history.known_bugs
            )?;
        }
        write!(f, "; {} anomalies", self.anomalies.len())
    }
}
