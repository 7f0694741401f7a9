//! Tensors as herd moves them: an element type, a shape and raw little-endian bytes.

use bytes::Bytes;
use herd_proto::DataType;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// What a model declares for one input or output. `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
}

/// A model's interface, read from the ONNX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelSpec {
    /// A model is batchable when every input and output has a dynamic first dimension:
    /// then requests can be stacked along it and the results split back.
    pub fn batchable(&self) -> bool {
        let dynamic_first = |t: &TensorSpec| t.shape.first() == Some(&-1);
        !self.inputs.is_empty()
            && self.inputs.iter().all(dynamic_first)
            && self.outputs.iter().all(dynamic_first)
    }
}

/// Number of elements in `shape`, or `None` on a negative dimension or overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

pub fn shape_string(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// A fixed-size element type and its little-endian bytes: the one byte codec every
/// part of herd uses (the wire, ONNX Runtime values, .npy arrays).
pub trait Element: Copy {
    const DTYPE: DataType;
    const SIZE: usize;
    fn put_le(self, out: &mut Vec<u8>);
    /// `bytes` holds exactly `SIZE` bytes.
    fn from_le(bytes: &[u8]) -> Self;

    /// Values as little-endian bytes (see [`encode_slice`]).
    fn encode_slice(values: &[Self]) -> Vec<u8> {
        encode(values.iter().copied())
    }

    /// Little-endian bytes as values (see [`decode_vec`]).
    fn decode_vec(bytes: &[u8]) -> Vec<Self> {
        decode(bytes)
    }
}

macro_rules! element {
    ($($t:ty => $dt:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            // On a little-endian machine the values' memory is their wire bytes: one
            // memcpy instead of a conversion per element.
            #[cfg(target_endian = "little")]
            fn encode_slice(values: &[Self]) -> Vec<u8> {
                bytemuck::cast_slice::<$t, u8>(values).to_vec()
            }
            #[cfg(target_endian = "little")]
            fn decode_vec(bytes: &[u8]) -> Vec<Self> {
                let n = bytes.len() / Self::SIZE;
                let mut out: Vec<$t> = vec![<$t>::default(); n];
                bytemuck::cast_slice_mut::<$t, u8>(&mut out).copy_from_slice(&bytes[..n * Self::SIZE]);
                out
            }
        }
    )*};
}
element!(u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8, i16 => Int16,
    i32 => Int32, i64 => Int64, f32 => Fp32, f64 => Fp64);

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn from_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

/// Values as little-endian bytes, in order.
pub fn encode<T: Element>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
    let values = values.into_iter();
    let mut out = Vec::with_capacity(values.size_hint().0 * T::SIZE);
    for v in values {
        v.put_le(&mut out);
    }
    out
}

/// Little-endian bytes as values; a trailing partial element is ignored (callers
/// check the byte length against the shape first).
pub fn decode<T: Element>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::SIZE).map(T::from_le).collect()
}

/// A slice of values as little-endian bytes: as [`encode`], in one memcpy where the
/// machine is little-endian (tensors of megabytes on every run).
pub fn encode_slice<T: Element>(values: &[T]) -> Vec<u8> {
    T::encode_slice(values)
}

/// As [`decode`], in one memcpy where the machine is little-endian.
pub fn decode_vec<T: Element>(bytes: &[u8]) -> Vec<T> {
    T::decode_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_codecs_give_the_element_codecs_bytes_and_values() {
        fn same<T: Element + PartialEq + std::fmt::Debug>(values: &[T]) {
            let bytes = encode(values.iter().copied());
            assert_eq!(encode_slice(values), bytes);
            assert_eq!(decode_vec::<T>(&bytes), values);
            // A trailing partial element is ignored, as by decode.
            let mut longer = bytes.clone();
            longer.push(7);
            assert_eq!(decode_vec::<T>(&longer), decode::<T>(&longer));
        }
        same(&[1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE]);
        same(&[1.0f64, -2.25]);
        same(&[i64::MIN, 0, i64::MAX]);
        same(&[-1i32, 70000]);
        same(&[u16::MAX, 1]);
        same(&[-1i8, 2]);
        same(&[255u8, 0]);
        same(&[true, false, true]);
        same::<f32>(&[]);
    }

    #[test]
    fn the_codec_round_trips_every_fixed_size_type() {
        fn round<T: Element + PartialEq + std::fmt::Debug>(v: Vec<T>) {
            let bytes = encode(v.iter().copied());
            assert_eq!(bytes.len(), v.len() * T::SIZE);
            assert_eq!(decode::<T>(&bytes), v);
        }
        round(vec![true, false, true]);
        round(vec![0u8, 255]);
        round(vec![-1i16, 300]);
        round(vec![u32::MAX, 7]);
        round(vec![i64::MIN, 1]);
        round(vec![1.5f32, -0.25]);
        round(vec![f64::MAX, 0.0]);
        assert_eq!(encode([1u16]), vec![1, 0], "little-endian");
        assert_eq!(<f32 as Element>::DTYPE.size(), Some(<f32 as Element>::SIZE));
    }

    #[test]
    fn batchable_needs_a_dynamic_first_dimension_everywhere() {
        let spec = |shape: Vec<i64>| TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape,
        };
        let m = ModelSpec {
            inputs: vec![spec(vec![-1, 4])],
            outputs: vec![spec(vec![-1, 2])],
        };
        assert!(m.batchable());
        let fixed = ModelSpec {
            inputs: vec![spec(vec![1, 4])],
            outputs: vec![spec(vec![-1, 2])],
        };
        assert!(!fixed.batchable());
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[-1, 3]), None);
        assert_eq!(shape_string(&[-1, 3]), "[-1,3]");
    }
}
