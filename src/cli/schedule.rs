//! `gpufleet plan --schedule`: the projected schedule for people (a table
//! and a chart in 80 columns) and as an SVG chart; and the trays `--trays`
//! makes up.

use std::fmt::Write as _;

use anyhow::bail;
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::keys;
use gpufleet::planner::NodeView;
use gpufleet::planner::schedule::{Options, Sample, Schedule, Timing};
use gpufleet::view::{energy_words, thousands};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A projection gives up after far more plans than any real rollout needs
/// (Colossus 2 under 10 MW takes a few hundred), and moves the clock on
/// after each plan (the planner's tests show a plan again at the same
/// instant changes nothing).
pub const OPTIONS: Options = Options {
    max_plans: 200_000,
    replan: false,
};

/// A driver version for made-up trays when the pool names none.
const DRIVER: &str = "580.82.07";

/// `n` healthy compute trays matching `pool` and `batch`, in racks of the
/// pool's domain size (the last partial), the pool's products taking turns
/// by rack.
pub fn trays(pool: &GpuPool, batch: &RolloutBatch, n: u32) -> Vec<NodeView> {
    let per_rack = pool.spec.topology.nodes_per_domain.max(1);
    let hw = &pool.spec.hardware;
    let mut common: Vec<(String, String)> = Vec::new();
    for selector in [&pool.spec.node_selector, &batch.spec.node_selector] {
        for (k, v) in selector.match_labels.iter().flatten() {
            common.push((k.clone(), v.clone()));
        }
        for e in selector.match_expressions.iter().flatten() {
            let value = match e.operator.as_str() {
                "In" => e.values.iter().flatten().next().cloned(),
                "Exists" => Some("true".into()),
                _ => None,
            };
            if let Some(v) = value {
                common.push((e.key.clone(), v));
            }
        }
    }
    common.push((keys::GPU_COUNT.into(), hw.gpus_per_node.to_string()));
    common.push((
        keys::DRIVER_VERSION.into(),
        hw.min_driver_version
            .clone()
            .unwrap_or_else(|| DRIVER.into()),
    ));
    let mut domain_labels = vec![pool.spec.topology.domain_label.clone()];
    if let Some(fabric) = &pool.spec.health_checks.fabric {
        domain_labels.push(fabric.clique_label.clone());
    }
    domain_labels.retain(|l| !l.is_empty());
    (0..n)
        .map(|i| {
            let (rack, slot) = (i / per_rack, i % per_rack);
            let mut node = NodeView::named(format!("tray-r{rack:04}-{slot:02}"));
            let product = hw
                .gpu_product
                .get(rack as usize % hw.gpu_product.len().max(1))
                .cloned()
                .unwrap_or_else(|| "NVIDIA-GB200".into());
            let mut labels = common.clone();
            labels.push((keys::GPU_PRODUCT.into(), product));
            for l in &domain_labels {
                labels.push((l.clone(), format!("rack-{rack:04}")));
            }
            node.labels = labels.into_iter().collect();
            node.conditions.insert("Ready".into(), "True".into());
            node.ready = Some(true);
            node.allocatable_gpus = Some(hw.gpus_per_node);
            node.allocatable_gpus_raw = Some(gpufleet::planner::sym(&hw.gpus_per_node.to_string()));
            node
        })
        .collect()
}

/// The checks' durations, refusing what the pool could never pass.
pub fn timing(
    pool: &GpuPool,
    probe: Option<SignedDuration>,
    rack_test: Option<SignedDuration>,
) -> anyhow::Result<Timing> {
    let checks = &pool.spec.health_checks;
    let probe = match (&checks.probe, probe) {
        (None, _) => SignedDuration::ZERO,
        (Some(_), None) => {
            bail!(
                "--schedule needs --probe-duration:\n  how long one probe (burn-in) takes, e.g. 4h"
            )
        }
        (Some(p), Some(d)) => within(
            d,
            p.timeout_seconds,
            "--probe-duration",
            "healthChecks.probe.timeoutSeconds",
        )?,
    };
    let rack_test = match (&checks.domain_test, rack_test) {
        (None, _) => SignedDuration::ZERO,
        (Some(_), None) => {
            bail!(
                "--schedule needs --rack-test-duration:\n  how long one rack test takes, e.g. 30m"
            )
        }
        (Some(t), Some(d)) => within(
            d,
            t.timeout(),
            "--rack-test-duration",
            "healthChecks.domainTest.timeoutSeconds",
        )?,
    };
    Ok(Timing { probe, rack_test })
}

