//! Results of a run: one [`ScenarioResult`] per scenario, the targets judged against
//! them, the table printed at the end and the JSON written beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Scenario;
use crate::stats::Latency;

const MIB: f64 = 1024.0 * 1024.0;

/// What one scenario measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    pub name: &'static str,
    /// What the throughput counts: `msgs/s`, `events/s` or `deliveries/s`.
    pub unit: &'static str,
    pub throughput: f64,
    /// Throughput over the broker ceiling of the same run.
    pub ratio_to_ceiling: Option<f64>,
    /// Messages, events or deliveries counted for the throughput.
    pub count: u64,
    /// The span the throughput is over, seconds.
    pub seconds: f64,
    /// False when the scenario ended before everything it sent was delivered.
    pub complete: bool,
    /// Sent (stamped by the load generator) to received at the receiver, per event.
    pub latency_ms: Option<Latency>,
    pub gateway_peak_rss_mib: Option<f64>,
    pub worker_peak_rss_mib: Option<f64>,
    /// CPU seconds used by each process over the measured phase of the scenario.
    pub cpu_seconds: BTreeMap<&'static str, f64>,
    /// Wall-clock seconds of that phase.
    pub cpu_span_seconds: f64,
    /// CPU milliseconds per unit of throughput (per message, event or delivery)
    /// of each process, in the steady state of the phase.
    pub cpu_ms_per_unit: BTreeMap<&'static str, f64>,
    /// Redis commands over the phase (server-wide).
    pub redis_commands: Option<u64>,
    /// Redis commands per unit of throughput.
    pub redis_commands_per_unit: Option<f64>,
    /// Wall-clock seconds of the whole scenario (setup included).
    pub wall_seconds: f64,
    /// Figures particular to the scenario.
    pub details: Map<String, Value>,
    pub notes: Vec<String>,
}

impl ScenarioResult {
    pub fn new(scenario: Scenario, unit: &'static str) -> Self {
        Self {
            name: scenario.name(),
            unit,
            throughput: 0.0,
            ratio_to_ceiling: None,
            count: 0,
            seconds: 0.0,
            complete: true,
            latency_ms: None,
            gateway_peak_rss_mib: None,
            worker_peak_rss_mib: None,
            cpu_seconds: BTreeMap::new(),
            cpu_span_seconds: 0.0,
            cpu_ms_per_unit: BTreeMap::new(),
            redis_commands: None,
            redis_commands_per_unit: None,
            wall_seconds: 0.0,
            details: Map::new(),
            notes: Vec::new(),
        }
    }

    pub fn detail(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
    }

    pub fn set_rss(&mut self, gateway: Option<u64>, worker: Option<u64>) {
        self.gateway_peak_rss_mib = gateway.map(|b| b as f64 / MIB);
        self.worker_peak_rss_mib = worker.map(|b| b as f64 / MIB);
    }

    /// Fills the per-unit costs from the phase's totals and the throughput.
    fn per_unit(&mut self) {
        if self.throughput <= 0.0 || self.cpu_span_seconds <= 0.0 {
            return;
        }
        let units = self.throughput * self.cpu_span_seconds;
        self.cpu_ms_per_unit = self
            .cpu_seconds
            .iter()
            .map(|(name, secs)| (*name, secs * 1000.0 / units))
            .collect();
        self.redis_commands_per_unit = self.redis_commands.map(|n| n as f64 / units);
    }

    /// CPU milliseconds per unit of Courier and what it runs on (gateway, worker,
    /// RabbitMQ, Redis), without the load generator and other work on the machine.
    fn system_ms_per_unit(&self) -> Option<f64> {
        let parts: Vec<f64> = ["gateway", "worker", "rabbitmq", "redis"]
            .iter()
            .filter_map(|name| self.cpu_ms_per_unit.get(name).copied())
            .collect();
        (!parts.is_empty()).then(|| parts.iter().sum())
    }

    fn detail_f64(&self, key: &str) -> Option<f64> {
        self.details.get(key).and_then(Value::as_f64)
    }
}

/// PASS, MISS, or n/a when a figure it needs was not measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "MISS")]
    Miss,
    #[serde(rename = "n/a")]
    NotMeasured,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One target judged.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetResult {
    pub target: &'static str,
    pub measured: Option<f64>,
    pub threshold: Option<f64>,
    pub unit: &'static str,
    pub verdict: Verdict,
    pub note: Option<String>,
}

enum Goal {
    AtLeast,
    AtMost,
}

