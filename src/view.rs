//! What a rollout looks like to a person: the live view of a batch (one bar
//! per wave and the gate it waits on), the one-line progress for logs, the
//! summary at the end, the overview of every pool and batch, and a node's
//! story. Pure text from the objects, no client: `gpufleet demo`,
//! `gpufleet status` and the kubectl plugin print these, and the tests here
//! check that they read well at 80 columns.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{GpuPool, RolloutBatch};
use crate::planner::{NodeState, NodeView, failure_budget};
use crate::vocabulary::{ConditionType, Gate};

/// The width every view fits in.
pub const WIDTH: usize = 80;

/// Cells of a wave's bar.
const BAR: usize = 20;

/// How to draw: colours only on a terminal that wants them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours in the bars.
    pub color: bool,
}

/// One wave as the live view and the summary show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaveRow {
    /// From 1.
    pub index: u32,
    /// Nodes in this wave (not cumulative).
    pub size: u32,
    pub ready: u32,
    pub failed: u32,
    pub held: u32,
    /// Validating or soaking.
    pub in_progress: u32,
    /// Not started yet.
    pub pending: u32,
    pub started: bool,
    pub done: bool,
    /// From start to the last verdict, once done.
    pub seconds: Option<i64>,
    /// Failures this wave may have before the rollout halts.
    pub budget: u32,
}

/// The colours gpufleet's own views use (SGR parameters): the only escape
/// sequences [`safe`] lets through.
const OWN_COLOURS: [&str; 6] = ["0", "2", "31", "32", "33", "36"];

/// A line made safe for a terminal: text from the cluster (a probe's
/// termination message, an annotation, an event) may carry escape
/// sequences that erase lines, move the cursor, write the clipboard (OSC
/// 52) or forge links (OSC 8), the class of kubectl's CVE-2021-25743. Every
/// control character (C0, DEL, C1) goes, but tab and newline; the only
/// escape sequences kept are gpufleet's own colours (`ESC [ N m`, N one of
/// [`OWN_COLOURS`]). JSON output never goes through this: it stays exact.
pub fn safe(line: &str) -> std::borrow::Cow<'_, str> {
    if !line
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
    {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            let own = OWN_COLOURS.iter().find_map(|n| {
                let seq = format!("\x1b[{n}m");
                rest.starts_with(&seq).then_some(seq)
            });
            if let Some(seq) = own {
                out.push_str(&seq);
                rest = &rest[seq.len()..];
                continue;
            }
        }
        if !c.is_control() || c == '\t' || c == '\n' {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// The waves of a batch, from its status.
pub fn wave_rows(batch: &RolloutBatch) -> Vec<WaveRow> {
    let Some(status) = &batch.status else {
        return Vec::new();
    };
    let mut previous = 0u32;
    status
        .waves
        .iter()
        .map(|w| {
            let seen = w.admitted + w.failed + w.held + w.in_progress;
            let size = w.target_nodes.saturating_sub(previous).max(seen);
            previous = previous.max(w.target_nodes);
            WaveRow {
                index: w.index,
                size,
                ready: w.admitted,
                failed: w.failed,
                held: w.held,
                in_progress: w.in_progress,
                pending: size - seen,
                started: w.started_at.is_some(),
                done: w.completed_at.is_some(),
                seconds: seconds_between(w.started_at.as_ref(), w.completed_at.as_ref()),
                budget: failure_budget(batch.spec.max_failures_per_wave.as_ref(), size),
            }
        })
        .collect()
}

fn seconds_between(from: Option<&Time>, to: Option<&Time>) -> Option<i64> {
    Some((to?.0.as_second() - from?.0.as_second()).max(0))
}

/// What a batch waits on, read from its status: the planner's gate (`None`
/// before the operator has reported on the batch) and the figures to say it
/// with. Nothing here reads a condition's reason: the gate is a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub gate: Option<Gate>,
    /// The wave it concerns, from 1 (0: none).
    pub wave: u32,
    /// The planner's sentence.
    pub message: String,
    pub validating: u32,
    pub soaking: u32,
    pub pending: u32,
}

/// What a batch waits on.
pub fn waiting(batch: &RolloutBatch) -> Waiting {
    let status = batch.status.as_ref();
    let gate = status.and_then(|s| s.gate.as_ref());
    let nodes = status.map(|s| s.nodes.clone()).unwrap_or_default();
    Waiting {
        gate: gate.map(|g| g.name),
        wave: gate.and_then(|g| g.wave).unwrap_or(0),
        message: gate.map(|g| g.message.clone()).unwrap_or_default(),
        validating: nodes.validating,
        soaking: nodes.soaking,
        pending: nodes.pending,
    }
}

impl Waiting {
    /// One line for a person: what the rollout waits on.
    pub fn describe(&self) -> String {
        let Some(gate) = self.gate else {
            return "starting: the operator has not reported on the batch yet".into();
        };
        let (wave, message) = (self.wave, &self.message);
        match gate {
            Gate::Probes => {
                let mut parts = vec![format!("{} validating", self.validating)];
                if self.soaking > 0 {
                    parts.push(format!("{} soaking", self.soaking));
                }
                if self.validating == 0 && self.soaking == 0 {
                    parts = vec![format!("starting, {} pending", self.pending)];
                }
                format!("wave {wave} waits on probes: {}", parts.join(", "))
            }
            Gate::Soak => format!("wave {wave} waits on the soak: {} soaking", self.soaking),
            other => format!("{}: {message}", other.headline()),
        }
    }

    /// The command that moves the rollout on, if a person must act; `cmd` is
    /// how the user runs gpufleet (`gpufleet` or `kubectl gpufleet`).
    pub fn hint(&self, cmd: &str, batch: &str) -> Option<String> {
        match self.gate? {
            Gate::Approval => Some(format!("`{cmd} approve {batch}` starts wave {}", self.wave)),
            Gate::Paused => Some(format!("`{cmd} resume {batch}` continues")),
            Gate::FailureBudget => Some(format!(
                "`{cmd} why NODE` explains a failure; `{cmd} retry NODE` retries one once fixed"
            )),
            Gate::InvalidSpec => Some(format!(
                "`kubectl describe rolloutbatch {batch}` shows the problem; fix the object"
            )),
            _ => None,
        }
    }

