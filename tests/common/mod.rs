//! Generated fixtures shared by the integration tests: labelled CSV splits and one-text-per-line
//! files, small enough to train on in seconds.

use std::path::Path;

/// Writes `dir/{name}.csv` (`text,label`) for each `(name, rows)`, quoting every text.
pub fn write_splits(dir: &Path, splits: &[(&str, Vec<(String, &str)>)]) {
    for (name, rows) in splits {
        let mut s = String::from("text,label\n");
        for (t, l) in rows {
            s += &format!("\"{t}\",{l}\n");
        }
        std::fs::write(dir.join(format!("{name}.csv")), s).unwrap();
    }
}

/// Writes `n` lines `f(0..n)` to `path`.
pub fn write_lines(path: &Path, n: usize, f: impl Fn(usize) -> String) {
    let s: String = (0..n).map(|i| f(i) + "\n").collect();
    std::fs::write(path, s).unwrap();
}
