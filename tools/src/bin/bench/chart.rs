//! The PNG: latency distribution and throughput over time.
//!
//! Text needs a TrueType font, loaded at run time (no system font library): the first of
//! `BENCH_FONT` and a few common Debian paths that exists. Without one the chart is drawn
//! without text.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font as "sans-serif"; false if none was found.
fn load_font() -> bool {
    let candidates = std::env::var("BENCH_FONT")
        .into_iter()
        .chain(FONT_PATHS.iter().map(|s| s.to_string()));
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps fonts for the life of the process.
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Rates per `bin` seconds from cumulative (t, count) points, interpolating the count at
/// bin edges. Returns (bin start, count per second).
pub fn rates(points: &[(f64, f64)], bin: f64) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let at = |t: f64| -> f64 {
        match points.iter().position(|p| p.0 >= t) {
            None => last.1,
            Some(0) => first.1,
            Some(i) => {
                let (a, b) = (points[i - 1], points[i]);
                if b.0 > a.0 {
                    a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0)
                } else {
                    b.1
                }
            }
        }
    };
    let mut out = Vec::new();
    let mut t = first.0.max(0.0);
    while t < last.0 {
        let end = (t + bin).min(last.0);
        if end > t {
            out.push((t, (at(end) - at(t)) / (end - t)));
        }
        t += bin;
    }
    out
}

pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Draws `latencies_ms` as a histogram on the left and `throughput` lines on the right.
pub fn draw(
    path: &Path,
    latency_label: &str,
    latencies_ms: &[f64],
    throughput: &[Series<'_>],
) -> anyhow::Result<()> {
    let text = load_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).context("chart background")?;
    let (left, right) = root.split_horizontally(600);

    // Latency histogram, up to the 99.5th percentile (the rest in the last bar).
    let mut sorted = latencies_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let top = sorted
        .get(((sorted.len() as f64 * 0.995) as usize).min(sorted.len().saturating_sub(1)))
        .copied();
    let x_max = top.unwrap_or(1.0).max(1.0) * 1.05;
    let buckets = 40usize;
    let width = x_max / buckets as f64;
    let mut counts = vec![0u64; buckets];
    for v in &sorted {
        let i = ((v / width) as usize).min(buckets - 1);
        counts[i] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut b = ChartBuilder::on(&left);
    b.margin(15)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(if text { 55 } else { 5 });
    if text {
        b.caption(
            format!("create → COMPLETED latency, {latency_label}"),
            ("sans-serif", 18),
        );
    }
    let mut chart = b
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .context("latency chart")?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE);
    if text {
        mesh.x_desc("ms")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("orders")
            .label_style(("sans-serif", 13));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().context("latency axes")?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = i as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.95, *c as f64)],
                BLUE.mix(0.7).filled(),
            )
        }))
        .context("latency bars")?;

    // Throughput over time.
    let t_max = throughput
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        + 1.0;
    let r_max = throughput
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut b = ChartBuilder::on(&right);
    b.margin(15)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(if text { 70 } else { 5 });
    if text {
        b.caption(
            "throughput, records in + out per second",
            ("sans-serif", 18),
        );
    }
    let mut chart = b
        .build_cartesian_2d(0f64..t_max, 0f64..r_max)
        .context("throughput chart")?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE);
    if text {
        mesh.x_desc("seconds since start")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("records/s")
            .label_style(("sans-serif", 13));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().context("throughput axes")?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (i, s) in throughput.iter().enumerate() {
        let color = colors[i % colors.len()];
        // Markers too: a short run has a single point per series, which a line hides.
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .context("throughput points")?;
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .context("throughput line")?;
        if text {
            drawn.label(s.label).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
    }
    if text && !throughput.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .context("legend")?;
    }
    root.present().context("writing the PNG")?;
    Ok(())
}