fn within(
    d: SignedDuration,
    timeout: u32,
    flag: &str,
    field: &str,
) -> anyhow::Result<SignedDuration> {
    if d.is_negative() || d.is_zero() {
        bail!("{flag} must be more than zero");
    }
    if d >= SignedDuration::from_secs(i64::from(timeout)) {
        bail!(
            "{flag} {} is not under the pool's\n  {field} ({timeout} s):\n  every check would time out; raise the timeout or shorten the duration",
            duration(d.as_secs())
        );
    }
    Ok(d)
}

// ---- For people ----------------------------------------------------------

const CHART_WIDTH: usize = 60;
const CHART_HEIGHT: usize = 8;

/// The schedule as a table and two charts, 80 columns wide.
pub fn table(s: &Schedule) -> String {
    let mut out = String::new();
    wrap(
        &mut out,
        "",
        &format!(
            "Batch {} of pool {}, projected: {} trays in {} racks",
            s.batch,
            s.pool,
            thousands(u64::from(s.nodes)),
            thousands(u64::from(s.racks))
        ),
    );
    let _ = writeln!(out, "Starts  {}", when(&s.start));
    if s.complete {
        let _ = writeln!(
            out,
            "Ready   {}, after {}",
            when(&s.end),
            duration(s.seconds)
        );
    } else {
        let _ = writeln!(
            out,
            "Stops   {}, after {}, and waits:",
            when(&s.end),
            duration(s.seconds)
        );
        wrap(&mut out, "  ", s.stopped.as_deref().unwrap_or_default());
    }
    let _ = writeln!(
        out,
        "Nodes   {} admitted, {} failed, {} held{}",
        thousands(u64::from(s.admitted)),
        thousands(u64::from(s.failed)),
        thousands(u64::from(s.held)),
        if s.failed + s.held > 0 {
            " (see gpufleet plan without --schedule)"
        } else {
            ""
        }
    );
    let budget = s.budget_watts.map_or("no power budget".to_string(), |b| {
        format!("budget {}", power(b))
    });
    let _ = writeln!(
        out,
        "Power   peak {} under test ({budget})",
        power(s.peak_watts)
    );
    let _ = writeln!(
        out,
        "Energy  {} in checks; {} GPU-hours online by the end",
        energy_words(s.energy_watt_hours),
        thousands(s.gpu_hours)
    );
    out.push('\n');
    let row = |out: &mut String, cells: [&str; 5]| {
        let [wave, target, starts, ends, energy] = cells;
        let _ = writeln!(
            out,
            "{wave:>4}  {target:>7}  {starts:<17}  {ends:<17}  {energy:>9}"
        );
    };
    row(&mut out, ["WAVE", "TARGET", "STARTS", "ENDS", "ENERGY"]);
    for w in &s.waves {
        row(
            &mut out,
            [
                &w.index.to_string(),
                &thousands(u64::from(w.target_nodes)),
                &w.started_at.as_deref().map_or("-".into(), when),
                &w.completed_at.as_deref().map_or("-".into(), when),
                &energy_words(w.energy_watt_hours),
            ],
        );
    }
    let days = s.seconds as f64 / 86_400.0;
    let axis = if days >= 2.0 { "days" } else { "hours" };
    let span = if days >= 2.0 {
        days
    } else {
        s.seconds as f64 / 3600.0
    };
    let top = s.budget_watts.unwrap_or(0).max(s.peak_watts);
    out.push('\n');
    let _ = writeln!(out, "Power under test (top: {})", power(top));
    chart(
        &mut out,
        &buckets(&s.samples, s.seconds, |x| x.watts as f64, true),
        top as f64,
        span,
        axis,
    );
    let racks = f64::from(s.racks);
    out.push('\n');
    let _ = writeln!(out, "Racks online (top: {})", thousands(u64::from(s.racks)));
    chart(
        &mut out,
        &buckets(&s.samples, s.seconds, |x| f64::from(x.racks_online), false),
        racks,
        span,
        axis,
    );
    if !s.approvals.is_empty() {
        let waves: Vec<String> = s.approvals.iter().map(|(w, _)| w.to_string()).collect();
        out.push('\n');
        wrap(
            &mut out,
            "",
            &format!(
                "Assumed: approvedWaves raised for wave {} as soon as {} asked for.",
                waves.join(", "),
                if waves.len() == 1 {
                    "it was"
                } else {
                    "each was"
                }
            ),
        );
    }
    out.push('\n');
    wrap(
        &mut out,
        "",
        &format!(
            "The planner itself, run in simulated time ({} plans); every check passes and takes its duration. Draw it: add -o svg > schedule.svg",
            thousands(u64::from(s.plans))
        ),
    );
    out
}

