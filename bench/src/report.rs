//! The run's results as JSON (every figure) and as Markdown (the tables a
//! person reads): throughput with Baton/peer ratios, the targets
//! met or missed, per-cell details with the correctness checks, and the
//! Baton-only measurements.

use std::fmt::Write as _;

use serde::Serialize;

use crate::extras::Extras;
use crate::workload::{CellResult, Workload};

/// The peers in table order; Baton is compared with each.
pub const PEERS: [&str; 4] = ["etcd", "redis-always", "redis-everysec", "postgres"];
/// The transport floor (`crate::floor`): hand-written and through axum,
/// each driven raw and by Baton's client, with what each one stands for.
pub const FLOORS: [(&str, &str); 4] = [
    ("floor-raw", "a raw client"),
    ("floor-sdk", "Baton's client"),
    (
        "floor-axum-raw",
        "Baton's transport (axum) and a raw client",
    ),
    ("floor-axum-sdk", "Baton's transport and client"),
];
/// The floor Baton itself is compared with: its own client, no server work.
const FLOOR_SDK: &str = "floor-sdk";

#[derive(Debug, Serialize)]
pub struct SystemInfo {
    pub name: String,
    pub durable: bool,
    /// The version it reported, or why it could not be reached.
    pub version: Result<String, String>,
}

#[derive(Debug, Serialize)]
pub struct CellFailure {
    pub system: String,
    pub workload: Workload,
    pub clients: usize,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct RunSettings {
    pub duration_s: f64,
    pub grace_s: f64,
    pub clients: Vec<usize>,
    pub redis_retry_mean_ms: f64,
    pub rounds: usize,
    pub quiet_disk_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub clients: usize,
    pub required: String,
    pub measured: String,
    /// None when a figure it needs is missing from this run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub started_unix: u64,
    pub command: String,
    pub machine: Machine,
    pub settings: RunSettings,
    pub systems: Vec<SystemInfo>,
    pub cells: Vec<CellResult>,
    pub cell_failures: Vec<CellFailure>,
    pub targets: Vec<Target>,
    pub extras: Extras,
}

impl Report {
    fn cell(&self, system: &str, workload: Workload, clients: usize) -> Option<&CellResult> {
        self.cells
            .iter()
            .find(|c| c.system == system && c.workload == workload && c.clients == clients)
    }

    /// Baton's throughput over the peer's, same workload and client count.
    pub fn ratio(&self, peer: &str, workload: Workload, clients: usize) -> Option<f64> {
        self.ratio_of("baton", peer, workload, clients)
    }

    /// One system's throughput over another's, same workload and clients.
    fn ratio_of(
        &self,
        system: &str,
        over: &str,
        workload: Workload,
        clients: usize,
    ) -> Option<f64> {
        let system = self.cell(system, workload, clients)?;
        let over = self.cell(over, workload, clients)?;
        (over.throughput > 0.0).then(|| system.throughput / over.throughput)
    }

    /// What the transport floor says of a lock-uncontended ratio against
    /// `peer`: the most a server that does no work reached, per client.
    fn ceiling(&self, peer: &str, clients: usize) -> Option<String> {
        let of = |floor| self.ratio_of(floor, peer, Workload::LockUncontended, clients);
        let parts: Vec<String> = FLOORS
            .into_iter()
            .filter_map(|(floor, with)| of(floor).map(|r| format!("{r:.2}× with {with}")))
            .collect();
        (!parts.is_empty())
            .then(|| format!("a server that does no work reaches {}", parts.join(", ")))
    }

