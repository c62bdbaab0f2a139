//! A latency-distribution plot as SVG: latency (log scale) against percentile, with the
//! percentile axis spread like HdrHistogram's (50, 90, 99, 99.9 equally spaced), so the tail
//! reads as well as the median.

use std::fmt::Write as _;

/// One line of the plot.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) samples_ms: Vec<f64>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 110.0;
const COLOURS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
/// The percentile axis ends at p99.99: x = log10(1 / (1 - p)) runs from 0 to 4.
const X_MAX: f64 = 4.0;

fn x_of(p: f64) -> f64 {
    let position = (1.0 / (1.0 - p).max(1e-4)).log10().min(X_MAX);
    LEFT + position / X_MAX * (WIDTH - LEFT - RIGHT)
}

/// Renders `series` under `title`.
pub(crate) fn svg(title: &str, series: &[Series]) -> String {
    let sorted: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let mut v = s.samples_ms.clone();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let all = sorted.iter().flatten().copied().filter(|v| *v > 0.0);
    let (low, high) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_low, y_high) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let y_of = |ms: f64| {
        let fraction = (ms.max(1e-6).log10() - y_low) / (y_high - y_low);
        HEIGHT - BOTTOM - fraction * (HEIGHT - TOP - BOTTOM)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        WIDTH / 2.0
    );
    // Grid: decades of latency, and the percentiles.
    let mut decade = y_low;
    while decade <= y_high {
        let ms = 10f64.powf(decade);
        let y = y_of(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{} ms</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            format_ms(ms)
        );
        decade += 1.0;
    }
    for (p, label) in [
        (0.0, "0"),
        (0.5, "50"),
        (0.9, "90"),
        (0.99, "99"),
        (0.999, "99.9"),
        (0.9999, "99.99"),
    ] {
        let x = x_of(p);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">p{label}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 34.0
    );
    for (i, (s, values)) in series.iter().zip(&sorted).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = values.len();
        if n == 0 {
            continue;
        }
        let mut points = String::new();
        // Enough points to follow the curve: every rank near the tail, a sample elsewhere.
        let mut rank = 0usize;
        while rank < n {
            let p = rank as f64 / n as f64;
            let _ = write!(points, "{:.1},{:.1} ", x_of(p), y_of(values[rank]));
            let remaining = n - rank;
            rank += (remaining / 200).max(1);
        }
        let _ = write!(
            points,
            "{:.1},{:.1}",
            x_of(1.0 - 1.0 / n as f64),
            y_of(values[n - 1])
        );
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>"#
        );
        let y = HEIGHT - BOTTOM + 52.0 + (i / 2) as f64 * 18.0;
        let x = LEFT + (i % 2) as f64 * 330.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" x2="{}" y1="{}" y2="{}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{y}">{}</text>"#,
            x + 24.0,
            y - 4.0,
            y - 4.0,
            x + 30.0,
            s.name
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms}")
    }
}
