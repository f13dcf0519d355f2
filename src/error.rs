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

/// `Result` with [`OeError`].
pub type Result<T, E = OeError> = std::result::Result<T, E>;
