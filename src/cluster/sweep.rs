//! Sweeps: a grid of `oe-text train` runs from a TOML file, one run directory per point.
//!
//! ```toml
//! name = "paper"                 # optional (default: the file's stem)
//! out = "runs/sweep-paper"       # optional (default: runs/sweep-NAME)
//!
//! [fixed]                        # flags of every point (`--key value`; true = a bare flag)
//! oe = "wikitext2"
//! data-dir = "../shared/data"
//!
//! [grid]                         # one point per combination
//! in = ["sst", "trec", "20ng"]
//! seed = [1, 2, 3]
//! ```
//!
//! Keys are `oe-text train` flags without the dashes (`_` and `-` are the same); values are
//! strings, numbers, booleans or arrays (joined by commas: `ood = ["snli", "imdb"]`; in the grid,
//! an array of arrays gives one comma-joined value per point). Grid keys
//! vary in alphabetical order, the last fastest; point `i` is always the same point of the same
//! file. Its name is made of its grid values (`in-sst_seed-1`) and its run directory is
//! `OUT/NAME/`: exactly the directory `oe-text train --out OUT/NAME` writes, plus the sweep's
//! markers: `done.json` once the point's training and evaluation finished, `failed.json` with the
//! error when it failed. Relative paths (in `out` and in flags) are relative to the directory the
//! sweep runs from (the Slurm script `cd`s there).
//!
//! The state of every point comes from its directory alone (no Slurm needed): *done*
//! (`done.json`), *running* (a live lock, [`crate::rundir::RunLock`]), *failed* (`failed.json`),
//! *interrupted* (checkpoint files: it resumes) or *pending*.

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Flags a sweep sets itself.
const RESERVED: [&str; 3] = ["out", "resume", "help"];

/// The sweep's marker of a finished point.
pub const DONE_FILE: &str = "done.json";
/// The sweep's marker of a failed point.
pub const FAILED_FILE: &str = "failed.json";
/// The expanded sweep, written into its output directory.
pub const PLAN_FILE: &str = "sweep.json";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: Option<String>,
    out: Option<PathBuf>,
    #[serde(default)]
    fixed: toml::Table,
    #[serde(default)]
    grid: toml::Table,
}

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub index: usize,
    /// From its grid values (`in-sst_seed-1`), unique in the sweep.
    pub name: String,
    /// Its run directory (`OUT/NAME`).
    pub dir: PathBuf,
    /// Its grid values, in key order.
    pub values: Vec<(String, String)>,
    /// The `oe-text train` arguments (without the program name): the fixed flags, the grid values,
    /// `--out DIR --resume`.
    pub args: Vec<String>,
}

/// An expanded sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub name: String,
    /// The sweep file, absolute.
    pub file: PathBuf,
    pub file_sha256: String,
    /// The output directory (holds every point's run directory).
    pub out: PathBuf,
    pub points: Vec<Point>,
}

fn flag_name(key: &str) -> String {
    key.trim_start_matches('-').replace('_', "-")
}

/// The argument text of a scalar (or an array of scalars, comma-joined); `None` for `false`.
fn value_text(file: &Path, key: &str, v: &toml::Value) -> Result<Option<String>> {
    let bad = |what: &str| {
        OeError::Config(format!(
            "{}: `{key}`: {what} (strings, numbers, booleans or arrays of them)",
            file.display()
        ))
    };
    Ok(match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(true) => Some(String::new()),
        toml::Value::Boolean(false) => None,
        toml::Value::Array(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|x| match x {
                    toml::Value::Array(_) | toml::Value::Table(_) => Err(bad("nested arrays")),
                    x => Ok(value_text(file, key, x)?.unwrap_or_default()),
                })
                .collect::<Result<_>>()?;
            Some(parts.join(","))
        }
        toml::Value::Table(_) => return Err(bad("a table is not a value")),
        toml::Value::Datetime(_) => return Err(bad("a date is not a value")),
    })
}

/// `--key value` (or `--key` for a bare flag, nothing for `false`).
fn push_flag(args: &mut Vec<String>, key: &str, text: Option<String>) {
    if let Some(t) = text {
        args.push(format!("--{key}"));
        if !t.is_empty() {
            args.push(t);
        }
    }
}

/// A name part made of safe characters only.
fn name_part(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "x".into()
    } else {
        cleaned
    }
}

