//! `oe-text metrics`: metrics from two files of anomaly scores, rendered as a table, JSON or CSV.

use super::{DetectionMetrics, MetricsConfig, Positive};
use crate::error::Result;
use std::path::PathBuf;

/// Output format for small result tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    #[default]
    Table,
    Json,
    Csv,
}

/// A validated `metrics` request.
#[derive(Clone, Debug)]
pub struct MetricsRequest {
    pub in_file: PathBuf,
    pub out_file: PathBuf,
    /// Read this CSV column instead of one number per line.
    pub column: Option<String>,
    pub config: MetricsConfig,
    /// The files hold normality scores: negate them.
    pub higher_is_normal: bool,
    pub format: TableFormat,
}

/// Runs `metrics`: reads both files, computes, and renders in the chosen format.
pub fn run_metrics(req: &MetricsRequest) -> Result<String> {
    let mut in_scores = crate::io::read_scores(&req.in_file, req.column.as_deref())?;
    let mut ood_scores = crate::io::read_scores(&req.out_file, req.column.as_deref())?;
    if req.higher_is_normal {
        in_scores.iter_mut().for_each(|s| *s = -*s);
        ood_scores.iter_mut().for_each(|s| *s = -*s);
    }
    let m = DetectionMetrics::compute(&in_scores, &ood_scores, &req.config)?;
    Ok(render_metrics(&m, req.format))
}
/// Renders metrics as an aligned table, one JSON object, or a two-line CSV.
pub fn render_metrics(m: &DetectionMetrics, format: TableFormat) -> String {
    let named = m.named();
    match format {
        TableFormat::Table => {
            let mut s = format!(
                "n_in = {}, n_ood = {}, positive class = {}\n",
                m.n_in,
                m.n_ood,
                match m.positive {
                    Positive::Ood => "OOD",
                    Positive::Id => "in-distribution",
                }
            );
            for (k, v) in &named {
                s += &format!("{k:<24} {:>8.2}%\n", v * 100.0);
            }
            s
        }
        TableFormat::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("n_in".into(), m.n_in.into());
            obj.insert("n_ood".into(), m.n_ood.into());
            obj.insert("positive".into(), m.positive.suffix().into());
            for (k, v) in &named {
                obj.insert(k.clone(), (*v).into());
            }
            serde_json::Value::Object(obj).to_string() + "\n"
        }
        TableFormat::Csv => {
            let mut head = vec!["n_in".to_string(), "n_ood".to_string()];
            let mut vals = vec![m.n_in.to_string(), m.n_ood.to_string()];
            for (k, v) in &named {
                head.push(k.clone());
                vals.push(format!("{v}"));
            }
            format!("{}\n{}\n", head.join(","), vals.join(","))
        }
    }
}
