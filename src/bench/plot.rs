//! Latency by percentile as SVG: the classic HdrHistogram chart, with the
//! percentile axis stretched as `log10(1 / (1 − p))` so the tail gets as much
//! room as the body, and latency on a log axis. One curve per run, so runs
//! (tickwire and its peers, or before and after a change) overlay in one chart.

use std::path::Path;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The deepest percentile drawn: 99.9999 %.
const MAX_NINES: f64 = 6.0;
/// The longest latency drawn: a year, in µs.
const MAX_LATENCY_US: f64 = 365.0 * 86_400.0 * 1e6;
/// Points per decade of `1 / (1 − p)`.
const POINTS_PER_NINE: usize = 40;

/// One run's curve: (nines, latency µs) points, nines = `log10(1 / (1 − p))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Samples a nanosecond histogram up to the percentile its count supports.
    pub fn of(label: &str, histogram: &Histogram<u64>) -> Self {
        let mut points = Vec::new();
        if !histogram.is_empty() {
            // Past 1 / count, a percentile is only the maximum again.
            let supported = (histogram.len() as f64).log10().min(MAX_NINES);
            let steps = (supported * POINTS_PER_NINE as f64).ceil() as usize;
            for step in 0..=steps {
                let nines = (step as f64 / POINTS_PER_NINE as f64).min(supported);
                let quantile = 1.0 - 10f64.powf(-nines);
                let ns = histogram.value_at_quantile(quantile);
                points.push((nines, ns as f64 / 1_000.0));
            }
        }
        Self {
            label: label.to_owned(),
            points,
        }
    }

    /// Reads a `.hgrm` percentile distribution (values in µs), as
    /// [`report::hgrm`](super::report::hgrm) writes it. Values past
    /// a year (`MAX_LATENCY_US`) are skipped: no latency is that long, and the
    /// axis, in whole decades, could not reach them.
    pub fn from_hgrm(label: &str, text: &str) -> anyhow::Result<Self> {
        let mut points = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [value, percentile, _count, _inverse] = fields[..] else {
                continue;
            };
            let (Ok(value), Ok(percentile)) = (value.parse::<f64>(), percentile.parse::<f64>())
            else {
                continue; // The header line.
            };
            if percentile >= 1.0 {
                continue; // 1/(1-p) is infinite: drawn as the last finite point.
            }
            if !(value > 0.0 && value <= MAX_LATENCY_US && percentile >= 0.0) {
                continue; // Not a latency a log axis can show.
            }
            let nines = -(1.0 - percentile).log10();
            if nines <= MAX_NINES {
                points.push((nines, value));
            }
        }
        if points.is_empty() {
            bail!("no percentile lines in the .hgrm text");
        }
        Ok(Self {
            label: label.to_owned(),
            points,
        })
    }
}

/// Writes the curves as one SVG chart.
pub fn write_svg(path: &Path, title: &str, curves: &[Curve]) -> anyhow::Result<()> {
    let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if high <= 0.0 {
        bail!("nothing to plot: no latency samples");
    }
    // Whole decades around the data, at least one.
    let low = 10f64.powf(low.max(0.1).log10().floor());
    let high = 10f64.powf(high.log10().ceil()).max(low * 10.0);
    let nines_shown = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            // Room for the last percentile's label, centred on the right edge.
            .margin_right(48)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..nines_shown, (low..high).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(nines_shown as usize + 1)
            .x_label_formatter(&|nines| percentile_label(*nines))
            .y_label_formatter(&|us| format!("{us}"))
            .draw()?;
        for (index, curve) in curves.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(curve.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `0` → `0%`, `2` → `99%`, `3` → `99.9%`.
fn percentile_label(nines: f64) -> String {
    let rounded = nines.round();
    if (nines - rounded).abs() > 1e-9 {
        return String::new();
    }
    match rounded as i64 {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        n => format!(
            "99{}%",
            if n > 2 {
                format!(".{}", "9".repeat(n as usize - 2))
            } else {
                String::new()
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::hgrm;
    use crate::bench::tally::new_histogram;

    #[test]
    fn percentile_axis_labels_count_nines() {
        let labels: Vec<String> = (0..5).map(|n| percentile_label(n as f64)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(percentile_label(1.5), "");
    }

    #[test]
    fn values_a_log_axis_cannot_show_are_left_out() {
        let text = "Value Percentile TotalCount 1/(1-Percentile)\n\
                    10.0 0.5 1 2.00\n\
                    inf 0.9 2 10.00\n\
                    1e400 0.95 3 20.00\n\
                    -3.0 0.97 4 33.33\n\
                    NaN 0.98 5 50.00\n\
                    1.5e308 0.985 5 66.67\n\
                    20.0 0.99 6 100.00\n";
        let curve = Curve::from_hgrm("run", text).expect("parses");
        let values: Vec<f64> = curve.points.iter().map(|p| p.1).collect();
        assert_eq!(values, [10.0, 20.0]);
        assert!(Curve::from_hgrm("run", "inf 0.5 1 2.00\n").is_err());
        // A curve of the longest latency drawn still makes a chart.
        let longest = format!("{MAX_LATENCY_US} 0.5 1 2.00\n");
        let curve = Curve::from_hgrm("run", &longest).expect("parses");
        let path = std::env::temp_dir().join(format!("tickwire-plot-{}.svg", std::process::id()));
        write_svg(&path, "longest", &[curve]).expect("drawn");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_curve_reads_the_same_from_the_histogram_and_its_hgrm() {
        let mut histogram = new_histogram();
        for us in 1..=10_000u64 {
            histogram.record(us * 1_000).expect("in range");
        }
        let direct = Curve::of("run", &histogram);
        let parsed = Curve::from_hgrm("run", &hgrm(&histogram)).expect("parses");
        // 10,000 samples support four nines, no more.
        assert_eq!(direct.points.last().map(|p| p.0), Some(4.0));
        let median = |c: &Curve| {
            c.points
                .iter()
                .find(|p| (p.0 - std::f64::consts::LOG10_2).abs() < 0.02)
                .map(|p| p.1)
        };
        let (a, b) = (
            median(&direct).expect("a median"),
            median(&parsed).expect("a median"),
        );
        assert!(
            (a - 5_000.0).abs() < 60.0 && (b - 5_000.0).abs() < 60.0,
            "{a} {b}"
        );
        // Latency never falls as the percentile rises.
        for curve in [&direct, &parsed] {
            assert!(curve.points.windows(2).all(|w| w[1].1 >= w[0].1));
        }
    }

    #[test]
    fn writes_an_svg_with_one_line_per_run() {
        let mut fast = new_histogram();
        let mut slow = new_histogram();
        for i in 1..=1_000u64 {
            fast.record(i * 100).expect("in range");
            slow.record(i * 10_000).expect("in range");
        }
        let dir = std::env::temp_dir().join(format!("tickwire-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("latency.svg");
        let curves = [Curve::of("fast", &fast), Curve::of("slow", &slow)];
        write_svg(&path, "test", &curves).expect("written");
        let svg = std::fs::read_to_string(&path).expect("readable");
        assert!(svg.starts_with("<svg"));
        for text in ["fast", "slow", "99.9%", "latency (µs)"] {
            assert!(
                svg.contains(&format!("\n{text}\n</text>")),
                "`{text}` in the chart"
            );
        }
        assert!(svg.contains("<polyline"), "the curves are drawn");
        assert!(Curve::from_hgrm("x", "not a histogram").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