    /// The targets, at 64 clients (or the most clients run).
    pub fn evaluate_targets(&mut self) {
        let clients = if self.settings.clients.contains(&64) {
            64
        } else {
            self.settings.clients.iter().copied().max().unwrap_or(0)
        };
        let mut targets = Vec::new();
        let ratio_target = |report: &Report, workload: Workload, peer: &str, at_least: f64| {
            let ratio = report.ratio(peer, workload, clients);
            Target {
                name: format!("{} Baton/{peer}", workload.name()),
                clients,
                required: format!("≥ {at_least}×"),
                measured: ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
                met: ratio.map(|r| r >= at_least),
            }
        };
        targets.push(ratio_target(self, Workload::LockUncontended, "etcd", 5.0));
        let mut uncontended_redis =
            ratio_target(self, Workload::LockUncontended, "redis-always", 1.5);
        if let Some(ceiling) = self.ceiling("redis-always", clients) {
            uncontended_redis.measured = format!("{} ({ceiling})", uncontended_redis.measured);
        }
        targets.push(uncontended_redis);
        targets.push(ratio_target(self, Workload::LockContended, "etcd", 5.0));
        targets.push(ratio_target(
            self,
            Workload::LockContended,
            "redis-always",
            2.0,
        ));
        let contended = self.cell("baton", Workload::LockContended, clients);
        let spread = contended
            .filter(|c| c.latency.p50_ms > 0.0)
            .map(|c| c.latency.p99_ms / c.latency.p50_ms);
        targets.push(Target {
            name: "lock-contended Baton acquire p99/p50".into(),
            clients,
            required: "≤ 3".into(),
            measured: match (contended, spread) {
                (Some(c), Some(s)) => format!(
                    "{s:.2} (p50 {:.1} ms, p99 {:.1} ms)",
                    c.latency.p50_ms, c.latency.p99_ms
                ),
                _ => "n/a".into(),
            },
            met: spread.map(|s| s <= 3.0),
        });
        targets.push(Target {
            name: "lock-contended Baton fairness (Jain)".into(),
            clients,
            required: "≥ 0.95".into(),
            measured: contended.map_or("n/a".into(), |c| format!("{:.3}", c.fairness)),
            met: contended.map(|c| c.fairness >= 0.95),
        });
        targets.push(ratio_target(self, Workload::KvPut, "etcd", 3.0));
        let failed: Vec<String> = self
            .cells
            .iter()
            .filter(|c| !c.check.passed)
            .map(|c| format!("{} {} ×{}", c.system, c.workload.name(), c.clients))
            .chain(self.cell_failures.iter().map(|f| {
                format!(
                    "{} {} ×{} (did not run)",
                    f.system,
                    f.workload.name(),
                    f.clients
                )
            }))
            .collect();
        targets.push(Target {
            name: "correctness checks, every system".into(),
            clients: 0,
            required: "all pass".into(),
            measured: if failed.is_empty() {
                format!("{} of {} passed", self.cells.len(), self.cells.len())
            } else {
                format!("failed: {}", failed.join(", "))
            },
            met: Some(failed.is_empty()),
        });
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Baton vs etcd, Redis and PostgreSQL: {}\n", self.date);
        let _ = writeln!(
            md,
            "Command: `{}`  \nMachine: {} cores, Linux {}, every server and the load generator on the same machine, loopback only.  \nEach cell: {} clients run for {:.1} s; operations in flight at the deadline finish (at most {:.0} s more) and count. Throughput = completed / wall time. {}\n",
            self.command,
            self.machine.cores,
            self.machine.kernel,
            self.settings
                .clients
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            self.settings.duration_s,
            self.settings.grace_s,
            if self.settings.rounds > 1 {
                format!(
                    "The whole matrix ran {} times; each cell shows its median round.",
                    self.settings.rounds
                )
            } else {
                "One round.".to_string()
            },
        );
        if let Some(quiet) = self.settings.quiet_disk_ms {
            let waited: f64 = self.cells.iter().map(|c| c.quiet_wait_s).sum();
            let _ = writeln!(
                md,
                "Each cell started once the disk probe was at most {quiet} ms (waiting at most 10 s; {waited:.0} s waited in all).\n"
            );
        }
        let mut probes: Vec<f64> = self
            .cells
            .iter()
            .flat_map(|c| [c.disk_fsync_ms, c.disk_fsync_after_ms])
            .collect();
        probes.sort_by(f64::total_cmp);
        if let (Some(first), Some(last)) = (probes.first(), probes.last()) {
            let _ = writeln!(
                md,
                "Disk: one 4 KiB rewrite + fdatasync, probed before and after every cell: min {first:.2} ms, median {:.2} ms, max {last:.2} ms. Every durable figure below moves with it; on a shared machine it swings 10-100× from minute to minute.\n",
                probes[probes.len() / 2]
            );
        }
        let _ = writeln!(md, "| system | durable ack | version |\n|---|---|---|");
        for system in &self.systems {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                system.name,
                if system.durable { "yes" } else { "no" },
                match &system.version {
                    Ok(v) => v.clone(),
                    Err(e) => format!("unreachable: {e}"),
                }
            );
        }