/// Reads and expands the sweep file `path`.
pub fn load(path: &Path) -> Result<Sweep> {
    let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    let text =
        String::from_utf8(bytes.clone()).map_err(|_| OeError::parse(path, 1, "not UTF-8"))?;
    let f: SweepFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(1);
        OeError::parse(path, line, e.message().to_string())
    })?;
    let name = f.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sweep".into())
    });
    let out = f
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{}", name_part(&name))));
    let mut fixed_args = Vec::new();
    for (k, v) in &f.fixed {
        let key = flag_name(k);
        if RESERVED.contains(&key.as_str()) {
            return Err(OeError::Config(format!(
                "{}: `{k}` is set by the sweep itself (each point gets --out OUT/NAME --resume)",
                path.display()
            )));
        }
        if f.grid.keys().any(|g| flag_name(g) == key) {
            return Err(OeError::Config(format!(
                "{}: `{k}` is in both [fixed] and [grid]",
                path.display()
            )));
        }
        push_flag(&mut fixed_args, &key, value_text(path, k, v)?);
    }
    // Each grid key: its values (as argument texts) and their name parts.
    let mut axes: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for (k, v) in &f.grid {
        let key = flag_name(k);
        if RESERVED.contains(&key.as_str()) {
            return Err(OeError::Config(format!(
                "{}: `{k}` is set by the sweep itself",
                path.display()
            )));
        }
        let vals = match v {
            toml::Value::Array(a) if a.is_empty() => {
                return Err(OeError::Config(format!(
                    "{}: grid `{k}` has no values",
                    path.display()
                )))
            }
            toml::Value::Array(a) => a
                .iter()
                .map(|x| value_text(path, k, x))
                .collect::<Result<Vec<_>>>()?,
            x => vec![value_text(path, k, x)?],
        };
        axes.push((key, vals));
    }
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    let mut points = Vec::with_capacity(total);
    let mut names = std::collections::HashMap::new();
    for index in 0..total {
        let mut rem = index;
        let mut values = Vec::new();
        let mut args = fixed_args.clone();
        let mut pick = vec![0; axes.len()];
        for (a, (_, vals)) in axes.iter().enumerate().rev() {
            pick[a] = rem % vals.len();
            rem /= vals.len();
        }
        let mut name_parts = Vec::new();
        for (a, (key, vals)) in axes.iter().enumerate() {
            let v = &vals[pick[a]];
            let shown = match v {
                None => "false".to_string(),
                Some(t) if t.is_empty() => "true".to_string(),
                Some(t) => t.clone(),
            };
            name_parts.push(format!("{}-{}", name_part(key), name_part(&shown)));
            values.push((key.clone(), shown));
            push_flag(&mut args, key, v.clone());
        }
        let pname = if name_parts.is_empty() {
            "run".to_string()
        } else {
            name_parts.join("_")
        };
        if let Some(other) = names.insert(pname.clone(), index) {
            return Err(OeError::Config(format!(
                "{}: points {other} and {index} would share the directory name `{pname}`; use values that differ in their last path component",
                path.display()
            )));
        }
        let dir = out.join(&pname);
        args.push("--out".into());
        args.push(dir.display().to_string());
        args.push("--resume".into());
        points.push(Point {
            index,
            name: pname,
            dir,
            values,
            args,
        });
    }
    Ok(Sweep {
        name,
        file: std::fs::canonicalize(path).map_err(|e| OeError::io(path, e))?,
        file_sha256: crate::io::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        out,
        points,
    })
}

impl Sweep {
    /// Point `index`, or an error naming the valid range.
    pub fn point(&self, index: usize) -> Result<&Point> {
        self.points.get(index).ok_or_else(|| {
            OeError::Config(format!(
                "{}: point {index} does not exist (the sweep has {} points, 0..{})",
                self.file.display(),
                self.points.len(),
                self.points.len().saturating_sub(1)
            ))
        })
    }

    /// Writes `OUT/sweep.json` (the expanded points), refusing when an earlier plan of the same
    /// output directory has other points (the file changed under running tasks).
    pub fn write_plan(&self) -> Result<()> {
        let p = self.out.join(PLAN_FILE);
        if let Ok(b) = std::fs::read(&p) {
            if let Ok(old) = serde_json::from_slice::<Sweep>(&b) {
                let names = |s: &Sweep| s.points.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
                if names(&old) != names(self) {
                    return Err(OeError::Config(format!(
                        "{}: holds a sweep with other points (from {}); use another `out` or remove it",
                        p.display(),
                        old.file.display()
                    )));
                }
            }
        }
        std::fs::create_dir_all(&self.out).map_err(|e| OeError::io(&self.out, e))?;
        crate::rundir::write_json(&p, self)
    }
}

