//! The gRPC answers other than inference as the JSON Triton's HTTP endpoints send, and
//! the small JSON bodies of the repository calls. Pure conversions.

use herd_proto::inference::model_repository_parameter::ParameterChoice;
use herd_proto::inference::*;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::errors::HttpError;

/// What the HTTP front adds to the server's extensions.
pub const BINARY_TENSOR_DATA: &str = "binary_tensor_data";

pub fn server_metadata(m: ServerMetadataResponse) -> Value {
    let mut extensions = m.extensions;
    if !extensions.iter().any(|e| e == BINARY_TENSOR_DATA) {
        extensions.push(BINARY_TENSOR_DATA.to_string());
    }
    json!({ "name": m.name, "version": m.version, "extensions": extensions })
}

pub fn model_metadata(m: ModelMetadataResponse) -> Value {
    let tensors = |ts: Vec<model_metadata_response::TensorMetadata>| -> Vec<Value> {
        ts.into_iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape }))
            .collect()
    };
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(m.inputs),
        "outputs": tensors(m.outputs),
    })
}

/// Triton's model configuration JSON: proto field names, enum names for types, and
/// numbers (not protobuf JSON's strings) for 64-bit integers, as Triton prints them.
pub fn model_config(r: ModelConfigResponse) -> Value {
    let c = r.config.unwrap_or_default();
    let data_type = |t: i32| {
        DataType::try_from(t)
            .unwrap_or(DataType::TypeInvalid)
            .as_str_name()
    };
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({
            "name": i.name, "data_type": data_type(i.data_type), "dims": i.dims,
        })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({
            "name": o.name, "data_type": data_type(o.data_type), "dims": o.dims,
        })).collect::<Vec<_>>(),
    });
    if let (Some(d), Some(map)) = (c.dynamic_batching, config.as_object_mut()) {
        map.insert(
            "dynamic_batching".into(),
            json!({
                "preferred_batch_size": d.preferred_batch_size,
                "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
            }),
        );
    }
    config
}

fn duration(d: Option<StatisticDuration>) -> Value {
    let d = d.unwrap_or_default();
    json!({ "count": d.count, "ns": d.ns })
}