        let systems: Vec<&str> = self.systems.iter().map(|s| s.name.as_str()).collect();
        let peers: Vec<&str> = PEERS.into_iter().filter(|p| systems.contains(p)).collect();
        let _ = writeln!(md, "\n## Throughput (operations/s) and Baton ÷ peer\n");
        let _ = write!(md, "| workload | clients |");
        for s in &systems {
            let _ = write!(md, " {s} |");
        }
        for p in &peers {
            let _ = write!(md, " ÷{p} |");
        }
        let _ = write!(md, "\n|---|---:|");
        for _ in 0..systems.len() + peers.len() {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        for workload in Workload::ALL {
            for &clients in &self.settings.clients {
                if !self
                    .cells
                    .iter()
                    .any(|c| c.workload == workload && c.clients == clients)
                {
                    continue;
                }
                let _ = write!(md, "| {} | {clients} |", workload.name());
                for s in &systems {
                    let text = match self.cell(s, workload, clients) {
                        Some(c) if c.check.passed => rate(c.throughput),
                        Some(c) => format!("{} ✗check", rate(c.throughput)),
                        None => "—".into(),
                    };
                    let _ = write!(md, " {text} |");
                }
                for p in &peers {
                    let text = self
                        .ratio(p, workload, clients)
                        .map_or("—".into(), |r| format!("{r:.2}×"));
                    let _ = write!(md, " {text} |");
                }
                md.push('\n');
            }
        }
        let _ = writeln!(
            md,
            "\nlock-uncontended: acquire + release of the client's own key. lock-contended: one lock, inside it read a counter and write +1 (fenced in Baton and etcd), release (in Baton the lock is on the counter's own key and its grant carries the counter (`read`), and the +1 write carries the release: two commands, no separate read or release call). cas-counter: read + compare-and-set with retry on one counter. counter-add: the system's atomic add (Baton `counter add`, Redis INCR, PostgreSQL `SET v = v + 1`; etcd has none). kv-put: each client puts its own keys, 256-byte values. ✗check: the correctness check failed (see details).\n\nHow each peer is driven: etcd 3.4 through its JSON gateway, Lock API with one lease per client, fenced write = txn requiring the lock's owner key, CAS = txn on mod_revision whose failure branch returns the current value. Redis: `SET NX PX` retried after a {:.0} ms (mean, jittered) pause, compare-and-delete script, WATCH/MULTI/EXEC; no fencing. PostgreSQL: `pg_advisory_lock` (held in memory, never WAL-logged, so its lock-uncontended figure is not a durable one), `UPDATE … WHERE version = $v`, one autocommit statement per write. Baton: the Rust client over HTTP/JSON, one connection per client; a waiter queues server-side; a lock-contended grant carries the counter as of the grant (`read`), and the write is fenced and releases the lock in the same command (`release`), which grants the next waiter in that write's own commit; a CAS conflict carries the current value, so a retry needs no read.",
            self.settings.redis_retry_mean_ms
        );

        self.floor_markdown(&mut md);

        let _ = writeln!(md, "\n## Targets (durable Baton vs peers, same run)\n");
        let _ = writeln!(
            md,
            "| target | clients | required | measured | |\n|---|---:|---|---|---|"
        );
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            let clients = if t.clients == 0 {
                "all".to_string()
            } else {
                t.clients.to_string()
            };
            let _ = writeln!(
                md,
                "| {} | {clients} | {} | {} | {verdict} |",
                t.name, t.required, t.measured
            );
        }

