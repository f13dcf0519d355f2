//! Plots with `plotters`: ROC and precision-recall curves per OOD set (all methods of a dataset on one
//! chart) and score histograms of in-distribution vs each OOD set, as SVG and PNG.
//!
//! SVG text is left to the viewer's fonts; PNG text is rasterised with DejaVu Sans, embedded by the
//! `dejavu` crate, so nothing depends on the system's fonts. PNGs are drawn into an RGB buffer and
//! encoded with the `png` crate.

use crate::error::{OeError, Result};
use crate::metrics::{Positive, Ranking};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const W: u32 = 640;
const H: u32 = 480;

/// Colours by method (baseline blue, OE red, then others).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
}

/// A histogram series: label, bins as (left, right, density), colour index.
pub type HistSeries = (String, Vec<(f64, f64, f64)>, usize);

/// What a chart shows.
#[derive(Clone, Debug)]
pub enum ChartKind {
    /// ROC: FPR vs TPR with the chance diagonal.
    Roc(Vec<Line>),
    /// Precision vs recall; the horizontal lines mark each curve's prevalence (chance).
    Pr(Vec<Line>, Vec<(f64, usize)>),
    /// Density histograms: (label, bins as (left, right, density), colour).
    Hist(Vec<HistSeries>),
    /// Lines over any x range, y in [0, 1] (rates per window).
    Series(Vec<Line>),
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: ChartKind,
}

fn de<E: std::fmt::Debug>(e: E) -> OeError {
    OeError::Data(format!("plot: {e:?}"))
}

/// `bitmap`: PR curves are drawn 1 px wide, because plotters' bitmap rasteriser turns the sharp
/// reversals of a jagged PR curve into long miter spikes at 2 px.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    bitmap: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(de)?;
    let (x_range, y_range) = match &chart.kind {
        ChartKind::Roc(_) | ChartKind::Pr(..) => (0.0..1.0, 0.0..1.0),
        ChartKind::Series(lines) => {
            let xs = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
            let lo = xs().fold(f64::INFINITY, f64::min);
            let hi = xs().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                (lo, hi)
            } else {
                (0.0, 1.0)
            };
            (lo..hi, 0.0..1.0)
        }
        ChartKind::Hist(series) => {
            let lo = series
                .iter()
                .flat_map(|s| s.1.first().map(|b| b.0))
                .fold(f64::INFINITY, f64::min);
            let hi = series
                .iter()
                .flat_map(|s| s.1.last().map(|b| b.1))
                .fold(f64::NEG_INFINITY, f64::max);
            let top = series
                .iter()
                .flat_map(|s| s.1.iter().map(|b| b.2))
                .fold(0.0, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                (lo, hi)
            } else {
                (0.0, 1.0)
            };
            (lo..hi, 0.0..(top * 1.08).max(1e-9))
        }
    };
    let mut cc = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 18).into_font())
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range.clone(), y_range)
        .map_err(de)?;
    cc.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(de)?;
    let grey = RGBColor(150, 150, 150);
    match &chart.kind {
        ChartKind::Roc(lines) | ChartKind::Pr(lines, _) | ChartKind::Series(lines) => {
            if let ChartKind::Roc(_) = chart.kind {
                cc.draw_series(LineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    grey.stroke_width(1),
                ))
                .map_err(de)?;
            }
            if let ChartKind::Pr(_, chance) = &chart.kind {
                for &(p, c) in chance {
                    let col = PALETTE[c % PALETTE.len()];
                    cc.draw_series(LineSeries::new([(0.0, p), (1.0, p)], col.stroke_width(1)))
                        .map_err(de)?;
                }
            }
            let width = if bitmap && matches!(chart.kind, ChartKind::Pr(..)) {
                1
            } else {
                2
            };
            for l in lines {
                let col = PALETTE[l.color % PALETTE.len()];
                cc.draw_series(LineSeries::new(
                    l.points.iter().copied(),
                    col.stroke_width(width),
                ))
                .map_err(de)?
                .label(l.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], col.stroke_width(width))
                });
            }
        }
        ChartKind::Hist(series) => {
            for (label, bins, c) in series {
                let col = PALETTE[*c % PALETTE.len()];
                cc.draw_series(
                    bins.iter().map(|&(a, b, d)| {
                        Rectangle::new([(a, 0.0), (b, d)], col.mix(0.35).filled())
                    }),
                )
                .map_err(de)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.mix(0.6).filled())
                });
                // The outline as a step line, so overlapping bars stay readable.
                let mut step = Vec::with_capacity(bins.len() * 2 + 2);
                for &(a, b, d) in bins {
                    step.push((a, d));
                    step.push((b, d));
                }
                if let (Some(f), Some(l)) = (bins.first(), bins.last()) {
                    step.insert(0, (f.0, 0.0));
                    step.push((l.1, 0.0));
                }
                cc.draw_series(LineSeries::new(step, col.stroke_width(1)))
                    .map_err(de)?;
            }
        }
    }
    let pos = match chart.kind {
        ChartKind::Roc(_) => SeriesLabelPosition::LowerRight,
        ChartKind::Pr(..) => SeriesLabelPosition::UpperRight,
        ChartKind::Hist(_) | ChartKind::Series(_) => SeriesLabelPosition::UpperLeft,
    };
    cc.configure_series_labels()
        .position(pos)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(de)?;
    root.present().map_err(de)?;
    Ok(())
}

