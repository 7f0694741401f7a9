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
