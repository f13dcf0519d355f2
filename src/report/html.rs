//! One self-contained HTML page: the aggregated table, notes, warnings and every plot as inline SVG
//! (no scripts, no external files: readable offline; the PNGs beside it are linked for download).

use crate::report::command::Report;
use crate::report::plots::PlotFile;
use std::path::{Path, PathBuf};

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn rel(path: &Path, page: Option<&Path>) -> String {
    let base = page.and_then(|p| p.parent());
    match base.and_then(|b| path.strip_prefix(b).ok()) {
        Some(r) => r.display().to_string(),
        None => path.display().to_string(),
    }
}

/// Renders the page.
pub fn page(
    report: &Report,
    header: &[String],
    rows: &[Vec<String>],
    notes: &[String],
    plots: &[PlotFile],
    run_dirs: &[PathBuf],
    output: Option<&Path>,
) -> String {
    let mut s = String::new();
    s += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
    s += "<title>Outlier Exposure report</title>\n<style>\n";
    s += "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}\n";
    s += "table{border-collapse:collapse;font-size:13px;margin:1em 0}\n";
    s += "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;white-space:nowrap}\n";
    s += "th{background:#f0f0f0} tr.mean td{font-weight:bold;background:#fafafa}\n";
    s += "td.warn{color:#a00;white-space:normal} .note{font-size:13px;color:#444}\n";
    s += ".plots{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;border:1px solid #ddd;padding:4px}\n";
    s += "figure svg{width:480px;height:auto;display:block} figcaption{font-size:12px}\n";
    s += "</style></head><body>\n<h1>Outlier Exposure: results report</h1>\n";
    s += &format!(
        "<p class=\"note\">{} evaluation(s) from: {}</p>\n",
        report.runs.len(),
        run_dirs
            .iter()
            .map(|d| format!("<code>{}</code>", esc(&d.display().to_string())))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let warned: Vec<&String> = report
        .agg
        .warnings
        .iter()
        .filter(|w| !w.is_empty())
        .collect();
    if !warned.is_empty() {
        s += &format!(
            "<p class=\"note\" style=\"color:#a00\"><b>Warning:</b> {} row(s) aggregate results that differ in protocol, ratio or another column not grouped by; see the warning column.</p>\n",
            warned.len()
        );
    }
    s += "<h2>Aggregated results</h2>\n<table>\n<tr>";
    for h in header {
        s += &format!("<th>{}</th>", esc(h));
    }
    s += "</tr>\n";
    let ood_col = report.agg.keys.len() - 1;
    let warn_col = header.iter().position(|h| h == "warning");
    for r in rows {
        let class = if r.get(ood_col).is_some_and(|c| c == "mean") {
            " class=\"mean\""
        } else {
            ""
        };
        s += &format!("<tr{class}>");
        for (j, c) in r.iter().enumerate() {
            if Some(j) == warn_col {
                s += &format!("<td class=\"warn\">{}</td>", esc(c));
            } else {
                s += &format!("<td>{}</td>", esc(c));
            }
        }
        s += "</tr>\n";
    }
    s += "</table>\n";
    for n in notes {
        s += &format!("<p class=\"note\">{}</p>\n", esc(n));
    }
    s += "<h2>Evaluations</h2>\n<table>\n<tr><th>evaluation</th><th>dataset</th><th>method</th><th>model</th><th>score</th><th>protocol</th><th>OOD:ID</th><th>seed</th></tr>\n";
    for r in &report.runs {
        s += &format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&r.eval_dir),
            esc(&r.in_dataset),
            esc(&r.method),
            esc(&r.model),
            esc(&r.score),
            esc(&r.protocol),
            esc(&r.ratio),
            r.seed
        );
    }
    s += "</table>\n";
    if !plots.is_empty() {
        s += "<h2>Plots</h2>\n<p class=\"note\">ROC and precision-recall curves use each run's first OOD draw at the evaluated OOD:ID ratio (the legend gives that draw's AUROC/AUPR; the table averages all draws); grey horizontal lines in PR charts mark chance (the OOD fraction). Histograms compare in-distribution test scores with all OOD examples scored for the set.</p>\n";
        let mut group = String::new();
        let mut section = "";
        for p in plots {
            let sec = if p.kind == "hist" {
                "Score histograms"
            } else {
                "ROC and precision-recall curves"
            };
            if p.group != group || sec != section {
                if !group.is_empty() {
                    s += "</div>\n";
                }
                s += &format!(
                    "<h3>{}: {}</h3>\n<div class=\"plots\">\n",
                    esc(&p.group),
                    sec
                );
                group = p.group.clone();
                section = sec;
            }
            let svg = match p.svg.find("<svg") {
                Some(k) => &p.svg[k..],
                None => p.svg.as_str(),
            };
            s += &format!(
                "<figure>{svg}<figcaption>{} — <a href=\"{}\">PNG</a> · <a href=\"{}\">SVG</a></figcaption></figure>\n",
                esc(&p.title),
                esc(&rel(&p.png_path, output)),
                esc(&rel(&p.svg_path, output))
            );
        }
        s += "</div>\n";
    }
    s += "</body></html>\n";
    s
}
