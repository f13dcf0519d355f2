//! `oe-text monitor`: drift in a scored file (the output of `oe-text score`, any of its formats),
//! per window of N consecutive texts: the OOD rate (`is_ood`), the mean anomaly score, and, when
//! the file has conformal p-values, the share with `p <= alpha` and the p-value histogram (ten
//! bins of 0.1). In-distribution input gives p-values spread evenly over (0, 1], so a rising share
//! of small p-values is a rising share of unfamiliar input. With `window_secs`, windows are spans of
//! time instead, over the `time` field of the service's request log (`oe-text serve --log`).

use crate::error::{OeError, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A validated `monitor` request.
#[derive(Clone, Debug)]
pub struct MonitorRequest {
    pub input: PathBuf,
    /// Texts per window.
    pub every: usize,
    /// Windows of this many seconds (by the rows' `time`) instead of `every` texts.
    pub window_secs: Option<f64>,
    /// Level for the share of small p-values.
    pub alpha: f64,
    /// Write the rates per window as an SVG plot here.
    pub plot: Option<PathBuf>,
}

/// One scored row as the monitor reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub score: f64,
    pub is_ood: Option<bool>,
    pub p_value: Option<f64>,
    /// Unix seconds (the service's log); `None` in files written by `oe-text score`.
    pub time: Option<f64>,
}

/// One window of consecutive rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// 1-based index of the window's first row.
    pub first: usize,
    /// Start of the window (Unix seconds) for windows of time.
    pub start: Option<f64>,
    pub rows: usize,
    pub mean_score: f64,
    /// Share flagged `is_ood` (when the file has the column).
    pub ood_rate: Option<f64>,
    /// Share with `p_value <= alpha` (when the file has p-values).
    pub small_p: Option<f64>,
    /// Counts of p-values in (0, 0.1], (0.1, 0.2], ..., (0.9, 1].
    pub p_hist: Option<[u64; 10]>,
}

/// Cuts `rows` into windows of `every` (the last may be shorter).
pub fn windows(rows: &[Row], every: usize, alpha: f64) -> Vec<Window> {
    let e = every.max(1);
    rows.chunks(e)
        .enumerate()
        .map(|(i, w)| summarise(w, i * e + 1, None, alpha))
        .collect()
}

/// Cuts `rows` (in time order, every one with a `time`) into windows of `secs` seconds from the
/// first row's time; windows without rows are left out.
pub fn time_windows(rows: &[Row], secs: f64, alpha: f64) -> Result<Vec<Window>> {
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(OeError::Config(format!(
            "--window-secs must be positive, got {secs}"
        )));
    }
    let Some(t0) = rows.first().and_then(|r| r.time) else {
        return Ok(Vec::new());
    };
    // A row's window; a row without a time is a window of its own.
    let bucket = |r: &Row| r.time.map(|t| ((t - t0) / secs).floor().max(0.0) as u64);
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < rows.len() {
        let b = bucket(&rows[start]);
        let len = match b {
            Some(_) => rows[start..].iter().take_while(|r| bucket(r) == b).count(),
            None => 1,
        };
        out.push(summarise(
            &rows[start..start + len],
            start + 1,
            Some(t0 + b.unwrap_or(0) as f64 * secs),
            alpha,
        ));
        start += len;
    }
    Ok(out)
}

/// The window of rows `w`, the first of which is row `first` (1-based).
fn summarise(w: &[Row], first: usize, start: Option<f64>, alpha: f64) -> Window {
    let n = w.len() as f64;
    let ood: Option<Vec<bool>> = w.iter().map(|r| r.is_ood).collect();
    let ps: Option<Vec<f64>> = w.iter().map(|r| r.p_value).collect();
    Window {
        first,
        start,
        rows: w.len(),
        mean_score: w.iter().map(|r| r.score).sum::<f64>() / n,
        ood_rate: ood.map(|o| o.iter().filter(|&&x| x).count() as f64 / n),
        small_p: ps
            .as_ref()
            .map(|p| p.iter().filter(|&&x| x <= alpha).count() as f64 / n),
        p_hist: ps.map(|p| {
            let mut h = [0u64; 10];
            for x in p {
                let b = ((x * 10.0).ceil() as usize).clamp(1, 10) - 1;
                h[b] += 1;
            }
            h
        }),
    }
}

fn col(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h == name)
}

fn num(path: &Path, line: usize, what: &str, s: &str) -> Result<f64> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| OeError::parse(path, line, format!("{what} `{s}` is not a number")))
}

fn flag(path: &Path, line: usize, s: &str) -> Result<bool> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(OeError::parse(
            path,
            line,
            format!("is_ood `{other}` is not true or false"),
        )),
    }
}

