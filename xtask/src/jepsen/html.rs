//! `report.html`: the summary and verdicts, and an SVG timeline with one lane per client
//! (final reads last), each pixel column colored by what the client's operations there did
//! (green ok, orange unknown, red failed, the worst wins), the faults as bands over the
//! lanes (one color per kind), the final heal as a line, a legend, and below them the
//! slowest successful operation's latency in each pixel column. Watchers' lanes show their
//! streams as thin bars and each break (then a reconnect) as a black mark; lock clients' lanes
//! show their critical sections as bars (blue known, grey unknown).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::nemesis::Kind;
use super::report::RunLog;
use super::workload::{self, Status, What};

/// Width of the timeline in pixels.
const WIDTH: usize = 1200;
/// Height of one client's lane.
const LANE: usize = 14;
/// Left margin for the lane labels.
const LABEL: usize = 90;
/// Height of the latency panel.
const LATENCY: usize = 80;

/// The pictures of the smallest failing sub-histories (`violation-key-K.svg`) in `dir`, each
/// under a heading.
fn violations(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("violation-"))
        })
        .collect();
    files.sort();
    let mut html = String::new();
    for f in files {
        if let Ok(svg) = std::fs::read_to_string(&f) {
            let name = f.file_stem().map(|n| n.to_string_lossy().into_owned());
            let _ = write!(
                html,
                "<h2>{}: the smallest failing sub-history</h2>{svg}",
                escape(&name.unwrap_or_default())
            );
        }
    }
    html
}

/// Writes `report.html` in `dir`.
pub fn write(dir: &Path, log: &RunLog, text: &str) -> std::io::Result<()> {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>cargo xtask jepsen</title>\
         <style>body{font-family:sans-serif}pre{background:#f4f4f4;padding:8px}</style>\
         <h1>cargo xtask jepsen</h1>",
    );
    html.push_str(&timeline(log));
    html.push_str(LEGEND);
    html.push_str(&latency(log));
    html.push_str(&violations(dir));
    let _ = write!(html, "<pre>{}</pre>", escape(text));
    std::fs::write(dir.join("report.html"), html)
}

/// How bad a status is (the worst in a pixel column is drawn).
fn rank(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Failed => 1,
        Status::Unknown => 2,
    }
}

fn color(rank: u8) -> &'static str {
    ["#4caf50", "#e53935", "#fb8c00"][usize::from(rank)]
}

/// The band color of a fault kind.
fn fault_color(kind: Kind) -> &'static str {
    match kind {
        Kind::Kill => "#ef5350",
        Kind::Pause => "#ab47bc",
        Kind::Partition => "#42a5f5",
        Kind::Membership => "#26a69a",
        Kind::Disk => "#8d6e63",
    }
}

/// What the colors mean.
const LEGEND: &str = "<p style='font-size:12px'>operations: \
    <span style='color:#4caf50'>&#9632; ok</span> \
    <span style='color:#fb8c00'>&#9632; unknown outcome</span> \
    <span style='color:#e53935'>&#9632; failed (not applied)</span> &nbsp; faults: \
    <span style='color:#ef5350'>&#9632; kill</span> \
    <span style='color:#ab47bc'>&#9632; pause</span> \
    <span style='color:#42a5f5'>&#9632; partition</span> \
    <span style='color:#26a69a'>&#9632; membership</span> \
    <span style='color:#8d6e63'>&#9632; disk</span> &nbsp; black line: final heal \
    &nbsp; watchers: <span style='color:#81c784'>&#9644; stream</span> | break &nbsp; \
    lock sections: <span style='color:#1e88e5'>&#9644; known</span> \
    <span style='color:#9e9e9e'>&#9644; unknown</span></p>";

/// The last time anything recorded ended (µs), at least 1.
fn span(log: &RunLog) -> u64 {
    let records = log.records.iter().map(|r| r.end);
    let ops = log.ops.iter().map(|o| o.end);
    records.chain(ops).max().unwrap_or(1).max(1)
}

/// A lane's label.
fn lane_name(client: u64) -> String {
    if client >= workload::FINAL_CLIENTS {
        format!("final n{}", client - workload::FINAL_CLIENTS + 1)
    } else if client >= workload::LOCK_CLIENTS {
        format!("lock {}", client - workload::LOCK_CLIENTS)
    } else if client >= workload::WATCHER_CLIENTS {
        format!("watcher {}", client - workload::WATCHER_CLIENTS)
    } else if client >= workload::WRITER_CLIENTS {
        format!("writer {}", client - workload::WRITER_CLIENTS)
    } else {
        format!("client {client}")
    }
}

