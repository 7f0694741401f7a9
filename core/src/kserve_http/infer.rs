//! An HTTP inference request as the gRPC `ModelInferRequest` it means, and the gRPC
//! answer as HTTP's JSON (and binary) response. Pure: bytes in, messages out. What the
//! model accepts (names, shapes, types, sizes) is not checked here: the service does
//! that, so HTTP and gRPC refuse alike.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use herd_proto::inference::infer_parameter::ParameterChoice;
use herd_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use herd_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use herd_proto::DataType;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::binary::{self, Split};
use super::errors::HttpError;
use super::tensors::{json_to_raw, raw_to_json};
use crate::tensor::{element_count, shape_string};

/// Request parameter: every output comes back as binary data unless an output says
/// otherwise (binary extension).
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// Output parameter: this output comes back as binary data (binary extension).
pub const BINARY_DATA: &str = "binary_data";
/// Input and output parameter: this tensor's data is this many bytes of the binary part.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Request parameter: the caller's deadline, in microseconds (as Triton's, and what
/// tritonclient.http's `infer(timeout=...)` sends).
pub const TIMEOUT: &str = "timeout";

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Which outputs go back as binary data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryOutputs {
    /// The request's `binary_data_output`.
    all: bool,
    /// Each requested output's own `binary_data`, which wins.
    by_name: HashMap<String, bool>,
}

impl BinaryOutputs {
    pub fn is_binary(&self, name: &str) -> bool {
        self.by_name.get(name).copied().unwrap_or(self.all)
    }
}

/// An inference request read from HTTP.
#[derive(Debug)]
pub struct HttpInfer {
    pub request: ModelInferRequest,
    pub binary: BinaryOutputs,
    /// The `timeout` parameter: the caller's deadline.
    pub timeout: Option<Duration>,
}

/// Reads an inference request for `model` (`version` empty: any) from its body and
/// its `Inference-Header-Content-Length` header.
pub fn parse(
    model: &str,
    version: &str,
    body: Bytes,
    header_length: Option<&[u8]>,
) -> Result<HttpInfer, HttpError> {
    let Split { json, mut binary } = binary::split(body, header_length)?;
    let parsed: RequestJson = serde_json::from_slice(&json)
        .map_err(|e| HttpError::bad_request(format!("malformed inference request JSON: {e}")))?;
    let mut request = ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: parsed.id,
        ..Default::default()
    };
    let mut outputs = BinaryOutputs::default();
    let mut timeout = None;
    for (key, value) in parsed.parameters {
        match key.as_str() {
            BINARY_DATA_OUTPUT => outputs.all = flag(&value, "the request", &key)?,
            TIMEOUT => timeout = Some(timeout_of(&value)?),
            _ => {
                let p = parameter(&value, "the request", &key)?;
                request.parameters.insert(key, p);
            }
        }
    }
    for input in parsed.inputs {
        let what = format!("input '{}'", input.name);
        let (tensor, data) = read_input(input, &what, &mut binary)?;
        request.inputs.push(tensor);
        request.raw_input_contents.push(data);
    }
    binary.finish()?;
    for output in parsed.outputs {
        let what = format!("output '{}'", output.name);
        let mut tensor = InferRequestedOutputTensor {
            name: output.name,
            ..Default::default()
        };
        for (key, value) in output.parameters {
            if key == BINARY_DATA {
                let binary = flag(&value, &what, &key)?;
                outputs.by_name.insert(tensor.name.clone(), binary);
            } else {
                let p = parameter(&value, &what, &key)?;
                tensor.parameters.insert(key, p);
            }
        }
        request.outputs.push(tensor);
    }
    Ok(HttpInfer {
        request,
        binary: outputs,
        timeout,
    })
}

