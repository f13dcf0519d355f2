//! `oe-text`: Outlier Exposure for text classifiers. A thin layer over the `oe` library: each
//! command is `args.request()`, then the library's `run_*`, then printing.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::{device, out, outln};
use oe::cli::text::{CompareArgs, EvalCommandArgs, TrainArgs};
use oe::cli::{DeviceArgs, MetricsArgs};
use oe::progress::{Progress, Style};
use std::process::ExitCode;

mod common;

#[derive(Parser, Debug)]
#[command(
    name = "oe-text",
    version,
    about = "Out-of-distribution detection for text classifiers with Outlier Exposure",
    long_about = "Out-of-distribution detection for text classifiers with Outlier Exposure \
(Hendrycks, Mazeika & Dietterich, ICLR 2019).\n\nAnomaly scores are oriented so that higher always \
means more anomalous; every metric names its positive class (OOD-positive by default, as the paper)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a baseline and (with --oe) an OE model, then evaluate both against every OOD set.
    Train(Box<TrainArgs>),
    /// Evaluate a model directory (or released weights) against OOD sets.
    Eval(Box<EvalCommandArgs>),
    /// Datasets: list, show, fetch, verify.
    Data(oe::cli::data::DataArgs),
    /// AUROC, AUPR, FPR at a TPR level and detection error from two files of anomaly scores.
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
    /// Score text files, directories or standard input with a model directory (streaming, in input
    /// order): anomaly score, predicted class, and is_ood with --threshold.
    Score(Box<oe::cli::score::ScoreArgs>),
    /// Serve the model over HTTP (JSON): POST /v1/score, GET /v1/model, /healthz, /readyz, /metrics.
    Serve(Box<oe::cli::score::ServeArgs>),
    /// Drift in a scored file: OOD rate, small-p-value share and p-value histogram per window.
    Monitor(oe::cli::score::MonitorArgs),
    /// Store the score threshold that keeps --tpr of held-out in-distribution validation texts.
    Calibrate(oe::cli::score::CalibrateArgs),
    /// Choose the stored detectors' hyper-parameters (feature layer, k, ReAct percentile, ViM
    /// dimension, ODIN temperature) on the dev split and a validation OOD set, never test data;
    /// eval, compare and score then use them.
    Tune(oe::cli::score::TuneArgs),
    /// Aggregate the results of many runs (text and vision): tables vs the paper, bootstrap
    /// intervals, plots, HTML.
    Report(oe::cli::report::ReportArgs),
    /// Detectors × training (baseline, OE, energy-bounded OE) × model (GRU, transformer, MiniLM) on
    /// every OOD set: trains what is missing, writes compare.csv / compare.md and per-model results.
    Compare(Box<CompareArgs>),
    /// Merge the parts of `score --shard I/N --output FILE` into FILE (byte-identical to an
    /// unsharded score), after checking that all parts are finished and agree.
    Merge(oe::cli::score::MergeArgs),
    /// Sweeps: a TOML grid of training runs, one run directory per point; run points locally or as a
    /// Slurm job array; status from the run directories.
    Sweep(oe::cli::cluster::SweepArgs),
}

/// Trains as `oe-text train` does (one sweep point, or the command itself).
fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let req = args.request(device(&args.device, args.quiet)?)?;
    let mut progress = Progress::new(Style::detect(args.quiet));
    let out = oe::text::pipeline::run_train(&req, &mut progress)
        .with_context(|| format!("training run in {}", req.out_dir.display()))?;
    out!("{}", out.table)?;
    Ok(())
}