fn judge(
    target: &'static str,
    unit: &'static str,
    goal: Goal,
    measured: Option<f64>,
    threshold: Option<f64>,
    complete: bool,
) -> TargetResult {
    let (verdict, note) = match (measured, threshold) {
        (Some(m), Some(t)) => {
            let ok = match goal {
                Goal::AtLeast => m >= t,
                Goal::AtMost => m <= t,
            };
            if ok && complete {
                (Verdict::Pass, None)
            } else if ok {
                (
                    Verdict::Miss,
                    Some("not every event was delivered within the scenario's bound".to_owned()),
                )
            } else {
                (Verdict::Miss, None)
            }
        }
        _ => (Verdict::NotMeasured, None),
    };
    TargetResult {
        target,
        measured,
        threshold,
        unit,
        verdict,
        note,
    }
}

/// Fills every ratio to the ceiling and judges the targets.
pub fn judge_all(results: &mut [ScenarioResult], delivery_concurrency: usize) -> Vec<TargetResult> {
    let ceiling = results
        .iter()
        .find(|r| r.name == Scenario::Ceiling.name())
        .map(|r| r.throughput)
        .filter(|c| *c > 0.0);
    for r in results.iter_mut() {
        r.ratio_to_ceiling = ceiling.map(|c| r.throughput / c);
        r.per_unit();
    }
    let find = |s: Scenario| results.iter().find(|r| r.name == s.name());
    let throughput = |s: Scenario| find(s).map(|r| r.throughput);
    let complete = |s: Scenario| find(s).is_none_or(|r| r.complete);
    let times = |factor: f64, base: Option<f64>| base.map(|b| b * factor);
    let mut targets = vec![
        judge(
            "ingest-batched >= 0.8 x ceiling",
            "events/s",
            Goal::AtLeast,
            throughput(Scenario::IngestBatched),
            times(0.8, ceiling),
            true,
        ),
        judge(
            "ingest-single >= 0.4 x ceiling",
            "events/s",
            Goal::AtLeast,
            throughput(Scenario::IngestSingle),
            times(0.4, ceiling),
            true,
        ),
        judge(
            "e2e-t0 >= 0.25 x ceiling",
            "events/s",
            Goal::AtLeast,
            throughput(Scenario::E2eT0),
            times(0.25, ceiling),
            complete(Scenario::E2eT0),
        ),
        judge(
            "e2e-t10 >= 2.5 x e2e-t0",
            "events/s",
            Goal::AtLeast,
            throughput(Scenario::E2eT10),
            times(2.5, throughput(Scenario::E2eT0)),
            complete(Scenario::E2eT10),
        ),
    ];
    let latency = find(Scenario::Latency1k).and_then(|r| r.latency_ms);
    targets.push(judge(
        "latency-1k p50 <= 3 ms",
        "ms",
        Goal::AtMost,
        latency.map(|l| l.p50_ms),
        Some(3.0),
        complete(Scenario::Latency1k),
    ));
    targets.push(judge(
        "latency-1k p99 <= 10 ms",
        "ms",
        Goal::AtMost,
        latency.map(|l| l.p99_ms),
        Some(10.0),
        complete(Scenario::Latency1k),
    ));
    targets.push(judge(
        "slow-receiver >= 0.8 x concurrency / 0.1 s",
        "deliveries/s",
        Goal::AtLeast,
        throughput(Scenario::SlowReceiver),
        find(Scenario::SlowReceiver).map(|_| 0.8 * delivery_concurrency as f64 / 0.1),
        true,
    ));
    let backlog = find(Scenario::Backlog);
    targets.push(judge(
        "backlog last-10% rate >= 0.8 x first-10% rate",
        "events/s",
        Goal::AtLeast,
        backlog.and_then(|r| r.detail_f64("lastTenthPerSecond")),
        times(
            0.8,
            backlog.and_then(|r| r.detail_f64("firstTenthPerSecond")),
        ),
        complete(Scenario::Backlog),
    ));
    let peak =
        |pick: fn(&ScenarioResult) -> Option<f64>| results.iter().filter_map(pick).reduce(f64::max);
    targets.push(judge(
        "worker peak RSS <= 64 MiB",
        "MiB",
        Goal::AtMost,
        peak(|r| r.worker_peak_rss_mib),
        Some(64.0),
        true,
    ));
    targets.push(judge(
        "gateway peak RSS <= 48 MiB",
        "MiB",
        Goal::AtMost,
        peak(|r| r.gateway_peak_rss_mib),
        Some(48.0),
        true,
    ));
    if ceiling.is_none() {
        for t in targets.iter_mut().filter(|t| t.target.contains("ceiling")) {
            t.note = Some("needs the ceiling scenario in the same run".to_owned());
        }
    }
    targets
}