    /// The rollout is over: complete, or halted until a person acts.
    pub fn is_final(&self) -> bool {
        self.gate.is_some_and(Gate::is_final)
    }

    /// A few words for the one-line progress.
    pub fn short(&self) -> &'static str {
        self.gate.map_or("starting", Gate::short)
    }
}

/// How long the rollout has run: from its first wave's start to its last
/// wave's end, or to `now` while a wave is open.
pub fn rollout_time(batch: &RolloutBatch, now: Timestamp) -> Option<Duration> {
    let waves = &batch.status.as_ref()?.waves;
    let start = waves
        .iter()
        .filter_map(|w| w.started_at.as_ref())
        .map(|t| t.0)
        .min()?;
    let open = waves
        .iter()
        .any(|w| w.started_at.is_none() || w.completed_at.is_none());
    let end = if open {
        now
    } else {
        waves
            .iter()
            .filter_map(|w| w.completed_at.as_ref())
            .map(|t| t.0)
            .max()?
    };
    Some(Duration::from_secs(
        (end.as_second() - start.as_second()).max(0) as u64,
    ))
}

/// `0:41`, `12:05`, `1:02:03`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `6s`, `1m05s`, `2h03m`, `3d04h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// The cells of a bar of `width` for the given counts: each non-zero count
/// gets at least one cell, the rest goes by largest remainder.
pub fn cells(counts: &[u32], width: usize) -> Vec<usize> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return vec![0; counts.len()];
    }
    let nonzero = counts.iter().filter(|&&c| c > 0).count();
    let width = width.max(nonzero);
    let mut out: Vec<usize> = counts
        .iter()
        .map(|&c| (u64::from(c) * width as u64 / total) as usize)
        .collect();
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && out[i] == 0 {
            out[i] = 1;
        }
    }
    // Trim from the largest, or hand out by largest remainder, until it fits.
    while out.iter().sum::<usize>() > width {
        let i = (0..out.len()).max_by_key(|&i| out[i]).expect("non-empty");
        out[i] -= 1;
    }
    let mut order: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(counts[i]) * width as u64 % total));
    let mut k = 0;
    while out.iter().sum::<usize>() < width {
        out[order[k % order.len()]] += 1;
        k += 1;
    }
    out
}

/// A wave's bar: ready, held, failed, in progress, pending.
pub fn bar(row: &WaveRow, width: usize, style: Style) -> String {
    let counts = [
        row.ready,
        row.held,
        row.failed,
        row.in_progress,
        row.pending,
    ];
    let glyphs = ['█', '▓', '×', '▒', '░'];
    let colors = ["32", "36", "31", "33", "2"];
    let n = cells(&counts, width);
    let mut out = String::new();
    for i in 0..counts.len() {
        if n[i] == 0 {
            continue;
        }
        let run: String = std::iter::repeat_n(glyphs[i], n[i]).collect();
        if style.color {
            out.push_str(&format!("\x1b[{}m{run}\x1b[0m", colors[i]));
        } else {
            out.push_str(&run);
        }
    }
    let drawn: usize = n.iter().sum();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(drawn)));
    out
}

fn wave_text(row: &WaveRow, waiting: &Waiting) -> String {
    if row.size == 0 && row.done {
        return "no nodes: earlier waves met its target".into();
    }
    if !row.started && row.ready + row.failed + row.held + row.in_progress == 0 {
        return match waiting.gate {
            Some(Gate::Approval) if waiting.wave == row.index => "needs approval".into(),
            _ => "waiting".into(),
        };
    }
    let mut parts = vec![format!("{} ready", row.ready)];
    if row.failed > 0 {
        parts.push(format!("{} failed", row.failed));
    }
    if row.held > 0 {
        parts.push(format!("{} held", row.held));
    }
    if row.done {
        if let Some(s) = row.seconds {
            parts.push(format!("in {}", span(s)));
        }
    } else if row.in_progress > 0 {
        parts.push(format!("{} running", row.in_progress));
    }
    parts.join(" · ")
}

/// The live view of a batch: a header, the pool's capacity when known, one
/// bar per wave and the gate, at most [`WIDTH`] columns wide.
pub fn frame(
    batch: &RolloutBatch,
    pool: Option<&GpuPool>,
    elapsed: Option<Duration>,
    style: Style,
) -> Vec<String> {
    let name = batch.metadata.name.as_deref().unwrap_or_default();
    let status = batch.status.clone().unwrap_or_default();
    let mut header = format!("batch {name} · pool {}", batch.spec.pool_ref);
    if status.nodes.total > 0 {
        header.push_str(&format!(" · {} nodes", status.nodes.total));
    }
    if status.total_waves > 0 {
        header.push_str(&format!(
            " · wave {} of {}",
            status.current_wave, status.total_waves
        ));
    }
    if let Some(e) = elapsed {
        header.push_str(&format!(" · {}", clock(e)));
    }
    let mut lines = wrap(&header, WIDTH, 2);
    if let Some(p) = pool.and_then(|p| p.status.as_ref()) {
        let line = format!(
            "pool {}: {} of {} GPUs online, {} of {} domains complete",
            pool.and_then(|p| p.metadata.name.as_deref())
                .unwrap_or_default(),
            p.gpus.ready,
            p.gpus.total,
            p.domains.complete,
            p.domains.total
        );
        lines.extend(wrap(&line, WIDTH, 2));
    }
    let gate = waiting(batch);
    let rows = wave_rows(batch);
    let index_width = rows.len().to_string().len();
    let size_width = rows
        .iter()
        .map(|r| r.size.to_string().len())
        .max()
        .unwrap_or(0)
        .max(5);
    for row in &rows {
        let prefix = format!(
            "wave {:>iw$} {:>sw$} nodes [",
            row.index,
            row.size,
            iw = index_width,
            sw = size_width
        );
        // The text after the bar wraps under itself, so a wave of a big
        // fleet with every state at once still fits the width.
        let column = prefix.chars().count() + BAR + 2;
        let text = wrap(&wave_text(row, &gate), WIDTH.saturating_sub(column), 0);
        let mut text = text.into_iter();
        lines.push(format!(
            "{prefix}{}] {}",
            bar(row, BAR, style),
            text.next().unwrap_or_default()
        ));
        lines.extend(text.map(|t| format!("{:column$}{t}", "")));
    }
    let mut now = gate.describe();
    let gate_wave = match gate.gate {
        Some(Gate::Probes | Gate::Soak) => Some(gate.wave),
        _ => None,
    };
    if let Some(row) = gate_wave.and_then(|w| rows.iter().find(|r| r.index == w)) {
        now.push_str(&format!(
            "; {} of {} failures allowed",
            row.failed, row.budget
        ));
    }
    lines.extend(wrap(&format!("→ {now}"), WIDTH, 2));
    lines
}