/// Reads the `score`, `is_ood` and `p_value` columns of a scored file (TSV, CSV, JSON lines or
/// Parquet, by extension).
pub fn read_scored(path: &Path) -> Result<Vec<Row>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("parquet") => {
            let df = crate::text::score::parquet::read_parquet(path)?;
            let get = |c: &str| -> Option<Vec<Option<f64>>> {
                let s = df
                    .column(c)
                    .ok()?
                    .cast(&polars::prelude::DataType::Float64)
                    .ok()?;
                Some(s.f64().ok()?.iter().collect())
            };
            let score = get("score")
                .ok_or_else(|| OeError::Data(format!("{}: no `score` column", path.display())))?;
            let p = get("p_value");
            let ood: Option<Vec<Option<bool>>> = df
                .column("is_ood")
                .ok()
                .and_then(|c| c.bool().ok().map(|b| b.iter().collect()));
            Ok((0..score.len())
                .map(|i| Row {
                    score: score[i].unwrap_or(f64::NAN),
                    is_ood: ood.as_ref().and_then(|o| o[i]),
                    p_value: p.as_ref().and_then(|p| p[i]),
                    time: None,
                })
                .collect())
        }
        Some("jsonl" | "json" | "ndjson") => {
            let text = std::fs::read_to_string(path).map_err(|e| OeError::io(path, e))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let v: serde_json::Value = serde_json::from_str(l)
                        .map_err(|e| OeError::parse(path, i + 1, format!("not JSON: {e}")))?;
                    Ok(Row {
                        score: v["score"]
                            .as_f64()
                            .ok_or_else(|| OeError::parse(path, i + 1, "no numeric `score`"))?,
                        is_ood: v["is_ood"].as_bool(),
                        p_value: v["p_value"].as_f64(),
                        time: v["time"].as_f64(),
                    })
                })
                .collect()
        }
        other => {
            let sep = if other == Some("csv") { ',' } else { '\t' };
            let text = std::fs::read_to_string(path).map_err(|e| OeError::io(path, e))?;
            let mut lines = text.lines();
            let header: Vec<String> = lines
                .next()
                .ok_or_else(|| OeError::parse(path, 1, "empty file; expected a header"))?
                .split(sep)
                .map(String::from)
                .collect();
            let si = col(&header, "score")
                .ok_or_else(|| OeError::parse(path, 1, "no `score` column in the header"))?;
            let (oi, pi) = (col(&header, "is_ood"), col(&header, "p_value"));
            // The numeric columns are the last ones, after the (possibly quoted) source and class:
            // count them from the end so separators inside a CSV source field do not matter.
            let from_end = |i: usize| header.len() - i;
            lines
                .enumerate()
                .map(|(k, l)| {
                    let line = k + 2;
                    let f: Vec<&str> = l.split(sep).collect();
                    let at = |i: usize| -> Result<&str> {
                        f.len()
                            .checked_sub(from_end(i))
                            .and_then(|j| f.get(j).copied())
                            .ok_or_else(|| OeError::parse(path, line, "too few fields"))
                    };
                    Ok(Row {
                        score: num(path, line, "score", at(si)?)?,
                        is_ood: oi
                            .map(|i| at(i).and_then(|s| flag(path, line, s)))
                            .transpose()?,
                        p_value: pi
                            .map(|i| at(i).and_then(|s| num(path, line, "p_value", s)))
                            .transpose()?,
                        time: None,
                    })
                })
                .collect()
        }
    }
}

/// What `monitor` produced.
pub struct MonitorOutcome {
    pub windows: Vec<Window>,
    /// The table, for standard output.
    pub table: String,
    pub plot: Option<PathBuf>,
}