/// The figures as an aligned text table.
pub fn table(results: &[ScenarioResult], targets: &[TargetResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>11} {:<13} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "scenario", "result", "unit", "x ceil", "p50 ms", "p99 ms", "max ms", "gw MiB", "wk MiB"
    );
    for r in results {
        let lat = r.latency_ms;
        let _ = writeln!(
            out,
            "{:<15} {:>11} {:<13} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
            r.name,
            thousands(r.throughput),
            r.unit,
            opt(r.ratio_to_ceiling, 2),
            opt(lat.map(|l| l.p50_ms), 1),
            opt(lat.map(|l| l.p99_ms), 1),
            opt(lat.map(|l| l.max_ms), 1),
            opt(r.gateway_peak_rss_mib, 1),
            opt(r.worker_peak_rss_mib, 1),
        );
    }
    let notes: Vec<String> = results
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("  {}: {n}", r.name)))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    let _ = writeln!(
        out,
        "\n{:<46} {:>11} {:>11} {:<13} verdict",
        "target", "measured", "threshold", "unit"
    );
    for t in targets {
        let _ = write!(
            out,
            "{:<46} {:>11} {:>11} {:<13} {}",
            t.target,
            t.measured.map_or("-".to_owned(), thousands),
            t.threshold.map_or("-".to_owned(), thousands),
            t.unit,
            t.verdict.word()
        );
        if let Some(note) = &t.note {
            let _ = write!(out, " ({note})");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nCPU during the measured phase in cores (other = the rest of the machine); ms/unit = CPU ms of\ngateway + worker + rabbitmq + redis per unit of throughput; redis/u = Redis commands per unit:"
    );
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "scenario",
        "gateway",
        "worker",
        "rabbitmq",
        "redis",
        "bench",
        "other",
        "machine",
        "ms/unit",
        "redis/u"
    );
    for r in results {
        let span = r.cpu_span_seconds.max(1e-9);
        let share = |who: &str| r.cpu_seconds.get(who).map(|s| s / span);
        let total: f64 = r.cpu_seconds.values().sum::<f64>() / span;
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8.2} {:>9} {:>9}",
            r.name,
            opt(share("gateway"), 2),
            opt(share("worker"), 2),
            opt(share("rabbitmq"), 2),
            opt(share("redis"), 2),
            opt(share("bench"), 2),
            opt(share("other"), 2),
            total,
            opt(r.system_ms_per_unit(), 3),
            opt(r.redis_commands_per_unit, 1),
        );
    }
    out
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A figure for the table: thousands separated above 100, two decimals below.
fn thousands(v: f64) -> String {
    if v.abs() < 100.0 {
        return format!("{v:.2}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(s: Scenario, throughput: f64) -> ScenarioResult {
        let mut r = ScenarioResult::new(s, "events/s");
        r.throughput = throughput;
        r
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12.345), "12.35");
    }

    #[test]
    fn targets_relative_to_the_ceiling_use_its_figure() {
        let mut results = vec![
            result(Scenario::Ceiling, 10_000.0),
            result(Scenario::IngestBatched, 8_500.0),
            result(Scenario::IngestSingle, 3_000.0),
        ];
        let targets = judge_all(&mut results, 256);
        assert_eq!(results[1].ratio_to_ceiling, Some(0.85));
        assert_eq!(targets[0].verdict, Verdict::Pass);
        assert_eq!(targets[0].threshold, Some(8_000.0));
        assert_eq!(targets[1].verdict, Verdict::Miss);
        // Scenarios that did not run are not judged.
        assert_eq!(targets[2].verdict, Verdict::NotMeasured);
    }

    #[test]
    fn an_incomplete_scenario_never_passes() {
        let mut e2e = result(Scenario::E2eT0, 5_000.0);
        e2e.complete = false;
        let mut results = vec![result(Scenario::Ceiling, 10_000.0), e2e];
        let targets = judge_all(&mut results, 256);
        let t = targets
            .iter()
            .find(|t| t.target.starts_with("e2e-t0"))
            .unwrap();
        assert_eq!(t.verdict, Verdict::Miss);
    }

    #[test]
    fn memory_targets_take_the_largest_peak() {
        let mut a = result(Scenario::E2eT0, 1.0);
        a.worker_peak_rss_mib = Some(30.0);
        let mut b = result(Scenario::Backlog, 1.0);
        b.worker_peak_rss_mib = Some(70.0);
        let targets = judge_all(&mut [a, b], 256);
        let t = targets
            .iter()
            .find(|t| t.target.starts_with("worker"))
            .unwrap();
        assert_eq!((t.measured, t.verdict), (Some(70.0), Verdict::Miss));
    }

    #[test]
    fn the_slow_receiver_target_follows_the_concurrency() {
        let targets = judge_all(&mut [result(Scenario::SlowReceiver, 1_700.0)], 256);
        let t = targets
            .iter()
            .find(|t| t.target.starts_with("slow"))
            .unwrap();
        assert_eq!(t.threshold, Some(2_048.0));
        assert_eq!(t.verdict, Verdict::Miss);
    }
}
