//! Tensor element types as the KServe v2 protocol names them, and the conversion of
//! typed `InferTensorContents` into the raw little-endian bytes herd works with.

use std::fmt;
use std::str::FromStr;

use crate::inference::InferTensorContents;

/// An element type of a tensor, named as on the KServe v2 wire ("FP32", "INT64", ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentsError {
    #[error("datatype {0} cannot be sent as typed contents")]
    Unsupported(DataType),
    #[error("value {value} in `{field}` does not fit {datatype}")]
    OutOfRange {
        datatype: DataType,
        field: &'static str,
        value: i128,
    },
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// The wire name, as in `ModelMetadataResponse` and `InferInputTensor.datatype`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for variable-length BYTES.
    pub fn size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// The matching `inference.DataType` of Triton's model configuration.
    pub fn config_type(self) -> crate::inference::DataType {
        use crate::inference::DataType as C;
        match self {
            DataType::Bool => C::TypeBool,
            DataType::Uint8 => C::TypeUint8,
            DataType::Uint16 => C::TypeUint16,
            DataType::Uint32 => C::TypeUint32,
            DataType::Uint64 => C::TypeUint64,
            DataType::Int8 => C::TypeInt8,
            DataType::Int16 => C::TypeInt16,
            DataType::Int32 => C::TypeInt32,
            DataType::Int64 => C::TypeInt64,
            DataType::Fp16 => C::TypeFp16,
            DataType::Fp32 => C::TypeFp32,
            DataType::Fp64 => C::TypeFp64,
            DataType::Bf16 => C::TypeBf16,
            DataType::Bytes => C::TypeString,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown datatype {0:?}; expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BF16, BYTES")]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDataType(s.to_string()))
    }
}

/// Converts typed contents into raw little-endian bytes for `datatype`.
/// Values that do not fit the type are refused rather than truncated.
pub fn contents_to_raw(
    datatype: DataType,
    c: &InferTensorContents,
) -> Result<Vec<u8>, ContentsError> {
    fn narrow<T: TryFrom<i128> + Copy, const N: usize>(
        datatype: DataType,
        field: &'static str,
        values: impl Iterator<Item = i128>,
        to_le: impl Fn(T) -> [u8; N],
    ) -> Result<Vec<u8>, ContentsError> {
        let mut out = Vec::new();
        for value in values {
            let v = T::try_from(value).map_err(|_| ContentsError::OutOfRange {
                datatype,
                field,
                value,
            })?;
            out.extend_from_slice(&to_le(v));
        }
        Ok(out)
    }
    let ints = || c.int_contents.iter().map(|&v| v as i128);
    let uints = || c.uint_contents.iter().map(|&v| v as i128);
    let raw = match datatype {
        DataType::Bool => c.bool_contents.iter().map(|&b| b as u8).collect(),
        DataType::Int8 => narrow::<i8, 1>(datatype, "int_contents", ints(), i8::to_le_bytes)?,
        DataType::Int16 => narrow::<i16, 2>(datatype, "int_contents", ints(), i16::to_le_bytes)?,
        DataType::Int32 => narrow::<i32, 4>(datatype, "int_contents", ints(), i32::to_le_bytes)?,
        DataType::Int64 => c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint8 => narrow::<u8, 1>(datatype, "uint_contents", uints(), u8::to_le_bytes)?,
        DataType::Uint16 => narrow::<u16, 2>(datatype, "uint_contents", uints(), u16::to_le_bytes)?,
        DataType::Uint32 => narrow::<u32, 4>(datatype, "uint_contents", uints(), u32::to_le_bytes)?,
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp16 | DataType::Bf16 | DataType::Bytes => {
            return Err(ContentsError::Unsupported(datatype))
        }
    };
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(d.as_str().parse::<DataType>(), Ok(d));
        }
        assert!("FLOAT".parse::<DataType>().is_err());
    }

    #[test]
    fn typed_contents_become_little_endian_bytes() {
        let c = InferTensorContents {
            fp32_contents: vec![1.0, -2.5],
            ..Default::default()
        };
        let raw = contents_to_raw(DataType::Fp32, &c).expect("fp32 converts");
        assert_eq!(
            raw,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn narrowing_refuses_values_that_do_not_fit() {
        let c = InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        assert_eq!(
            contents_to_raw(DataType::Int8, &c),
            Err(ContentsError::OutOfRange {
                datatype: DataType::Int8,
                field: "int_contents",
                value: 300
            })
        );
    }
}
