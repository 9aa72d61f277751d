//! The SVG charts beside the report: bars per case (each case scaled to itself), and
//! the growth of RSS over time in the slow consumer scenario.
//!
//! Hand-written SVG, so that the harness needs no plotting dependency and the charts
//! diff as text.

use crate::{
    format::{bytes, num},
    plan::SERVERS,
    results::{Results, SlowRow, group, median_rate},
};
use std::fmt::Write as _;

/// Chart colours, one per server, ours first.
fn colour(server: &str) -> &'static str {
    match SERVERS.iter().position(|s| s.name == server) {
        Some(0) => "#e8590c",
        Some(1) => "#1c7ed6",
        Some(2) => "#2f9e44",
        Some(3) => "#7048e8",
        _ => "#868e96",
    }
}

/// Every chart of `r` that has rows, as (file name, SVG).
pub fn charts(r: &Results) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !r.echo.is_empty() {
        let groups = group(&r.echo, |row| (row.conns, row.size))
            .into_iter()
            .map(|((c, s), rows)| {
                (
                    format!("{c}×{}", bytes(s)),
                    rows.iter()
                        .map(|row| (row.server.clone(), median_rate(&row.rounds)))
                        .collect(),
                )
            })
            .collect::<Vec<_>>();
        out.push((
            "bench-echo.svg",
            bars("Echo", "messages per second", &groups),
        ));
    }
    if !r.broadcast.is_empty() {
        let groups = group(&r.broadcast, |row| (row.room, row.size))
            .into_iter()
            .map(|((room, s), rows)| {
                (
                    format!("{} × {}", num(room as f64), bytes(s)),
                    rows.iter()
                        .map(|row| (row.server.clone(), median_rate(&row.rounds)))
                        .collect(),
                )
            })
            .collect::<Vec<_>>();
        out.push((
            "bench-broadcast.svg",
            bars("Broadcast", "deliveries per second", &groups),
        ));
    }
    if !r.idle.is_empty() {
        let groups = group(&r.idle, |row| (row.conns, row.behaviour.clone()))
            .into_iter()
            .map(|((conns, behaviour), rows)| {
                (
                    format!("{} idle ({behaviour})", num(conns as f64)),
                    rows.iter()
                        .map(|row| (row.server.clone(), row.per_conn()))
                        .collect(),
                )
            })
            .collect::<Vec<_>>();
        out.push((
            "bench-idle.svg",
            bars(
                "Idle memory: bytes per connection (lower is better)",
                "B",
                &groups,
            ),
        ));
    }
    if !r.handshake.is_empty() {
        let groups = vec![(
            "handshakes".to_owned(),
            r.handshake
                .iter()
                .map(|row| (row.server.clone(), median_rate(&row.rounds)))
                .collect(),
        )];
        out.push((
            "bench-handshake.svg",
            bars("Handshakes", "per second", &groups),
        ));
    }
    if !r.slow.is_empty() {
        out.push(("bench-slow.svg", rss_lines(&r.slow)));
    }
    out
}

/// `text` safe inside SVG text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const FONT: &str = "font-family=\"-apple-system,Segoe UI,Helvetica,Arial,sans-serif\"";

/// Horizontal bars, one group per case; each group is scaled to its own largest value
/// (cases differ by orders of magnitude), with the value written beside each bar.
fn bars(title: &str, unit: &str, groups: &[(String, Vec<(String, f64)>)]) -> String {
    let (width, left, bar_h, gap) = (800.0, 130.0, 16.0, 14.0);
    // Room on the right for the longest label ("1,234,567 tokio-tungstenite").
    let bar_max = width - left - 200.0;
    let rows: usize = groups.iter().map(|(_, v)| v.len()).sum();
    let height = 60.0 + rows as f64 * (bar_h + 3.0) + groups.len() as f64 * gap + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width} {height:.0}\" {FONT} font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{} ({})</text>",
        escape(title),
        escape(unit)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.0}\" y=\"22\" text-anchor=\"end\" fill=\"#868e96\">bars scaled per case</text>",
        width - 10.0
    );
    let mut y = 40.0;
    for (label, values) in groups {
        let max = values
            .iter()
            .map(|v| v.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>",
            y + bar_h - 3.0,
            escape(label)
        );
        for (server, value) in values {
            let w = if max > 0.0 && value.is_finite() {
                (value / max * bar_max).max(1.0)
            } else {
                0.0
            };
            let _ = writeln!(
                svg,
                "<rect x=\"{left}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"{}\"/>",
                colour(server)
            );
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.0}\">{} <tspan fill=\"#868e96\">{}</tspan></text>",
                left + w + 6.0,
                y + bar_h - 4.0,
                num(*value),
                escape(server)
            );
            y += bar_h + 3.0;
        }
        y += gap;
    }
    legend(&mut svg, y + 4.0);
    let _ = writeln!(svg, "</svg>");
    svg
}

fn legend(svg: &mut String, y: f64) {
    let mut x = 10.0;
    for server in SERVERS {
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{:.0}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{:.0}\">{}</text>",
            y - 10.0,
            colour(server.name),
            x + 16.0,
            y,
            server.name
        );
        x += 30.0 + server.name.len() as f64 * 7.0;
    }
}

/// Growth of RSS over time (from the first sample), one line per server: the servers'
/// baselines differ by two orders of magnitude, the growth is what the scenario shows.
fn rss_lines(rows: &[SlowRow]) -> String {
    let (width, height, left, top, bottom) = (760.0, 360.0, 70.0, 40.0, 60.0);
    let plot_w = width - left - 20.0;
    let plot_h = height - top - bottom;
    let max_t = rows
        .iter()
        .flat_map(|r| r.rss.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let growth = |row: &SlowRow, bytes: u64| {
        let first = row.rss.first().map_or(0, |p| p.1);
        bytes.saturating_sub(first) as f64 / 1_048_576.0
    };
    let max_mib = rows
        .iter()
        .flat_map(|r| r.rss.iter().map(|p| growth(r, p.1)))
        .fold(1.0, f64::max)
        * 1.1;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" {FONT} font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Slow consumer: growth of server RSS (MiB) over time (s)</text>"
    );
    for i in 0..=4 {
        let v = max_mib * f64::from(i) / 4.0;
        let y = top + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#dee2e6\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0
        );
        let t = max_t * f64::from(i) / 4.0;
        let x = left + plot_w * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{t:.0}</text>",
            top + plot_h + 16.0
        );
    }
    for row in rows {
        let points: Vec<String> = row
            .rss
            .iter()
            .map(|(t, b)| {
                format!(
                    "{:.1},{:.1}",
                    left + t / max_t * plot_w,
                    top + plot_h - growth(row, *b) / max_mib * plot_h
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colour(&row.server),
            points.join(" ")
        );
    }
    legend(&mut svg, height - 14.0);
    let _ = writeln!(svg, "</svg>");
    svg
}
