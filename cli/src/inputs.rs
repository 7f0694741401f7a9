//! A model's inputs: read from `.npy` files or JSON arrays and checked against the
//! model's metadata, or random, of the shapes and datatypes the metadata declares (for
//! load generation).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::model_metadata_response::TensorMetadata;
use herd_proto::inference::{ModelInferRequest, ModelMetadataResponse};
use herd_proto::DataType;
use rand::Rng;

use herd_client::tensor::{NamedTensor, Shape, TensorData};
use herd_client::ClientError;

/// The shape to send for one input: `-1` in the first place becomes `batch` (when the
/// model batches), other `-1`s must be given through `overrides`. An override of a
/// batching model gives one item's shape: its first dimension is the batch, which
/// always follows `batch` (written there as -1, 1 or `batch` itself), so that the items
/// a bench counts are the items it sends.
pub fn concrete_shape(
    meta: &TensorMetadata,
    batch: usize,
    batched: bool,
    overrides: &HashMap<String, Vec<i64>>,
) -> Result<Vec<i64>, String> {
    let mut shape = match overrides.get(&meta.name) {
        Some(given) if given.len() != meta.shape.len() => {
            return Err(format!(
                "--shape {}: {} dimensions given, the model's input has {} ({:?})",
                meta.name,
                given.len(),
                meta.shape.len(),
                meta.shape
            ))
        }
        Some(given) => given.clone(),
        None => meta.shape.clone(),
    };
    if batched {
        let first = shape[0];
        if overrides.contains_key(&meta.name) && ![-1, 1, batch as i64].contains(&first) {
            return Err(format!(
                "--shape {}={}: the first dimension is the batch, which comes from the batch \
                 size ({batch}); write it as -1 or 1",
                meta.name,
                join(&shape)
            ));
        }
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

fn join(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
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

/// Where one input's values come from: `NAME=FILE.npy`, `NAME=FILE.json` or an inline
/// JSON array `NAME=[[1,2],[3,4]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSource {
    pub name: String,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Npy(PathBuf),
    JsonFile(PathBuf),
    Json(String),
}

impl FromStr for InputSource {
    type Err = String;
    fn from_str(s: &str) -> Result<InputSource, String> {
        let (name, value) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected NAME=FILE.npy, NAME=FILE.json or NAME=[...]")
        })?;
        if name.is_empty() || value.is_empty() {
            return Err(format!(
                "{s:?}: expected NAME=FILE.npy, NAME=FILE.json or NAME=[...]"
            ));
        }
        let trimmed = value.trim_start();
        let source = if trimmed.starts_with('[')
            || trimmed.starts_with('-')
            || trimmed.starts_with(|c: char| c.is_ascii_digit())
        {
            Source::Json(value.to_string())
        } else if value.ends_with(".json") {
            Source::JsonFile(PathBuf::from(value))
        } else {
            Source::Npy(PathBuf::from(value))
        };
        Ok(InputSource {
            name: name.to_string(),
            source,
        })
    }
}

fn describe(dtype: &str, shape: &[i64]) -> String {
    format!("{dtype} {}", Shape(shape))
}

/// Reads the inputs named on the command line, typed as the model's metadata says, and
/// checks them against it: every input given once, known names, dtype and shape.
pub fn load_inputs(
    meta: &ModelMetadataResponse,
    sources: &[InputSource],
) -> Result<Vec<NamedTensor>, ClientError> {
    let model = &meta.name;
    let mut tensors = Vec::new();
    for source in sources {
        let Some(spec) = meta.inputs.iter().find(|m| m.name == source.name) else {
            let known: Vec<&str> = meta.inputs.iter().map(|m| m.name.as_str()).collect();
            return Err(ClientError::Input(format!(
                "model {model} has no input '{}'; its inputs are: {}",
                source.name,
                known.join(", ")
            )));
        };
        if tensors.iter().any(|t: &NamedTensor| t.name == source.name) {
            return Err(ClientError::Input(format!(
                "input '{}' is given more than once",
                source.name
            )));
        }
        let dtype: DataType = spec
            .datatype
            .parse()
            .map_err(|e| ClientError::Input(format!("input '{}': {e}", spec.name)))?;
        let data = match &source.source {
            Source::Npy(path) => {
                TensorData::read_npy(path).map_err(|e| ClientError::file(path, e))?
            }
            Source::JsonFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ClientError::file(path, e))?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| ClientError::file(path, e))?;
                TensorData::from_json(&value, dtype).map_err(|e| ClientError::file(path, e))?
            }
            Source::Json(text) => {
                let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    ClientError::Input(format!("input '{}': invalid JSON: {e}", source.name))
                })?;
                TensorData::from_json(&value, dtype)
                    .map_err(|e| ClientError::Input(format!("input '{}': {e}", source.name)))?
            }
        };
        let tensor = NamedTensor {
            name: source.name.clone(),
            data,
        };
        check_input(model, spec, &tensor)?;
        tensors.push(tensor);
    }
    for spec in &meta.inputs {
        if !tensors.iter().any(|t| t.name == spec.name) {
            return Err(ClientError::Input(format!(
                "model {model} needs input '{}' ({}); give it with --input {}=FILE",
                spec.name,
                describe(&spec.datatype, &spec.shape),
                spec.name
            )));
        }
    }
    Ok(tensors)
}