/// One line of progress for logs (stdout not a terminal), continued on an
/// indented second line when it would be wider than [`WIDTH`].
pub fn plain_line(batch: &RolloutBatch, elapsed: Option<Duration>) -> String {
    let status = batch.status.clone().unwrap_or_default();
    let n = &status.nodes;
    let mut parts = vec![format!("{}/{} ready", n.ready, n.total)];
    for (count, what) in [
        (n.failed, "failed"),
        (n.held, "held"),
        (n.validating, "validating"),
        (n.soaking, "soaking"),
    ] {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    }
    let time = elapsed
        .map(|e| format!("[{}] ", clock(e)))
        .unwrap_or_default();
    let gate = waiting(batch);
    if status.total_waves == 0 {
        return format!("{time}{}", gate.short());
    }
    let counts = format!(
        "{time}wave {}/{}: {}",
        status.current_wave,
        status.total_waves,
        parts.join(", ")
    );
    let line = format!("{counts}; {}", gate.short());
    if line.chars().count() <= WIDTH {
        return line;
    }
    // Many states at once (or a big fleet's counts) outgrow a line: the
    // gate goes on a line of its own, indented, and the counts wrap if
    // they must, rather than spill past the width.
    let mut lines = wrap(&counts, WIDTH, 4);
    lines.extend(
        wrap(gate.short(), WIDTH - 4, 0)
            .iter()
            .map(|l| format!("    {l}")),
    );
    lines.join("\n")
}

/// Per-wave totals of the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub nodes: u32,
    pub ready: u32,
    pub failed: u32,
    pub held: u32,
    /// Not yet decided: pending, validating or soaking.
    pub open: u32,
    pub gpus_ready: u32,
    pub gpus: u32,
}

impl Totals {
    fn add(&mut self, node: &NodeView) {
        let gpus = node.gpus();
        self.nodes += 1;
        // A node's allocatable count is whatever its kubelet reports:
        // sums saturate rather than overflow.
        self.gpus = self.gpus.saturating_add(gpus);
        match node.state() {
            NodeState::Ready => {
                self.ready += 1;
                self.gpus_ready = self.gpus_ready.saturating_add(gpus);
            }
            NodeState::Failed => self.failed += 1,
            NodeState::Held => self.held += 1,
            _ => self.open += 1,
        }
    }
}

/// Totals over a batch's nodes.
pub fn totals(nodes: &[NodeView]) -> Totals {
    let mut t = Totals::default();
    nodes.iter().for_each(|n| t.add(n));
    t
}

