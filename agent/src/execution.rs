//! Where a replica runs: on the CPU, or on one GPU through ONNX Runtime's CUDA
//! execution provider. Placement names the place ("cpu", "gpu:N"); the GPU build of
//! ONNX Runtime keeps its CUDA provider in a library beside libonnxruntime.so, and
//! scripts/setup_gpu.sh puts the CUDA and cuDNN libraries that provider needs in
//! `cuda/` beside it. Pure: no ONNX Runtime, no NVML.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The library that holds ONNX Runtime's CUDA execution provider.
pub const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";

/// Where one replica runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Execution {
    #[default]
    Cpu,
    /// The GPU with this NVML index, through the CUDA execution provider.
    Cuda(u32),
}

impl Execution {
    /// The GPU index, if on a GPU.
    pub fn gpu(self) -> Option<u32> {
        match self {
            Execution::Cpu => None,
            Execution::Cuda(index) => Some(index),
        }
    }

    pub fn from_gpu(gpu: Option<u32>) -> Execution {
        gpu.map_or(Execution::Cpu, Execution::Cuda)
    }
}

impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Execution::Cpu => f.write_str("cpu"),
            Execution::Cuda(index) => write!(f, "gpu:{index}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown device {0:?}: expected \"cpu\" or \"gpu:N\" (N a GPU index)")]
pub struct UnknownExecution(pub String);

impl FromStr for Execution {
    type Err = UnknownExecution;

    /// "" (a scheduler that predates devices) and "cpu" are the CPU; "gpu:N" is GPU N.
    fn from_str(s: &str) -> Result<Execution, UnknownExecution> {
        match s {
            "" | "cpu" => Ok(Execution::Cpu),
            _ => s
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(Execution::Cuda)
                .ok_or_else(|| UnknownExecution(s.to_string())),
        }
    }
}

/// Why the ONNX Runtime at `library` cannot run models on a GPU, or `None` when it
/// can (its CUDA provider library is beside it).
pub fn cuda_missing(library: &Path) -> Option<String> {
    let provider = library.with_file_name(CUDA_PROVIDER);
    if provider.is_file() {
        return None;
    }
    Some(format!(
        "this node's ONNX Runtime ({}) is the CPU build: it has no CUDA execution provider \
         ({CUDA_PROVIDER} is not beside it). Run scripts/setup.sh on this machine with its \
         NVIDIA driver loaded (it then fetches the GPU build into .cache/onnxruntime-gpu/), \
         or give the model device = \"cpu\"",
        library.display()
    ))
}

/// ONNX Runtime's words for a CUDA provider that would not start, with what they
/// mean when the cause is the machine's: libcuda.so.1 is the NVIDIA driver's.
pub fn explain_cuda_failure(message: &str) -> String {
    if message.contains("libcuda.so.1") {
        format!(
            "{message} (libcuda.so.1 comes with the NVIDIA driver: this machine has none \
             loaded, or not one for CUDA 13, which needs driver 580 or newer)"
        )
    } else {
        message.to_string()
    }
}

/// The directory of CUDA and cuDNN libraries set up beside the ONNX Runtime at
/// `library`, when there is one.
pub fn cuda_library_dir(library: &Path) -> Option<PathBuf> {
    let dir = library.parent()?.join("cuda");
    dir.is_dir().then_some(dir)
}

/// `LD_LIBRARY_PATH` for a worker: `dir` first, then what the agent had. The CUDA
/// provider finds libcudart and cuDNN by name, through the loader's search path, and
/// the loader reads that path once, when the process starts.
pub fn library_path(dir: &Path, existing: Option<&OsStr>) -> OsString {
    let mut path = dir.as_os_str().to_owned();
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        path.push(":");
        path.push(existing);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_placement_names_them() {
        assert_eq!("cpu".parse(), Ok(Execution::Cpu));
        assert_eq!(
            "".parse(),
            Ok(Execution::Cpu),
            "a scheduler that sends none"
        );
        assert_eq!("gpu:0".parse(), Ok(Execution::Cuda(0)));
        assert_eq!("gpu:3".parse(), Ok(Execution::Cuda(3)));
        for bad in ["gpu", "gpu:", "gpu:x", "gpu:-1", "cuda:0", "GPU:0"] {
            let e = bad.parse::<Execution>().expect_err("refused");
            assert!(
                e.to_string().contains("expected \"cpu\" or \"gpu:N\""),
                "{e}"
            );
        }
        assert_eq!(Execution::Cuda(2).to_string(), "gpu:2");
        assert_eq!(Execution::Cpu.to_string(), "cpu");
        assert_eq!(Execution::from_gpu(Some(1)), Execution::Cuda(1));
        assert_eq!(Execution::Cuda(1).gpu(), Some(1));
        assert_eq!(Execution::from_gpu(None), Execution::Cpu);
    }

    #[test]
    fn the_cpu_build_is_told_apart_from_the_gpu_build_by_its_cuda_provider() {
        let dir = tempfile::tempdir().expect("tempdir");
        let library = dir.path().join("libonnxruntime.so");
        std::fs::write(&library, b"").expect("write");
        let why = cuda_missing(&library).expect("no provider beside it");
        assert!(
            why.contains("CPU build") && why.contains("scripts/setup.sh"),
            "{why}"
        );
        assert_eq!(cuda_library_dir(&library), None);

        std::fs::write(dir.path().join(CUDA_PROVIDER), b"").expect("write");
        std::fs::create_dir(dir.path().join("cuda")).expect("write");
        assert_eq!(cuda_missing(&library), None);
        assert_eq!(cuda_library_dir(&library), Some(dir.path().join("cuda")));
    }

    #[test]
    fn a_missing_driver_is_named_as_such() {
        let raw = "Failed to load library libonnxruntime_providers_cuda.so with error: \
                   libcuda.so.1: cannot open shared object file";
        let told = explain_cuda_failure(raw);
        assert!(
            told.starts_with(raw) && told.contains("NVIDIA driver"),
            "{told}"
        );
        assert_eq!(explain_cuda_failure("out of memory"), "out of memory");
    }

    #[test]
    fn the_cuda_libraries_come_first_in_the_workers_search_path() {
        let dir = Path::new("/c/onnxruntime-gpu/cuda");
        assert_eq!(library_path(dir, None), "/c/onnxruntime-gpu/cuda");
        assert_eq!(
            library_path(dir, Some(OsStr::new(""))),
            "/c/onnxruntime-gpu/cuda"
        );
        assert_eq!(
            library_path(dir, Some(OsStr::new("/usr/local/lib"))),
            "/c/onnxruntime-gpu/cuda:/usr/local/lib"
        );
    }
}