/// Checks one tensor against its metadata: same dtype, same rank, and every fixed
/// dimension equal (`-1` takes any size).
pub fn check_input(model: &str, spec: &TensorMetadata, t: &NamedTensor) -> Result<(), ClientError> {
    let shape: Vec<i64> = t.data.shape().iter().map(|&d| d as i64).collect();
    let dtype_ok = t.data.dtype().as_str() == spec.datatype;
    let shape_ok = shape.len() == spec.shape.len()
        && shape
            .iter()
            .zip(&spec.shape)
            .all(|(&given, &expected)| expected < 0 || given == expected);
    if dtype_ok && shape_ok {
        return Ok(());
    }
    Err(ClientError::Input(format!(
        "input '{}' of model {model}: expected {}, given {}",
        t.name,
        describe(&spec.datatype, &spec.shape),
        describe(t.data.dtype().as_str(), &shape)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMetadataResponse {
        ModelMetadataResponse {
            name: "tiny_multi".into(),
            inputs: vec![
                TensorMetadata {
                    name: "a".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 4],
                },
                TensorMetadata {
                    name: "b".into(),
                    datatype: "INT64".into(),
                    shape: vec![-1, 4],
                },
            ],
            ..Default::default()
        }
    }

    fn input(s: &str) -> InputSource {
        s.parse().expect("parses")
    }

    #[test]
    fn input_sources_are_files_or_inline_json() {
        assert_eq!(input("x=in.npy").source, Source::Npy("in.npy".into()));
        assert_eq!(
            input("x=in.json").source,
            Source::JsonFile("in.json".into())
        );
        assert_eq!(input("x=[1, 2]").source, Source::Json("[1, 2]".into()));
        assert_eq!(input("x=3").source, Source::Json("3".into()));
        assert!("x".parse::<InputSource>().is_err());
        assert!("=a.npy".parse::<InputSource>().is_err());
    }

    #[test]
    fn json_inputs_take_the_models_dtypes() {
        let tensors = load_inputs(
            &meta(),
            &[input("a=[[1, 2, 3, 4.5]]"), input("b=[[1, 2, 3, 4]]")],
        )
        .expect("valid inputs");
        assert_eq!(tensors[0].data.dtype(), DataType::Fp32);
        assert_eq!(tensors[1].data.dtype(), DataType::Int64);
        assert_eq!(tensors[1].data.shape(), vec![1, 4]);
    }

    #[test]
    fn a_shape_given_for_a_batching_model_takes_its_batch_from_the_batch_size() {
        let image = TensorMetadata {
            name: "images".into(),
            datatype: "FP32".into(),
            shape: vec![-1, 3, -1, -1],
        };
        let given: HashMap<String, Vec<i64>> =
            [("images".to_string(), vec![1, 3, 320, 320])].into();
        for batch in [1, 8] {
            assert_eq!(
                concrete_shape(&image, batch, true, &given),
                Ok(vec![batch as i64, 3, 320, 320]),
                "the items sent are the items counted"
            );
        }
        let dynamic_first = [("images".to_string(), vec![-1, 3, 64, 64])].into();
        assert_eq!(
            concrete_shape(&image, 4, true, &dynamic_first),
            Ok(vec![4, 3, 64, 64])
        );
        let other_batch = [("images".to_string(), vec![8, 3, 320, 320])].into();
        let e = concrete_shape(&image, 2, true, &other_batch).expect_err("8 is not 2");
        assert!(e.contains("comes from the batch size (2)"), "{e}");
        let short = [("images".to_string(), vec![3, 320, 320])].into();
        let e = concrete_shape(&image, 1, true, &short).expect_err("three of four");
        assert!(
            e.contains("3 dimensions given, the model's input has 4"),
            "{e}"
        );
        let unbatched = TensorMetadata {
            shape: vec![3, -1],
            ..image.clone()
        };
        let fixed = [("images".to_string(), vec![3, 7])].into();
        assert_eq!(concrete_shape(&unbatched, 1, false, &fixed), Ok(vec![3, 7]));
    }

    #[test]
    fn wrong_shapes_and_dtypes_say_expected_and_given() {
        let e = load_inputs(
            &meta(),
            &[input("a=[[1, 2, 3]]"), input("b=[[1, 2, 3, 4]]")],
        )
        .expect_err("3 columns, not 4");
        assert_eq!(
            e.to_string(),
            "input 'a' of model tiny_multi: expected FP32 [-1, 4], given FP32 [1, 3]"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.npy");
        TensorData::F64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 4])))
            .write_npy(&path)
            .expect("write");
        let e = load_inputs(
            &meta(),
            &[InputSource {
                name: "a".into(),
                source: Source::Npy(path),
            }],
        )
        .expect_err("FP64 is not FP32");
        assert_eq!(
            e.to_string(),
            "input 'a' of model tiny_multi: expected FP32 [-1, 4], given FP64 [2, 4]"
        );
    }

    #[test]
    fn missing_unknown_and_repeated_inputs_are_named() {
        let e = load_inputs(&meta(), &[input("a=[[1, 2, 3, 4]]")]).expect_err("b missing");
        assert_eq!(
            e.to_string(),
            "model tiny_multi needs input 'b' (INT64 [-1, 4]); give it with --input b=FILE"
        );
        let e = load_inputs(&meta(), &[input("z=[1]")]).expect_err("no z");
        assert_eq!(
            e.to_string(),
            "model tiny_multi has no input 'z'; its inputs are: a, b"
        );
        let e = load_inputs(&meta(), &[input("a=[[1,2,3,4]]"), input("a=[[1,2,3,4]]")])
            .expect_err("twice");
        assert!(e.to_string().contains("more than once"), "{e}");
        let e = load_inputs(&meta(), &[input("a=missing.npy")]).expect_err("no file");
        assert!(e.to_string().starts_with("missing.npy: "), "{e}");
    }
}