/// The summary of a rollout: per wave nodes, GPUs online, failures and
/// time; the failed and held nodes with their reasons; GPUs brought online.
/// `nodes` are the batch's nodes; `wall` the time the whole rollout took.
/// Per-wave counts come from the batch's status (nodes failed by a static
/// check carry no wave annotation); GPUs from the nodes.
pub fn summary(batch: &RolloutBatch, nodes: &[NodeView], wall: Option<Duration>) -> Vec<String> {
    let rows = wave_rows(batch);
    let mut gpus_by_wave: BTreeMap<u32, u32> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.state() == NodeState::Ready) {
        let sum = gpus_by_wave.entry(node.wave.unwrap_or(0)).or_default();
        *sum = sum.saturating_add(node.gpus());
    }
    let all = totals(nodes);
    let mut table = Table::new(&[
        "wave",
        "nodes",
        "ready",
        "failed",
        "held",
        "GPUs online",
        "time",
    ]);
    for row in &rows {
        table.row(vec![
            row.index.to_string(),
            row.size.to_string(),
            row.ready.to_string(),
            row.failed.to_string(),
            row.held.to_string(),
            gpus_by_wave
                .get(&row.index)
                .copied()
                .unwrap_or(0)
                .to_string(),
            row.seconds.map(span).unwrap_or_else(|| {
                if row.started {
                    "…".into()
                } else {
                    String::new()
                }
            }),
        ]);
    }
    table.row(vec![
        "all".into(),
        all.nodes.to_string(),
        all.ready.to_string(),
        all.failed.to_string(),
        all.held.to_string(),
        format!("{} of {}", all.gpus_ready, all.gpus),
        wall.map(|w| span(w.as_secs() as i64)).unwrap_or_default(),
    ]);
    let mut lines = table.render();
    for (state, title) in [(NodeState::Failed, "failed"), (NodeState::Held, "held")] {
        let mut these: Vec<&NodeView> = nodes.iter().filter(|n| n.state() == state).collect();
        if these.is_empty() {
            continue;
        }
        these.sort_by(|a, b| (a.wave, &a.name).cmp(&(b.wave, &b.name)));
        lines.push(String::new());
        lines.push(format!("{title} ({}):", these.len()));
        // Neighbours of one wave with the very same reason (a whole rack
        // failed) share one entry.
        let mut i = 0;
        while i < these.len() {
            let n = these[i];
            let alike = these[i..]
                .iter()
                .take_while(|o| o.wave == n.wave && o.reason == n.reason)
                .count();
            let wave = n.wave.map(|w| format!(", wave {w}")).unwrap_or_default();
            let who = if alike >= 3 {
                let last = these[i + alike - 1];
                format!("  {} … {} ({alike} nodes{wave})", n.name, last.name)
            } else {
                let wave = n.wave.map(|w| format!(" (wave {w})")).unwrap_or_default();
                format!("  {}{wave}", n.name)
            };
            let shown = if alike >= 3 { alike } else { 1 };
            lines.extend(wrap(&who, WIDTH, 4));
            lines.extend(wrap(
                &format!(
                    "    {}",
                    n.reason.as_deref().unwrap_or("no reason recorded")
                ),
                WIDTH,
                4,
            ));
            i += shown;
        }
    }
    lines.push(String::new());
    let mut last = format!(
        "{} of {} GPUs online: {} of {} nodes ready, {} failed, {} held",
        all.gpus_ready, all.gpus, all.ready, all.nodes, all.failed, all.held
    );
    if all.open > 0 {
        last.push_str(&format!(", {} not decided yet", all.open));
    }
    if let Some(w) = wall {
        last.push_str(&format!(", in {}", clock(w)));
    }
    lines.extend(wrap(&format!("{last}."), WIDTH, 2));
    if let Some(energy) = batch.status.as_ref().and_then(|s| s.energy.as_ref()) {
        let waves = batch
            .status
            .as_ref()
            .map(|s| {
                s.waves
                    .iter()
                    .filter(|w| w.energy_watt_hours > 0)
                    .map(|w| format!("wave {}: {}", w.index, energy_words(w.energy_watt_hours)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let by_wave = if waves.is_empty() {
            String::new()
        } else {
            format!(" ({})", waves.join(", "))
        };
        let online = if energy.gpu_hours > 0 {
            format!(
                " Capacity online while it ran: {} GPU-hours.",
                thousands(energy.gpu_hours)
            )
        } else {
            String::new()
        };
        lines.extend(wrap(
            &format!(
                "Energy spent in checks: {}{by_wave}.{online}",
                energy_words(energy.watt_hours)
            ),
            WIDTH,
            2,
        ));
    }
    lines
}

/// `n` with thousands separated: "115,916,832".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Watt-hours in the unit that reads best: "740 Wh", "12.4 kWh", "3.1 MWh".
pub fn energy_words(wh: u64) -> String {
    match wh {
        0..1_000 => format!("{wh} Wh"),
        1_000..1_000_000 => format!("{:.1} kWh", wh as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MWh", wh as f64 / 1e6),
        _ => format!("{:.1} GWh", wh as f64 / 1e9),
    }
}

/// Every pool with its capacity online and every batch with its wave and
/// Ready condition.
pub fn overview(pools: &[GpuPool], batches: &[RolloutBatch]) -> Vec<String> {
    let mut lines = Vec::new();
    if pools.is_empty() {
        lines.push("No GpuPools.".to_string());
    } else {
        let mut t = Table::new(&[
            "POOL",
            "NODES",
            "READY",
            "FAILED",
            "GPUS ONLINE",
            "DOMAINS",
            "BREAKER",
        ]);
        for p in pools {
            let s = p.status.clone().unwrap_or_default();
            let tripped = s.breaker.as_ref().is_some_and(|b| b.tripped);
            t.row(vec![
                p.metadata.name.clone().unwrap_or_default(),
                s.nodes.total.to_string(),
                s.nodes.ready.to_string(),
                s.nodes.failed.to_string(),
                format!("{}/{}", s.gpus.ready, s.gpus.total),
                format!("{}/{}", s.domains.complete, s.domains.total),
                if tripped { "TRIPPED" } else { "ok" }.into(),
            ]);
        }
        lines.extend(t.render());
    }
    lines.push(String::new());
    if batches.is_empty() {
        lines.push("No RolloutBatches.".to_string());
    } else {
        let mut t = Table::new(&[
            "BATCH",
            "POOL",
            "WAVE",
            "NODES",
            "READY",
            "FAILED",
            "CONDITION",
        ]);
        for b in batches {
            let s = b.status.clone().unwrap_or_default();
            t.row(vec![
                b.metadata.name.clone().unwrap_or_default(),
                b.spec.pool_ref.clone(),
                s.wave_progress.clone().unwrap_or_else(|| "-".into()),
                s.nodes.total.to_string(),
                s.nodes.ready.to_string(),
                s.nodes.failed.to_string(),
                condition_word(b),
            ]);
        }
        lines.extend(t.render());
    }
    lines
}

/// Objects that cannot be read, one entry each in 80 columns: which, why,
/// and what to do.
pub fn broken_rows(kind: &str, broken: &[(String, String)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, error) in broken {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let error: String = error.chars().take(200).collect();
        lines.extend(wrap(
            &format!(
                "{kind} {name} cannot be read: {error}; fix it (kubectl edit {kind} {name}) or delete it"
            ),
            80,
            2,
        ));
    }
    lines
}

/// `Ready`, `Stalled: FailureBudgetExceeded`, `WaitingForApproval`, ...
pub fn condition_word(batch: &RolloutBatch) -> String {
    let conditions = batch
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |t: ConditionType| conditions.iter().find(|c| c.type_ == t.as_str());
    // A Stalled reason says it halted (FailureBudgetExceeded,
    // ProbeRejected, ...): the word alone keeps the overview narrow.
    if let Some(c) = condition(ConditionType::Stalled).filter(|c| c.status == "True") {
        return c.reason.clone();
    }
    match condition(ConditionType::Ready) {
        Some(c) if c.status == "True" => "Ready".into(),
        Some(c) => c.reason.clone(),
        None => "-".into(),
    }
}

/// An event about a node, for [`why`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    pub at: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// `3m05s ago`.
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    format!("{} ago", span(now.as_second() - then.as_second()))
}

/// What gpufleet knows about a node: its state, reason, batch, wave and
/// since when, its taints, the conditions that are not plain, and its
/// recent events. `membership` says which batch a node without a state
/// waits in.
pub fn why(
    node: &NodeView,
    membership: Option<&str>,
    events: &[EventLine],
    now: Timestamp,
) -> Vec<String> {
    let state = node.state.map_or("pending", |s| s.as_str());
    let mut lines = vec![format!("node {}: {state}", node.name)];
    let mut field =
        |name: &str, value: String| lines.extend(wrap(&format!("  {name:<12}{value}"), WIDTH, 14));
    if let Some(reason) = &node.reason {
        field("reason", reason.to_string());
    }
    match (&node.batch, node.wave) {
        (Some(b), Some(w)) => field("batch", format!("{b}, wave {w}")),
        (Some(b), None) => field("batch", b.to_string()),
        (None, _) => field(
            "batch",
            membership.map_or("none yet".into(), |m| m.to_string()),
        ),
    }
    if let Some(since) = node.since.get() {
        field("since", format!("{since} ({})", ago(now, since)));
    }
    if node.attempt > 0 {
        field("attempt", node.attempt.to_string());
    }
    field("GPUs", node.gpus().to_string());
    if !node.taints.is_empty() {
        let taints: Vec<String> = node
            .taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        field("taints", taints.join(", "));
    }
    let odd: Vec<String> = node
        .conditions
        .iter()
        .filter(|(t, s)| {
            if *t == "Ready" {
                *s != "True"
            } else {
                *s != "False"
            }
        })
        .map(|(t, s)| format!("{t}={s}"))
        .collect();
    if !odd.is_empty() {
        field("conditions", odd.join(", "));
    }
    if node.unschedulable {
        field(
            "cordoned",
            "yes (by someone else: gpufleet never cordons)".into(),
        );
    }
    if node.retry {
        field(
            "retry",
            "requested; gpufleet picks it up at its next look".into(),
        );
    }
    // What its probe's verdict said, as gpufleet recorded it.
    if let Some(record) = crate::planner::VerdictRecord::of(node) {
        if let Some(clique) = &record.clique {
            let gate = if record.fabric {
                ", fabric gate passed"
            } else {
                ""
            };
            field("fabric", format!("clique {clique}{gate}"));
        }
        if !record.firmware.is_empty() {
            let versions: Vec<String> = record
                .firmware
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            field("firmware", versions.join(", "));
        }
        if !record.failed.is_empty() {
            lines.push(String::new());
            lines.push("Failed checks (its probe's verdict):".into());
            for (check, reason) in &record.failed {
                lines.extend(wrap(&format!("  {check:<12}{reason}"), WIDTH, 14));
            }
        }
    } else if node.verdict.is_some() {
        field(
            "verdict",
            "recorded, but unreadable (gpufleet.io/verdict was edited?)".into(),
        );
    }
    lines.push(String::new());
    if events.is_empty() {
        lines.push("No recent events.".into());
    } else {
        lines.push("Recent events:".into());
        for e in events {
            let when = e.at.map(|t| ago(now, t)).unwrap_or_else(|| "-".into());
            lines.extend(wrap(
                &format!("  {when:>12}  {:<7}  {}: {}", e.type_, e.reason, e.message),
                WIDTH,
                25,
            ));
        }
    }
    lines
}

/// Wraps `text` at spaces to `width` columns, keeping the spacing of the
/// words on a line; continuation lines are indented by `indent` spaces.
/// Words longer than a line are cut.
pub fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    // (spaces before, word) pairs; the first pair's spaces are the lead.
    let mut tokens: Vec<(usize, Vec<char>)> = Vec::new();
    let mut spaces = 0;
    let mut word = Vec::new();
    for c in text.chars() {
        if c == ' ' {
            if !word.is_empty() {
                tokens.push((spaces, std::mem::take(&mut word)));
                spaces = 0;
            }
            spaces += 1;
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() || tokens.is_empty() {
        tokens.push((spaces, word));
    }
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = 0usize;
    // Columns of the current line's prefix: none on the first, the indent after.
    let mut start = 0usize;
    for (i, (spaces, mut word)) in tokens.into_iter().enumerate() {
        // At the start of a continuation line, separators are dropped.
        let mut sep = if used == start && i > 0 { 0 } else { spaces };
        loop {
            if used + sep + word.len() <= width {
                line.extend(std::iter::repeat_n(' ', sep));
                line.extend(word.iter());
                used += sep + word.len();
                break;
            }
            if used == start {
                // Wider than a whole line: cut it.
                line.extend(std::iter::repeat_n(' ', sep));
                used += sep;
                let room = width.saturating_sub(used).max(1).min(word.len());
                line.extend(word.drain(..room));
                used += room;
                if word.is_empty() {
                    break;
                }
            }
            lines.push(std::mem::replace(&mut line, " ".repeat(indent)));
            used = indent;
            start = indent;
            sep = 0;
        }
    }
    if used > start || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The rack tests in progress, for `gpufleet status BATCH`: per domain its
/// round and the trays under test. Empty when none runs.
pub fn rack_tests(batch: &RolloutBatch) -> Vec<String> {
    let Some(status) = &batch.status else {
        return Vec::new();
    };
    if status.rack_tests.is_empty() {
        return Vec::new();
    }
    let mut table = Table::new(&["domain", "round", "trays", "busbw", "state"]);
    for t in &status.rack_tests {
        let state = match (t.round, t.trays) {
            (_, 0) => "waits for room under maxConcurrent",
            (0, _) => "testing the whole domain",
            _ => "finding the faulty trays",
        };
        table.row(vec![
            t.domain.clone(),
            t.round.to_string(),
            t.trays.to_string(),
            t.bus_bandwidth_gbps
                .map_or("-".into(), |bw| format!("{bw} GB/s")),
            state.to_string(),
        ]);
    }
    let mut lines = vec![format!(
        "Rack tests in progress ({}):",
        status.rack_tests.len()
    )];
    lines.extend(table.render());
    lines
}

/// The verdict gates by domain, for `gpufleet status BATCH`: per domain,
/// its trays, how many passed the fabric gate, and how many failed the
/// fabric or the firmware gate. Domains with a failure first; at most
/// `limit` rows, then how many more there are. Empty when the pool has no
/// gate and no tray carries a verdict.
pub fn domain_gates(pool: &GpuPool, nodes: &[NodeView], limit: usize) -> Vec<String> {
    use crate::planner::VerdictRecord;
    let gated = crate::planner::gated(&pool.spec);
    if !gated && nodes.iter().all(|n| n.verdict.is_none()) {
        return Vec::new();
    }
    let label = &pool.spec.topology.domain_label;
    #[derive(Default)]
    struct Counts {
        trays: u32,
        fabric: u32,
        fabric_failed: u32,
        firmware_failed: u32,
    }
    let mut by_domain: BTreeMap<String, Counts> = BTreeMap::new();
    for node in nodes {
        let domain = if label.is_empty() {
            node.name.to_string()
        } else {
            node.labels
                .get(label)
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let c = by_domain.entry(domain).or_default();
        c.trays += 1;
        let Some(record) = VerdictRecord::of(node) else {
            continue;
        };
        c.fabric += u32::from(record.fabric);
        let failed = |check: &str| record.failed.iter().any(|(c, _)| c == check);
        c.fabric_failed += u32::from(failed("fabric"));
        c.firmware_failed += u32::from(failed("firmware"));
    }
    let mut rows: Vec<(&String, &Counts)> = by_domain.iter().collect();
    rows.sort_by_key(|(name, c)| (c.fabric_failed + c.firmware_failed == 0, *name));
    let mut table = Table::new(&["domain", "trays", "ok", "fabric", "firmware"]);
    for (name, c) in rows.iter().take(limit) {
        table.row(vec![
            if name.is_empty() {
                "(no label)".to_string()
            } else {
                (*name).clone()
            },
            c.trays.to_string(),
            c.fabric.to_string(),
            c.fabric_failed.to_string(),
            c.firmware_failed.to_string(),
        ]);
    }
    let mut lines = wrap(
        "Verdict gates by domain (ok: trays that passed the fabric gate; fabric, firmware: trays that failed that gate):",
        WIDTH,
        2,
    );
    lines.extend(table.render());
    if rows.len() > limit {
        let clean = rows
            .iter()
            .skip(limit)
            .filter(|(_, c)| c.fabric_failed + c.firmware_failed == 0)
            .count();
        lines.push(format!(
            "  … {} more domains ({clean} with no gate failure)",
            rows.len() - limit
        ));
    }
    let failed: u32 = by_domain
        .values()
        .map(|c| c.fabric_failed + c.firmware_failed)
        .sum();
    if failed > 0 {
        lines.extend(wrap(
            "  `gpufleet why NODE` shows a tray's failed checks; fix them, then `gpufleet retry NODE`.",
            WIDTH,
            2,
        ));
    }
    lines
}

/// Columns of text: left-aligned where the header says so, numbers right.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> Vec<String> {
        let cols = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let mut widths: Vec<usize> = (0..cols).map(width).collect();
        // A column is numeric when every cell starts with a digit (or is empty).
        let numeric: Vec<bool> = (0..cols)
            .map(|i| {
                i > 0
                    && self
                        .rows
                        .iter()
                        .all(|r| r[i].is_empty() || r[i].starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        // Fit 80 columns: the widest text column between the first (the
        // names a person copies) and the last (the verdict) gives way, a
        // column at a time, down to its header's width; then the last.
        // Longer cells end in `…`. Names longer than what is left keep the
        // line wider.
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        let can_shrink =
            |i: usize, w: &[usize]| !numeric[i] && w[i] > self.headers[i].chars().count().max(4);
        while total(&widths) > 80 {
            // The verdict (the last column) gives way last.
            let Some(i) = (1..cols.saturating_sub(1))
                .filter(|&i| can_shrink(i, &widths))
                .max_by_key(|&i| widths[i])
                .or_else(|| {
                    cols.checked_sub(1)
                        .filter(|&i| i > 0 && can_shrink(i, &widths))
                })
            else {
                break;
            };
            widths[i] -= 1;
        }
        let clip = |cell: &str, width: usize| -> String {
            if cell.chars().count() <= width {
                cell.to_string()
            } else {
                let mut cut: String = cell.chars().take(width.saturating_sub(1)).collect();
                cut.push('…');
                cut
            }
        };
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let cell = &clip(cell, widths[i]);
                let pad = widths[i] - cell.chars().count();
                if numeric[i] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_string()
        };
        std::iter::once(line(&self.headers))
            .chain(self.rows.iter().map(|r| line(r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutBatchStatus;

    fn batch(status_yaml: &str) -> RolloutBatch {
        let mut b: RolloutBatch = serde_norway::from_str(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: RolloutBatch
metadata: {name: row12}
spec:
  poolRef: gb200-east
  nodeSelector: {matchLabels: {gpufleet.io/batch: row12}}
  waves: [{nodes: 18}, {percent: 25}, {percent: 100}]
  maxFailuresPerWave: "10%"
"#,
        )
        .unwrap();
        let status: RolloutBatchStatus = serde_norway::from_str(status_yaml).unwrap();
        b.status = Some(status);
        b
    }

    fn mid_rollout() -> RolloutBatch {
        batch(
            r#"
currentWave: 2
totalWaves: 3
waveProgress: 2/3
nodes: {total: 216, pending: 162, validating: 14, soaking: 4, ready: 35, failed: 1}
waves:
- {index: 1, targetNodes: 18, admitted: 18, startedAt: "2026-01-01T00:00:00Z", completedAt: "2026-01-01T00:00:09Z"}
- {index: 2, targetNodes: 54, admitted: 17, failed: 1, inProgress: 18, startedAt: "2026-01-01T00:00:09Z"}
- {index: 3, targetNodes: 216}
gate: {name: Probes, wave: 2, message: "wave 2 of 3"}
conditions:
- {type: Ready, status: "False", reason: WaveInProgress, message: "wave 2 of 3", lastTransitionTime: "2026-01-01T00:00:00Z"}
- {type: Stalled, status: "False", reason: NotStalled, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#,
        )
    }

    fn visible(line: &str) -> usize {
        let mut n = 0;
        let mut escape = false;
        for c in line.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, _) => n += 1,
            }
        }
        n
    }

    #[test]
    fn cluster_text_cannot_drive_the_terminal() {
        // Erase line, cursor up, an OSC 8 link, an OSC 52 clipboard write,
        // a C1 CSI, a bell: all gone; gpufleet's own colours and tabs stay.
        let reason = "probe failed\x1b[2K\x1b[1A ok\x1b]8;;http://x\x07link\x1b]8;;\x07 \x1b]52;c;ZWNobyBoaQ==\x07\u{9b}31m\x07\tend";
        let line = format!("\x1b[32m██\x1b[0m {reason}");
        let cleaned = safe(&line);
        assert!(!cleaned.contains('\x07') && !cleaned.contains('\u{9b}'));
        assert!(
            cleaned.starts_with("\x1b[32m██\x1b[0m probe failed"),
            "{cleaned:?}"
        );
        assert_eq!(cleaned.matches('\x1b').count(), 2, "{cleaned:?}");
        assert!(cleaned.ends_with("\tend"));
        assert_eq!(safe("plain"), "plain");
    }

    #[test]
    fn waves_are_sized_from_cumulative_targets() {
        let rows = wave_rows(&mid_rollout());
        assert_eq!(
            rows.iter().map(|r| r.size).collect::<Vec<_>>(),
            [18, 36, 162]
        );
        assert_eq!(rows[1].pending, 0);
        assert_eq!(rows[2].pending, 162);
        assert_eq!(rows[0].seconds, Some(9));
        // 10% of 36 nodes, rounded down.
        assert_eq!(rows[1].budget, 3);
    }

    #[test]
    fn the_gate_names_what_the_rollout_waits_on() {
        let b = mid_rollout();
        let w = waiting(&b);
        assert_eq!(
            (w.gate, w.wave, w.validating, w.soaking, w.pending),
            (Some(Gate::Probes), 2, 14, 4, 162)
        );
        assert_eq!(
            w.describe(),
            "wave 2 waits on probes: 14 validating, 4 soaking"
        );
        let set = |b: &mut RolloutBatch, gate: Gate, wave: Option<u32>| {
            b.status.as_mut().unwrap().gate = Some(crate::api::GateStatus {
                name: gate,
                wave,
                message: "m".into(),
            });
        };
        let mut soak = b.clone();
        set(&mut soak, Gate::Soak, Some(2));
        assert_eq!(
            waiting(&soak).describe(),
            "wave 2 waits on the soak: 4 soaking"
        );
        let mut approval = b.clone();
        set(&mut approval, Gate::Approval, Some(3));
        assert_eq!(
            waiting(&approval)
                .hint("kubectl gpufleet", "row12")
                .unwrap(),
            "`kubectl gpufleet approve row12` starts wave 3"
        );
        let mut halted = b.clone();
        set(&mut halted, Gate::FailureBudget, Some(2));
        assert!(waiting(&halted).is_final());
        assert!(!waiting(&b).is_final());
        let mut none = b;
        none.status = None;
        assert_eq!(waiting(&none).gate, None);
        assert_eq!(waiting(&none).short(), "starting");
    }

    #[test]
    fn the_live_view_fits_80_columns() {
        let b = mid_rollout();
        let lines = frame(
            &b,
            None,
            Some(Duration::from_secs(21)),
            Style { color: true },
        );
        for line in &lines {
            assert!(visible(line) <= WIDTH, "{} columns: {line}", visible(line));
        }
        let text = frame(&b, None, Some(Duration::from_secs(21)), Style::default()).join("\n");
        assert!(
            text.contains("wave 1    18 nodes [████████████████████] 18 ready · in 9s"),
            "{text}"
        );
        assert!(text.contains("17 ready · 1 failed · 18 running"), "{text}");
        assert!(
            text.contains("wave 3   162 nodes [░░░░░░░░░░░░░░░░░░░░] waiting"),
            "{text}"
        );
        assert!(
            text.contains(
                "\n→ wave 2 waits on probes: 14 validating, 4 soaking; 1 of 3 failures allowed"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_single_failure_is_visible_in_a_long_bar() {
        assert_eq!(cells(&[160, 0, 1, 0, 1], 20), [18, 0, 1, 0, 1]);
        assert_eq!(cells(&[0, 0, 0, 0, 0], 20), [0; 5]);
        assert_eq!(cells(&[1, 1, 1], 20).iter().sum::<usize>(), 20);
        assert_eq!(cells(&[5, 5], 20), [10, 10]);
    }

    #[test]
    fn the_plain_line_says_counts_and_gate() {
        let line = plain_line(&mid_rollout(), Some(Duration::from_secs(75)));
        assert_eq!(
            line,
            "[1:15] wave 2/3: 35/216 ready, 1 failed, 14 validating, 4 soaking\n    waits on probes"
        );
        let done = plain_line(
            &batch("{currentWave: 3, totalWaves: 3, nodes: {total: 54, ready: 51, failed: 3}}"),
            Some(Duration::from_secs(9)),
        );
        assert_eq!(done, "[0:09] wave 3/3: 51/54 ready, 3 failed; starting");
    }

    /// A Colossus-sized batch with every state at once, a long pool name
    /// and a halted gate: no line of the live view or the log line is wider
    /// than the screen.
    #[test]
    fn a_big_fleet_in_every_state_still_fits_80_columns() {
        let mut b = batch(
            r#"
currentWave: 10
totalWaves: 12
nodes: {total: 137500, pending: 99999, validating: 12345, soaking: 11111, ready: 13000, failed: 555, held: 490}
waves:
- {index: 1, targetNodes: 137500, admitted: 13000, failed: 555, held: 490, inProgress: 23456, startedAt: "2026-01-01T00:00:00Z"}
gate: {name: CircuitBreaker, message: "555 of the pool's last 1000 verdicts were failures, more than the 5% the pool allows"}
conditions:
- {type: Stalled, status: "True", reason: CircuitBreakerTripped, message: "555 of the pool's last 1000 verdicts were failures, more than the 5% the pool allows", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#,
        );
        b.metadata.name = Some("colossus-2-hall-b-row-12-through-row-48-first-delivery".into());
        b.spec.pool_ref = "colossus-2-gb300-nvl72-hall-b-liquid-cooled".into();
        let pool: GpuPool = serde_norway::from_str(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: colossus-2-gb300-nvl72-hall-b-liquid-cooled}
spec:
  nodeSelector: {}
  hardware: {gpuProduct: [NVIDIA-GB300], gpusPerNode: 4}
status:
  gpus: {ready: 52000, total: 550000}
  domains: {complete: 722, total: 7638}
"#,
        )
        .unwrap();
        for color in [false, true] {
            let lines = frame(
                &b,
                Some(&pool),
                Some(Duration::from_secs(3 * 3600 + 7)),
                Style { color },
            );
            for line in &lines {
                assert!(visible(line) <= WIDTH, "{} columns: {line}", visible(line));
            }
            assert!(lines.iter().any(|l| l.contains("555 failed")), "{lines:#?}");
        }
        let line = plain_line(&b, Some(Duration::from_secs(3 * 3600 + 7)));
        for l in line.lines() {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        assert!(line.contains("11111 soaking"), "{line}");
        assert!(line.ends_with("halted: circuit breaker tripped"), "{line}");
    }

    fn node(name: &str, wave: u32, state: NodeState, reason: Option<&str>, gpus: u32) -> NodeView {
        let mut n = NodeView::named(name);
        n.state = Some(state);
        n.wave = Some(wave);
        n.batch = Some("row12".into());
        n.reason = reason.map(Into::into);
        n.allocatable_gpus = Some(gpus);
        n
    }

    #[test]
    fn the_summary_accounts_for_every_node() {
        let b = batch(
            r#"
currentWave: 2
totalWaves: 2
nodes: {total: 54, ready: 53, failed: 1}
waves:
- {index: 1, targetNodes: 18, admitted: 18, startedAt: "2026-01-01T00:00:00Z", completedAt: "2026-01-01T00:00:09Z"}
- {index: 2, targetNodes: 54, admitted: 35, failed: 1, startedAt: "2026-01-01T00:00:09Z", completedAt: "2026-01-01T00:00:21Z"}
"#,
        );
        let mut nodes: Vec<NodeView> = (0..18)
            .map(|i| node(&format!("a{i:02}"), 1, NodeState::Ready, None, 4))
            .collect();
        nodes.extend((0..35).map(|i| node(&format!("b{i:02}"), 2, NodeState::Ready, None, 4)));
        nodes.push(node(
            "row12-d1-n05",
            2,
            NodeState::Failed,
            Some("probe failed (exit 1): dcgmi diag -r 3: NVLink CRC errors on GPU 2, link 7; replace the cable or the tray"),
            4,
        ));
        let lines = summary(&b, &nodes, Some(Duration::from_secs(44)));
        for line in &lines {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
        let text = lines.join("\n");
        assert!(
            text.starts_with("wave  nodes  ready  failed  held  GPUs online  time\n"),
            "{text}"
        );
        assert!(
            text.contains("\n1        18     18       0     0           72    9s\n"),
            "{text}"
        );
        assert!(
            text.contains("\n2        36     35       1     0          140   12s\n"),
            "{text}"
        );
        assert!(
            text.contains("\nall      54     53       1     0   212 of 216   44s\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "failed (1):\n  row12-d1-n05 (wave 2)\n    probe failed (exit 1): dcgmi diag"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "212 of 216 GPUs online: 53 of 54 nodes ready, 1 failed, 0 held, in 0:44."
            ),
            "{text}"
        );
    }

    #[test]
    fn the_overview_lists_pools_and_batches() {
        let pool: GpuPool = serde_norway::from_str(
            r#"
apiVersion: gpufleet.io/v1alpha1
kind: GpuPool
metadata: {name: gb200-east}
spec:
  nodeSelector: {}
  hardware: {gpuProduct: [NVIDIA-GB200], gpusPerNode: 4}
status:
  nodes: {total: 216, ready: 213, failed: 3}
  gpus: {ready: 852, total: 863}
  domains: {complete: 12, total: 12}
"#,
        )
        .unwrap();
        let text = overview(&[pool], &[mid_rollout()]).join("\n");
        assert_eq!(
            text,
            "POOL        NODES  READY  FAILED  GPUS ONLINE  DOMAINS  BREAKER\n\
             gb200-east    216    213       3      852/863    12/12  ok\n\
             \n\
             BATCH  POOL        WAVE  NODES  READY  FAILED  CONDITION\n\
             row12  gb200-east   2/3    216     35       1  WaveInProgress"
        );
    }

    #[test]
    fn overview_fits_80_columns_whatever_the_names() {
        let mut batch = mid_rollout();
        batch.metadata.name = Some("gb200-east-row12-batch".into());
        batch.spec.pool_ref = "gitops-pool-with-a-long-name".into();
        let status = batch.status.as_mut().unwrap();
        status.conditions.retain(|c| c.type_ != "Stalled");
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Stalled".into(),
                status: "True".into(),
                reason: "FailureBudgetExceeded".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            });
        let lines = overview(&[], &[batch]);
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        // The name stays whole; the pool gives way.
        assert!(
            lines[3].starts_with("gb200-east-row12-batch  gito…"),
            "{lines:#?}"
        );
        assert!(lines[3].contains('…'), "{lines:#?}");
        assert!(lines[3].ends_with("FailureBudgetExceeded"), "{lines:#?}");
    }

    #[test]
    fn wrap_breaks_at_words_and_indents() {
        assert_eq!(wrap("a bb ccc", 5, 2), ["a bb", "  ccc"]);
        assert_eq!(wrap("  x", 80, 2), ["  x"]);
        assert_eq!(wrap("abcdefgh", 4, 0), ["abcd", "efgh"]);
        assert_eq!(wrap("", 10, 0), [""]);
    }

    #[test]
    fn why_tells_a_nodes_story() {
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut n = node(
            "n1",
            2,
            NodeState::Failed,
            Some("condition GpuXidError is True"),
            4,
        );
        n.since = Some("2026-01-01T00:02:00Z".parse().unwrap()).into();
        n.conditions.insert("Ready".into(), "True".into());
        n.conditions.insert("GpuXidError".into(), "True".into());
        let events = [EventLine {
            at: Some("2026-01-01T00:02:00Z".parse().unwrap()),
            type_: "Warning".into(),
            reason: "NodeFailed".into(),
            message: "node n1 failed: condition GpuXidError is True".into(),
        }];
        let text = why(&n, None, &events, now).join("\n");
        assert!(
            text.starts_with(
                "node n1: failed\n  reason      condition GpuXidError is True\n  batch       row12, wave 2\n  since       2026-01-01T00:02:00Z (3m00s ago)"
            ),
            "{text}"
        );
        assert!(text.contains("  conditions  GpuXidError=True"), "{text}");
        assert!(
            text.contains("3m00s ago  Warning  NodeFailed: node n1 failed"),
            "{text}"
        );
    }

    #[test]
    fn why_shows_the_failed_checks_of_a_verdict() {
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut n = node("n1", 1, NodeState::Failed, Some("probe verdict: …"), 4);
        let record = crate::planner::VerdictRecord {
            clique: Some("3183419e-9edc-4f0e-86e8-d895a9fb06be.9".into()),
            fabric: false,
            firmware: [("vbios".to_string(), "97.00.82.00.5F".to_string())].into(),
            failed: vec![(
                "fabric".into(),
                "fabric cliqueId is 9, its label nvidia.com/gpu.clique says 7".into(),
            )],
        };
        n.verdict = Some(crate::planner::sym(&record.to_annotation()));
        let lines = why(&n, None, &[], now);
        let text = lines.join("\n");
        assert!(
            text.contains(
                "Failed checks (its probe's verdict):\n  fabric      fabric cliqueId is 9, its label nvidia.com/gpu.clique says 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("  firmware    vbios 97.00.82.00.5F"),
            "{text}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn clocks_and_spans() {
        assert_eq!(clock(Duration::from_secs(41)), "0:41");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(span(65), "1m05s");
        assert_eq!(span(7380), "2h03m");
    }
}
