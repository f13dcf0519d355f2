//! Flags of `oe-text data list | show NAME | fetch NAME... | verify [NAME...] | bench`.

use crate::text::data::command::DataRequest;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data root (default: $OE_DATA_DIR, then ~/.cache/oe/data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum DataCommand {
    /// List the known datasets, their role and whether their files are present.
    List,
    /// Counts per split and a few examples of one dataset (manifest or loader name).
    Show {
        name: String,
        /// Examples to print per split.
        #[arg(long, default_value_t = 3)]
        examples: usize,
    },
    /// Download the missing files of datasets (from $OE_DATA_MIRROR when set, else the manifest URLs).
    Fetch(FetchArgs),
    /// Re-check the files on disk (sha256) and the loaders' example counts (default: every dataset present).
    Verify { names: Vec<String> },
    /// Benchmark: parse + tokenise the IMDB test split (from the .tar.gz) and extract the
    /// WikiText-2 sentences (experiments/bench_data.sh runs it in release).
    Bench {
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// The flags of `data fetch` (both binaries).
#[derive(clap::Args, Clone, Debug)]
pub struct FetchArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Also fetch optional files (e.g. the CIFAR binary versions, SVHN extra).
    #[arg(long)]
    pub all: bool,
    /// Mirror base URL (overrides $OE_DATA_MIRROR): http://host/path, file:///dir or a folder; it
    /// may hold the data-root layout or the original archives by file name.
    #[arg(long)]
    pub mirror: Option<String>,
    /// Also download files the manifest has no checksum for (e.g. Tiny ImageNet, Places365;
    /// checked by example counts only).
    #[arg(long)]
    pub insecure: bool,
}

impl FetchArgs {
    /// `$OE_DATA_MIRROR` and the defaults, with these flags and a download bar.
    pub fn options(&self) -> crate::datasets::fetch::FetchOptions {
        let mut opts = crate::datasets::fetch::FetchOptions::from_env();
        opts.all = self.all;
        opts.insecure = self.insecure;
        opts.progress = Some(crate::progress::download_bar());
        if self.mirror.is_some() {
            opts.mirror = self.mirror.clone();
        }
        opts
    }
}

impl DataArgs {
    /// The data root (`--data-dir`, `$OE_DATA_DIR`, the cache directory) and the command.
    pub fn request(&self) -> (PathBuf, DataRequest) {
        let root = crate::datasets::resolve_data_root(self.data_dir.as_deref());
        let req = match &self.command {
            DataCommand::List => DataRequest::List,
            DataCommand::Show { name, examples } => DataRequest::Show {
                name: name.clone(),
                examples: *examples,
            },
            DataCommand::Fetch(f) => DataRequest::Fetch {
                names: f.names.clone(),
                opts: f.options(),
            },
            DataCommand::Verify { names } => DataRequest::Verify {
                names: names.clone(),
            },
            DataCommand::Bench { repeats } => DataRequest::Bench { repeats: *repeats },
        };
        (root, req)
    }
}