/// The state of a point, from its run directory.
#[derive(Clone, Debug, PartialEq)]
pub enum PointState {
    Done,
    Running(String),
    Failed(String),
    /// Checkpoint files without a finished run: it resumes where it stopped.
    Interrupted,
    Pending,
}

impl PointState {
    pub fn label(&self) -> &'static str {
        match self {
            PointState::Done => "done",
            PointState::Running(_) => "running",
            PointState::Failed(_) => "failed",
            PointState::Interrupted => "interrupted",
            PointState::Pending => "pending",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    time: String,
    host: String,
    #[serde(default)]
    slurm_job: Option<String>,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default)]
    error: Option<String>,
}

/// The state of `p`.
pub fn point_state(p: &Point) -> PointState {
    if p.dir.join(DONE_FILE).is_file() {
        return PointState::Done;
    }
    if let Some(o) = crate::rundir::live_lock(&p.dir) {
        return PointState::Running(format!("pid {} on {}", o.pid, o.host));
    }
    if let Ok(b) = std::fs::read(p.dir.join(FAILED_FILE)) {
        let err = serde_json::from_slice::<Marker>(&b)
            .ok()
            .and_then(|m| m.error)
            .unwrap_or_else(|| "unreadable failed.json".into());
        return PointState::Failed(err);
    }
    let has_checkpoint = std::fs::read_dir(&p.dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join(crate::rundir::CHECKPOINT_STATE).is_file())
        })
        .unwrap_or(false);
    if has_checkpoint {
        PointState::Interrupted
    } else {
        PointState::Pending
    }
}

fn marker(seconds: Option<f64>, error: Option<String>) -> Marker {
    Marker {
        time: crate::io::utc_time(crate::io::unix_now()),
        host: crate::rundir::hostname(),
        slurm_job: crate::interrupt::slurm_array_task()
            .or_else(|| std::env::var("SLURM_JOB_ID").ok()),
        seconds,
        error,
    }
}

/// Marks `p` finished (removing an old failure marker).
pub fn mark_done(p: &Point, seconds: f64) -> Result<()> {
    let _ = std::fs::remove_file(p.dir.join(FAILED_FILE));
    crate::rundir::write_json(&p.dir.join(DONE_FILE), &marker(Some(seconds), None))
}

/// Marks `p` failed with `error`.
pub fn mark_failed(p: &Point, error: &str) -> Result<()> {
    std::fs::create_dir_all(&p.dir).map_err(|e| OeError::io(&p.dir, e))?;
    crate::rundir::write_json(
        &p.dir.join(FAILED_FILE),
        &marker(None, Some(error.to_string())),
    )
}

/// Counts of the points' states, and each point's.
#[derive(Clone, Debug)]
pub struct SweepStatus {
    pub states: Vec<(Point, PointState)>,
}

impl SweepStatus {
    pub fn count(&self, label: &str) -> usize {
        self.states
            .iter()
            .filter(|(_, s)| s.label() == label)
            .count()
    }

    /// Indices of the points not done and not running (what a resubmission runs).
    pub fn unfinished(&self) -> Vec<usize> {
        self.states
            .iter()
            .filter(|(_, s)| !matches!(s, PointState::Done | PointState::Running(_)))
            .map(|(p, _)| p.index)
            .collect()
    }

    /// A summary line and one line per point not done.
    pub fn render(&self, all: bool) -> String {
        let mut s = format!(
            "{} points: {} done, {} running, {} failed, {} interrupted, {} pending\n",
            self.states.len(),
            self.count("done"),
            self.count("running"),
            self.count("failed"),
            self.count("interrupted"),
            self.count("pending")
        );
        for (p, st) in &self.states {
            if all || *st != PointState::Done {
                let detail = match st {
                    PointState::Running(d) | PointState::Failed(d) => format!(": {d}"),
                    _ => String::new(),
                };
                s += &format!("  {:>4} {:<12} {}{detail}\n", p.index, st.label(), p.name);
            }
        }
        s
    }
}

