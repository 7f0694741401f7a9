//! ONNX Runtime, loaded as a shared library: finding it, and sessions over it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use herd_proto::DataType;
use ort::session::Session as OrtSession;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::session::{LoadError, Loader, Session, SessionError};
use herd_core::repository::ModelFiles;
use herd_core::tensor::{ModelSpec, Tensor, TensorSpec};

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
/// working directory or from the executable's place in target/), then the system's
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
        .map(|d| d.join(".cache/onnxruntime/libonnxruntime.so"))
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

    /// Opens a model file in a new session.
    pub fn open(
        &self,
        path: &Path,
        intra_op_threads: usize,
    ) -> Result<(ModelSpec, OnnxSession), OrtError> {
        let mut builder = OrtSession::builder(&self.env)?;
        // Without the arena, memory freed by a session goes back to malloc rather than
        // staying reserved by ONNX Runtime.
        builder = builder.with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(false)
            .build()])?;
        if intra_op_threads > 0 {
            builder = builder.with_intra_threads(intra_op_threads)?;
        }
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
    fn load(&self, files: &ModelFiles) -> Result<(ModelSpec, Box<dyn Session>), LoadError> {
        let (spec, session) = self.open(&files.path, files.settings.intra_op_threads)?;
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
    let dtype = match ty {
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
        other => {
            return Err(OrtError::UnsupportedElement {
                name: name.to_string(),
                kind: format!("{other:?}"),
            })
        }
    };
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

fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(chunk);
    a
}

fn to_ort(t: &Tensor) -> Result<DynValue, OrtError> {
    macro_rules! numeric {
        ($ty:ty) => {{
            const N: usize = std::mem::size_of::<$ty>();
            let v: Vec<$ty> = t
                .data
                .chunks_exact(N)
                .map(|c| <$ty>::from_le_bytes(le::<N>(c)))
                .collect();
            OrtTensor::from_array((t.shape.clone(), v)).map(|x| x.into_dyn())
        }};
    }
    let value = match t.dtype {
        DataType::Bool => {
            let v: Vec<bool> = t.data.iter().map(|&b| b != 0).collect();
            OrtTensor::from_array((t.shape.clone(), v)).map(|x| x.into_dyn())
        }
        DataType::Uint8 => numeric!(u8),
        DataType::Uint16 => numeric!(u16),
        DataType::Uint32 => numeric!(u32),
        DataType::Uint64 => numeric!(u64),
        DataType::Int8 => numeric!(i8),
        DataType::Int16 => numeric!(i16),
        DataType::Int32 => numeric!(i32),
        DataType::Int64 => numeric!(i64),
        DataType::Fp32 => numeric!(f32),
        DataType::Fp64 => numeric!(f64),
        other => return Err(OrtError::UnsupportedInput(other)),
    };
    Ok(value?)
}

fn from_ort(v: &DynValue) -> Result<Tensor, OrtError> {
    macro_rules! numeric {
        ($ty:ty, $dt:expr) => {{
            let (shape, data) = v.try_extract_tensor::<$ty>()?;
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (shape.to_vec(), $dt, bytes)
        }};
    }
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(OrtError::NonTensorOutput(format!("{other:?}"))),
    };
    let (shape, dtype, bytes) = match ty {
        TensorElementType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>()?;
            (
                shape.to_vec(),
                DataType::Bool,
                data.iter().map(|&b| b as u8).collect(),
            )
        }
        TensorElementType::Uint8 => numeric!(u8, DataType::Uint8),
        TensorElementType::Uint16 => numeric!(u16, DataType::Uint16),
        TensorElementType::Uint32 => numeric!(u32, DataType::Uint32),
        TensorElementType::Uint64 => numeric!(u64, DataType::Uint64),
        TensorElementType::Int8 => numeric!(i8, DataType::Int8),
        TensorElementType::Int16 => numeric!(i16, DataType::Int16),
        TensorElementType::Int32 => numeric!(i32, DataType::Int32),
        TensorElementType::Int64 => numeric!(i64, DataType::Int64),
        TensorElementType::Float32 => numeric!(f32, DataType::Fp32),
        TensorElementType::Float64 => numeric!(f64, DataType::Fp64),
        other => return Err(OrtError::UnsupportedOutput(format!("{other:?}"))),
    };
    Ok(Tensor {
        dtype,
        shape,
        data: Bytes::from(bytes),
    })
}