/// One input: its tensor and its raw bytes, from JSON data or the binary part.
fn read_input(
    input: InputJson,
    what: &str,
    binary: &mut binary::Binary,
) -> Result<(InferInputTensor, Bytes), HttpError> {
    let mut tensor = InferInputTensor {
        name: input.name,
        datatype: input.datatype,
        shape: input.shape,
        ..Default::default()
    };
    let mut size = None;
    for (key, value) in input.parameters {
        if key == BINARY_DATA_SIZE {
            let n = value.as_u64().and_then(|n| usize::try_from(n).ok());
            size = Some(n.ok_or_else(|| {
                HttpError::bad_request(format!(
                    "{what}: {BINARY_DATA_SIZE} must be a number of bytes, got {value}"
                ))
            })?);
        } else {
            let p = parameter(&value, what, &key)?;
            tensor.parameters.insert(key, p);
        }
    }
    let data = match (size, input.data) {
        (Some(size), None) => binary.take(size, what)?,
        (None, Some(data)) => match tensor.datatype.parse::<DataType>() {
            Ok(datatype) => {
                let expected =
                    element_count(&tensor.shape).map(|n| (n, shape_string(&tensor.shape)));
                let raw = json_to_raw(datatype, &data, expected)
                    .map_err(|e| HttpError::bad_request(format!("{what}: {e}")))?;
                Bytes::from(raw)
            }
            // The service names an unknown type as it does for gRPC.
            Err(_) => Bytes::new(),
        },
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request(format!(
                "{what} has both data and {BINARY_DATA_SIZE}; send one"
            )))
        }
        (None, None) => {
            return Err(HttpError::bad_request(format!(
                "{what} has neither data nor {BINARY_DATA_SIZE}"
            )))
        }
    };
    Ok((tensor, data))
}

fn flag(value: &Value, what: &str, key: &str) -> Result<bool, HttpError> {
    value.as_bool().ok_or_else(|| {
        HttpError::bad_request(format!(
            "{what}: parameter '{key}' must be true or false, got {value}"
        ))
    })
}

fn timeout_of(value: &Value) -> Result<Duration, HttpError> {
    value.as_u64().map(Duration::from_micros).ok_or_else(|| {
        HttpError::bad_request(format!(
            "parameter '{TIMEOUT}' must be a whole number of microseconds, got {value}"
        ))
    })
}

/// A JSON parameter as the protocol's typed one.
fn parameter(value: &Value, what: &str, key: &str) -> Result<InferParameter, HttpError> {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
            (None, None, None) => return Err(bad_parameter(what, key, value)),
        },
        _ => return Err(bad_parameter(what, key, value)),
    };
    Ok(InferParameter {
        parameter_choice: Some(choice),
    })
}

fn bad_parameter(what: &str, key: &str, value: &Value) -> HttpError {
    HttpError::bad_request(format!(
        "{what}: parameter '{key}' must be a bool, a number or a string, got {value}"
    ))
}

/// A typed parameter as JSON.
pub fn parameter_json(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::from(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::StringParam(s)) => Value::from(s.clone()),
        Some(ParameterChoice::DoubleParam(f)) => Value::from(*f),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        None => Value::Null,
    }
}

fn parameters_json(parameters: &HashMap<String, InferParameter>) -> Map<String, Value> {
    parameters
        .iter()
        .map(|(k, p)| (k.clone(), parameter_json(p)))
        .collect()
}

