//! Tensor data as JSON carries it, to and from the raw little-endian bytes the gRPC
//! protocol carries (the one codec in `tensor`). Data may be flat or nested (row major
//! either way); BOOL is true/false, BYTES are strings (raw: a 4-byte length, then the
//! bytes, as in Triton's binary extension). FP16 and BF16 have no JSON form (as in
//! Triton): they travel as binary data.

use herd_proto::DataType;
use serde_json::Value;

use crate::tensor::{decode, encode, Element};

/// Why JSON data could not become a tensor; the caller names the tensor.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error(
        "{0} data cannot be sent as JSON; send it as binary data (parameters.binary_data_size)"
    )]
    NoJsonForm(DataType),
    #[error("element {index} of data is {value}, which is not {datatype}")]
    NotOfType {
        index: usize,
        value: String,
        datatype: DataType,
    },
    #[error("data has {got} elements; shape {shape} needs {want}")]
    Count {
        got: usize,
        want: usize,
        shape: String,
    },
}

/// The elements of `data`, flattened in row-major order: a JSON array of arrays of ...
/// of scalars, or a single scalar.
pub fn flatten(data: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            scalar => out.push(scalar),
        }
    }
    let mut out = Vec::new();
    walk(data, &mut out);
    out
}

/// JSON `data` as raw bytes of `datatype`, checked to hold the `expected` number of
/// elements when that is known (a shape with a negative dimension is left to the
/// service, which says what is wrong with it).
pub fn json_to_raw(
    datatype: DataType,
    data: &Value,
    expected: Option<(usize, String)>,
) -> Result<Vec<u8>, DataError> {
    let elements = flatten(data);
    if let Some((want, shape)) = expected {
        if elements.len() != want {
            return Err(DataError::Count {
                got: elements.len(),
                want,
                shape,
            });
        }
    }
    let not = |index: usize, value: &Value| DataError::NotOfType {
        index,
        value: truncated(value),
        datatype,
    };
    fn ints<T: Element + TryFrom<i64> + TryFrom<u64>>(
        elements: &[&Value],
        not: impl Fn(usize, &Value) -> DataError,
    ) -> Result<Vec<u8>, DataError> {
        let values = elements.iter().enumerate().map(|(i, v)| {
            let n = match v {
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|n| T::try_from(n).ok())
                    .or_else(|| n.as_u64().and_then(|n| T::try_from(n).ok())),
                _ => None,
            };
            n.ok_or_else(|| not(i, v))
        });
        Ok(encode(values.collect::<Result<Vec<T>, _>>()?))
    }
    fn floats<T: Element>(
        elements: &[&Value],
        not: impl Fn(usize, &Value) -> DataError,
        from: fn(f64) -> T,
    ) -> Result<Vec<u8>, DataError> {
        let values = elements
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().map(from).ok_or_else(|| not(i, v)));
        Ok(encode(values.collect::<Result<Vec<T>, _>>()?))
    }
    match datatype {
        DataType::Bool => {
            let values = elements
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| not(i, v)));
            Ok(encode(values.collect::<Result<Vec<bool>, _>>()?))
        }
        DataType::Uint8 => ints::<u8>(&elements, not),
        DataType::Uint16 => ints::<u16>(&elements, not),
        DataType::Uint32 => ints::<u32>(&elements, not),
        DataType::Uint64 => ints::<u64>(&elements, not),
        DataType::Int8 => ints::<i8>(&elements, not),
        DataType::Int16 => ints::<i16>(&elements, not),
        DataType::Int32 => ints::<i32>(&elements, not),
        DataType::Int64 => ints::<i64>(&elements, not),
        DataType::Fp32 => floats::<f32>(&elements, not, |f| f as f32),
        DataType::Fp64 => floats::<f64>(&elements, not, |f| f),
        DataType::Bytes => {
            let mut out = Vec::new();
            for (i, v) in elements.iter().enumerate() {
                let s = v.as_str().ok_or_else(|| not(i, v))?;
                let length = u32::try_from(s.len()).map_err(|_| not(i, v))?;
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Ok(out)
        }
        DataType::Fp16 | DataType::Bf16 => Err(DataError::NoJsonForm(datatype)),
    }
}

