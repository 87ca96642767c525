//! `--plot FILE.svg`: latency percentiles (p50, p99, p99.9) against publish rate, written as a
//! hand-made SVG: one chart type needs a hundred lines of text output, not a plotting crate and
//! its font and raster dependencies.
//!
//! Layout: title and parameters on top, the plot area with a log-scale latency axis (decades,
//! with 2 and 5 in between when the range is short) and a rate axis (linear with 1/2/2.5/5
//! steps, or logarithmic when the sweep spans more than a factor of 50), grid lines, one line
//! per percentile with a marker per rate (hollow where the rate did not hold), the p99 budget as
//! a dashed line, and the legend on the right. Pure: figures in, text out.

use std::fmt::Write;

/// One rate of a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Publishes per second.
    pub rate: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Whether the rate held (nothing lost, p99 within budget).
    pub held: bool,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// First line on top.
    pub title: &'a str,
    /// Second line: the parameters of the run.
    pub subtitle: &'a str,
    /// Label of the rate axis.
    pub x_label: &'a str,
    /// The p99 budget, drawn as a dashed line.
    pub budget_us: Option<u64>,
    /// The rates, in any order.
    pub samples: &'a [Sample],
}

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;
/// p50, p99, p99.9: colour-blind-safe blue, orange, vermilion.
const SERIES: [(&str, &str); 3] = [("p50", "#0072b2"), ("p99", "#e69f00"), ("p99.9", "#d55e00")];

/// Maps a value to [0, 1] along an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear {
        /// Value at the start of the axis.
        lo: f64,
        /// Value at the end.
        hi: f64,
    },
    /// Evenly spaced powers (both ends above 0).
    Log {
        /// Value at the start of the axis.
        lo: f64,
        /// Value at the end.
        hi: f64,
    },
}

impl Scale {
    /// Where `v` falls between the ends: 0 at `lo`, 1 at `hi`.
    pub fn fraction(&self, v: f64) -> f64 {
        match *self {
            Scale::Linear { lo, hi } => (v - lo) / (hi - lo),
            Scale::Log { lo, hi } => {
                (v.max(f64::MIN_POSITIVE).ln() - lo.ln()) / (hi.ln() - lo.ln())
            }
        }
    }
}

/// A "nice" step (1, 2, 2.5 or 5 times a power of ten) at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    assert!(raw > 0.0 && raw.is_finite(), "a step is positive");
    let power = 10f64.powf(raw.log10().floor());
    let f = raw / power;
    let nice = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 2.5 + 1e-9 {
        2.5
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// Linear ticks covering [lo, hi] with about `target` intervals: the axis ends widened to whole
/// steps, and the ticks from end to end.
pub fn linear_ticks(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<f64>) {
    assert!(hi > lo, "an axis has a length");
    let step = nice_step((hi - lo) / target.max(1) as f64);
    let start = (lo / step + 1e-9).floor() * step;
    let end = (hi / step - 1e-9).ceil() * step;
    let n = ((end - start) / step).round() as usize;
    // Multiply rather than accumulate, so 0.1-steps do not drift.
    let ticks = (0..=n).map(|k| clean(start + k as f64 * step)).collect();
    (clean(start), clean(end), ticks)
}

/// Log ticks covering [lo, hi] (both above 0): the ends widened to whole decades, the decades
/// (labelled), and 2× and 5× in between (labelled too when the axis spans at most 3 decades).
/// Returns (lo, hi, ticks as (value, labelled)).
pub fn log_ticks(lo: f64, hi: f64) -> (f64, f64, Vec<(f64, bool)>) {
    assert!(lo > 0.0 && hi >= lo, "a log axis is above 0");
    let first = (lo.log10() + 1e-9).floor() as i32;
    let mut last = (hi.log10() - 1e-9).ceil() as i32;
    if last <= first {
        last = first + 1;
    }
    let label_minor = last - first <= 3;
    let mut ticks = Vec::new();
    for e in first..=last {
        let decade = clean(10f64.powi(e));
        ticks.push((decade, true));
        if e < last {
            ticks.push((clean(2.0 * decade), label_minor));
            ticks.push((clean(5.0 * decade), label_minor));
        }
    }
    (10f64.powi(first), 10f64.powi(last), ticks)
}

/// Rounds away binary noise (0.30000000000000004) so labels and comparisons are exact.
fn clean(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let digits = 12 - v.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits.clamp(-300, 300));
    (v * scale).round() / scale
}

