//! ONNX Runtime, loaded as a shared library: finding it, and sessions over it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use herd_proto::DataType;
use ort::session::Session as OrtSession;
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, ValueType,
};

use crate::execution::Execution;
use crate::session::{LoadError, Loader, Session, SessionError};
use herd_core::repository::ModelFiles;
use herd_core::tensor::{decode_vec, encode_slice, Element, ModelSpec, Tensor, TensorSpec};

/// The ONNX Runtime version herd is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// What goes wrong with ONNX Runtime in this process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtError {
    #[error(
        "cannot load ONNX Runtime {version} ({tried}). Run scripts/setup.sh to fetch it into .cache/, \
         or point --ort-lib / HERD_ORT_LIB at a libonnxruntime.so of version {version}",
        version = ORT_VERSION
    )]
    NotFound { tried: String },
    #[error("ONNX Runtime at {} failed to start: {error}", .path.display())]
    Start { path: PathBuf, error: String },
    #[error("cannot run on GPU {index}: {why}")]
    NoGpu { index: u32, why: String },
    /// ONNX Runtime's own words: a model it cannot open, a run it refused.
    #[error("{0}")]
    Engine(String),
    #[error("'{name}' is not a tensor ({kind}); herd serves tensor models")]
    NotATensor { name: String, kind: String },
    #[error("'{name}' has element type {kind}, which herd does not serve yet")]
    UnsupportedElement { name: String, kind: String },
    #[error("{0} tensors are not supported")]
    UnsupportedInput(DataType),
    #[error("the model returned a non-tensor output ({0})")]
    NonTensorOutput(String),
    #[error("the model returned {0} tensors, which herd does not serve yet")]
    UnsupportedOutput(String),
}

impl<R> From<ort::Error<R>> for OrtError
where
    ort::Error<R>: std::fmt::Display,
{
    fn from(e: ort::Error<R>) -> OrtError {
        OrtError::Engine(e.to_string())
    }
}

/// Where to look for libonnxruntime, in order: the explicit path (--ort-lib or
/// HERD_ORT_LIB), the project's cache as scripts/setup.sh fills it (found from the
/// working directory or from the executable's place in target/; its GPU build, set up
/// only on a machine with an NVIDIA driver, before its CPU build), then the system's
/// library path.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let mut found: Vec<PathBuf> = dirs
        .into_iter()
        .flat_map(|d| {
            ["onnxruntime-gpu", "onnxruntime"]
                .map(|build| d.join(".cache").join(build).join("libonnxruntime.so"))
        })
        .filter(|p| p.is_file())
        .take(1)
        .collect();
    found.push(PathBuf::from("libonnxruntime.so"));
    found
}

/// Loads ONNX Runtime once per process, from the first candidate that loads.
pub struct OrtRuntime {
    env: ort::environment::Environment,
    pub library: PathBuf,
}

impl OrtRuntime {
    pub fn init(explicit: Option<&Path>) -> Result<OrtRuntime, OrtError> {
        let mut tried = Vec::new();
        for path in candidates(explicit) {
            match ort::init_from(&path) {
                Ok(builder) => {
                    let env = builder
                        .with_name("herd")
                        .build()
                        .map_err(|e| OrtError::Start {
                            path: path.clone(),
                            error: e.to_string(),
                        })?;
                    return Ok(OrtRuntime { env, library: path });
                }
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
        Err(OrtError::NotFound {
            tried: tried.join("; "),
        })
    }

    /// Opens a model file in a new session on `execution`, with ONNX Runtime's CPU
    /// memory arena and its threads' spinning on or off (see
    /// `ModelSettings::memory_arena` and `intra_op_spinning`).
    pub fn open(
        &self,
        path: &Path,
        execution: Execution,
        intra_op_threads: usize,
        memory_arena: bool,
        spinning: bool,
    ) -> Result<(ModelSpec, OnnxSession), OrtError> {
        let mut builder = OrtSession::builder(&self.env)?;
        let cpu = ort::ep::CPU::default()
            .with_arena_allocator(memory_arena)
            .build();
        builder = match execution {
            Execution::Cpu => builder.with_execution_providers([cpu])?,
            Execution::Cuda(index) => {
                if let Some(why) = crate::execution::cuda_missing(&self.library) {
                    return Err(OrtError::NoGpu { index, why });
                }
                // Failing to start CUDA must fail the load: running silently on the CPU
                // would hold a GPU's place and answer at a CPU's speed. Nodes the CUDA
                // provider does not take still run on the CPU, as ONNX Runtime assigns.
                let cuda = ort::ep::CUDA::default()
                    .with_device_id(index as i32)
                    .build()
                    .error_on_failure();
                builder
                    .with_execution_providers([cuda, cpu])
                    .map_err(|e| OrtError::NoGpu {
                        index,
                        why: crate::execution::explain_cuda_failure(&e.to_string()),
                    })?
            }
        };
        if intra_op_threads > 0 {
            builder = builder.with_intra_threads(intra_op_threads)?;
        }
        if !spinning {
            builder = builder.with_intra_op_spinning(false)?;
        }
        // A failed run comes back as an error (and is logged, throttled, by the runner);
        // ONNX Runtime's own line per failure would let a client flood the logs with
        // data of its choosing.
        builder = builder.with_log_level(ort::logging::LogLevel::Fatal)?;
        let session = builder.commit_from_file(path)?;
        let spec = ModelSpec {
            inputs: session
                .inputs()
                .iter()
                .map(|o| outlet_spec(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(|o| outlet_spec(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
        };
        Ok((spec, OnnxSession { session }))
    }
}

/// Sessions in this process: what `herd bench --local` and the worker process use.
impl Loader for OrtRuntime {
    fn gpu_support(&self) -> Result<(), String> {
        crate::execution::cuda_missing(&self.library).map_or(Ok(()), Err)
    }

    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let (spec, session) = self.open(
            &files.path,
            Execution::from_gpu(files.gpu),
            files.settings.intra_op_threads,
            files.settings.memory_arena,
            files.settings.intra_op_spinning,
        )?;
        Ok((spec, Box::new(session)))
    }
}

fn outlet_spec(name: &str, dtype: &ValueType) -> Result<TensorSpec, OrtError> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err(OrtError::NotATensor {
            name: name.to_string(),
            kind: format!("{dtype:?}"),
        });
    };
    let dtype = data_type(*ty).ok_or_else(|| OrtError::UnsupportedElement {
        name: name.to_string(),
        kind: format!("{ty:?}"),
    })?;
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
    })
}

pub struct OnnxSession {
    session: OrtSession,
}

impl Session for OnnxSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SessionError> {
        self.run_ort(inputs)
            .map_err(|e| SessionError::Failed(e.to_string()))
    }
}

