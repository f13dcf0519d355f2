//! The library's one error type. Binaries wrap it in `anyhow` and print the whole chain.

use std::path::PathBuf;

/// Everything that can go wrong inside the `oe` library.
#[derive(Debug, thiserror::Error)]
pub enum OeError {
    /// Bad input values for a metric (empty class, NaN, length mismatch, ...).
    #[error("metric input: {0}")]
    Metric(String),

    /// Input file content that cannot be used; names the file and (1-based) line.
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A device string or device that cannot be used.
    #[error("device: {0}")]
    Device(String),

    /// Invalid configuration or argument combination.
    #[error("config: {0}")]
    Config(String),

    /// Dataset problems: missing files, checksum or count mismatches, unreadable archives.
    #[error("data: {0}")]
    Data(String),

    /// A stop was requested (SIGTERM, SIGUSR1 or SIGINT, see [`crate::interrupt`]); the work done so
    /// far was saved where it can be resumed from. The message says what and where.
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// Errors raised by libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl OeError {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OeError::Io {
            path: path.into(),
            source,
        }
    }

    /// A parse error at `path:line`.
    pub fn parse(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        OeError::Parse {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
}

/// An error and its causes on one line, `: `-separated (for records written to files).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s += &format!(": {e}");
        cur = e.source();
    }
    s
}

/// `Result` with [`OeError`].
pub type Result<T, E = OeError> = std::result::Result<T, E>;

/// Warnings that do not stop a command (a dataset count that differs from its manifest's, ...).
/// The library never prints: it hands each distinct message, once per process, to the sink the
/// binary installed with [`set_warning_sink`], or keeps it for [`take_warnings`] when none is set.
pub mod warnings {
    use std::sync::Mutex;

    type Sink = Box<dyn Fn(&str) + Send + Sync>;

    static SINK: Mutex<Option<Sink>> = Mutex::new(None);
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static PENDING: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Where warnings go from now on (the binaries print them to standard error).
    pub fn set_warning_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
        *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(sink));
    }

    /// Reports `msg` once per process.
    pub fn warn(msg: &str) {
        {
            let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
            if said.iter().any(|m| m == msg) {
                return;
            }
            said.push(msg.to_string());
        }
        match SINK.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(sink) => sink(msg),
            None => PENDING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(msg.to_string()),
        }
    }

    /// The warnings reported while no sink was set, oldest first (and forgets them).
    pub fn take_warnings() -> Vec<String> {
        std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn each_message_once() {
            super::warn("unit-test warning a");
            super::warn("unit-test warning a");
            let got: Vec<String> = super::take_warnings()
                .into_iter()
                .filter(|w| w.starts_with("unit-test warning"))
                .collect();
            assert_eq!(got, ["unit-test warning a"]);
        }
    }
}