        let _ = writeln!(md, "\n## Details\n");
        let _ = writeln!(
            md,
            "| workload | clients | system | ops/s | latency of | p50 ms | p99 ms | max ms | fairness | min–max per client | conflicts | errors | CPU µs/op server/client | disk fsync ms before/after | check |\n|---|---:|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
        );
        for workload in Workload::ALL {
            for &clients in &self.settings.clients {
                for s in &systems {
                    let Some(c) = self.cell(s, workload, clients) else {
                        continue;
                    };
                    let check = if c.check.passed {
                        format!("ok: {}", c.check.detail)
                    } else {
                        format!("**FAILED**: {}", c.check.detail)
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {clients} | {s} | {} | {} | {:.2} | {:.2} | {:.1} | {:.3} | {}–{} | {} | {} | {} | {:.2}/{:.2} | {check} |",
                        workload.name(),
                        rate(c.throughput),
                        workload.latency_of(),
                        c.latency.p50_ms,
                        c.latency.p99_ms,
                        c.latency.max_ms,
                        c.fairness,
                        c.per_client_min,
                        c.per_client_max,
                        c.conflicts,
                        c.errors,
                        cpu_text(c.cpu),
                        c.disk_fsync_ms,
                        c.disk_fsync_after_ms,
                    );
                }
            }
        }
        for f in &self.cell_failures {
            let _ = writeln!(
                md,
                "| {} | {} | {} | — | | | | | | | | | | | **did not run**: {} |",
                f.workload.name(),
                f.clients,
                f.system,
                f.error
            );
        }
        let first_errors: Vec<String> = self
            .cells
            .iter()
            .filter_map(|c| {
                c.first_error
                    .as_ref()
                    .map(|e| format!("- {} {} ×{}: {e}", c.system, c.workload.name(), c.clients))
            })
            .collect();
        if !first_errors.is_empty() {
            let _ = writeln!(
                md,
                "\nFirst error of each cell with errors:\n\n{}",
                first_errors.join("\n")
            );
        }

        let _ = writeln!(md, "\n## Baton alone\n");
        let extras = &self.extras;
        let mut any = false;
        if let Some(handoff) = &extras.handoff {
            any = true;
            let _ = match handoff {
                Ok(h) => writeln!(
                    md,
                    "- **Lock handoff** (holder sends release → queued waiter has its grant), {} rounds: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (the release round trip alone: p50 {:.2} ms).",
                    h.rounds,
                    h.handoff.p50_ms,
                    h.handoff.p99_ms,
                    h.handoff.max_ms,
                    h.release.p50_ms
                ),
                Err(e) => writeln!(md, "- Lock handoff: failed: {e}"),
            };
        }
        if let Some(memory) = &extras.memory {
            any = true;
            let _ = match memory {
                Ok(m) => writeln!(
                    md,
                    "- **Memory** (RSS of `baton serve`): {:.1} MB empty, {:.1} MB with {} keys of {} bytes, {:.1} MB with {} live sessions more (peak {:.1} MB): ~{:.0} bytes per key, ~{:.0} bytes per session.",
                    m.rss_start_mb,
                    m.rss_with_keys_mb,
                    m.keys,
                    m.value_bytes,
                    m.rss_with_keys_and_sessions_mb,
                    m.sessions,
                    m.peak_rss_mb,
                    m.bytes_per_key,
                    m.bytes_per_session
                ),
                Err(e) => writeln!(md, "- Memory: failed: {e}"),
            };
        }
        if let Some(watch) = &extras.watch {
            any = true;
            let _ = match watch {
                Ok(w) => writeln!(
                    md,
                    "- **Watch delivery** with {} SSE watchers, {} puts: {:.1}% delivered; event received − put acknowledged: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} deliveries arrived before the writer's ack, counted as 0); received − put sent: p50 {:.2} ms, p99 {:.2} ms; fan-out (last − first watcher, per event): p50 {:.2} ms, max {:.2} ms.",
                    w.watchers,
                    w.events,
                    w.delivered_fraction * 100.0,
                    w.after_ack.p50_ms,
                    w.after_ack.p99_ms,
                    w.after_ack.max_ms,
                    w.before_ack,
                    w.after_send.p50_ms,
                    w.after_send.p99_ms,
                    w.fan_out.p50_ms,
                    w.fan_out.max_ms
                ),
                Err(e) => writeln!(md, "- Watch delivery: failed: {e}"),
            };
        }
        if let Some(restart) = &extras.restart {
            any = true;
            let _ = match restart {
                Ok(r) => writeln!(
                    md,
                    "- **Restart** with a {}-command log and a snapshot 10,000 commands before its end: {:.0} ms (`restart_bench`: {}).",
                    r.commands, r.total_ms, r.output
                ),
                Err(e) => writeln!(md, "- Restart: failed: {e}"),
            };
        }
        if !any {
            let _ = writeln!(md, "Not measured in this run.");
        }
        md
    }
}

