//! The protocol's typed `InferTensorContents` as raw little-endian bytes, through the
//! one codec in `tensor`.

use herd_proto::inference::InferTensorContents;
use herd_proto::DataType;

use crate::tensor::{encode, Element};

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

/// Converts typed contents into raw little-endian bytes for `datatype`.
/// Values that do not fit the type are refused rather than truncated.
pub fn contents_to_raw(
    datatype: DataType,
    c: &InferTensorContents,
) -> Result<Vec<u8>, ContentsError> {
    fn narrow<T: Element + TryFrom<i128>>(
        field: &'static str,
        values: impl Iterator<Item = i128>,
    ) -> Result<Vec<u8>, ContentsError> {
        let values: Vec<T> = values
            .map(|value| {
                T::try_from(value).map_err(|_| ContentsError::OutOfRange {
                    datatype: T::DTYPE,
                    field,
                    value,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(encode(values))
    }
    let ints = || c.int_contents.iter().map(|&v| v as i128);
    let uints = || c.uint_contents.iter().map(|&v| v as i128);
    Ok(match datatype {
        DataType::Bool => encode(c.bool_contents.iter().copied()),
        DataType::Int8 => narrow::<i8>("int_contents", ints())?,
        DataType::Int16 => narrow::<i16>("int_contents", ints())?,
        DataType::Int32 => narrow::<i32>("int_contents", ints())?,
        DataType::Int64 => encode(c.int64_contents.iter().copied()),
        DataType::Uint8 => narrow::<u8>("uint_contents", uints())?,
        DataType::Uint16 => narrow::<u16>("uint_contents", uints())?,
        DataType::Uint32 => narrow::<u32>("uint_contents", uints())?,
        DataType::Uint64 => encode(c.uint64_contents.iter().copied()),
        DataType::Fp32 => encode(c.fp32_contents.iter().copied()),
        DataType::Fp64 => encode(c.fp64_contents.iter().copied()),
        DataType::Fp16 | DataType::Bf16 | DataType::Bytes => {
            return Err(ContentsError::Unsupported(datatype))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