/// `oe-text monitor`.
pub fn run_monitor(req: &MonitorRequest) -> Result<MonitorOutcome> {
    if req.every == 0 {
        return Err(OeError::Config("--every must be positive".into()));
    }
    let rows = read_scored(&req.input)?;
    if rows.is_empty() {
        return Err(OeError::Data(format!(
            "{}: no scored rows",
            req.input.display()
        )));
    }
    let ws = match req.window_secs {
        Some(secs) => {
            if let Some(i) = rows.iter().position(|r| r.time.is_none()) {
                return Err(OeError::parse(
                    &req.input,
                    i + 1,
                    "no `time` field: --window-secs needs the service's log (oe-text serve --log); use --every N for scored files",
                ));
            }
            time_windows(&rows, secs, req.alpha)?
        }
        None => windows(&rows, req.every, req.alpha),
    };
    let unit = match req.window_secs {
        Some(s) => format!("{s} s"),
        None => format!("{} texts", req.every),
    };
    let mut t = format!(
        "{}: {} texts in windows of {unit}\n{:>20} {:>6} {:>10} {:>8} {:>9}  p-value histogram (0.1 bins)\n",
        req.input.display(),
        rows.len(),
        if req.window_secs.is_some() { "from (UTC)" } else { "from" },
        "texts",
        "mean score",
        "OOD %",
        format!("p<={} %", req.alpha),
    );
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    for w in &ws {
        let _ = writeln!(
            t,
            "{:>20} {:>6} {:>10.4} {:>8} {:>9}  {}",
            match w.start {
                Some(s) => crate::io::utc_time(s as u64),
                None => w.first.to_string(),
            },
            w.rows,
            w.mean_score,
            pct(w.ood_rate),
            pct(w.small_p),
            w.p_hist
                .map(|h| h
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_else(|| "-".into())
        );
    }
    let plot = match &req.plot {
        Some(p) => {
            use crate::report::plots::{render_svg, Chart, ChartKind, Line};
            let mut lines = Vec::new();
            let xs = |f: &dyn Fn(&Window) -> Option<f64>| -> Vec<(f64, f64)> {
                ws.iter()
                    .filter_map(|w| {
                        let x = match (w.start, ws[0].start) {
                            (Some(s), Some(s0)) => s - s0,
                            _ => w.first as f64,
                        };
                        f(w).map(|v| (x, v))
                    })
                    .collect()
            };
            let ood = xs(&|w| w.ood_rate);
            if !ood.is_empty() {
                lines.push(Line {
                    label: "OOD rate (is_ood)".into(),
                    points: ood,
                    color: 0,
                });
            }
            let small = xs(&|w| w.small_p);
            if !small.is_empty() {
                lines.push(Line {
                    label: format!("share with p <= {}", req.alpha),
                    points: small,
                    color: 1,
                });
            }
            if lines.is_empty() {
                return Err(OeError::Data(format!(
                    "{}: no is_ood or p_value column to plot (score with --threshold, --alpha or --p-values)",
                    req.input.display()
                )));
            }
            let svg = render_svg(&Chart {
                title: format!("OOD rate per {unit}"),
                x_label: if req.window_secs.is_some() {
                    "seconds since the first request".into()
                } else {
                    "first text of the window".into()
                },
                y_label: "share of the window".into(),
                kind: ChartKind::Series(lines),
            })?;
            crate::io::write_atomic(p, svg.as_bytes())?;
            Some(p.clone())
        }
        None => None,
    };
    Ok(MonitorOutcome {
        windows: ws,
        table: t,
        plot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_by_hand() {
        let r = |s: f64, o: bool, p: f64| Row {
            score: s,
            is_ood: Some(o),
            p_value: Some(p),
            time: None,
        };
        let rows = [
            r(1.0, false, 0.5),
            r(3.0, true, 0.01),
            r(2.0, false, 0.1),
            r(5.0, true, 1.0),
            r(4.0, true, 0.03),
        ];
        let w = windows(&rows, 2, 0.05);
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].first, w[0].rows, w[0].mean_score), (1, 2, 2.0));
        assert_eq!((w[0].ood_rate, w[0].small_p), (Some(0.5), Some(0.5)));
        // p = 0.5 goes to (0.4, 0.5], p = 0.01 to (0, 0.1].
        assert_eq!(w[0].p_hist.unwrap(), [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        // 0.1 is in (0, 0.1]; 1.0 in (0.9, 1].
        assert_eq!(w[1].p_hist.unwrap(), [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!((w[2].first, w[2].rows, w[2].ood_rate), (5, 1, Some(1.0)));
        let no_p = [Row {
            score: 1.0,
            is_ood: None,
            p_value: None,
            time: None,
        }];
        let w = windows(&no_p, 10, 0.05);
        assert_eq!(
            (w[0].ood_rate, w[0].small_p, w[0].p_hist),
            (None, None, None)
        );
    }

    #[test]
    fn time_windows_by_hand() {
        let r = |t: f64, o: bool| Row {
            score: 0.0,
            is_ood: Some(o),
            p_value: None,
            time: Some(t),
        };
        // Windows of 10 s from t0 = 100: [100, 110) holds 2 rows, [110, 120) none (left out),
        // [120, 130) holds 3.
        let rows = [
            r(100.0, false),
            r(109.9, true),
            r(120.0, true),
            r(125.0, true),
            r(129.0, false),
        ];
        let w = time_windows(&rows, 10.0, 0.05).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].start, w[0].rows, w[0].ood_rate),
            (Some(100.0), 2, Some(0.5))
        );
        assert_eq!((w[1].start, w[1].first, w[1].rows), (Some(120.0), 3, 3));
        assert!(time_windows(&rows, 0.0, 0.05).is_err());
    }

    #[test]
    fn reads_tsv_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.tsv");
        std::fs::write(
            &p,
            "source\tline\tscore\tclass\tprob\tp_value\tis_ood\na\t1\t-0.5\tpos\t0.5\t0.25\tfalse\na\t2\t-0.1\tneg\t0.9\t0.01\ttrue\n",
        )
        .unwrap();
        let rows = read_scored(&p).unwrap();
        assert_eq!(
            rows[1],
            Row {
                score: -0.1,
                is_ood: Some(true),
                p_value: Some(0.01),
                time: None,
            }
        );
        std::fs::write(&p, "source\tline\tscore\nx\t1\tnope\n").unwrap();
        let e = read_scored(&p).unwrap_err().to_string();
        assert!(
            e.contains("s.tsv") && e.contains('2') && e.contains("nope"),
            "{e}"
        );
    }
}