/// The samples as `CHART_WIDTH` columns over `[0, seconds]`: each column
/// the highest value in it (`peak`) or the value at its end.
fn buckets(
    samples: &[Sample],
    seconds: i64,
    value: impl Fn(&Sample) -> f64,
    peak: bool,
) -> Vec<f64> {
    let span = seconds.max(1) as f64;
    let mut columns = vec![0.0f64; CHART_WIDTH];
    let mut current = 0.0;
    let mut next = 0;
    for (c, column) in columns.iter_mut().enumerate() {
        let end = span * (c + 1) as f64 / CHART_WIDTH as f64;
        let mut high = current;
        while next < samples.len() && (samples[next].seconds as f64) < end {
            current = value(&samples[next]);
            high = high.max(current);
            next += 1;
        }
        *column = if peak { high } else { current };
    }
    columns
}

fn chart(out: &mut String, columns: &[f64], top: f64, span: f64, axis: &str) {
    let top = if top > 0.0 { top } else { 1.0 };
    for row in 0..CHART_HEIGHT {
        let line = (CHART_HEIGHT - row) as f64 / CHART_HEIGHT as f64;
        let cells: String = columns
            .iter()
            .map(|v| {
                let filled = v / top;
                if filled >= line - 0.5 / CHART_HEIGHT as f64 && *v > 0.0 {
                    '#'
                } else {
                    ' '
                }
            })
            .collect();
        let _ = writeln!(out, "  |{}", cells.trim_end());
    }
    let _ = writeln!(out, "  +{}", "-".repeat(CHART_WIDTH));
    let end = format!("{span:.0} {axis}");
    let end = if end.starts_with("1 ") {
        end.trim_end_matches('s').to_string()
    } else {
        end
    };
    let _ = writeln!(out, "   0{:>width$}", end, width = CHART_WIDTH - 1);
}

/// "2026-12-03 04:00Z" from an RFC 3339 timestamp.
fn when(t: &str) -> String {
    t.parse::<Timestamp>().map_or_else(
        |_| t.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%MZ").to_string(),
    )
}

/// "41 days 5 h", "3 h 20 min", "45 s".
fn duration(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (1, h, _) => format!("1 day {h} h"),
        (d, h, _) => format!("{d} days {h} h"),
    }
}

fn power(w: u64) -> String {
    match w {
        w if w >= 1_000_000 => format!("{:.2} MW", w as f64 / 1e6),
        w => format!("{:.1} kW", w as f64 / 1e3),
    }
}