/// The chart as an SVG document.
pub fn render_svg(chart: &Chart) -> Result<String> {
    register_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (W, H)).into_drawing_area();
        draw(&root, chart, false)?;
    }
    Ok(s)
}

/// The chart as PNG bytes (RGB, 8 bit).
pub fn render_png(chart: &Chart) -> Result<Vec<u8>> {
    register_fonts();
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(&root, chart, true)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(de)?;
        w.write_image_data(&buf).map_err(de)?;
    }
    Ok(out)
}

/// At most `max` points of a curve, evenly spaced by index, keeping both ends.
pub fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let n = points.len();
    (0..max).map(|k| points[k * (n - 1) / (max - 1)]).collect()
}

/// Drops points within `eps` (in both coordinates) of the last kept one, keeping the last point:
/// runs of near-identical points add nothing visible, and zero-length segments confuse thick-line
/// rasterisation.
pub fn dedupe_close(points: Vec<(f64, f64)>, eps: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    let n = points.len();
    for (k, p) in points.into_iter().enumerate() {
        match out.last() {
            Some(q) if k + 1 < n && (p.0 - q.0).abs() < eps && (p.1 - q.1).abs() < eps => {}
            _ => out.push(p),
        }
    }
    out
}

/// ROC points (FPR, TPR), OOD-positive.
pub fn roc_points(in_scores: &[f64], ood: &[f64]) -> Result<Vec<(f64, f64)>> {
    let r = Ranking::new(in_scores, ood, Positive::Ood)?;
    let pts = r.roc_curve().into_iter().map(|(f, t, _)| (f, t)).collect();
    Ok(thin(dedupe_close(pts, 2e-3), 1500))
}

/// Precision-recall points (recall, precision), OOD-positive, starting at recall 0.
pub fn pr_points(in_scores: &[f64], ood: &[f64]) -> Result<Vec<(f64, f64)>> {
    let r = Ranking::new(in_scores, ood, Positive::Ood)?;
    let pr: Vec<(f64, f64)> = r.pr_curve().into_iter().map(|(rc, p, _)| (rc, p)).collect();
    let first_p = pr.first().map(|p| p.1).unwrap_or(1.0);
    let mut pts = vec![(0.0, first_p)];
    pts.extend(pr);
    Ok(thin(dedupe_close(pts, 2e-3), 1500))
}

/// Density histogram bins of `xs` over `[lo, hi]`.
pub fn density_bins(xs: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64, f64)> {
    let bins = bins.max(1);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &x in xs {
        let k = (((x - lo) / w) as isize).clamp(0, bins as isize - 1) as usize;
        counts[k] += 1;
    }
    let n = xs.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            (
                lo + k as f64 * w,
                lo + (k + 1) as f64 * w,
                c as f64 / (n * w),
            )
        })
        .collect()
}

/// A written plot: both files and the SVG text (for inlining).
#[derive(Clone, Debug)]
pub struct PlotFile {
    pub title: String,
    /// `roc`, `pr` or `hist`.
    pub kind: &'static str,
    /// The chart's group, e.g. `sst / gru / msp / paper`.
    pub group: String,
    pub ood_set: String,
    pub svg_path: PathBuf,
    pub png_path: PathBuf,
    pub svg: String,
}

/// File-name-safe text.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
pub fn write_chart(chart: &Chart, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf, String)> {
    std::fs::create_dir_all(dir).map_err(|e| OeError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let svg = render_svg(chart)?;
    let png = render_png(chart)?;
    let sp = dir.join(format!("{stem}.svg"));
    let pp = dir.join(format!("{stem}.png"));
    crate::io::write_atomic(&sp, svg.as_bytes())?;
    crate::io::write_atomic(&pp, &png)?;
    Ok((sp, pp, svg))
}
