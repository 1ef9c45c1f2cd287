//! Report writers: the JSON results, a Markdown summary table, and hand-written SVG plots
//! (latency CDF of every policy; per-backend share of attempts over time, one per policy).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::results::{PolicyResult, RunReport};

/// Plot size and margins, px.
const W: f64 = 940.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Line and area colours (Tableau 10), cycled.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// Write the report as pretty-printed JSON.
pub fn write_json(report: &RunReport, path: &Path) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    text.push('\n');
    fs::write(path, text)
}

/// Write `report.md`, `latency-cdf.svg` and one `share-POLICY.svg` per policy into `dir`
/// (created if missing); returns the paths written.
pub fn write_report(report: &RunReport, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: String, text: String| -> io::Result<()> {
        let path = dir.join(name);
        fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    put("report.md".into(), markdown(report))?;
    put("latency-cdf.svg".into(), latency_cdf_svg(report))?;
    for r in &report.results {
        put(share_file_name(&r.policy), share_svg(&report.scenario, r))?;
    }
    Ok(written)
}

/// File name of a policy's share plot: `share-POLICY.svg`, with characters outside
/// `[A-Za-z0-9_+.-]` replaced by `_`.
pub fn share_file_name(policy: &str) -> String {
    let safe: String = policy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("share-{safe}.svg")
}

/// A latency in ms with precision suited to its size.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The Markdown summary: one row per policy, then the plots and per-backend attempt shares.
pub fn markdown(report: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Scenario `{}` ({}, seed {})\n",
        report.scenario, report.mode, report.seed
    );
    let oracle = report
        .results
        .iter()
        .find(|r| r.policy == "oracle")
        .map(|r| r.p99_ms);
    s.push_str(
        "| policy | requests | errors | error % | retries | mean ms | p50 ms | p99 ms | p99.9 ms | vs oracle p99 |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.results {
        let vs = match oracle {
            Some(o) if o > 0.0 => format!("×{:.2}", r.p99_ms / o),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.policy,
            r.requests,
            r.errors,
            r.error_rate * 100.0,
            r.retries,
            ms(r.mean_ms),
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.p999_ms),
            vs
        );
    }
    s.push_str("\nLatencies are client-side (arrival to final answer, retries included) for every request that arrived after warm-up; failed requests count.\n");
    s.push_str("\n![latency CDF](latency-cdf.svg)\n");
    if let Some(first) = report.results.first() {
        s.push_str("\n## Attempts per backend (% of attempts, failed attempts in parentheses)\n\n");
        s.push_str("| policy |");
        for b in &first.backends {
            let _ = write!(s, " {} |", b.name);
        }
        s.push_str("\n|---|");
        for _ in &first.backends {
            s.push_str("---:|");
        }
        s.push('\n');
        for r in &report.results {
            let total: u64 = r.backends.iter().map(|b| b.requests).sum();
            let _ = write!(s, "| {} |", r.policy);
            for b in &r.backends {
                let pct = if total == 0 {
                    0.0
                } else {
                    b.requests as f64 * 100.0 / total as f64
                };
                let _ = write!(s, " {pct:.1} ({}) |", b.errors);
            }
            s.push('\n');
        }
        s.push_str("\n## Share of attempts over time\n");
        for r in &report.results {
            let _ = writeln!(s, "\n![{} share]({})", r.policy, share_file_name(&r.policy));
        }
    }
    s
}

/// Escape text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Document header, background and title.
fn svg_open(s: &mut String, title: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        esc(title)
    );
}

/// Plot frame with axis labels.
fn svg_frame(s: &mut String, x_label: &str, y_label: &str) {
    let (x1, y1) = (W - RIGHT, H - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        x1 - LEFT,
        y1 - TOP
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + (x1 - LEFT) / 2.0,
        H - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{0}" text-anchor="middle" transform="rotate(-90 20 {0})">{1}</text>"#,
        TOP + (y1 - TOP) / 2.0,
        esc(y_label)
    );
}

/// A vertical grid line with a label under the axis.
fn x_tick(s: &mut String, x: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
        H - BOTTOM,
        H - BOTTOM + 16.0,
        esc(label)
    );
}

/// A horizontal grid line with a label left of the axis.
fn y_tick(s: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
        W - RIGHT,
        LEFT - 6.0,
        y + 4.0,
        esc(label)
    );
}