/// Raw bytes of `datatype` as a flat JSON array, or `None` when JSON cannot carry the
/// type (FP16, BF16) or the bytes are not whole elements: such a tensor goes back as
/// binary data instead.
pub fn raw_to_json(datatype: DataType, raw: &[u8]) -> Option<Value> {
    fn values<T: Element + Into<Value>>(raw: &[u8]) -> Option<Value> {
        raw.len()
            .is_multiple_of(T::SIZE)
            .then(|| Value::Array(decode::<T>(raw).into_iter().map(Into::into).collect()))
    }
    match datatype {
        DataType::Bool => values::<bool>(raw),
        DataType::Uint8 => values::<u8>(raw),
        DataType::Uint16 => values::<u16>(raw),
        DataType::Uint32 => values::<u32>(raw),
        DataType::Uint64 => values::<u64>(raw),
        DataType::Int8 => values::<i8>(raw),
        DataType::Int16 => values::<i16>(raw),
        DataType::Int32 => values::<i32>(raw),
        DataType::Int64 => values::<i64>(raw),
        // NaN and infinities have no JSON form: serde_json writes them as null.
        DataType::Fp32 => values::<f32>(raw),
        DataType::Fp64 => values::<f64>(raw),
        DataType::Bytes => bytes_elements(raw).map(|items| {
            Value::Array(
                items
                    .into_iter()
                    .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            )
        }),
        DataType::Fp16 | DataType::Bf16 => None,
    }
}

/// BYTES elements of a raw tensor (each a 4-byte little-endian length and its bytes).
fn bytes_elements(mut raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (length, rest) = raw.split_first_chunk::<4>()?;
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return None;
        }
        let (item, rest) = rest.split_at(length);
        out.push(item);
        raw = rest;
    }
    Some(out)
}

/// A JSON value for an error message, cut short.
fn truncated(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_give_the_same_bytes() {
        let flat = json_to_raw(DataType::Fp32, &json!([1.0, 2.5, -3.0, 4.0]), None).expect("fp32");
        let nested =
            json_to_raw(DataType::Fp32, &json!([[1.0, 2.5], [-3, 4]]), None).expect("fp32");
        assert_eq!(flat, nested);
        assert_eq!(flat, encode([1.0f32, 2.5, -3.0, 4.0]));
    }

    #[test]
    fn each_type_round_trips_through_json() {
        for (datatype, data) in [
            (DataType::Bool, json!([true, false])),
            (DataType::Uint8, json!([0, 255])),
            (DataType::Int8, json!([-128, 127])),
            (DataType::Int32, json!([-5, 7])),
            (DataType::Int64, json!([i64::MIN, i64::MAX])),
            (DataType::Uint64, json!([0, u64::MAX])),
            (DataType::Fp64, json!([0.25, -1e300])),
            (DataType::Bytes, json!(["", "héllo"])),
        ] {
            let raw = json_to_raw(datatype, &data, Some((2, "[2]".into()))).expect("converts");
            assert_eq!(raw_to_json(datatype, &raw), Some(data), "{datatype}");
        }
    }

    #[test]
    fn bytes_are_length_prefixed() {
        let raw = json_to_raw(DataType::Bytes, &json!(["ab"]), None).expect("bytes");
        assert_eq!(raw, [2, 0, 0, 0, b'a', b'b']);
        assert_eq!(
            raw_to_json(DataType::Bytes, &raw[..5]),
            None,
            "a cut element"
        );
    }

    #[test]
    fn values_that_do_not_fit_are_refused_by_index() {
        let err = json_to_raw(DataType::Uint8, &json!([1, 256]), None).expect_err("too big");
        assert_eq!(
            err.to_string(),
            "element 1 of data is 256, which is not UINT8"
        );
        let err = json_to_raw(DataType::Int32, &json!([1.5]), None).expect_err("a fraction");
        assert_eq!(
            err.to_string(),
            "element 0 of data is 1.5, which is not INT32"
        );
        let err = json_to_raw(DataType::Fp32, &json!([[1], ["x"]]), None).expect_err("a string");
        assert_eq!(
            err.to_string(),
            "element 1 of data is \"x\", which is not FP32"
        );
        let err = json_to_raw(DataType::Bool, &json!([1]), None).expect_err("a number");
        assert_eq!(err.to_string(), "element 0 of data is 1, which is not BOOL");
    }

    #[test]
    fn the_count_must_match_the_shape() {
        let err = json_to_raw(DataType::Fp32, &json!([1, 2, 3]), Some((4, "[1,4]".into())))
            .expect_err("short");
        assert_eq!(err.to_string(), "data has 3 elements; shape [1,4] needs 4");
    }

    #[test]
    fn half_precision_has_no_json_form() {
        assert_eq!(
            json_to_raw(DataType::Fp16, &json!([1.0]), None),
            Err(DataError::NoJsonForm(DataType::Fp16))
        );
        assert_eq!(raw_to_json(DataType::Bf16, &[0, 0]), None);
        assert_eq!(
            raw_to_json(DataType::Fp32, &[0, 0, 0]),
            None,
            "not whole elements"
        );
    }
}
