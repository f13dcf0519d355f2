//! Device selection (`--device auto|cpu|cuda|cuda:N`) and run-time CUDA loading.
//!
//! The binaries link only libtorch's CPU library, so that they start on machines without CUDA.
//! On a machine with a CUDA build of libtorch 2.11, [`load_cuda`] `dlopen`s `libtorch_cuda.so` with
//! `RTLD_GLOBAL` at start-up, which registers the CUDA backend; if it is absent or cannot load, the
//! program carries on with the CPU and says why.

use crate::error::{OeError, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first CUDA device when one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device by ordinal (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| format!("bad CUDA ordinal in `{s}`; expected cuda:N")),
                None => Err(format!(
                    "unknown device `{s}`; expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Pure selection logic: the device for `spec` when `n_cuda` CUDA devices are usable.
pub fn choose(spec: DeviceSpec, n_cuda: usize) -> Result<tch::Device> {
    match spec {
        DeviceSpec::Cpu => Ok(tch::Device::Cpu),
        DeviceSpec::Auto if n_cuda > 0 => Ok(tch::Device::Cuda(0)),
        DeviceSpec::Auto => Ok(tch::Device::Cpu),
        DeviceSpec::Cuda(i) if i < n_cuda => Ok(tch::Device::Cuda(i)),
        DeviceSpec::Cuda(i) => Err(OeError::Device(format!(
            "cuda:{i} requested but {n_cuda} CUDA device(s) are usable ({})",
            cuda_status()
        ))),
    }
}

/// A resolved device and a one-line explanation for the user.
#[derive(Clone, Debug)]
pub struct DeviceChoice {
    pub device: tch::Device,
    pub description: String,
}

/// Loads CUDA if possible, then applies [`choose`]; describes the choice.
pub fn resolve(spec: DeviceSpec) -> Result<DeviceChoice> {
    let n_cuda = if spec == DeviceSpec::Cpu {
        0
    } else {
        load_cuda();
        usable_cuda_devices()
    };
    let device = choose(spec, n_cuda)?;
    let description = match device {
        tch::Device::Cuda(i) => format!("device: cuda:{i} ({spec} requested; {})", cuda_status()),
        _ if spec == DeviceSpec::Cpu => "device: cpu (requested)".to_string(),
        _ => format!(
            "device: cpu ({spec} requested; no usable GPU: {})",
            cuda_status()
        ),
    };
    Ok(DeviceChoice {
        device,
        description,
    })
}

/// Number of CUDA devices libtorch can use now.
pub fn usable_cuda_devices() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// Outcome of trying to load `libtorch_cuda.so`.
#[derive(Clone, Debug)]
pub enum CudaStatus {
    Loaded(PathBuf),
    NotFound(Vec<PathBuf>),
    Failed(PathBuf, String),
}

impl fmt::Display for CudaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaStatus::Loaded(p) => write!(f, "CUDA libtorch loaded from {}", p.display()),
            CudaStatus::NotFound(tried) if tried.is_empty() => {
                write!(
                    f,
                    "libtorch_cuda.so not found (set OE_LIBTORCH_CUDA to its path)"
                )
            }
            CudaStatus::NotFound(tried) => write!(
                f,
                "libtorch_cuda.so not found in {} (set OE_LIBTORCH_CUDA to its path)",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CudaStatus::Failed(p, e) => {
                let first = e.lines().next().unwrap_or("");
                write!(f, "{} did not load: {first}", p.display())
            }
        }
    }
}

static CUDA: OnceLock<CudaStatus> = OnceLock::new();

/// The result of [`load_cuda`] (loading it first if needed).
pub fn cuda_status() -> &'static CudaStatus {
    load_cuda()
}

/// Tries once per process to `dlopen(libtorch_cuda.so, RTLD_NOW | RTLD_GLOBAL)`: from
/// `$OE_LIBTORCH_CUDA` if set, else next to the `libtorch_cpu.so` this process loaded.
pub fn load_cuda() -> &'static CudaStatus {
    CUDA.get_or_init(|| {
        let candidates = cuda_candidates();
        let Some(path) = candidates.iter().find(|p| p.exists()) else {
            return CudaStatus::NotFound(candidates);
        };
        // SAFETY: loading libtorch_cuda runs its static initialisers, which register the CUDA
        // backend with the already-loaded libtorch_cpu of the same version; nothing else is called.
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
        match unsafe { libloading::os::unix::Library::open(Some(path), flags) } {
            Ok(lib) => {
                // Keep it loaded for the life of the process.
                std::mem::forget(lib);
                CudaStatus::Loaded(path.clone())
            }
            Err(e) => CudaStatus::Failed(path.clone(), e.to_string()),
        }
    })
}

fn cuda_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("OE_LIBTORCH_CUDA") {
        return vec![PathBuf::from(p)];
    }
    loaded_libtorch_dir()
        .map(|d| vec![d.join("libtorch_cuda.so")])
        .unwrap_or_default()
}

/// Directory of the `libtorch_cpu.so` mapped into this process (from `/proc/self/maps`).
fn loaded_libtorch_dir() -> Option<PathBuf> {
    // Make sure libtorch is actually loaded (it is, as soon as any tch symbol was linked).
    let _ = tch::Cuda::is_available();
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// Sets libtorch's intra-op threads (0 = leave libtorch's default) so rayon and libtorch do not
/// oversubscribe small machines.
pub fn set_torch_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// The arithmetic of inference's matrix products (`--precision`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// float32 throughout (the default; what training used).
    #[default]
    Float32,
    /// Opt-in: the CPU GRU's matrix products take bfloat16 inputs (8 significant bits) with float32
    /// sums, on CPUs with AVX512_BF16; the gate arithmetic, the input table and the head stay float32.
    /// Results are still batch-invariant, but move from float32's (`score` reports by how much).
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this machine's CPU can run it (bfloat16 needs AVX512_BF16).
    pub fn available(self) -> bool {
        match self {
            Precision::Float32 => true,
            Precision::Bf16 => oe_kernels::bf16::supported(),
        }
    }

    /// Whether this is the default (float32): what results leave unsaid.
    pub fn is_default(&self) -> bool {
        *self == Precision::Float32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        for s in ["auto", "cpu", "cuda:0", "cuda:2"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn selection_logic() {
        use tch::Device;
        assert_eq!(choose(DeviceSpec::Auto, 0).unwrap(), Device::Cpu);
        assert_eq!(choose(DeviceSpec::Auto, 2).unwrap(), Device::Cuda(0));
        assert_eq!(choose(DeviceSpec::Cpu, 2).unwrap(), Device::Cpu);
        assert_eq!(choose(DeviceSpec::Cuda(1), 2).unwrap(), Device::Cuda(1));
        let err = choose(DeviceSpec::Cuda(2), 2).unwrap_err().to_string();
        assert!(err.contains("cuda:2"), "{err}");
        assert!(choose(DeviceSpec::Cuda(0), 0).is_err());
    }

    #[test]
    fn cpu_path_resolves_and_computes() {
        let c = resolve(DeviceSpec::Cpu).unwrap();
        assert_eq!(c.device, tch::Device::Cpu);
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0]).to_device(c.device);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 3.0);
    }

    #[test]
    fn auto_never_fails_and_explains() {
        let c = resolve(DeviceSpec::Auto).unwrap();
        assert!(c.description.starts_with("device: "), "{}", c.description);
    }
}