/// Statistics as Triton's `/stats` sends them; a duration not measured is zero.
pub fn model_statistics(r: ModelStatisticsResponse) -> Value {
    let stats: Vec<Value> = r
        .model_stats
        .into_iter()
        .map(|s| {
            let i = s.inference_stats.unwrap_or_default();
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(i.success),
                    "fail": duration(i.fail),
                    "queue": duration(i.queue),
                    "compute_input": duration(i.compute_input),
                    "compute_infer": duration(i.compute_infer),
                    "compute_output": duration(i.compute_output),
                    "cache_hit": duration(i.cache_hit),
                    "cache_miss": duration(i.cache_miss),
                },
                "batch_stats": s.batch_stats.into_iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration(b.compute_input),
                    "compute_infer": duration(b.compute_infer),
                    "compute_output": duration(b.compute_output),
                })).collect::<Vec<_>>(),
                "memory_usage": s.memory_usage.into_iter().map(|m| json!({
                    "type": m.r#type, "id": m.id, "byte_size": m.byte_size,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": stats })
}

/// The repository index: a JSON array, as Triton's.
pub fn repository_index(r: RepositoryIndexResponse) -> Value {
    Value::Array(
        r.models
            .into_iter()
            .map(|m| {
                let mut o = Map::new();
                o.insert("name".into(), Value::from(m.name));
                for (key, value) in [
                    ("version", m.version),
                    ("state", m.state),
                    ("reason", m.reason),
                ] {
                    if !value.is_empty() {
                        o.insert(key.into(), Value::from(value));
                    }
                }
                Value::Object(o)
            })
            .collect(),
    )
}

#[derive(Deserialize, Default)]
struct IndexJson {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    repository_name: String,
}

/// `POST /v2/repository/index`'s body (it may be empty).
pub fn index_request(body: &[u8]) -> Result<RepositoryIndexRequest, HttpError> {
    let r: IndexJson = optional_json(body, "repository index request")?;
    Ok(RepositoryIndexRequest {
        repository_name: r.repository_name,
        ready: r.ready,
    })
}

#[derive(Deserialize, Default)]
struct LoadJson {
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The parameters of a load or unload body (it may be empty), as the protocol's.
pub fn repository_parameters(
    body: &[u8],
) -> Result<std::collections::HashMap<String, ModelRepositoryParameter>, HttpError> {
    let r: LoadJson = optional_json(body, "repository request")?;
    r.parameters
        .into_iter()
        .map(|(key, value)| {
            let choice = match &value {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                Value::Number(n) if n.is_i64() => {
                    ParameterChoice::Int64Param(n.as_i64().unwrap_or_default())
                }
                _ => {
                    return Err(HttpError::bad_request(format!(
                        "parameter '{key}' must be a bool, an integer or a string, got {value}"
                    )))
                }
            };
            let p = ModelRepositoryParameter {
                parameter_choice: Some(choice),
            };
            Ok((key, p))
        })
        .collect()
}

fn optional_json<T: for<'de> Deserialize<'de> + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| HttpError::bad_request(format!("malformed {what} JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reads_as_tritons() {
        let r = ModelConfigResponse {
            config: Some(ModelConfig {
                name: "m".into(),
                platform: "onnxruntime_onnx".into(),
                backend: "onnxruntime".into(),
                max_batch_size: 8,
                input: vec![ModelInput {
                    name: "a".into(),
                    data_type: DataType::TypeFp32 as i32,
                    dims: vec![4],
                }],
                output: Vec::new(),
                dynamic_batching: Some(ModelDynamicBatching {
                    preferred_batch_size: Vec::new(),
                    max_queue_delay_microseconds: 100,
                }),
            }),
        };
        let v = model_config(r);
        assert_eq!(
            v["input"][0],
            json!({"name": "a", "data_type": "TYPE_FP32", "dims": [4]})
        );
        assert_eq!(v["max_batch_size"], 8);
        assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 100);
    }

    #[test]
    fn statistics_fill_what_was_not_measured_with_zero() {
        let r = ModelStatisticsResponse {
            model_stats: vec![ModelStatistics {
                name: "m".into(),
                inference_count: 6,
                inference_stats: Some(InferStatistics {
                    success: Some(StatisticDuration { count: 2, ns: 50 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let v = model_statistics(r);
        let s = &v["model_stats"][0];
        assert_eq!(s["inference_count"], 6);
        assert_eq!(
            s["inference_stats"]["success"],
            json!({"count": 2, "ns": 50})
        );
        assert_eq!(
            s["inference_stats"]["compute_output"],
            json!({"count": 0, "ns": 0})
        );
    }

    #[test]
    fn repository_bodies_may_be_empty_and_must_be_json_otherwise() {
        assert!(!index_request(b"").expect("empty").ready);
        assert!(index_request(br#"{"ready": true}"#).expect("json").ready);
        let err = index_request(b"{ready").expect_err("malformed");
        assert!(
            err.message
                .starts_with("malformed repository index request JSON"),
            "{err:?}"
        );
        let p = repository_parameters(br#"{"parameters": {"unload_dependents": false}}"#)
            .expect("json");
        assert_eq!(
            p["unload_dependents"].parameter_choice,
            Some(ParameterChoice::BoolParam(false))
        );
        assert!(repository_parameters(br#"{"parameters": {"x": [1]}}"#).is_err());
    }

    #[test]
    fn server_metadata_names_the_binary_extension_once() {
        let v = server_metadata(crate::metadata::server_metadata());
        let extensions = v["extensions"].as_array().expect("a list");
        let binary = extensions
            .iter()
            .filter(|e| *e == BINARY_TENSOR_DATA)
            .count();
        assert_eq!(binary, 1, "{v}");
        assert_eq!(v["name"], "herd");
    }
}