impl Report {
    /// The transport floor's section: lock-uncontended against a server
    /// that does no work, beside Baton and redis-always.
    fn floor_markdown(&self, md: &mut String) {
        let workload = Workload::LockUncontended;
        let floors: Vec<&str> = FLOORS
            .iter()
            .map(|&(floor, _)| floor)
            .filter(|floor| {
                self.settings
                    .clients
                    .iter()
                    .any(|&c| self.cell(floor, workload, c).is_some())
            })
            .collect();
        if floors.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## The transport floor: lock-uncontended against a server that does no work\n\n`baton-bench floor` answers Baton's lock acquire and release with canned replies of the real server's shape and size: no JSON, state or disk. `floor-*` is the cheapest server there is (one hand-written thread, no routing); `floor-axum-*` serves the same bytes through axum on tokio's multi-thread runtime, the stack `baton serve` is built on. `*-sdk` drives it with Baton's Rust client, exactly as the bench drives Baton; `*-raw` writes the same request bytes and reads each answer with no HTTP library. One HTTP/1.1 round trip per command, one connection per client, like every system here. A floor's ratio over a peer is the most any server built that way could reach against that peer with that client on this machine.\n"
        );
        let columns = |f: &dyn Fn(&str) -> String| {
            floors
                .iter()
                .chain(&["baton", "redis-always"])
                .map(|s| f(s))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let header = columns(&|s| s.to_string());
        let ratios: Vec<String> = floors
            .iter()
            .map(|f| format!("{f} ÷ redis-always"))
            .chain([format!("baton ÷ {FLOOR_SDK}")])
            .collect();
        let _ = writeln!(
            md,
            "| clients | {header} | {} |\n|---:|{}",
            ratios.join(" | "),
            "---:|".repeat(floors.len() * 2 + 3)
        );
        let share = |system: &str, over: &str, clients| {
            self.ratio_of(system, over, workload, clients)
                .map_or("—".into(), |r| format!("{r:.2}×"))
        };
        for &clients in &self.settings.clients {
            let figures = columns(&|s| {
                self.cell(s, workload, clients)
                    .map_or("—".into(), |c| rate(c.throughput))
            });
            let shares: Vec<String> = floors
                .iter()
                .map(|f| share(f, "redis-always", clients))
                .chain([share("baton", FLOOR_SDK, clients)])
                .collect();
            let _ = writeln!(md, "| {clients} | {figures} | {} |", shares.join(" | "));
        }
        let _ = writeln!(
            md,
            "\nCPU per acquire + release, µs, server/client (user + system from `/proc`; the two share this machine's cores, so throughput is bounded by their sum):\n\n| clients | {header} |\n|---:|{}",
            "---:|".repeat(floors.len() + 2)
        );
        for &clients in &self.settings.clients {
            let cpus = columns(&|s| cpu_text(self.cell(s, workload, clients).and_then(|c| c.cpu)));
            let _ = writeln!(md, "| {clients} | {cpus} |");
        }
    }
}

/// CPU per operation as `server/client` µs; `—` where not measured.
fn cpu_text(cpu: Option<crate::workload::CpuPerOp>) -> String {
    match cpu {
        None => "—".into(),
        Some(c) => match c.server_us {
            Some(server) => format!("{server:.0}/{:.0}", c.client_us),
            None => format!("—/{:.0}", c.client_us),
        },
    }
}

/// Operations per second, readable: 12,345 or 12.3.
fn rate(x: f64) -> String {
    if x >= 100.0 {
        let whole = x.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

/// YYYY-MM-DD (UTC) of a Unix time, without a date crate.
pub fn utc_date(unix_seconds: u64) -> String {
    // Howard Hinnant's days-to-civil.
    let days = (unix_seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_rates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_435_200), "2026-11-23");
        assert_eq!(rate(1_234_567.4), "1,234,567");
        assert_eq!(rate(12.34), "12.3");
    }
}
