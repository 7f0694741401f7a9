//! Checks an inference request against the model's interface before it may join a
//! batch: names, datatypes, shapes and byte lengths. Pure; the service calls it.

use bytes::Bytes;
use herd_core::contents::contents_to_raw;
use herd_proto::inference::ModelInferRequest;
use herd_proto::DataType;

use crate::error::AgentError;
use herd_core::limits::quoted_name;
use herd_core::tensor::{element_count, shape_string, ModelSpec, Tensor, TensorSpec};

/// Requests batch together only when every input agrees on its non-batch dimensions.
pub type BatchKey = Vec<Vec<i64>>;

#[derive(Debug)]
pub struct ValidRequest {
    /// One tensor per model input, in the model's order.
    pub inputs: Vec<Tensor>,
    /// Items in this request along the batch dimension (1 for an unbatched model).
    pub rows: usize,
    pub key: BatchKey,
    /// Indices into the model's outputs, in the order the caller asked for them.
    pub outputs: Vec<usize>,
}

impl ValidRequest {
    /// Bytes of input the request holds (its tensors' raw contents).
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|t| t.data.len() as u64).sum()
    }
}

/// What a model takes in one request, besides its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Items along the batch dimension.
    pub max_batch_size: usize,
    /// Elements of one item of an input along the model's dynamic dimensions (their
    /// product, the batch dimension aside): herd.toml `max_item_elements`.
    pub max_item_elements: u64,
}

/// Checks a request against the model, with herd's default `max_item_elements`.
pub fn validate(
    model: &str,
    spec: &ModelSpec,
    max_batch_size: usize,
    req: ModelInferRequest,
) -> Result<ValidRequest, AgentError> {
    let limits = RequestLimits {
        max_batch_size,
        max_item_elements: herd_core::settings::MAX_ITEM_ELEMENTS,
    };
    validate_within(model, spec, limits, req)
}

