//! Inputs for load generation: random tensors of the shapes and datatypes a model's
//! metadata declares.

use std::collections::HashMap;

use bytes::Bytes;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::model_metadata_response::TensorMetadata;
use herd_proto::inference::ModelInferRequest;
use herd_proto::DataType;
use rand::Rng;

/// The shape to send for one input: `-1` in the first place becomes `batch` (when the
/// model batches), other `-1`s must be given through `overrides`.
pub fn concrete_shape(
    meta: &TensorMetadata,
    batch: usize,
    batched: bool,
    overrides: &HashMap<String, Vec<i64>>,
) -> Result<Vec<i64>, String> {
    if let Some(shape) = overrides.get(&meta.name) {
        return Ok(shape.clone());
    }
    let mut shape = meta.shape.clone();
    if batched {
        shape[0] = batch as i64;
    } else if batch != 1 {
        return Err(format!(
            "the model has no batch dimension (input '{}' is {:?}); use --batch 1",
            meta.name, meta.shape
        ));
    }
    if shape.iter().any(|&d| d < 0) {
        return Err(format!(
            "input '{}' has dynamic dimensions {:?}; give a shape with --shape {}=D0,D1,...",
            meta.name, meta.shape, meta.name
        ));
    }
    Ok(shape)
}

/// Random little-endian bytes for `count` elements of `dtype`. Integers stay in
/// 0..256, so byte-valued inputs (magika) and small-index inputs stay valid.
pub fn random_bytes(dtype: DataType, count: usize, rng: &mut impl Rng) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(count * dtype.size().unwrap_or(1));
    for _ in 0..count {
        let small: u8 = rng.random();
        match dtype {
            DataType::Bool => out.push(small & 1),
            DataType::Uint8 | DataType::Int8 => out.push(small & 0x7f),
            DataType::Uint16 | DataType::Int16 => {
                out.extend_from_slice(&(small as u16).to_le_bytes())
            }
            DataType::Uint32 | DataType::Int32 => {
                out.extend_from_slice(&(small as u32).to_le_bytes())
            }
            DataType::Uint64 | DataType::Int64 => {
                out.extend_from_slice(&(small as u64).to_le_bytes())
            }
            DataType::Fp32 => out.extend_from_slice(&rng.random::<f32>().to_le_bytes()),
            DataType::Fp64 => out.extend_from_slice(&rng.random::<f64>().to_le_bytes()),
            other => return Err(format!("cannot generate {other} inputs")),
        }
    }
    Ok(out)
}

/// A whole request with random inputs for `model`.
pub fn random_request(
    model: &str,
    inputs: &[TensorMetadata],
    batch: usize,
    overrides: &HashMap<String, Vec<i64>>,
) -> Result<ModelInferRequest, String> {
    let batched = !inputs.is_empty() && inputs.iter().all(|m| m.shape.first() == Some(&-1));
    let mut rng = rand::rng();
    let mut request = ModelInferRequest {
        model_name: model.to_string(),
        ..Default::default()
    };
    for meta in inputs {
        let dtype: DataType = meta.datatype.parse().map_err(|e| format!("{e}"))?;
        let shape = concrete_shape(meta, batch, batched, overrides)?;
        let count = shape.iter().product::<i64>() as usize;
        request
            .raw_input_contents
            .push(Bytes::from(random_bytes(dtype, count, &mut rng)?));
        request.inputs.push(InferInputTensor {
            name: meta.name.clone(),
            datatype: meta.datatype.clone(),
            shape,
            ..Default::default()
        });
    }
    Ok(request)
}