/// A latency in µs as an axis label: 500µs, 2ms, 2.5ms, 1s.
pub fn latency_label(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{}{unit}", short_number(v))
}

/// A rate as an axis label: 250, 2.5k, 1M.
pub fn rate_label(r: f64) -> String {
    if r >= 1e6 {
        format!("{}M", short_number(r / 1e6))
    } else if r >= 1e3 {
        format!("{}k", short_number(r / 1e3))
    } else {
        short_number(r)
    }
}

/// Up to 3 significant digits, no trailing zeros.
fn short_number(v: f64) -> String {
    let s = format!("{:.2}", clean(v));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Escapes text for an SVG text node or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The x axis: linear from 0 for a short sweep, logarithmic when it spans more than 50×.
fn x_axis(rates: &[f64]) -> (Scale, Vec<(f64, bool)>) {
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    if lo > 0.0 && hi / lo > 50.0 {
        let (lo, hi, ticks) = log_ticks(lo, hi);
        return (Scale::Log { lo, hi }, ticks);
    }
    let (lo, hi, ticks) = linear_ticks(0.0, hi.max(1e-9) * 1.05, 6);
    (
        Scale::Linear { lo, hi },
        ticks.into_iter().map(|t| (t, true)).collect(),
    )
}

/// The chart as a standalone SVG document.
pub fn latency_vs_rate(chart: &Chart) -> String {
    let mut samples = chart.samples.to_vec();
    samples.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(chart.title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="46" text-anchor="middle" fill="#444">{}</text>"##,
        WIDTH / 2.0,
        escape(chart.subtitle)
    );
    if samples.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no rate completed</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }

    let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
    let (xs, xticks) = x_axis(&rates);
    let mut values: Vec<f64> = samples
        .iter()
        .flat_map(|s| [s.p50_us, s.p99_us, s.p999_us])
        .map(|v| v.max(1) as f64)
        .collect();
    values.extend(chart.budget_us.map(|b| b.max(1) as f64));
    let ymin = values.iter().copied().fold(f64::INFINITY, f64::min);
    let ymax = values.iter().copied().fold(0.0, f64::max);
    let (ylo, yhi, yticks) = log_ticks(ymin, ymax);
    let ys = Scale::Log { lo: ylo, hi: yhi };
    let px = |v: f64| LEFT + xs.fraction(v) * pw;
    let py = |v: f64| TOP + ph - ys.fraction(v.max(1.0)) * ph;

    // Grid and tick labels.
    for &(t, labelled) in &yticks {
        let y = py(t);
        let (stroke, width) = if labelled {
            ("#ccc", 1.0)
        } else {
            ("#eee", 0.8)
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="{width}"/>"#,
            LEFT + pw
        );
        if labelled {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                latency_label(t)
            );
        }
    }
    for &(t, labelled) in &xticks {
        let x = px(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
            TOP + ph
        );
        if labelled {
            let _ = writeln!(
                svg,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + ph + 18.0,
                rate_label(t)
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 16.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + ph / 2.0
    );

    if let Some(b) = chart.budget_us {
        let y = py(b as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#666" stroke-dasharray="6 4"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#666">p99 budget {}</text>"##,
            LEFT + pw - 4.0,
            // Above the line, or below it when the line runs along the top of the plot.
            if y - TOP < 16.0 { y + 14.0 } else { y - 4.0 },
            latency_label(b as f64)
        );
    }

    // One line per percentile, markers on top.
    for (k, (name, colour)) in SERIES.iter().enumerate() {
        let value = |s: &Sample| [s.p50_us, s.p99_us, s.p999_us][k] as f64;
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", px(s.rate), py(value(s))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{name}</title></polyline>"#,
            points.join(" ")
        );
        for s in &samples {
            let fill = if s.held { *colour } else { "white" };
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{colour}" stroke-width="2"><title>{name} at {}/s: {}</title></circle>"#,
                px(s.rate),
                py(value(s)),
                rate_label(s.rate),
                latency_label(value(s))
            );
        }
    }

    // Legend.
    let lx = LEFT + pw + 16.0;
    for (k, (name, colour)) in SERIES.iter().rev().enumerate() {
        let y = TOP + 14.0 + 22.0 * k as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/><circle cx="{}" cy="{y}" r="4" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 12.0,
            lx + 32.0,
            y + 4.0
        );
    }
    let y = TOP + 14.0 + 22.0 * 3.0;
    let _ = writeln!(
        svg,
        r##"<circle cx="{}" cy="{y}" r="4" fill="white" stroke="#333" stroke-width="2"/><text x="{}" y="{}">not held</text>"##,
        lx + 12.0,
        lx + 32.0,
        y + 4.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(2.2), 2.5);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(120.0), 200.0);
        assert_eq!(nice_step(0.03), 0.05);
    }

    #[test]
    fn linear_ticks_cover_the_range_in_whole_steps() {
        let (lo, hi, t) = linear_ticks(0.0, 735.0, 6);
        assert_eq!((lo, hi), (0.0, 800.0));
        assert_eq!(t, vec![0.0, 200.0, 400.0, 600.0, 800.0]);
        let (lo, hi, t) = linear_ticks(0.0, 0.7, 7);
        assert_eq!((lo, hi), (0.0, 0.7));
        assert_eq!(t.len(), 8);
        assert_eq!(t[3], 0.3);
        // A range already on the grid is not widened.
        let (lo, hi, _) = linear_ticks(100.0, 500.0, 4);
        assert_eq!((lo, hi), (100.0, 500.0));
    }

    #[test]
    fn log_ticks_are_decades_with_2_and_5() {
        let (lo, hi, t) = log_ticks(3_500.0, 250_000.0);
        assert_eq!((lo, hi), (1_000.0, 1_000_000.0));
        let values: Vec<f64> = t.iter().map(|&(v, _)| v).collect();
        assert_eq!(
            values,
            vec![1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6]
        );
        assert!(t.iter().all(|&(_, labelled)| labelled));
        // Wide ranges label decades only.
        let (_, _, t) = log_ticks(1.0, 2e6);
        assert!(
            t.iter()
                .filter(|&&(_, l)| l)
                .all(|&(v, _)| v.log10().fract() == 0.0)
        );
        // A single value still gets one decade.
        let (lo, hi, _) = log_ticks(1000.0, 1000.0);
        assert_eq!((lo, hi), (1000.0, 10_000.0));
    }

    #[test]
    fn scales_map_ends_and_middles() {
        let lin = Scale::Linear { lo: 0.0, hi: 800.0 };
        assert_eq!(lin.fraction(0.0), 0.0);
        assert_eq!(lin.fraction(200.0), 0.25);
        assert_eq!(lin.fraction(800.0), 1.0);
        let log = Scale::Log { lo: 1e3, hi: 1e6 };
        assert!((log.fraction(1e3)).abs() < 1e-12);
        assert!((log.fraction(1e4) - 1.0 / 3.0).abs() < 1e-12);
        assert!((log.fraction(1e6) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn labels() {
        assert_eq!(latency_label(500.0), "500µs");
        assert_eq!(latency_label(2_000.0), "2ms");
        assert_eq!(latency_label(2_500.0), "2.5ms");
        assert_eq!(latency_label(1_000_000.0), "1s");
        assert_eq!(rate_label(250.0), "250");
        assert_eq!(rate_label(2_500.0), "2.5k");
        assert_eq!(rate_label(1_000_000.0), "1M");
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    #[test]
    fn chart_has_axes_series_legend_and_hollow_markers() {
        let samples = [
            Sample {
                rate: 200.0,
                p50_us: 90_000,
                p99_us: 180_000,
                p999_us: 210_000,
                held: true,
            },
            Sample {
                rate: 100.0,
                p50_us: 70_000,
                p99_us: 140_000,
                p999_us: 160_000,
                held: true,
            },
            Sample {
                rate: 600.0,
                p50_us: 1_200_000,
                p99_us: 1_500_000,
                p999_us: 1_520_000,
                held: false,
            },
        ];
        let svg = latency_vs_rate(&Chart {
            title: "fanout <10k>",
            subtitle: "64 B",
            x_label: "publishes/s",
            budget_us: Some(1_000_000),
            samples: &samples,
        });
        assert!(svg.starts_with("<svg "));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("fanout &lt;10k&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        // 3 series × 3 rates, plus 3 legend markers and the "not held" one.
        assert_eq!(svg.matches("<circle").count(), 9 + 4);
        // The rate that did not hold is hollow in each series.
        assert_eq!(svg.matches(r#"r="4" fill="white""#).count(), 3 + 1);
        assert!(svg.contains("p99 budget 1s"));
        assert!(svg.contains(">10ms<") && svg.contains(">1s<"));
        // Points are sorted by rate: the p50 line starts at 100/s.
        let line = svg
            .lines()
            .find(|l| l.contains("<title>p50</title>"))
            .unwrap();
        let first_x: f64 = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(first_x < LEFT + 0.3 * (WIDTH - LEFT - RIGHT));
    }
}
