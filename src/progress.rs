//! Rendering of training progress for the binaries: indicatif bars with loss, accuracy and ETA on a
//! terminal, plain periodic lines otherwise, nothing with `--quiet`.

use crate::train::{EpochSummary, Observer};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Bars,
    Lines,
    Quiet,
}

impl Style {
    /// Bars on a terminal (stderr), plain lines otherwise; quiet when asked.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Style::Quiet
        } else if std::io::stderr().is_terminal() {
            Style::Bars
        } else {
            Style::Lines
        }
    }
}

/// The binaries' observer; writes to stderr.
pub struct Progress {
    style: Style,
    bar: Option<ProgressBar>,
    last_line: Instant,
    loss_ema: f64,
    acc_ema: f64,
    steps: usize,
}

impl Progress {
    pub fn new(style: Style) -> Self {
        Self {
            style,
            bar: None,
            last_line: Instant::now(),
            loss_ema: f64::NAN,
            acc_ema: f64::NAN,
            steps: 0,
        }
    }
}

fn ema(prev: f64, x: f64) -> f64 {
    if prev.is_nan() {
        x
    } else {
        0.9 * prev + 0.1 * x
    }
}

impl Observer for Progress {
    fn warning(&mut self, msg: &str) {
        if let Some(b) = &self.bar {
            b.suspend(|| eprintln!("warning: {msg}"));
        } else {
            eprintln!("warning: {msg}");
        }
    }

    fn phase_start(
        &mut self,
        phase: &str,
        epochs: usize,
        steps_per_epoch: usize,
        start_epoch: usize,
    ) {
        self.steps = steps_per_epoch;
        match self.style {
            Style::Bars => {
                let total = ((epochs - start_epoch.min(epochs)) * steps_per_epoch) as u64;
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} steps {msg} (ETA {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(phase.to_string());
                self.bar = Some(bar);
            }
            Style::Lines => eprintln!(
                "[{phase}] {epochs} epochs x {steps_per_epoch} steps (starting at epoch {})",
                start_epoch + 1
            ),
            Style::Quiet => {}
        }
    }

    fn step(&mut self, phase: &str, epoch: usize, step: usize, loss: f64, accuracy: f64) {
        self.loss_ema = ema(self.loss_ema, loss);
        self.acc_ema = ema(self.acc_ema, accuracy);
        match self.style {
            Style::Bars => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                    b.set_message(format!(
                        "epoch {} loss {:.4} acc {:.1}%",
                        epoch + 1,
                        self.loss_ema,
                        self.acc_ema * 100.0
                    ));
                }
            }
            Style::Lines => {
                if self.last_line.elapsed().as_secs() >= 10 {
                    self.last_line = Instant::now();
                    eprintln!(
                        "[{phase}] epoch {} step {}/{} loss {:.4} acc {:.1}%",
                        epoch + 1,
                        step + 1,
                        self.steps,
                        self.loss_ema,
                        self.acc_ema * 100.0
                    );
                }
            }
            Style::Quiet => {}
        }
    }

    fn epoch_end(&mut self, phase: &str, _epoch: usize, s: &EpochSummary) {
        let wait = match s.data_wait_seconds {
            Some(w) if s.seconds > 0.0 => {
                format!(", waited {:.0}% for data", 100.0 * w / s.seconds)
            }
            _ => String::new(),
        };
        let line = format!(
            "[{phase}] epoch {} done: lr {:.6} loss {:.4} train acc {:.1}% ({} steps, {:.1} s{wait})",
            s.epoch,
            s.lr,
            s.loss,
            s.train_accuracy * 100.0,
            s.steps,
            s.seconds
        );
        match (&self.style, &self.bar) {
            (Style::Bars, Some(b)) => b.println(line),
            (Style::Quiet, _) => {}
            _ => eprintln!("{line}"),
        }
    }

    fn status(&mut self, msg: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.style != Style::Quiet {
            eprintln!("{msg}");
        }
    }
}

/// A download progress bar for `data fetch` (drawn only on a terminal, as indicatif does).
pub fn download_bar() -> crate::datasets::fetch::DownloadProgress {
    let bar: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);
    crate::datasets::fetch::DownloadProgress(std::sync::Arc::new(
        move |name: &str, bytes: u64, total: Option<u64>, done: bool| {
            let mut b = bar.lock().unwrap_or_else(|e| e.into_inner());
            if done {
                if let Some(pb) = b.take() {
                    pb.finish_and_clear();
                }
                return;
            }
            let pb = b.get_or_insert_with(|| {
                let pb = match total {
                    Some(n) => ProgressBar::new(n),
                    None => ProgressBar::new_spinner(),
                };
                if let Ok(st) = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                ) {
                    pb.set_style(st.progress_chars("=> "));
                }
                pb.set_message(name.to_string());
                pb
            });
            pb.set_position(bytes);
        },
    ))
}