/// Appends `text` wrapped at 80 columns, each line after `indent`.
fn wrap(out: &mut String, indent: &str, text: &str) {
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > 80 {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.len() > indent.len() {
        out.push_str(&line);
        out.push('\n');
    }
}

// ---- SVG -----------------------------------------------------------------

const SVG_WIDTH: f64 = 800.0;
const PANEL: f64 = 200.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;

/// Two panels over the same time axis: power under test (with the budget
/// dashed) and racks online, each as a step line.
pub fn svg(s: &Schedule) -> String {
    let mut out = String::new();
    let height = 2.0 * PANEL + 150.0;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" viewBox="0 0 {SVG_WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "Batch {} of pool {}: {} trays in {} racks, {} after {}",
        s.batch,
        s.pool,
        thousands(u64::from(s.nodes)),
        thousands(u64::from(s.racks)),
        if s.complete { "ready" } else { "stopped" },
        duration(s.seconds)
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        xml(&title)
    );
    let days = s.seconds as f64 / 86_400.0;
    let (unit, per) = if days >= 2.0 {
        ("days", 86_400.0)
    } else {
        ("hours", 3600.0)
    };
    let span = (s.seconds.max(1) as f64) / per;
    let top = s.budget_watts.unwrap_or(0).max(s.peak_watts).max(1) as f64;
    let watts: Vec<(f64, f64)> = s
        .samples
        .iter()
        .map(|x| (x.seconds as f64 / per, x.watts as f64))
        .collect();
    let racks: Vec<(f64, f64)> = s
        .samples
        .iter()
        .map(|x| (x.seconds as f64 / per, f64::from(x.racks_online)))
        .collect();
    let (scale, unit_w) = if top >= 1e6 { (1e6, "MW") } else { (1e3, "kW") };
    panel(
        &mut out,
        50.0,
        &format!("Power under test, {unit_w}"),
        &watts,
        span,
        top,
        scale,
        s.budget_watts.map(|b| b as f64),
        "#c0392b",
    );
    panel(
        &mut out,
        50.0 + PANEL + 50.0,
        "Racks online",
        &racks,
        span,
        f64::from(s.racks.max(1)),
        1.0,
        None,
        "#2471a3",
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{unit} from the start ({})</text>"#,
        LEFT + (SVG_WIDTH - LEFT - RIGHT) / 2.0,
        height - 12.0,
        xml(&when(&s.start))
    );
    out.push_str("</svg>\n");
    out
}

#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    y0: f64,
    title: &str,
    points: &[(f64, f64)],
    span: f64,
    top: f64,
    scale: f64,
    limit: Option<f64>,
    colour: &str,
) {
    let w = SVG_WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + w * (t / span).clamp(0.0, 1.0);
    let y = |v: f64| y0 + PANEL - PANEL * (v / top).clamp(0.0, 1.05);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}">{}</text>"#,
        y0 - 8.0,
        xml(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{w}" height="{PANEL}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y(v) + 4.0,
            trim(v / scale)
        );
    }
    let step = tick_step(span / 6.0);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            y0 + PANEL + 16.0,
            trim(t)
        );
        t += step;
    }
    if let Some(l) = limit {
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-dasharray="6 4"/>"#,
            LEFT + w,
            y(l),
            y(l)
        );
    }
    let mut path = String::new();
    let mut last = 0.0;
    let _ = write!(path, "M{:.1},{:.1}", x(0.0), y(0.0));
    for &(t, v) in points {
        let _ = write!(
            path,
            " L{:.1},{:.1} L{:.1},{:.1}",
            x(t),
            y(last),
            x(t),
            y(v)
        );
        last = v;
    }
    let _ = write!(path, " L{:.1},{:.1}", x(span), y(last));
    let _ = writeln!(
        out,
        r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
    );
}

/// A round step near `rough`: 1, 2 or 5 times a power of ten.
fn tick_step(rough: f64) -> f64 {
    if rough <= 0.0 || !rough.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power)
}

fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn xml(s: &str) -> String {
    gpufleet::view::safe(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