impl OnnxSession {
    fn run_ort(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, OrtError> {
        let values: Vec<DynValue> = inputs.iter().map(to_ort).collect::<Result<_, _>>()?;
        let values: Vec<ort::session::SessionInputValue> =
            values.into_iter().map(Into::into).collect();
        let outputs = self.session.run(values.as_slice())?;
        outputs.iter().map(|(_, v)| from_ort(&v)).collect()
    }
}

/// Calls `$f::<T>($arg)` with `T` the Rust type of `$dtype`, for the element types
/// herd serves; `$other` takes the rest.
macro_rules! by_element {
    ($dtype:expr, $f:ident($arg:expr), $other:pat => $fallback:expr) => {
        match $dtype {
            DataType::Bool => $f::<bool>($arg),
            DataType::Uint8 => $f::<u8>($arg),
            DataType::Uint16 => $f::<u16>($arg),
            DataType::Uint32 => $f::<u32>($arg),
            DataType::Uint64 => $f::<u64>($arg),
            DataType::Int8 => $f::<i8>($arg),
            DataType::Int16 => $f::<i16>($arg),
            DataType::Int32 => $f::<i32>($arg),
            DataType::Int64 => $f::<i64>($arg),
            DataType::Fp32 => $f::<f32>($arg),
            DataType::Fp64 => $f::<f64>($arg),
            $other => $fallback,
        }
    };
}

/// A type of element both herd's byte codec and ONNX Runtime know.
trait OrtElement: Element + PrimitiveTensorElementType + std::fmt::Debug + 'static {}
impl<T: Element + PrimitiveTensorElementType + std::fmt::Debug + 'static> OrtElement for T {}

/// herd's data type of ONNX Runtime's element type, for the types herd serves.
fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        _ => return None,
    })
}

fn to_ort(t: &Tensor) -> Result<DynValue, OrtError> {
    /// The bytes decode straight into the `Vec` ONNX Runtime takes over: one copy.
    fn value<T: OrtElement>(t: &Tensor) -> Result<DynValue, OrtError> {
        let values: Vec<T> = decode_vec(&t.data);
        Ok(OrtTensor::from_array((t.shape.clone(), values))?.into_dyn())
    }
    by_element!(t.dtype, value(t), other => Err(OrtError::UnsupportedInput(other)))
}

fn from_ort(v: &DynValue) -> Result<Tensor, OrtError> {
    /// ONNX Runtime's buffer encodes straight into the tensor's bytes: one copy.
    fn tensor<T: OrtElement>(v: &DynValue) -> Result<Tensor, OrtError> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok(Tensor {
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            data: Bytes::from(encode_slice(data)),
        })
    }
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(OrtError::NonTensorOutput(format!("{other:?}"))),
    };
    let unsupported = || OrtError::UnsupportedOutput(format!("{ty:?}"));
    let dtype = data_type(ty).ok_or_else(unsupported)?;
    by_element!(dtype, tensor(v), _ => Err(unsupported()))
}
