//! Typed tensors (ndarray arrays) and their conversions: to and from the protocol's raw
//! little-endian bytes, `.npy` files and JSON arrays.

use std::fmt;
use std::io::Cursor;
use std::path::Path;

use bytes::Bytes;
use herd_core::tensor::{decode, encode};
use herd_proto::DataType;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

/// Why bytes, a `.npy` file or a JSON array are not a tensor herd can send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("negative dimension in {0:?}")]
    NegativeDimension(Vec<i64>),
    #[error("{dtype} {shape:?} needs {needed} bytes, got {got}")]
    Length {
        dtype: DataType,
        shape: Vec<usize>,
        needed: usize,
        got: usize,
    },
    /// ndarray's refusal of a shape for the values given.
    #[error("{0}")]
    Shape(String),
    #[error("not a .npy file: {0}")]
    NotNpy(String),
    #[error("unsupported .npy element type {0:?}")]
    NpyElement(String),
    #[error("{dtype} cannot be written as .npy")]
    NotWritableAsNpy { dtype: DataType },
    /// Reading or writing the file itself.
    #[error("{0}")]
    Io(String),
    #[error("value {value} at flat index {index} is not {expected}")]
    JsonValue {
        value: String,
        index: usize,
        expected: String,
    },
    #[error("the JSON array is ragged: {0}")]
    Ragged(String),
    #[error("{0} inputs cannot be given as JSON; use .npy")]
    NotJson(DataType),
}

/// A tensor's values, typed. Element types ndarray-npy cannot hold (FP16, BF16, BYTES)
/// stay as raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(ArrayD<bool>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    I8(ArrayD<i8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    Raw {
        dtype: DataType,
        shape: Vec<usize>,
        bytes: Bytes,
    },
}

/// A tensor with its input or output name.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub data: TensorData,
}

impl NamedTensor {
    pub fn new(name: impl Into<String>, data: impl Into<TensorData>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            data: data.into(),
        }
    }
}

/// Runs `$body` with `$a` bound to the typed array, for every typed variant.
macro_rules! typed {
    ($t:expr, $a:ident => $body:expr, raw $r:pat => $raw:expr) => {
        match $t {
            TensorData::Bool($a) => $body,
            TensorData::U8($a) => $body,
            TensorData::U16($a) => $body,
            TensorData::U32($a) => $body,
            TensorData::U64($a) => $body,
            TensorData::I8($a) => $body,
            TensorData::I16($a) => $body,
            TensorData::I32($a) => $body,
            TensorData::I64($a) => $body,
            TensorData::F32($a) => $body,
            TensorData::F64($a) => $body,
            $r => $raw,
        }
    };
}

macro_rules! from_array {
    ($($t:ty => $v:ident),*) => {$(
        impl From<ArrayD<$t>> for TensorData {
            fn from(a: ArrayD<$t>) -> TensorData {
                TensorData::$v(a)
            }
        }
    )*};
}
from_array!(bool => Bool, u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8,
    i16 => I16, i32 => I32, i64 => I64, f32 => F32, f64 => F64);

fn array<T>(shape: &[usize], values: Vec<T>) -> Result<ArrayD<T>, TensorError> {
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| TensorError::Shape(e.to_string()))
}