/// The slowest successful operation's latency per pixel column (by when it was called),
/// scaled to the slowest of the run.
fn latency(log: &RunLog) -> String {
    let span = span(log);
    let x = |t: u64| LABEL + (t as u128 * WIDTH as u128 / span as u128) as usize;
    let mut worst: BTreeMap<usize, u64> = BTreeMap::new();
    for r in log.records.iter().filter(|r| r.status == Status::Ok) {
        let slot = worst.entry(x(r.call)).or_insert(0);
        *slot = (*slot).max(r.end - r.call);
    }
    let max = worst.values().copied().max().unwrap_or(1).max(1);
    let mut svg = format!(
        "<p style='font-size:12px'>latency of successful operations (slowest per column; \
         top = {:.1} ms)</p><svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{LATENCY}'>",
        max as f64 / 1e3,
        LABEL + WIDTH + 10
    );
    for (c, us) in worst {
        let h = ((us as u128 * LATENCY as u128 / max as u128) as usize).max(1);
        let _ = write!(
            svg,
            "<rect x='{c}' y='{}' width='1' height='{h}' fill='#546e7a'/>",
            LATENCY - h
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Each client's lane: pixel column -> the worst rank of its operations there (watch
/// streams are drawn by [`overlays`]; every watcher gets a lane).
fn lanes(log: &RunLog, x: &dyn Fn(u64) -> usize) -> BTreeMap<u64, BTreeMap<usize, u8>> {
    // lane -> column -> worst rank
    let mut lanes: BTreeMap<u64, BTreeMap<usize, u8>> = BTreeMap::new();
    let requests = log
        .ops
        .iter()
        .filter(|o| !matches!(o.what, What::WatchStream { .. }))
        .map(|o| (o.client, o.call, o.end, o.status));
    let spans = log
        .records
        .iter()
        .map(|r| (r.client, r.call, r.end, r.status));
    for (client, call, end, status) in spans.chain(requests) {
        let columns = lanes.entry(client).or_default();
        for c in x(call)..=x(end) {
            let worst = columns.entry(c).or_insert(0);
            *worst = (*worst).max(rank(status));
        }
    }
    for w in &log.watchers {
        lanes.entry(w.client).or_default();
    }
    lanes
}

/// The SVG timeline.
fn timeline(log: &RunLog) -> String {
    let span = span(log);
    let x = |t: u64| LABEL + (t as u128 * WIDTH as u128 / span as u128) as usize;
    let lanes = lanes(log, &x);
    let height = (lanes.len() + 2) * LANE;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' \
         font-size='10'>",
        LABEL + WIDTH + 10
    );
    for f in &log.faults {
        let (a, b) = (x(f.start), x(f.end).max(x(f.start) + 1));
        let _ = write!(
            svg,
            "<rect x='{a}' y='0' width='{}' height='{height}' fill='{}' \
             opacity='0.3'><title>{} ({:.1}-{:.1} s)</title></rect>",
            b - a,
            fault_color(f.kind),
            escape(&f.detail),
            f.start as f64 / 1e6,
            f.end as f64 / 1e6
        );
    }
    let row: BTreeMap<u64, usize> = lanes.keys().enumerate().map(|(i, c)| (*c, i)).collect();
    for (lane, (client, columns)) in lanes.iter().enumerate() {
        let y = lane * LANE;
        let name = lane_name(*client);
        let _ = write!(svg, "<text x='2' y='{}'>{name}</text>", y + LANE - 3);
        for (c, worst) in columns {
            let _ = write!(
                svg,
                "<rect x='{c}' y='{}' width='1' height='{}' fill='{}'/>",
                y + 1,
                LANE - 2,
                color(*worst)
            );
        }
    }
    svg.push_str(&overlays(log, &row, &x));
    let heal = x(log.heal);
    let _ = write!(
        svg,
        "<line x1='{heal}' x2='{heal}' y1='0' y2='{height}' stroke='black'>\
         <title>final heal</title></line>\
         <text x='{LABEL}' y='{}'>0 s</text><text x='{}' y='{}'>{:.1} s</text></svg>",
        height - 3,
        LABEL + WIDTH - 40,
        height - 3,
        span as f64 / 1e6
    );
    svg
}

/// Watch streams and their breaks, and lock sections, over their clients' lanes (`row`).
fn overlays(log: &RunLog, row: &BTreeMap<u64, usize>, x: &dyn Fn(u64) -> usize) -> String {
    let mut svg = String::new();
    for o in &log.ops {
        let (What::WatchStream { from }, Some(&lane)) = (&o.what, row.get(&o.client)) else {
            continue;
        };
        let (a, b) = (x(o.call), x(o.end).max(x(o.call) + 1));
        let y = lane * LANE + LANE / 2 - 2;
        let _ = write!(
            svg,
            "<rect x='{a}' y='{y}' width='{}' height='4' fill='#81c784'>\
             <title>stream from revision {from}</title></rect>",
            b - a
        );
        if o.status != Status::Ok {
            let why = escape(o.error.as_deref().unwrap_or(""));
            let _ = write!(
                svg,
                "<rect x='{b}' y='{}' width='2' height='{}' fill='black'>\
                 <title>{:.2} s: {why}</title></rect>",
                lane * LANE,
                LANE,
                o.end as f64 / 1e6
            );
        }
    }
    for s in &log.sections {
        let Some(&lane) = row.get(&s.client) else {
            continue;
        };
        let (a, b) = (x(s.acquired), x(s.released).max(x(s.acquired) + 1));
        let fill = if s.unknown.is_some() {
            "#9e9e9e"
        } else {
            "#1e88e5"
        };
        let why = escape(s.unknown.as_deref().unwrap_or("known"));
        let _ = write!(
            svg,
            "<rect x='{a}' y='{}' width='{}' height='{}' fill='{fill}'>\
             <title>{}: {why}</title></rect>",
            lane * LANE + LANE / 2,
            b - a,
            LANE / 2 - 1,
            escape(&s.to_string())
        );
    }
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}
