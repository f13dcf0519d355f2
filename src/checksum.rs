//! Checksums recorded next to the files that define a model (`run.json`, `model.safetensors`,
//! calibration files): `FILE.sha256` in `sha256sum` format (`<hex>  <name>`, so
//! `sha256sum -c model.safetensors.sha256` checks it too), written after the file and checked on
//! every load. Files written before checksums existed have no `.sha256` and load unchecked.

use crate::error::{OeError, Result};
use std::path::{Path, PathBuf};

/// The checksum file of `path`: `path` + `.sha256`.
pub fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Records the sha256 of `path` (already written) in its sidecar, atomically.
pub fn record(path: &Path) -> Result<()> {
    let hex = crate::datasets::fetch::sha256_file(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::io::write_atomic(&sidecar(path), format!("{hex}  {name}\n").as_bytes())
}

/// Checks `path` against its sidecar when there is one: a mismatch names the file and both
/// hashes; an unreadable or malformed sidecar is an error too.
pub fn verify(path: &Path) -> Result<()> {
    let side = sidecar(path);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(OeError::io(&side, e)),
    };
    let want = text.split_whitespace().next().unwrap_or("");
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OeError::parse(&side, 1, "not a sha256 line"));
    }
    let got = crate::datasets::fetch::sha256_file(path)?;
    if !got.eq_ignore_ascii_case(want) {
        return Err(OeError::Data(format!(
            "{}: sha256 {got} differs from the {want} recorded when it was written ({}); the file \
             was changed or damaged since",
            path.display(),
            side.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_checks_and_names_a_changed_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        std::fs::write(&p, b"weights").unwrap();
        verify(&p).unwrap(); // no sidecar: unchecked
        record(&p).unwrap();
        // sha256("weights"), computed with `printf weights | sha256sum`.
        let side = std::fs::read_to_string(sidecar(&p)).unwrap();
        assert_eq!(
            side,
            "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c  model.safetensors\n"
        );
        verify(&p).unwrap();
        std::fs::write(&p, b"weightz").unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("changed or damaged"),
            "{e}"
        );
        std::fs::write(sidecar(&p), "nonsense\n").unwrap();
        assert!(verify(&p).is_err());
    }
}