/// Checks a request against the model and `limits`.
pub fn validate_within(
    model: &str,
    spec: &ModelSpec,
    limits: RequestLimits,
    req: ModelInferRequest,
) -> Result<ValidRequest, AgentError> {
    let RequestLimits {
        max_batch_size,
        max_item_elements,
    } = limits;
    let invalid = |msg: String| AgentError::InvalidInput(format!("model '{model}': {msg}"));
    let batchable = spec.batchable();
    let use_raw = !req.raw_input_contents.is_empty();
    if use_raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw = req.raw_input_contents.into_iter();
    let mut slots: Vec<Option<Tensor>> = vec![None; spec.inputs.len()];
    for input in req.inputs {
        let index = spec
            .inputs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| {
                invalid(format!(
                    "no input named '{}'; its inputs are: {}",
                    quoted_name(&input.name),
                    names(&spec.inputs)
                ))
            })?;
        let want = &spec.inputs[index];
        if slots[index].is_some() {
            return Err(invalid(format!("input '{}' is given twice", want.name)));
        }
        let dtype: DataType = input
            .datatype
            .parse()
            .map_err(|e| invalid(format!("input '{}': {e}", want.name)))?;
        if dtype != want.dtype {
            return Err(invalid(format!(
                "input '{}' must be {}, got {}",
                want.name, want.dtype, dtype
            )));
        }
        if use_raw && input.contents.is_some() {
            return Err(invalid(format!(
                "input '{}' has typed contents as well as raw_input_contents; send one kind",
                want.name
            )));
        }
        if let Some(d) = input.shape.iter().position(|&d| d < 1) {
            return Err(invalid(format!(
                "input '{}' has shape {}: dimension {d} is {}; every size must be at least 1",
                want.name,
                shape_string(&input.shape),
                input.shape[d]
            )));
        }
        if !shape_fits(want, &input.shape) {
            return Err(invalid(format!(
                "input '{}' has shape {}; the model expects {} (-1 = any size)",
                want.name,
                shape_string(&input.shape),
                shape_string(&want.shape)
            )));
        }
        let dynamic = item_elements(want, &input.shape, usize::from(batchable));
        if dynamic.elements > max_item_elements {
            return Err(invalid(format!(
                "input '{}' has shape {}: {} elements per item along its dynamic dimensions \
                 ({}), over this model's limit of {max_item_elements}; send smaller items, or \
                 raise max_item_elements in the model's herd.toml",
                want.name,
                shape_string(&input.shape),
                dynamic.elements,
                dynamic.dims
            )));
        }
        let data = match raw.next() {
            Some(bytes) => bytes,
            None => {
                let contents = input.contents.unwrap_or_default();
                let bytes = contents_to_raw(dtype, &contents)
                    .map_err(|e| invalid(format!("input '{}': {e}", want.name)))?;
                Bytes::from(bytes)
            }
        };
        let elements = element_count(&input.shape)
            .ok_or_else(|| invalid(format!("input '{}': shape is too large", want.name)))?;
        let size = dtype
            .size()
            .ok_or_else(|| invalid(format!("input '{}': {dtype} is not supported", want.name)))?;
        let expected = elements
            .checked_mul(size)
            .ok_or_else(|| invalid(format!("input '{}': shape is too large", want.name)))?;
        if data.len() != expected {
            let source = if use_raw {
                "raw contents"
            } else {
                "typed contents"
            };
            return Err(invalid(format!(
                "input '{}' has {} bytes of {source}; shape {} of {dtype} needs {expected}",
                want.name,
                data.len(),
                shape_string(&input.shape)
            )));
        }
        slots[index] = Some(Tensor {
            dtype,
            shape: input.shape,
            data,
        });
    }
    let mut inputs = Vec::with_capacity(slots.len());
    for (slot, want) in slots.into_iter().zip(&spec.inputs) {
        inputs.push(slot.ok_or_else(|| invalid(format!("input '{}' is missing", want.name)))?);
    }

    let rows = if batchable {
        let rows = inputs[0].shape[0];
        if let Some(other) = inputs.iter().find(|t| t.shape[0] != rows) {
            return Err(invalid(format!(
                "inputs disagree on the batch dimension: {} vs {}",
                shape_string(&inputs[0].shape),
                shape_string(&other.shape)
            )));
        }
        let rows = rows as usize;
        if rows == 0 || rows > max_batch_size {
            return Err(invalid(format!(
                "batch of {rows} items; this model takes 1 to {max_batch_size} per request"
            )));
        }
        rows
    } else {
        1
    };
    let skip = usize::from(batchable);
    let key = inputs.iter().map(|t| t.shape[skip..].to_vec()).collect();

    let outputs = if req.outputs.is_empty() {
        (0..spec.outputs.len()).collect()
    } else {
        req.outputs
            .iter()
            .map(|o| {
                spec.outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| {
                        invalid(format!(
                            "no output named '{}'; its outputs are: {}",
                            quoted_name(&o.name),
                            names(&spec.outputs)
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(ValidRequest {
        inputs,
        rows,
        key,
        outputs,
    })
}

/// The size of one item of an input along the dimensions the model leaves dynamic.
struct Dynamic {
    /// Their product (saturating).
    elements: u64,
    /// Their sizes, as "2240×2240".
    dims: String,
}

/// The dynamic part of `got` (which fits `want`), the first `skip` dimensions aside.
fn item_elements(want: &TensorSpec, got: &[i64], skip: usize) -> Dynamic {
    let sizes: Vec<u64> = got
        .iter()
        .zip(&want.shape)
        .skip(skip)
        .filter(|(_, &w)| w < 0)
        .map(|(&g, _)| g as u64)
        .collect();
    Dynamic {
        elements: sizes.iter().fold(1u64, |n, &d| n.saturating_mul(d)),
        dims: sizes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("×"),
    }
}

/// True when `got` matches the model's shape for the input (-1 = any size).
fn shape_fits(want: &TensorSpec, got: &[i64]) -> bool {
    got.len() == want.shape.len()
        && got
            .iter()
            .zip(&want.shape)
            .all(|(&g, &w)| g >= 0 && (w < 0 || g == w))
}

fn names(specs: &[TensorSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };

    fn spec() -> ModelSpec {
        let t = |name: &str, dtype, shape: &[i64]| TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        };
        ModelSpec {
            inputs: vec![
                t("a", DataType::Fp32, &[-1, 4]),
                t("b", DataType::Int64, &[-1, 4]),
            ],
            outputs: vec![
                t("sum", DataType::Fp32, &[-1, 4]),
                t("neg", DataType::Int64, &[-1, 4]),
            ],
        }
    }

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<usize>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw.into_iter().map(|n| Bytes::from(vec![0u8; n])).collect(),
            ..Default::default()
        }
    }

    fn err(r: Result<ValidRequest, AgentError>) -> String {
        r.expect_err("request must be refused").to_string()
    }

    #[test]
    fn accepts_inputs_in_any_order_and_puts_them_in_model_order() {
        let r = request(
            vec![input("b", "INT64", &[2, 4]), input("a", "FP32", &[2, 4])],
            vec![64, 32],
        );
        let v = validate("m", &spec(), 8, r).expect("valid");
        assert_eq!(v.inputs[0].dtype, DataType::Fp32);
        assert_eq!(v.inputs[0].data.len(), 32);
        assert_eq!(v.rows, 2);
        assert_eq!(v.key, vec![vec![4], vec![4]]);
        assert_eq!(v.outputs, vec![0, 1]);
    }

    #[test]
    fn refuses_each_kind_of_bad_input_with_a_message_that_names_it() {
        let s = spec();
        let ok_b = || input("b", "INT64", &[1, 4]);
        let cases = [
            (
                request(vec![input("a", "INT32", &[1, 4]), ok_b()], vec![16, 32]),
                "must be FP32, got INT32",
            ),
            (
                request(vec![input("a", "FP32", &[1, 5]), ok_b()], vec![20, 32]),
                "has shape [1,5]; the model expects [-1,4]",
            ),
            (
                request(vec![input("a", "FP32", &[1, 4, 1]), ok_b()], vec![16, 32]),
                "has shape [1,4,1]",
            ),
            (
                request(vec![input("a", "FP32", &[1, 4]), ok_b()], vec![15, 32]),
                "has 15 bytes of raw contents; shape [1,4] of FP32 needs 16",
            ),
            (
                request(vec![input("a", "FP32", &[1, 4]), ok_b()], vec![17, 32]),
                "has 17 bytes",
            ),
            (
                request(vec![input("z", "FP32", &[1, 4]), ok_b()], vec![16, 32]),
                "no input named 'z'; its inputs are: a, b",
            ),
            (request(vec![ok_b()], vec![32]), "input 'a' is missing"),
            (
                request(vec![input("a", "FP32", &[1, 4]), ok_b()], vec![16]),
                "raw_input_contents has 1 entries for 2 inputs",
            ),
            (
                request(vec![input("a", "FP32", &[2, 4]), ok_b()], vec![32, 32]),
                "disagree on the batch dimension",
            ),
            (
                request(
                    vec![input("a", "FP32", &[9, 4]), input("b", "INT64", &[9, 4])],
                    vec![144, 288],
                ),
                "batch of 9 items; this model takes 1 to 8",
            ),
            (
                request(vec![input("a", "FLOAT", &[1, 4]), ok_b()], vec![16, 32]),
                "unknown datatype",
            ),
            (
                request(vec![input("a", "FP32", &[1, -4]), ok_b()], vec![16, 32]),
                "has shape [1,-4]: dimension 1 is -4; every size must be at least 1",
            ),
            (
                request(vec![input("a", "FP32", &[-1, 4]), ok_b()], vec![16, 32]),
                "dimension 0 is -1",
            ),
            (
                request(vec![input("a", "FP32", &[1, 0]), ok_b()], vec![0, 32]),
                "dimension 1 is 0",
            ),
            (
                request(
                    vec![input(&"n".repeat(10_000), "FP32", &[1, 4]), ok_b()],
                    vec![16, 32],
                ),
                "(10000 bytes)",
            ),
        ];
        for (req, want) in cases {
            let got = err(validate("m", &s, 8, req));
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }

    #[test]
    fn an_item_over_the_element_limit_along_dynamic_dimensions_is_refused() {
        let t = |name: &str, shape: &[i64]| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            shape: shape.to_vec(),
        };
        let det = ModelSpec {
            inputs: vec![t("x", &[-1, 3, -1, -1])],
            outputs: vec![t("y", &[-1, 1, -1, -1])],
        };
        let limits = RequestLimits {
            max_batch_size: 8,
            max_item_elements: 2048 * 2048,
        };
        let image = |rows: i64, side: i64| {
            let bytes = (rows * 3 * side * side * 4) as usize;
            request(
                vec![input("x", "FP32", &[rows, 3, side, side])],
                vec![bytes],
            )
        };
        let ok = validate_within("det", &det, limits, image(2, 1440)).expect("1440 px passes");
        assert_eq!(ok.input_bytes(), 2 * 3 * 1440 * 1440 * 4);
        validate_within("det", &det, limits, image(1, 2048)).expect("2048 px is the limit");
        let got = err(validate_within("det", &det, limits, image(1, 2240)));
        assert_eq!(
            got,
            "model 'det': input 'x' has shape [1,3,2240,2240]: 5017600 elements per item \
             along its dynamic dimensions (2240×2240), over this model's limit of 4194304; \
             send smaller items, or raise max_item_elements in the model's herd.toml"
        );
        // Fixed dimensions and the batch dimension do not count.
        let small = RequestLimits {
            max_batch_size: 8,
            max_item_elements: 4,
        };
        validate(
            "m",
            &spec(),
            8,
            request(
                vec![input("a", "FP32", &[8, 4]), input("b", "INT64", &[8, 4])],
                vec![128, 256],
            ),
        )
        .expect("no dynamic dimension but the batch");
        validate_within(
            "m",
            &spec(),
            small,
            request(
                vec![input("a", "FP32", &[8, 4]), input("b", "INT64", &[8, 4])],
                vec![128, 256],
            ),
        )
        .expect("nothing dynamic to count");
    }

    #[test]
    fn typed_contents_are_accepted_and_checked() {
        let mut a = input("a", "FP32", &[1, 4]);
        a.contents = Some(herd_proto::inference::InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        });
        let mut b = input("b", "INT64", &[1, 4]);
        b.contents = Some(herd_proto::inference::InferTensorContents {
            int64_contents: vec![1, 2, 3],
            ..Default::default()
        });
        let got = err(validate(
            "m",
            &spec(),
            8,
            request(vec![a.clone(), b.clone()], vec![]),
        ));
        assert!(got.contains("has 24 bytes of typed contents"), "{got}");
        b.contents
            .as_mut()
            .expect("set above")
            .int64_contents
            .push(4);
        let v = validate("m", &spec(), 8, request(vec![a, b], vec![])).expect("valid");
        assert_eq!(&v.inputs[0].data[..4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn requested_outputs_must_exist() {
        let mut r = request(
            vec![input("a", "FP32", &[1, 4]), input("b", "INT64", &[1, 4])],
            vec![16, 32],
        );
        r.outputs = vec![InferRequestedOutputTensor {
            name: "neg".into(),
            ..Default::default()
        }];
        assert_eq!(
            validate("m", &spec(), 8, r.clone()).expect("valid").outputs,
            vec![1]
        );
        r.outputs[0].name = "nope".into();
        assert!(err(validate("m", &spec(), 8, r))
            .contains("no output named 'nope'; its outputs are: sum, neg"));
    }

    #[test]
    fn raw_and_typed_contents_together_are_refused() {
        let mut a = input("a", "FP32", &[1, 4]);
        a.contents = Some(herd_proto::inference::InferTensorContents {
            fp32_contents: vec![9.0; 4],
            ..Default::default()
        });
        let r = request(vec![a, input("b", "INT64", &[1, 4])], vec![16, 32]);
        let got = err(validate("m", &spec(), 8, r));
        assert!(
            got.contains("typed contents as well as raw_input_contents"),
            "{got}"
        );
    }

    mod arbitrary {
        use herd_proto::inference::InferTensorContents;
        use proptest::prelude::*;
        use tonic::Code;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("sum".to_string()),
                ".{0,40}",
            ]
        }

        fn datatype() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("FP32".to_string()),
                Just("INT64".to_string()),
                Just("BYTES".to_string()),
                Just("BOOL".to_string()),
                "[A-Z0-9]{0,8}",
            ]
        }

        fn shape() -> impl Strategy<Value = Vec<i64>> {
            prop::collection::vec(
                prop_oneof![
                    0i64..10,
                    Just(-1i64),
                    Just(i64::MAX),
                    Just(i64::MIN),
                    Just(1i64 << 40),
                ],
                0..4,
            )
        }

        fn tensor() -> impl Strategy<Value = InferInputTensor> {
            (
                name(),
                datatype(),
                shape(),
                prop::option::of((
                    prop::collection::vec(any::<f32>(), 0..12),
                    prop::collection::vec(any::<i64>(), 0..12),
                )),
            )
                .prop_map(|(name, datatype, shape, contents)| InferInputTensor {
                    name,
                    datatype,
                    shape,
                    contents: contents.map(|(f, i)| InferTensorContents {
                        fp32_contents: f,
                        int64_contents: i,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
        }

        fn infer_request() -> impl Strategy<Value = ModelInferRequest> {
            (
                prop::collection::vec(tensor(), 0..4),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
                prop::collection::vec(name(), 0..3),
            )
                .prop_map(|(inputs, raw, outputs)| ModelInferRequest {
                    model_name: "m".into(),
                    inputs,
                    raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
                    outputs: outputs
                        .into_iter()
                        .map(|name| InferRequestedOutputTensor {
                            name,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
        }

        proptest! {
            /// Whatever arrives: never a panic, and either a valid request that agrees
            /// with the model or INVALID_ARGUMENT.
            #[test]
            fn any_request_is_valid_or_invalid_argument(req in infer_request()) {
                let s = spec();
                match validate("m", &s, 8, req) {
                    Ok(v) => {
                        prop_assert_eq!(v.inputs.len(), s.inputs.len());
                        prop_assert!((1..=8).contains(&v.rows));
                        for (t, want) in v.inputs.iter().zip(&s.inputs) {
                            prop_assert_eq!(t.dtype, want.dtype);
                            let bytes = element_count(&t.shape)
                                .zip(t.dtype.size())
                                .map(|(n, size)| n * size);
                            prop_assert_eq!(Some(t.data.len()), bytes);
                        }
                    }
                    Err(e) => prop_assert_eq!(e.code(), Code::InvalidArgument, "{}", e),
                }
            }
        }
    }
}