impl TensorData {
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::Uint8,
            TensorData::U16(_) => DataType::Uint16,
            TensorData::U32(_) => DataType::Uint32,
            TensorData::U64(_) => DataType::Uint64,
            TensorData::I8(_) => DataType::Int8,
            TensorData::I16(_) => DataType::Int16,
            TensorData::I32(_) => DataType::Int32,
            TensorData::I64(_) => DataType::Int64,
            TensorData::F32(_) => DataType::Fp32,
            TensorData::F64(_) => DataType::Fp64,
            TensorData::Raw { dtype, .. } => *dtype,
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        typed!(self, a => a.shape().to_vec(), raw TensorData::Raw { shape, .. } => shape.clone())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A tensor from the protocol's raw little-endian bytes.
    pub fn from_raw(
        dtype: DataType,
        shape: &[i64],
        bytes: Bytes,
    ) -> Result<TensorData, TensorError> {
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| TensorError::NegativeDimension(shape.to_vec()))
            })
            .collect::<Result<_, _>>()?;
        let count: usize = shape.iter().product();
        if let Some(size) = dtype.size() {
            if bytes.len() != count * size {
                return Err(TensorError::Length {
                    dtype,
                    shape,
                    needed: count * size,
                    got: bytes.len(),
                });
            }
        }
        let b = &bytes[..];
        Ok(match dtype {
            DataType::Bool => TensorData::Bool(array(&shape, decode(b))?),
            DataType::Uint8 => TensorData::U8(array(&shape, decode(b))?),
            DataType::Uint16 => TensorData::U16(array(&shape, decode(b))?),
            DataType::Uint32 => TensorData::U32(array(&shape, decode(b))?),
            DataType::Uint64 => TensorData::U64(array(&shape, decode(b))?),
            DataType::Int8 => TensorData::I8(array(&shape, decode(b))?),
            DataType::Int16 => TensorData::I16(array(&shape, decode(b))?),
            DataType::Int32 => TensorData::I32(array(&shape, decode(b))?),
            DataType::Int64 => TensorData::I64(array(&shape, decode(b))?),
            DataType::Fp32 => TensorData::F32(array(&shape, decode(b))?),
            DataType::Fp64 => TensorData::F64(array(&shape, decode(b))?),
            DataType::Fp16 | DataType::Bf16 | DataType::Bytes => TensorData::Raw {
                dtype,
                shape,
                bytes,
            },
        })
    }

    /// The protocol's raw form: elements in row-major order, little-endian.
    pub fn to_raw(&self) -> Bytes {
        typed!(self, a => Bytes::from(encode(a.iter().copied())),
            raw TensorData::Raw { bytes, .. } => bytes.clone())
    }

    /// Values as f64, row-major (for summaries and top-k); `None` for raw types.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            TensorData::Bool(a) => a.iter().map(|&v| v as u8 as f64).collect(),
            TensorData::U8(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::U16(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::U32(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::U64(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::I8(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::I16(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::I32(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::I64(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::F32(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::F64(a) => a.iter().copied().collect(),
            TensorData::Raw { .. } => return None,
        })
    }

    /// The values as a flat JSON array in row-major order (as KServe v2's REST `data`);
    /// raw types as an array of byte values.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        fn num(v: f64) -> Value {
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        let values: Vec<Value> = match self {
            TensorData::Bool(a) => a.iter().map(|&v| Value::Bool(v)).collect(),
            TensorData::U8(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::U16(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::U32(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::U64(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::I8(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::I16(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::I32(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::I64(a) => a.iter().map(|&v| v.into()).collect(),
            TensorData::F32(a) => a.iter().map(|&v| num(v as f64)).collect(),
            TensorData::F64(a) => a.iter().map(|&v| num(v)).collect(),
            TensorData::Raw { bytes, .. } => bytes.iter().map(|&v| v.into()).collect(),
        };
        Value::Array(values)
    }

    /// Reads a `.npy` file of any element type herd can send.
    pub fn read_npy(path: &Path) -> Result<TensorData, TensorError> {
        let bytes = std::fs::read(path).map_err(|e| TensorError::Io(e.to_string()))?;
        TensorData::from_npy_bytes(&bytes)
    }

    pub fn from_npy_bytes(bytes: &[u8]) -> Result<TensorData, TensorError> {
        let header = ndarray_npy::npy::header::Header::from_reader(&mut Cursor::new(bytes))
            .map_err(|e| TensorError::NotNpy(e.to_string()))?;
        let descr = header.type_descriptor.to_string();
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        fn read<T: ndarray_npy::ReadableElement>(bytes: &[u8]) -> Result<ArrayD<T>, TensorError> {
            ArrayD::<T>::read_npy(Cursor::new(bytes))
                .map_err(|e| TensorError::NotNpy(e.to_string()))
        }
        // Byte order is handled by ndarray-npy; the kind and size pick the type.
        let kind = descr.trim_start_matches(['<', '>', '|', '=']);
        Ok(match kind {
            "b1" | "?" => TensorData::Bool(read(bytes)?),
            "u1" | "B" => TensorData::U8(read(bytes)?),
            "u2" => TensorData::U16(read(bytes)?),
            "u4" => TensorData::U32(read(bytes)?),
            "u8" => TensorData::U64(read(bytes)?),
            "i1" | "b" => TensorData::I8(read(bytes)?),
            "i2" => TensorData::I16(read(bytes)?),
            "i4" => TensorData::I32(read(bytes)?),
            "i8" => TensorData::I64(read(bytes)?),
            "f4" => TensorData::F32(read(bytes)?),
            "f8" => TensorData::F64(read(bytes)?),
            _ => return Err(TensorError::NpyElement(descr.to_string())),
        })
    }

    /// Writes a `.npy` file that numpy reads back with the same dtype and shape.
    pub fn write_npy(&self, path: &Path) -> Result<(), TensorError> {
        let file = std::fs::File::create(path).map_err(|e| TensorError::Io(e.to_string()))?;
        let writer = std::io::BufWriter::new(file);
        typed!(self, a => a.write_npy(writer).map_err(|e| TensorError::Io(e.to_string())),
            raw TensorData::Raw { dtype, .. } => Err(TensorError::NotWritableAsNpy { dtype: *dtype }))
    }

    /// Parses nested JSON arrays (`[[1, 2], [3, 4]]`) into a tensor of `dtype`; the
    /// nesting gives the shape. A bare number is a scalar.
    pub fn from_json(
        value: &serde_json::Value,
        dtype: DataType,
    ) -> Result<TensorData, TensorError> {
        let mut shape = Vec::new();
        let mut level = value;
        while let serde_json::Value::Array(items) = level {
            shape.push(items.len());
            match items.first() {
                Some(first) => level = first,
                None => break,
            }
        }
        let mut flat = Vec::new();
        flatten(value, &shape, 0, &mut flat)?;
        macro_rules! ints {
            ($t:ty, $v:ident) => {{
                let values = flat
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .and_then(|x| <$t>::try_from(x).ok())
                            .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                            .ok_or_else(|| json_value(v, i, dtype))
                    })
                    .collect::<Result<Vec<$t>, TensorError>>()?;
                TensorData::$v(array(&shape, values)?)
            }};
        }
        let floats = || {
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| json_value(v, i, "a number")))
                .collect::<Result<Vec<f64>, TensorError>>()
        };
        Ok(match dtype {
            DataType::Bool => {
                let values = flat
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        serde_json::Value::Bool(b) => Ok(*b),
                        serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
                        serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
                        _ => Err(json_value(v, i, DataType::Bool)),
                    })
                    .collect::<Result<Vec<bool>, TensorError>>()?;
                TensorData::Bool(array(&shape, values)?)
            }
            DataType::Uint8 => ints!(u8, U8),
            DataType::Uint16 => ints!(u16, U16),
            DataType::Uint32 => ints!(u32, U32),
            DataType::Uint64 => ints!(u64, U64),
            DataType::Int8 => ints!(i8, I8),
            DataType::Int16 => ints!(i16, I16),
            DataType::Int32 => ints!(i32, I32),
            DataType::Int64 => ints!(i64, I64),
            DataType::Fp32 => TensorData::F32(array(
                &shape,
                floats()?.into_iter().map(|v| v as f32).collect(),
            )?),
            DataType::Fp64 => TensorData::F64(array(&shape, floats()?)?),
            DataType::Fp16 | DataType::Bf16 | DataType::Bytes => {
                return Err(TensorError::NotJson(dtype))
            }
        })
    }
}

fn json_value(value: &serde_json::Value, index: usize, expected: impl ToString) -> TensorError {
    TensorError::JsonValue {
        value: value.to_string(),
        index,
        expected: expected.to_string(),
    }
}

/// Collects the leaves of a nested array, checking that it is rectangular.
fn flatten<'a>(
    value: &'a serde_json::Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a serde_json::Value>,
) -> Result<(), TensorError> {
    match value {
        serde_json::Value::Array(items) => {
            if depth >= shape.len() || items.len() != shape[depth] {
                return Err(TensorError::Ragged(format!(
                    "expected every level {} to hold {} items",
                    depth,
                    shape.get(depth).copied().unwrap_or(0)
                )));
            }
            for item in items {
                flatten(item, shape, depth + 1, out)?;
            }
            Ok(())
        }
        leaf => {
            if depth != shape.len() {
                return Err(TensorError::Ragged("a value where an array belongs".into()));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

/// A shape as people read it: `[-1, 16]`.
pub struct Shape<'a, T>(pub &'a [T]);

impl<T: fmt::Display> fmt::Display for Shape<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_for_every_typed_dtype() {
        for dtype in DataType::ALL {
            let Some(size) = dtype.size() else { continue };
            let bytes: Vec<u8> = (0..6 * size).map(|i| (i % 2) as u8).collect();
            let t =
                TensorData::from_raw(dtype, &[2, 3], Bytes::from(bytes.clone())).expect("decodes");
            assert_eq!(t.dtype(), dtype);
            assert_eq!(t.shape(), vec![2, 3]);
            assert_eq!(&t.to_raw()[..], &bytes[..], "{dtype}");
        }
    }

    #[test]
    fn raw_bytes_of_the_wrong_length_are_refused() {
        let e = TensorData::from_raw(DataType::Fp32, &[2], Bytes::from_static(&[0; 7]))
            .expect_err("7 bytes are not 2 floats");
        assert!(e.to_string().contains("needs 8 bytes, got 7"), "{e}");
    }

    #[test]
    fn npy_files_round_trip_with_their_dtype() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tensors = [
            TensorData::F32(array(&[2, 2], vec![1.5, -2.0, 0.0, 3.25]).expect("shape")),
            TensorData::I64(array(&[3], vec![-1, 0, 1 << 40]).expect("shape")),
            TensorData::U8(array(&[1, 2], vec![0, 255]).expect("shape")),
            TensorData::Bool(array(&[2], vec![true, false]).expect("shape")),
        ];
        for (i, t) in tensors.iter().enumerate() {
            let path = dir.path().join(format!("{i}.npy"));
            t.write_npy(&path).expect("write");
            assert_eq!(&TensorData::read_npy(&path).expect("read"), t);
        }
    }

    #[test]
    fn json_arrays_take_their_shape_from_nesting_and_their_type_from_the_model() {
        let v: serde_json::Value = serde_json::from_str("[[1, 2, 3], [4, 5, 6]]").expect("json");
        let t = TensorData::from_json(&v, DataType::Int64).expect("ints");
        assert_eq!(
            t,
            TensorData::I64(array(&[2, 3], vec![1, 2, 3, 4, 5, 6]).expect("shape"))
        );
        let t = TensorData::from_json(&v, DataType::Fp32).expect("floats");
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(t.dtype(), DataType::Fp32);
    }

    #[test]
    fn json_values_that_do_not_fit_are_refused() {
        let frac: serde_json::Value = serde_json::from_str("[1, 2.5]").expect("json");
        let e = TensorData::from_json(&frac, DataType::Int32).expect_err("2.5 is not an int");
        assert_eq!(e.to_string(), "value 2.5 at flat index 1 is not INT32");
        let big: serde_json::Value = serde_json::from_str("[300]").expect("json");
        assert!(TensorData::from_json(&big, DataType::Uint8).is_err());
        let ragged: serde_json::Value = serde_json::from_str("[[1, 2], [3]]").expect("json");
        let e = TensorData::from_json(&ragged, DataType::Fp32).expect_err("ragged");
        assert!(e.to_string().contains("ragged"), "{e}");
    }
}