/// One legend entry, `i`-th from the top, right of the plot.
fn legend(s: &mut String, i: usize, color: &str, label: &str) {
    let x = W - RIGHT + 16.0;
    let y = TOP + 10.0 + i as f64 * 20.0;
    let _ = writeln!(
        s,
        r#"<rect x="{x}" y="{}" width="14" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
        y - 9.0,
        x + 20.0,
        y,
        esc(label)
    );
}

/// A tick label for a latency in ms on a log axis.
fn ms_label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else {
        format!("{v}")
    }
}

/// Latency CDF of every policy: log-scaled ms on x; quantile on a "nines" scale on y
/// (`-log10(1 - q)`), so p90, p99 and p99.9 are evenly spaced.
pub fn latency_cdf_svg(report: &RunReport) -> String {
    let mut s = String::new();
    svg_open(
        &mut s,
        &format!("{}: client latency distribution", report.scenario),
    );
    let points = report
        .results
        .iter()
        .flat_map(|r| r.latency_cdf.iter())
        .map(|p| p[0].max(1e-3));
    let (lo, hi) = points.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (1.0, 10.0)
    };
    let (d0, mut d1) = (lo.log10().floor(), hi.log10().ceil());
    if d1 <= d0 {
        d1 = d0 + 1.0;
    }
    let nines = |q: f64| -(1.0 - q).max(1e-9).log10();
    let top = report
        .results
        .iter()
        .flat_map(|r| r.latency_cdf.iter())
        .map(|p| nines(p[1]))
        .fold(1.0f64, f64::max)
        .ceil();
    let px = |v: f64| LEFT + (v.max(1e-3).log10() - d0) / (d1 - d0) * (W - RIGHT - LEFT);
    let py = |q: f64| H - BOTTOM - nines(q).min(top) / top * (H - BOTTOM - TOP);
    svg_frame(&mut s, "latency (ms, log scale)", "quantile");
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let base = 10f64.powf(d);
        x_tick(&mut s, px(base), &ms_label(base));
        if d1 - d0 <= 2.0 && d < d1 {
            for m in [2.0, 5.0] {
                x_tick(&mut s, px(base * m), &ms_label(base * m));
            }
        }
        d += 1.0;
    }
    y_tick(&mut s, py(0.0), "p0");
    y_tick(&mut s, py(0.5), "p50");
    for k in 1..=(top as usize) {
        let q = 1.0 - 10f64.powi(-(k as i32));
        let label = match k {
            1 => "p90".to_string(),
            2 => "p99".to_string(),
            _ => format!("p99.{}", "9".repeat(k - 2)),
        };
        y_tick(&mut s, py(q), &label);
    }
    for (i, r) in report.results.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = r
            .latency_cdf
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p[0]), py(p[1])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        legend(
            &mut s,
            i,
            color,
            &format!("{} (p99 {} ms)", r.policy, ms(r.p99_ms)),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One policy's per-backend share of attempts over time, as stacked areas.
pub fn share_svg(scenario: &str, result: &PolicyResult) -> String {
    let tl = &result.share_timeline;
    let mut s = String::new();
    svg_open(
        &mut s,
        &format!(
            "{scenario}: {} share of attempts per backend",
            result.policy
        ),
    );
    let n = tl.shares.len().max(1);
    let t0 = tl.start_s;
    let t1 = tl.start_s + n as f64 * tl.bucket_s;
    let px = |t: f64| LEFT + (t - t0) / (t1 - t0).max(1e-9) * (W - RIGHT - LEFT);
    let py = |v: f64| H - BOTTOM - v.clamp(0.0, 1.0) * (H - BOTTOM - TOP);
    svg_frame(&mut s, "time (s)", "share of attempts");
    let step = nice_step((t1 - t0) / 10.0);
    let mut t = (t0 / step).ceil() * step;
    while t <= t1 + 1e-9 {
        x_tick(&mut s, px(t), &format!("{}", (t * 1000.0).round() / 1000.0));
        t += step;
    }
    for k in 0..=4 {
        let v = f64::from(k) / 4.0;
        y_tick(&mut s, py(v), &format!("{}%", k * 25));
    }
    // Stacked areas: band i lies between the cumulative shares of backends < i and <= i,
    // drawn as steps over each bucket.
    let mut lower = vec![0.0; n];
    for (i, name) in tl.backends.iter().enumerate() {
        let upper: Vec<f64> = (0..n)
            .map(|k| {
                lower[k]
                    + tl.shares
                        .get(k)
                        .and_then(|r| r.get(i))
                        .copied()
                        .unwrap_or(0.0)
            })
            .collect();
        let mut pts = Vec::with_capacity(4 * n);
        for (k, &u) in upper.iter().enumerate() {
            let a = t0 + k as f64 * tl.bucket_s;
            pts.push(format!("{:.1},{:.1}", px(a), py(u)));
            pts.push(format!("{:.1},{:.1}", px(a + tl.bucket_s), py(u)));
        }
        for (k, &l) in lower.iter().enumerate().rev() {
            let a = t0 + k as f64 * tl.bucket_s;
            pts.push(format!("{:.1},{:.1}", px(a + tl.bucket_s), py(l)));
            pts.push(format!("{:.1},{:.1}", px(a), py(l)));
        }
        let color = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            s,
            r#"<polygon fill="{color}" fill-opacity="0.85" stroke="{color}" stroke-width="0.5" points="{}"/>"#,
            pts.join(" ")
        );
        let total = result.backends.get(i).map_or(0, |b| b.requests);
        legend(&mut s, i, color, &format!("{name} ({total})"));
        lower = upper;
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest 1/2/5 × 10^k step at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|&v| v >= raw)
        .unwrap_or(10.0 * base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::RequestRecord;

    fn report() -> RunReport {
        let names = vec!["a<1>".to_string(), "b".to_string()];
        let mk = |policy: &str, scale: f64| {
            let records: Vec<RequestRecord> = (0..5000)
                .map(|i| RequestRecord {
                    arrival_s: f64::from(i) * 0.002,
                    latency_ms: scale * (1.0 + f64::from(i % 100)),
                    ok: i % 1000 != 0,
                    attempts: vec![(i % 3 == 0) as usize],
                    retries: 0,
                })
                .collect();
            PolicyResult::from_records(policy, &records, &names, 0.0, 10.0)
        };
        RunReport {
            scenario: "demo & co".into(),
            seed: 1,
            mode: "sim".into(),
            results: vec![mk("oracle", 1.0), mk("p2c_ewma+model", 2.0)],
        }
    }

    #[test]
    fn writes_all_files() {
        let dir = std::env::temp_dir().join(format!("fulcrum-sim-report-{}", std::process::id()));
        let r = report();
        let files = write_report(&r, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "report.md",
                "latency-cdf.svg",
                "share-oracle.svg",
                "share-p2c_ewma+model.svg"
            ]
        );
        let md = fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("| oracle | 5000 | 5 | 0.10 |"), "{md}");
        assert!(md.contains("×1.00") && md.contains("×2.00"), "{md}");
        assert!(md.contains("vs oracle p99"));
        for f in &files[1..] {
            let svg = fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("demo &amp; co"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{f:?}");
        }
        let cdf = fs::read_to_string(dir.join("latency-cdf.svg")).unwrap();
        assert!(cdf.contains("p99.9") && cdf.contains("p2c_ewma+model"));
        let share = fs::read_to_string(dir.join("share-oracle.svg")).unwrap();
        assert!(share.contains("a&lt;1&gt;") && share.contains("<polygon"));
        let json = dir.join("report.json");
        write_json(&r, &json).unwrap();
        let back: RunReport = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
        // serde_json parses floats to within an ulp, so compare the exact fields.
        assert_eq!(back.scenario, r.scenario);
        assert_eq!(back.results.len(), 2);
        assert_eq!(back.results[1].policy, "p2c_ewma+model");
        assert_eq!(back.results[1].p99_ms, r.results[1].p99_ms);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn helpers() {
        assert_eq!(share_file_name("a b/c"), "share-a_b_c.svg");
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
        assert_eq!(ms(1.234), "1.23");
        assert_eq!(ms(123.4), "123");
        let empty = RunReport {
            scenario: "e".into(),
            seed: 0,
            mode: "lab".into(),
            results: vec![],
        };
        assert!(latency_cdf_svg(&empty).contains("</svg>"));
        assert!(markdown(&empty).contains("| policy |"));
    }
}