fn sweep(args: &oe::cli::cluster::SweepArgs) -> anyhow::Result<()> {
    use oe::cli::cluster::SweepCommand;
    use oe::cluster::sweep;
    match &args.command {
        SweepCommand::Plan { sweep: file } => {
            let (s, _) = load_sweep(file)?;
            for p in &s.points {
                outln!(
                    "{:>4}  {:<40} oe-text train {}",
                    p.index,
                    p.name,
                    p.args.join(" ")
                )?;
            }
            eprintln!(
                "{} points; wrote {}",
                s.points.len(),
                s.out.join(sweep::PLAN_FILE).display()
            );
        }
        SweepCommand::Status { sweep: file, all } => {
            let s = sweep::load(file)?;
            out!("{}", sweep::status(&s).render(*all))?;
        }
        SweepCommand::Run { sweep: file, index } => {
            oe::interrupt::install()?;
            let (s, parsed) = load_sweep(file)?;
            let todo: Vec<usize> = match index {
                Some(i) => vec![s.point(*i)?.index],
                None => (0..s.points.len()).collect(),
            };
            let mut failed = Vec::new();
            for i in todo {
                let p = &s.points[i];
                if sweep::point_state(p) == sweep::PointState::Done {
                    eprintln!("point {i} ({}): already done", p.name);
                    continue;
                }
                eprintln!("point {i} ({}): oe-text train {}", p.name, p.args.join(" "));
                let t0 = std::time::Instant::now();
                match train(&parsed[i]) {
                    Ok(()) => sweep::mark_done(p, t0.elapsed().as_secs_f64())?,
                    Err(e) => {
                        let interrupted = common::interrupted(&e);
                        if !interrupted {
                            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                            sweep::mark_failed(p, &msg.join(": "))?;
                        }
                        let e = e.context(format!("sweep point {i} ({})", p.name));
                        if interrupted || index.is_some() {
                            return Err(e);
                        }
                        // Running every point: the failure is recorded; go on with the others.
                        eprintln!("{}", oe::cli::error_chain(e.as_ref()));
                        failed.push(format!("{i} ({})", p.name));
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} of {} points failed: {} (see `oe-text sweep status {}`)",
                    failed.len(),
                    s.points.len(),
                    failed.join(", "),
                    file.display()
                );
            }
        }
        SweepCommand::Slurm { sweep: file, slurm } => {
            let (s, _) = load_sweep(file)?;
            let out = oe::cluster::slurm::sweep_slurm(&oe::cluster::slurm::SweepSlurmRequest {
                sweep: &s,
                options: slurm.options()?,
                submit: slurm.submit,
                chdir: std::env::current_dir()?,
            })?;
            let Some(path) = &out.script else {
                out!("{}", out.status.render(false))?;
                eprintln!("nothing to submit: every point is done or running");
                return Ok(());
            };
            eprintln!(
                "wrote {} ({} tasks: {})",
                path.display(),
                out.todo.len(),
                oe::cluster::slurm::compact_ranges(&out.todo)
            );
            match &out.job {
                Some(id) => {
                    outln!("{id}")?;
                    eprintln!(
                        "submitted job array {id}; `oe-text sweep status {}` follows it",
                        file.display()
                    );
                }
                None => eprintln!("submit with: sbatch {}", path.display()),
            }
        }
    }
    Ok(())
}

/// Loads a sweep file, checks every point's train flags before anything runs, and writes
/// `OUT/sweep.json`.
fn load_sweep(
    file: &std::path::Path,
) -> anyhow::Result<(oe::cluster::sweep::Sweep, Vec<TrainArgs>)> {
    let s = oe::cluster::sweep::load(file)?;
    let parsed = s
        .points
        .iter()
        .map(|p| oe::cli::cluster::point_train_args(file, p))
        .collect::<oe::Result<Vec<_>>>()?;
    s.write_plan()?;
    Ok((s, parsed))
}

