//! Server-side SVG graphs: stacked bars of the top N + "other" over time, with axes,
//! units and a legend. Plain SVG with presentation attributes only, so it renders
//! without JavaScript, without a CDN, and under a CSP that forbids inline styles.

use std::fmt::Write as _;

use crate::report::Series;

pub const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
pub const LEFT: f64 = 80.0;
pub const RIGHT: f64 = 200.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#17becf", "#bcbd22", "#d37295",
];
/// "other" is always grey, whatever its position.
const OTHER: &str = "#bab0ac";

fn colour(series: &Series, k: usize) -> &'static str {
    if series.keys.get(k).is_some_and(|key| key == "other") {
        OTHER
    } else {
        COLOURS[k % COLOURS.len()]
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// 1234567 → "1.23 M" (SI, for bits/s and packets/s).
pub fn si(v: f64) -> String {
    let units = ["", "k", "M", "G", "T", "P"];
    let mut v = v;
    let mut i = 0;
    while v.abs() >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        if v.fract() == 0.0 || v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// The rate unit of a series: bytes become bit/s, packets pkt/s, flows flows/s.
pub fn unit_of(series: &Series) -> (&'static str, f64) {
    match series.measure {
        crate::report::Measure::Bytes => ("bit/s", 8.0),
        crate::report::Measure::Packets => ("pkt/s", 1.0),
        crate::report::Measure::Flows => ("flows/s", 1.0),
    }
}

/// A rate measured some other way, drawn as a line over the bars: the device's own
/// counters (SNMP, sFlow) beside the flows' rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    pub label: String,
    /// Per point of the series, in the graph's unit per second; None where there was no
    /// measurement in that step.
    pub values: Vec<Option<f64>>,
}

const OVERLAY_COLOURS: [&str; 2] = ["#000000", "#7a0177"];

/// A stacked bar graph of the series' rate per step.
pub fn stacked_bits(series: &Series, title: &str) -> String {
    stacked_with_lines(series, title, &[])
}

/// A stacked bar graph with `overlays` drawn as lines across it.
pub fn stacked_with_lines(series: &Series, title: &str, overlays: &[Overlay]) -> String {
    let (unit, factor) = unit_of(series);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = series.step_secs.max(1) as f64;
    let rates: Vec<Vec<f64>> = series
        .points
        .iter()
        .map(|p| p.values.iter().map(|b| *b as f64 * factor / step).collect())
        .collect();
    let max = rates
        .iter()
        .map(|r| r.iter().sum::<f64>())
        .chain(
            overlays
                .iter()
                .flat_map(|o| o.values.iter().flatten().copied()),
        )
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><title>{t}</title><rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##,
        t = escape(title)
    );
    // Y axis: five gridlines with bits/s labels.
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" font-family="sans-serif">{}{unit}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            si(v)
        );
    }
    let n = series.points.len().max(1) as f64;
    let bar_w = (plot_w / n).max(1.0);
    for (i, (point, rate)) in series.points.iter().zip(&rates).enumerate() {
        let x = LEFT + bar_w * i as f64;
        let mut y = TOP + plot_h;
        for (k, r) in rate.iter().enumerate() {
            let h = plot_h * r / max;
            if h <= 0.0 {
                continue;
            }
            y -= h;
            let _ = write!(
                svg,
                r##"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="{}"><title>{} {}: {}{unit}</title></rect>"##,
                (bar_w - 0.5).max(0.5),
                colour(series, k),
                escape(&point.time),
                escape(series.keys.get(k).map(String::as_str).unwrap_or("")),
                si(*r)
            );
        }
    }
    // Overlays: a line through the centres of the steps that have a value, broken where
    // a step has none; every value also a dot with its number on hover.
    for (o, overlay) in overlays.iter().enumerate() {
        let colour = OVERLAY_COLOURS[o % OVERLAY_COLOURS.len()];
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, svg: &mut String| {
            if run.len() > 1 {
                let _ = write!(
                    svg,
                    r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="6 3"/>"##,
                    run.join(" ")
                );
            }
            run.clear();
        };
        for (i, v) in overlay.values.iter().enumerate().take(series.points.len()) {
            let Some(v) = v else {
                flush(&mut run, &mut svg);
                continue;
            };
            let x = LEFT + bar_w * (i as f64 + 0.5);
            let y = TOP + plot_h - plot_h * v / max;
            run.push(format!("{x:.2},{y:.2}"));
            let _ = write!(
                svg,
                r##"<circle cx="{x:.2}" cy="{y:.2}" r="2.5" fill="{colour}"><title>{} {}: {}{unit}</title></circle>"##,
                escape(&series.points[i].time),
                escape(&overlay.label),
                si(*v)
            );
        }
        flush(&mut run, &mut svg);
    }
    // X axis: first, middle and last step.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333333"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    if !series.points.is_empty() {
        let picks = [0, series.points.len() / 2, series.points.len() - 1];
        for (j, i) in picks.iter().enumerate() {
            let x = LEFT + bar_w * *i as f64;
            let anchor = ["start", "middle", "end"][j];
            let label = series.points[*i]
                .time
                .get(..16)
                .unwrap_or("")
                .replace('T', " ");
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}" font-family="sans-serif">{} UTC</text>"##,
                if j == 2 { x + bar_w } else { x },
                TOP + plot_h + 18.0,
                escape(&label)
            );
        }
    } else {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" font-family="sans-serif">no traffic in this period</text>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    // Legend.
    for (k, key) in series.keys.iter().enumerate().take(24) {
        let y = TOP + 14.0 * k as f64;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{y:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11" font-family="sans-serif">{}</text>"##,
            LEFT + plot_w + 12.0,
            colour(series, k),
            LEFT + plot_w + 27.0,
            y + 9.0,
            escape(key)
        );
    }
    let first_line = series.keys.len().min(24);
    for (o, overlay) in overlays.iter().enumerate() {
        let y = TOP + 14.0 * (first_line + o) as f64;
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2" stroke-dasharray="6 3"/><text x="{:.1}" y="{:.1}" font-size="11" font-family="sans-serif">{}</text>"##,
            LEFT + plot_w + 12.0,
            y + 5.0,
            LEFT + plot_w + 22.0,
            y + 5.0,
            OVERLAY_COLOURS[o % OVERLAY_COLOURS.len()],
            LEFT + plot_w + 27.0,
            y + 9.0,
            escape(&overlay.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Render an SVG to PNG (for the graph downloads), with the system's fonts, loaded
/// once.
pub fn to_png(svg: &str) -> anyhow::Result<Vec<u8>> {
    use resvg::usvg;
    static FONTS: std::sync::OnceLock<std::sync::Arc<usvg::fontdb::Database>> =
        std::sync::OnceLock::new();
    let fonts = FONTS.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_system_fonts();
        std::sync::Arc::new(db)
    });
    let options = usvg::Options {
        fontdb: fonts.clone(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options)?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow::anyhow!("empty graph"))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap.encode_png()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SeriesPoint;

    #[test]
    fn bars_stack_to_the_total_and_labels_are_escaped() {
        let s = Series {
            step_secs: 60,
            measure: crate::report::Measure::Bytes,
            keys: vec!["443".into(), "<other>".into()],
            points: vec![SeriesPoint {
                time: "2026-12-04T10:00:00+00:00".into(),
                values: vec![750, 0],
            }],
        };
        let svg = stacked_bits(&s, "t");
        // 750 bytes in 60 s = 100 bit/s.
        assert!(svg.contains("443: 100bit/s"), "{svg}");
        assert!(
            svg.contains("&lt;other&gt;") && !svg.contains("<other>"),
            "{svg}"
        );
        assert_eq!(si(1_234_567.0), "1.23 M");
        let png = to_png(&svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 1000);
    }

    #[test]
    fn overlay_lines_break_where_a_step_has_no_measurement() {
        let point = |m: u32| SeriesPoint {
            time: format!("2026-12-04T10:{m:02}:00+00:00"),
            values: vec![7500],
        };
        let s = Series {
            step_secs: 60,
            measure: crate::report::Measure::Bytes,
            keys: vec!["total".into()],
            points: (0..5).map(point).collect(),
        };
        let overlay = Overlay {
            label: "measured".into(),
            values: vec![Some(1000.0), Some(2000.0), None, Some(500.0), None],
        };
        let svg = stacked_with_lines(&s, "t", &[overlay]);
        // One line for the first two steps; the lone fourth is a dot only.
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.contains("measured: 2.00 kbit/s</title>"), "{svg}");
        // The scale fits the highest of bars (1 kbit/s) and lines (2 kbit/s): the line's
        // top point is at the top of the plot.
        assert!(svg.contains(&format!("cy=\"{:.2}\"", TOP)), "{svg}");
    }
}
