//! The run's report: `results.json` for machines, and `report.html` for people, with an SVG drawn
//! here: a band per fault on a shared time axis, every operation's latency, and throughput.

use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::Verdict;
use crate::history::{operations, Event, Outcome, Process};
use crate::nemesis::FaultWindow;

#[derive(Serialize)]
pub struct Results {
    pub workload: String,
    pub seed: u64,
    pub nodes: u64,
    pub seconds: f64,
    pub nemesis: Vec<String>,
    pub valid: bool,
    pub operations: Counts,
    pub latency_ms: Percentiles,
    pub faults: Vec<FaultWindow>,
    pub verdicts: Vec<Verdict>,
    /// Failures of the harness itself (setup, final reads) that left the verdict undecided.
    pub errors: Vec<String>,
}

#[derive(Default, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

#[derive(Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn counts(events: &[Event]) -> Counts {
    let mut c = Counts::default();
    for op in operations(events) {
        match op.outcome {
            Outcome::Ok(_) => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
    }
    c
}

pub fn latency(events: &[Event]) -> Percentiles {
    let mut ms: Vec<f64> = operations(events)
        .iter()
        .filter(|o| o.is_ok())
        .filter_map(|o| Some((o.complete_ns? - o.invoke_ns) as f64 / 1e6))
        .collect();
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 60.0;
const PLOT_W: f64 = WIDTH - LEFT - 20.0;
const FAULT_ROW: f64 = 18.0;

/// The timeline: faults on top, latency (log scale) in the middle, throughput at the bottom.
pub fn svg(events: &[Event], faults: &[FaultWindow]) -> String {
    let ops = operations(events);
    let end_ns = events.iter().map(|e| e.time_ns).max().unwrap_or(1).max(1);
    let x = |ns: u64| LEFT + PLOT_W * ns as f64 / end_ns as f64;
    let fault_h = FAULT_ROW * faults.len().clamp(1, 12) as f64;
    let lat_top = fault_h + 30.0;
    let lat_h = 260.0;
    let thr_top = lat_top + lat_h + 40.0;
    let thr_h = 120.0;
    let height = thr_top + thr_h + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    // Fault bands, one row each (rows reused when more than twelve), shaded across the plots.
    for (i, f) in faults.iter().enumerate() {
        let row = (i % 12) as f64;
        let (x0, x1) = (x(f.start_ns), x(f.end_ns).max(x(f.start_ns) + 2.0));
        let color = fault_color(&f.label);
        let _ = write!(
            s,
            r#"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{color}" opacity="0.12"/><rect x="{x0:.1}" y="{ry:.1}" width="{w:.1}" height="14" fill="{color}" opacity="0.8"><title>{t}</title></rect><text x="{tx:.1}" y="{ty:.1}" fill="black">{label}</text>"#,
            y = lat_top,
            w = x1 - x0,
            h = thr_top + thr_h - lat_top,
            ry = row * FAULT_ROW + 4.0,
            t = escape(&format!("{} {}", f.label, f.detail)),
            tx = x0 + 3.0,
            ty = row * FAULT_ROW + 15.0,
            label = escape(&f.label),
        );
    }
    // Latency: log scale from 0.1 ms to 10 s.
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let y_of = |ms: f64| lat_top + lat_h - lat_h * ((ms.max(0.1).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    for ms in [1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let y = y_of(ms);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{r}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{ms} ms</text>"##,
            r = LEFT + PLOT_W,
            tx = LEFT - 4.0,
            ty = y + 4.0,
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{y:.1}" font-weight="bold">latency per operation (ok green, fail orange, unknown red at its invocation)</text>"#,
        y = lat_top - 6.0
    );
    for op in &ops {
        let (color, end) = match op.outcome {
            Outcome::Ok(_) => ("#2a9d2a", op.complete_ns),
            Outcome::Fail => ("#e08a00", op.complete_ns),
            Outcome::Info => ("#d62728", None),
        };
        let ms = end.map_or(10_000.0, |e| (e - op.invoke_ns) as f64 / 1e6);
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" opacity="0.6"/>"#,
            x(op.invoke_ns),
            y_of(ms)
        );
    }
    // Throughput: ok operations completed per second.
    let seconds = (end_ns / 1_000_000_000 + 1) as usize;
    let mut per_second = vec![0u32; seconds];
    for op in ops.iter().filter(|o| o.is_ok()) {
        if let Some(t) = op.complete_ns {
            per_second[(t / 1_000_000_000) as usize] += 1;
        }
    }
    let peak = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    let points: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{:.1},{:.1}",
                x(i as u64 * 1_000_000_000 + 500_000_000),
                thr_top + thr_h - thr_h * f64::from(*n) / peak
            )
        })
        .collect();
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{ty:.1}" font-weight="bold">ok operations per second (peak {peak})</text><polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{p}"/><line x1="{LEFT}" x2="{r}" y1="{b:.1}" y2="{b:.1}" stroke="#999"/>"##,
        ty = thr_top - 6.0,
        p = points.join(" "),
        r = LEFT + PLOT_W,
        b = thr_top + thr_h,
    );
    for sec in (0..seconds).step_by((seconds / 10).max(1)) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{sec}s</text>"#,
            x(sec as u64 * 1_000_000_000),
            thr_top + thr_h + 14.0
        );
    }
    s.push_str("</svg>");
    s
}