/// `score --slurm N`: the command line of this run, without `--slurm` and the Slurm flags
/// (those of [`oe::cli::cluster::SlurmArgs`], read from its clap definition).
fn score_argv_without_slurm() -> anyhow::Result<Vec<String>> {
    use clap::Args;
    let slurm = oe::cli::cluster::SlurmArgs::augment_args(clap::Command::new("slurm"))
        .arg(clap::Arg::new("slurm").long("slurm"));
    // (flag, whether it takes a value)
    let flags: Vec<(String, bool)> = slurm
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (format!("--{l}"), a.get_action().takes_values()))
        })
        .collect();
    let mut out = vec![oe::cluster::slurm::current_program()?.display().to_string()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        match flags.iter().find(|(f, _)| f == name) {
            Some((_, true)) if !a.contains('=') => {
                it.next();
            }
            Some(_) => {}
            None => out.push(a),
        }
    }
    Ok(out)
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => {
            oe::interrupt::install()?;
            train(&args)?;
        }
        Command::Sweep(args) => sweep(&args)?,
        Command::Merge(args) => {
            let out = oe::text::score::shard::run_merge(&args.request())?;
            if args.status {
                out!("{}", out.render_states())?;
                let done = out
                    .states
                    .iter()
                    .filter(|s| matches!(s, oe::text::score::shard::PartState::Done { .. }))
                    .count();
                if done < out.shards {
                    anyhow::bail!("{done} of {} parts done", out.shards);
                }
            } else {
                if let Some(c) = &out.counts {
                    eprintln!("{}", c.summary());
                }
                if let (Some(f), Some(d)) = (out.flagged_ood, &out.decision) {
                    eprintln!(
                        "flagged OOD ({d}): {f} of {} ({:.2}%)",
                        out.rows,
                        100.0 * f as f64 / out.rows.max(1) as f64
                    );
                }
                if let Some(p) = &out.output {
                    eprintln!(
                        "merged {} parts, {} rows: wrote {}",
                        out.shards,
                        out.rows,
                        p.display()
                    );
                }
            }
        }
        Command::Compare(args) => {
            oe::interrupt::install()?;
            let runs = args.runs(device(&args.train.device, args.train.quiet)?)?;
            let out_dir = args.out_dir();
            let mut progress = Progress::new(Style::detect(args.train.quiet));
            let out = oe::text::compare::run_compare(
                &runs,
                &args.detectors,
                &out_dir,
                args.tune,
                &mut progress,
            )
            .with_context(|| format!("comparison in {}", out_dir.display()))?;
            out!("{}", out.table)?;
            eprintln!(
                "results: {} and {} (per-model results: oe-text report {})",
                out.csv.display(),
                out.markdown.display(),
                out_dir.display()
            );
        }
        Command::Eval(args) => {
            let req = args.request(device(&args.device, false)?)?;
            let mut progress = Progress::new(Style::detect(false));
            let out = oe::text::pipeline::run_eval(&req, &mut progress).context("evaluating")?;
            out!("{}", out.table)?;
            eprintln!("results: {}", out.results_dir.display());
        }
        Command::Data(args) => {
            // A signal stops a download cleanly (its staging folder is removed).
            oe::interrupt::install()?;
            let (root, req) = args.request();
            let out = oe::text::data::command::run_data(&root, &req)?;
            out!("{}", out.text)?;
            if !out.failed.is_empty() {
                let what = match req {
                    oe::text::data::command::DataRequest::Show { .. } => "not loadable",
                    _ => "verification failed for",
                };
                anyhow::bail!("{what}: {}", out.failed.join(", "));
            }
        }
        Command::Metrics(args) => {
            let out =
                oe::metrics::files::run_metrics(&args.request()?).context("computing metrics")?;
            out!("{out}")?;
        }
        Command::Device(args) => outln!("{}", args.select()?.description)?,
        Command::Score(args) if args.slurm.is_some() => {
            let output = args.output.clone().ok_or_else(|| {
                anyhow::anyhow!("--slurm needs --output FILE (the merged output)")
            })?;
            let out = oe::cluster::slurm::score_slurm(&oe::cluster::slurm::ScoreSlurmRequest {
                score_argv: score_argv_without_slurm()?,
                output,
                shards: args.slurm.unwrap_or(1),
                options: args.slurm_opts.options()?,
                submit: args.slurm_opts.submit,
                chdir: std::env::current_dir()?,
            })?;
            eprintln!(
                "wrote {}, {} and {}",
                out.array_script.display(),
                out.merge_script.display(),
                out.submit_script.display()
            );
            match out.jobs {
                Some((a, m)) => outln!("{a} {m}")?,
                None => eprintln!("submit with: {}", out.submit_script.display()),
            }
        }
        Command::Score(args) => {
            oe::interrupt::install()?;
            let req = args.request(device(&args.device, args.quiet)?)?;
            let out = oe::text::pipeline::run_score(&req).context("scoring")?;
            if let Some((part, kept)) = &out.part {
                if !args.quiet {
                    if *kept {
                        eprintln!("{}: already finished, kept", part.display());
                    } else {
                        eprintln!("{}", out.summary.render());
                        eprintln!("wrote part {}", part.display());
                    }
                }
                return Ok(());
            }
            if !args.quiet {
                if let Some(n) = &out.threshold_note {
                    eprintln!("{n}");
                }
                eprintln!("{}", out.summary.render());
                if let Some(p) = &out.output {
                    eprintln!("wrote {}", p.display());
                }
            }
        }
        Command::Serve(args) => {
            let req = args.request(device(&args.device, false)?)?;
            oe::text::serve::run(
                &req,
                |addr| {
                    eprintln!(
                        "listening on http://{addr} (POST /v1/score; SIGTERM or Ctrl-C stops)"
                    )
                },
                shutdown_signal(),
            )
            .context("serving")?;
            eprintln!("stopped: requests in flight were answered");
        }
        Command::Monitor(args) => {
            let out = oe::text::score::monitor::run_monitor(&args.request()?)?;
            out!("{}", out.table)?;
            if let Some(p) = out.plot {
                eprintln!("wrote {}", p.display());
            }
        }
        Command::Tune(args) => {
            let req = args.request(device(&args.device, false)?)?;
            let out = oe::text::tune::run_tune(&req)
                .with_context(|| format!("tuning {}", req.model_dir.display()))?;
            out!("{}", out.table)?;
            eprintln!("recorded in {}", out.record_file.display());
        }
        Command::Calibrate(args) => {
            let req = args.request(device(&args.device, false)?)?;
            let (_, line) = oe::text::calibrate::run_calibrate(&req).context("calibrating")?;
            outln!("{line}")?;
        }
        Command::Report(args) => {
            let out = oe::report::run_report(&args.request()).context("building the report")?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            out!("{}", out.stdout)?;
            if let Some(first) = out.written.first() {
                eprintln!(
                    "wrote {} file(s), e.g. {}",
                    out.written.len(),
                    first.display()
                );
            }
        }
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    common::main(run)
}