/// The response body (JSON, then the binary outputs) and, when some outputs are
/// binary, the length of its JSON part for `Inference-Header-Content-Length`. An
/// output JSON cannot carry (FP16, BF16) goes back binary even when not asked:
/// answering with an error after the model ran would waste the run.
pub fn render(response: ModelInferResponse, binary: &BinaryOutputs) -> (Bytes, Option<usize>) {
    let mut chunks = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = response.raw_output_contents.into_iter();
    for output in response.outputs {
        let datatype = output.datatype.parse::<DataType>().ok();
        let data = match (raw.next(), &output.contents, datatype) {
            (Some(bytes), _, _) => bytes,
            (None, Some(contents), Some(d)) => crate::contents::contents_to_raw(d, contents)
                .map(Bytes::from)
                .unwrap_or_default(),
            (None, _, _) => Bytes::new(),
        };
        let mut parameters = parameters_json(&output.parameters);
        let json_data = if binary.is_binary(&output.name) {
            None
        } else {
            datatype.and_then(|d| raw_to_json(d, &data))
        };
        let mut o = Map::new();
        o.insert("name".into(), Value::from(output.name));
        o.insert("datatype".into(), Value::from(output.datatype));
        o.insert("shape".into(), Value::from(output.shape));
        match json_data {
            Some(values) => {
                if !parameters.is_empty() {
                    o.insert("parameters".into(), Value::Object(parameters));
                }
                o.insert("data".into(), values);
            }
            None => {
                parameters.insert(BINARY_DATA_SIZE.into(), Value::from(data.len()));
                o.insert("parameters".into(), Value::Object(parameters));
                chunks.push(data);
            }
        }
        outputs.push(Value::Object(o));
    }
    let mut body = Map::new();
    body.insert("model_name".into(), Value::from(response.model_name));
    body.insert("model_version".into(), Value::from(response.model_version));
    if !response.id.is_empty() {
        body.insert("id".into(), Value::from(response.id));
    }
    if !response.parameters.is_empty() {
        body.insert(
            "parameters".into(),
            Value::Object(parameters_json(&response.parameters)),
        );
    }
    body.insert("outputs".into(), Value::Array(outputs));
    let json = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    binary::frame(json, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::encode;
    use herd_proto::inference::model_infer_response::InferOutputTensor;
    use serde_json::json;

    fn body(json: &Value, binary: &[u8]) -> (Bytes, String) {
        let head = json.to_string();
        let length = head.len().to_string();
        (Bytes::from([head.as_bytes(), binary].concat()), length)
    }

    #[test]
    fn json_tensors_become_raw_contents() {
        let request = json!({
            "id": "r1",
            "inputs": [
                {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [[1.5, 2]]},
                {"name": "b", "shape": [2], "datatype": "INT64", "data": [3, -4]}
            ],
            "outputs": [{"name": "sum"}],
            "parameters": {"priority": 1}
        });
        let got = parse("m", "", Bytes::from(request.to_string()), None).expect("valid");
        let r = &got.request;
        assert_eq!((r.model_name.as_str(), r.id.as_str()), ("m", "r1"));
        assert_eq!(r.inputs[0].shape, [1, 2]);
        assert_eq!(r.raw_input_contents[0], encode([1.5f32, 2.0]));
        assert_eq!(r.raw_input_contents[1], encode([3i64, -4]));
        assert_eq!(r.outputs[0].name, "sum");
        assert_eq!(
            r.parameters["priority"].parameter_choice,
            Some(ParameterChoice::Int64Param(1))
        );
        assert!(!got.binary.is_binary("sum"));
        assert_eq!(got.timeout, None);
    }

    #[test]
    fn binary_inputs_are_taken_in_order_and_outputs_chosen_by_flags() {
        let a = encode([1.0f32, 2.0]);
        let b = encode([7i64]);
        let request = json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "c", "shape": [1], "datatype": "INT32", "data": [5]},
                {"name": "b", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}
            ],
            "outputs": [{"name": "x", "parameters": {"binary_data": false}}, {"name": "y"}],
            "parameters": {"binary_data_output": true, "timeout": 2500}
        });
        let (bytes, length) = body(&request, &[a.clone(), b.clone()].concat());
        let got = parse("m", "3", bytes, Some(length.as_bytes())).expect("valid");
        assert_eq!(got.request.model_version, "3");
        assert_eq!(got.request.raw_input_contents, [a, encode([5i32]), b]);
        assert!(!got.binary.is_binary("x"), "its own flag wins");
        assert!(got.binary.is_binary("y"), "the request's flag");
        assert!(
            got.request.parameters.is_empty(),
            "HTTP's own parameters stay here"
        );
        assert!(got.request.outputs[0].parameters.is_empty());
        assert_eq!(got.timeout, Some(Duration::from_micros(2500)));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let cases: &[(&str, Value, &[u8], &str)] = &[
            (
                "not json",
                json!("x"),
                b"",
                "malformed inference request JSON",
            ),
            (
                "no shape",
                json!({"inputs": [{"name": "a", "datatype": "FP32", "data": [1]}]}),
                b"",
                "missing field `shape`",
            ),
            (
                "no data",
                json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}),
                b"",
                "input 'a' has neither data nor binary_data_size",
            ),
            (
                "both",
                json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1],
                    "parameters": {"binary_data_size": 4}}]}),
                &[0; 4],
                "input 'a' has both data and binary_data_size",
            ),
            (
                "short binary",
                json!({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                    "parameters": {"binary_data_size": 8}}]}),
                &[0; 4],
                "input 'a' has binary_data_size 8 but only 4 bytes of binary data are left",
            ),
            (
                "extra binary",
                json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                    "parameters": {"binary_data_size": 4}}]}),
                &[0; 6],
                "2 bytes of binary data follow the JSON header",
            ),
            (
                "wrong count",
                json!({"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}),
                b"",
                "input 'a': data has 3 elements; shape [2,2] needs 4",
            ),
            (
                "bad flag",
                json!({"inputs": [], "parameters": {"binary_data_output": 1}}),
                b"",
                "parameter 'binary_data_output' must be true or false",
            ),
            (
                "bad timeout",
                json!({"inputs": [], "parameters": {"timeout": -5}}),
                b"",
                "parameter 'timeout' must be a whole number of microseconds",
            ),
        ];
        for (case, request, binary, want) in cases {
            let (bytes, length) = body(request, binary);
            let err = parse("m", "", bytes, Some(length.as_bytes())).expect_err(case);
            assert_eq!(err.status, 400, "{case}");
            assert!(
                err.message.contains(want),
                "{case}: {:?} lacks {want:?}",
                err.message
            );
        }
    }

    #[test]
    fn an_unknown_datatype_is_left_for_the_service_to_name() {
        let request =
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FLOAT", "data": [1]}]});
        let got = parse("m", "", Bytes::from(request.to_string()), None).expect("passed on");
        assert_eq!(got.request.inputs[0].datatype, "FLOAT");
        assert!(got.request.raw_input_contents[0].is_empty());
    }

    fn response() -> ModelInferResponse {
        let output = |name: &str, datatype: &str| InferOutputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![2],
            ..Default::default()
        };
        ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            outputs: vec![
                output("x", "FP32"),
                output("h", "FP16"),
                output("y", "INT64"),
            ],
            raw_output_contents: vec![
                Bytes::from(encode([0.5f32, -1.0])),
                Bytes::from_static(&[1, 2, 3, 4]),
                Bytes::from(encode([9i64, 10])),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn outputs_go_back_as_json_or_binary_as_asked() {
        let binary = BinaryOutputs {
            all: false,
            by_name: HashMap::from([("y".to_string(), true)]),
        };
        let (body, length) = render(response(), &binary);
        let length = length.expect("some outputs are binary");
        let head: Value = serde_json::from_slice(&body[..length]).expect("json head");
        assert_eq!(
            head,
            json!({
                "model_name": "m",
                "model_version": "1",
                "outputs": [
                    {"name": "x", "datatype": "FP32", "shape": [2], "data": [0.5, -1.0]},
                    {"name": "h", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}},
                    {"name": "y", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}
                ]
            })
        );
        assert_eq!(
            &body[length..],
            [&[1u8, 2, 3, 4][..], &encode([9i64, 10])].concat()
        );
    }

    #[test]
    fn all_json_outputs_are_a_plain_json_body() {
        let mut r = response();
        r.outputs.remove(1);
        r.raw_output_contents.remove(1);
        r.id = "r7".into();
        let (body, length) = render(r, &BinaryOutputs::default());
        assert_eq!(length, None);
        let head: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(head["id"], "r7");
        assert_eq!(head["outputs"][1]["data"], json!([9, 10]));
    }
}