fn fault_color(label: &str) -> &'static str {
    match label.split(' ').next() {
        Some("partition") => "#9467bd",
        Some("latency") => "#17becf",
        Some("kill") => "#d62728",
        Some("pause") => "#ff7f0e",
        _ => "#8c564b",
    }
}

pub fn html(results: &Results, events: &[Event]) -> String {
    let verdict = if results.valid {
        "VALID"
    } else if results
        .verdicts
        .iter()
        .any(|v| v.validity == crate::checker::Validity::Invalid)
    {
        "INVALID"
    } else {
        "UNKNOWN"
    };
    let mut verdicts = String::new();
    for v in &results.verdicts {
        let _ = write!(
            verdicts,
            "<h3>{} — {:?}</h3><pre>{}</pre>",
            v.checker,
            v.validity,
            escape(
                &serde_json::to_string_pretty(&serde_json::json!({
                    "problems": v.problems,
                    "problem_count": v.problem_count,
                    "undecided": v.undecided,
                    "stats": v.stats,
                }))
                .unwrap_or_default()
            )
        );
    }
    let nemesis_events: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.process, Process::Nemesis(_)))
        .collect();
    let mut nemesis_rows = String::new();
    for e in nemesis_events {
        let _ = write!(
            nemesis_rows,
            "<tr><td>{:.3}s</td><td>{}</td><td>{}</td></tr>",
            e.time_ns as f64 / 1e9,
            escape(&e.f),
            escape(&e.value.to_string())
        );
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>basalt-jepsen {w} seed {seed}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}} td{{padding:2px 8px;font-family:monospace}} .v{{font-size:1.4em;font-weight:bold}}</style></head>
<body><h1>{w}: <span class="v">{verdict}</span></h1>
<p>{nodes} nodes, {secs:.1} s, seed {seed}, nemesis {nem}. Operations: {ok} ok, {fail} failed, {info} unknown. Latency of ok operations: p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms.</p>
{svg}
<h2>Verdicts</h2>{verdicts}
<h2>Errors</h2><pre>{errors}</pre>
<h2>Nemesis</h2><table>{nemesis_rows}</table>
<p>The full history is in <code>history.jsonl</code>; the node logs in <code>nodes/</code>.</p></body></html>"#,
        w = escape(&results.workload),
        seed = results.seed,
        nodes = results.nodes,
        secs = results.seconds,
        nem = escape(&results.nemesis.join(",")),
        ok = results.operations.ok,
        fail = results.operations.fail,
        info = results.operations.info,
        p50 = results.latency_ms.p50,
        p90 = results.latency_ms.p90,
        p99 = results.latency_ms.p99,
        max = results.latency_ms.max,
        svg = svg(events, &results.faults),
        errors = escape(&results.errors.join("\n")),
    )
}