/// The state of every point of `sweep`.
pub fn status(sweep: &Sweep) -> SweepStatus {
    SweepStatus {
        states: sweep
            .points
            .iter()
            .map(|p| (p.clone(), point_state(p)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(d: &Path, body: &str) -> PathBuf {
        let p = d.join("s.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn grid_expands_in_key_order_with_fixed_flags() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "out = \"o\"\n[fixed]\noe = \"wikitext2\"\nquiet = true\nno_eval = false\nood = [\"snli\", \"imdb\"]\n[grid]\nseed = [1, 2]\nin = [\"sst\", \"d/trec.csv\"]\nlr = 0.5\n",
        );
        let s = load(&p).unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.points.len(), 4);
        let names: Vec<&str> = s.points.iter().map(|p| p.name.as_str()).collect();
        // Keys in alphabetical order (in, lr, seed), the last fastest.
        assert_eq!(
            names,
            [
                "in-sst_lr-0.5_seed-1",
                "in-sst_lr-0.5_seed-2",
                "in-trec.csv_lr-0.5_seed-1",
                "in-trec.csv_lr-0.5_seed-2"
            ]
        );
        let p2 = &s.points[2];
        assert_eq!(p2.dir, Path::new("o/in-trec.csv_lr-0.5_seed-1"));
        assert_eq!(
            p2.args,
            [
                "--oe",
                "wikitext2",
                "--ood",
                "snli,imdb",
                "--quiet",
                "--in",
                "d/trec.csv",
                "--lr",
                "0.5",
                "--seed",
                "1",
                "--out",
                "o/in-trec.csv_lr-0.5_seed-1",
                "--resume"
            ]
        );
        assert!(s.point(4).unwrap_err().to_string().contains("has 4 points"));
    }

    #[test]
    fn bad_sweeps_are_refused_with_the_file_and_reason() {
        let d = tempfile::tempdir().unwrap();
        for (body, want) in [
            ("[fixed]\nout = \"x\"\n", "set by the sweep itself"),
            ("[grid]\nseed = []\n", "has no values"),
            ("[fixed]\nseed = 1\n[grid]\nseed = [2]\n", "in both"),
            (
                "[grid]\nin = [\"a/x.csv\", \"b/x.csv\"]\n",
                "share the directory name",
            ),
            ("[grid]\nood = [[[\"a\"]]]\n", "nested arrays"),
            ("[grdi]\nseed = [1]\n", "unknown field"),
            ("name = \n", "s.toml:1"),
        ] {
            let p = write(d.path(), body);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("s.toml"), "{body:?}: {e}");
        }
    }

    #[test]
    fn states_come_from_the_run_directories() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        let p = write(
            d.path(),
            &format!(
                "out = {:?}\n[grid]\nseed = [1, 2, 3, 4, 5]\n",
                out.display().to_string()
            ),
        );
        let s = load(&p).unwrap();
        s.write_plan().unwrap();
        mark_done(&s.points[0], 1.0).unwrap();
        mark_failed(&s.points[1], "data: boom").unwrap();
        std::fs::create_dir_all(s.points[2].dir.join("baseline")).unwrap();
        std::fs::write(
            s.points[2]
                .dir
                .join("baseline")
                .join(crate::rundir::CHECKPOINT_STATE),
            "{}",
        )
        .unwrap();
        let _lock = crate::rundir::RunLock::acquire(&s.points[3].dir, "test").unwrap();
        // The lock of this very process counts as stale for a writer, but the status view of
        // another process would see it live: check the file rather than the liveness here.
        assert!(s.points[3].dir.join(crate::rundir::LOCK_FILE).is_file());
        let st = status(&s);
        let labels: Vec<&str> = st.states.iter().map(|(_, s)| s.label()).collect();
        assert_eq!(labels[..3], ["done", "failed", "interrupted"]);
        assert_eq!(labels[4], "pending");
        assert!(st.render(false).contains("data: boom"));
        assert_eq!(st.unfinished().iter().filter(|&&i| i != 3).count(), 3);
        // A changed file over the same output is refused.
        let p = write(
            d.path(),
            &format!(
                "out = {:?}\n[grid]\nseed = [7]\n",
                out.display().to_string()
            ),
        );
        let e = load(&p).unwrap().write_plan().unwrap_err().to_string();
        assert!(e.contains("other points"), "{e}");
    }
}
