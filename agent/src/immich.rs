//! Immich's processing around a model of an Immich model cache, on the agent that runs
//! it: a stage request (`herd_immich::stage`) carries the encoded image or the text;
//! here it is decoded and pre-processed, the model runs through the ordinary path
//! (validated, batched with other requests, under the caller's deadline and class),
//! and its outputs are post-processed into the stage's JSON answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herd_core::layers::request_id::RequestId;
use herd_core::priority::Priority;
use herd_core::tensor::{decode, encode, Tensor};
use herd_immich::clip::{TextEncoder, VisualConfig};
use herd_immich::stage::{self, NextStage, StageKind, StageRequest, StageResult};
use herd_immich::{decode as image_decode, faces, ocr, RgbImage};
use herd_proto::inference::infer_parameter::ParameterChoice;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::model_infer_response::InferOutputTensor;
use herd_proto::inference::{ModelInferRequest, ModelInferResponse};
use herd_proto::DataType;
use ndarray::{ArrayD, Axis, IxDyn};
use tokio::time::Instant;

use crate::error::AgentError;
use crate::Agent;

/// Most faces one recognition request may carry (a detection finds far fewer).
const MAX_FACES: usize = 1000;
/// Most text boxes one recognition request may carry: DB post-processing's own cap.
const MAX_TEXT_BOXES: usize = 1000;
/// Most pixels the crops of one OCR recognition request may hold in all (and at most 4
/// times the image's own): 192 MB of RGB.
const MAX_CROP_PIXELS: u64 = 64 << 20;

fn at_most(count: usize, limit: usize, what: &str) -> Result<(), AgentError> {
    if count > limit {
        return Err(AgentError::InvalidInput(format!(
            "{count} {what} in one request, more than the {limit} allowed"
        )));
    }
    Ok(())
}

/// What an Immich model's processing needs besides the model, read once at load.
pub struct Recipe {
    pub kind: StageKind,
    visual: Option<VisualConfig>,
    text: Option<TextEncoder>,
    charset: Option<Vec<String>>,
}

/// The recipes of the Immich models this agent has loaded, by model name.
#[derive(Default)]
pub struct Recipes(Mutex<HashMap<String, Arc<Recipe>>>);

impl Recipes {
    pub fn get(&self, model: &str) -> Option<Arc<Recipe>> {
        self.lock().get(model).cloned()
    }

    pub fn insert(&self, model: &str, recipe: Recipe) {
        self.lock().insert(model.to_string(), Arc::new(recipe));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Recipe>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the recipe of a model: `files` are its side files by name (fetched), `model`
/// its model.onnx (for the OCR charset in its metadata).
pub fn recipe(
    stage: &herd_proto::herd::ImmichStage,
    files: &HashMap<String, PathBuf>,
    model: &std::path::Path,
) -> Result<Recipe, AgentError> {
    let kind = StageKind::parse(&stage.stage).ok_or_else(|| {
        AgentError::InvalidInput(format!("unknown Immich stage {:?}", stage.stage))
    })?;
    let read = |name: &str| -> Result<Option<Vec<u8>>, AgentError> {
        match files.get(name) {
            None => Ok(None),
            Some(p) => std::fs::read(p).map(Some).map_err(|e| {
                AgentError::InvalidInput(format!("{}: cannot read {name}: {e}", stage.model))
            }),
        }
    };
    let bad = |what: String| AgentError::InvalidInput(format!("{}: {what}", stage.model));
    let mut recipe = Recipe {
        kind,
        visual: None,
        text: None,
        charset: None,
    };
    match kind {
        StageKind::ClipVisual => {
            recipe.visual = Some(match read("preprocess_cfg.json")? {
                Some(bytes) => VisualConfig::from_json(&String::from_utf8_lossy(&bytes))
                    .map_err(|e| bad(format!("preprocess_cfg.json: {e}")))?,
                None => VisualConfig::default(),
            });
        }
        StageKind::ClipTextual => {
            let tokenizer = read("tokenizer.json")?
                .ok_or_else(|| bad("the textual model has no tokenizer.json beside it".into()))?;
            let config = read("config.json")?.map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut encoder = TextEncoder::new(&tokenizer, config.as_deref(), &stage.model)
                .map_err(|e| bad(format!("tokenizer: {e}")))?;
            if let Some(bytes) = read("tokenizer_config.json")? {
                encoder = encoder
                    .with_tokenizer_config(&String::from_utf8_lossy(&bytes))
                    .map_err(|e| bad(format!("tokenizer_config.json: {e}")))?;
            }
            recipe.text = Some(encoder);
        }
        StageKind::OcrRecognition => {
            let from_model = crate::onnx_metadata::value(model, "character")
                .map_err(|e| bad(format!("model.onnx: {e}")))?;
            let dict = ["ppocrv5_dict.txt", "dict.txt"]
                .iter()
                .find_map(|n| read(n).transpose())
                .transpose()?;
            let text = match (from_model, dict) {
                (Some(text), _) => text,
                (None, Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                (None, None) => return Err(bad(
                    "the recognition model has no 'character' metadata and no dict.txt beside it"
                        .into(),
                )),
            };
            recipe.charset = Some(ocr::charset(&text));
        }
        _ => {}
    }
    Ok(recipe)
}

/// Whether a request asks for Immich's processing.
pub fn stage_of(request: &ModelInferRequest) -> Option<&str> {
    match request
        .parameters
        .get(stage::PARAMETER)?
        .parameter_choice
        .as_ref()?
    {
        ParameterChoice::StringParam(s) => Some(s),
        _ => None,
    }
}

/// Runs one stage request: see the module docs.
pub async fn infer(
    agent: &Agent,
    request: ModelInferRequest,
    id: RequestId,
    deadline: Option<Instant>,
    priority: Priority,
) -> Result<ModelInferResponse, AgentError> {
    let model = request.model_name.clone();
    let recipe = agent.recipes.get(&model).ok_or_else(|| {
        AgentError::InvalidInput(format!(
            "model '{model}' is not loaded here as a model of an Immich model cache"
        ))
    })?;
    let asked = stage_of(&request).unwrap_or_default();
    if asked != recipe.kind.as_str() {
        return Err(AgentError::InvalidInput(format!(
            "model '{model}' runs Immich's {} stage, not {asked:?}",
            recipe.kind.as_str()
        )));
    }
    let input = named_input(&request, stage::INPUT)?;
    let options: StageRequest = match named_input(&request, stage::REQUEST) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::InvalidInput(format!("stage request: {e}")))?,
        Err(_) => StageRequest::default(),
    };
    // Decoded once, here, for this stage and the next one if it runs here too.
    let input = if recipe.kind.takes_text() {
        Input::Text(input)
    } else {
        Input::Image(Arc::new(blocking(move || decode_image(&input)).await?))
    };
    let next = options.then.clone();
    let run = Run {
        agent,
        model: &model,
        id,
        deadline,
        priority,
    };
    let mut result = run.stage(&recipe, &input, options).await?;
    if let Some(next) = next {
        result.then = run
            .next_here(recipe.kind, &next, &input, &result)
            .await?
            .map(Box::new);
    }
    let json = serde_json::to_vec(&result)
        .map_err(|e| AgentError::InvalidInput(format!("stage answer: {e}")))?;
    Ok(ModelInferResponse {
        model_name: model,
        model_version: "1".into(),
        id: request.id,
        outputs: vec![InferOutputTensor {
            name: stage::RESULT.into(),
            datatype: "UINT8".into(),
            shape: vec![json.len() as i64],
            ..Default::default()
        }],
        raw_output_contents: vec![Bytes::from(json)],
        ..Default::default()
    })
}

fn named_input(request: &ModelInferRequest, name: &str) -> Result<Bytes, AgentError> {
    request
        .inputs
        .iter()
        .position(|i| i.name == name)
        .and_then(|i| request.raw_input_contents.get(i).cloned())
        .ok_or_else(|| {
            AgentError::InvalidInput(format!("stage request without its '{name}' input"))
        })
}

/// A stage's input: text, or the image decoded once.
enum Input {
    Text(Bytes),
    Image(Arc<RgbImage>),
}

impl Input {
    fn image(&self) -> Result<Arc<RgbImage>, AgentError> {
        match self {
            Input::Image(image) => Ok(image.clone()),
            Input::Text(_) => Err(AgentError::InvalidInput(
                "this stage takes an image, but text was sent".into(),
            )),
        }
    }
}

/// One stage's model runs, all for the same caller.
struct Run<'a> {
    agent: &'a Agent,
    model: &'a str,
    id: RequestId,
    deadline: Option<Instant>,
    priority: Priority,
}

impl Run<'_> {
    /// The stage after `kind`, run here when its model is loaded on this node (else the
    /// scheduler routes it): the same caller, deadline and class, the image reused.
    async fn next_here(
        &self,
        kind: StageKind,
        next: &NextStage,
        input: &Input,
        first: &StageResult,
    ) -> Result<Option<StageResult>, AgentError> {
        let Some(recipe) = self.agent.recipes.get(&next.model) else {
            return Ok(None);
        };
        if kind.next() != Some(recipe.kind) || !self.agent.cache.is_loaded(&next.model) {
            return Ok(None);
        }
        let run = Run {
            agent: self.agent,
            model: &next.model,
            id: self.id.clone(),
            deadline: self.deadline,
            priority: self.priority,
        };
        let request = StageRequest {
            options: next.options.clone(),
            faces: first.faces.clone(),
            boxes: first.boxes.clone(),
            then: None,
        };
        run.stage(&recipe, input, request).await.map(Some)
    }

    async fn stage(
        &self,
        recipe: &Arc<Recipe>,
        input: &Input,
        request: StageRequest,
    ) -> Result<StageResult, AgentError> {
        let number = |key: &str, default: f64| {
            request
                .options
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default)
        };
        let mut result = StageResult::default();
        match recipe.kind {
            StageKind::ClipTextual => {
                let recipe = recipe.clone();
                let language = request
                    .options
                    .get("language")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let Input::Text(input) = input else {
                    return Err(AgentError::InvalidInput(
                        "this stage takes text, but an image was sent".into(),
                    ));
                };
                let input = input.clone();
                let encoded = blocking(move || {
                    let text = String::from_utf8(input.to_vec())
                        .map_err(|_| AgentError::InvalidInput("the text is not UTF-8".into()))?;
                    let encoder = recipe.text.as_ref().ok_or_else(no_recipe)?;
                    encoder
                        .encode(&text, language.as_deref())
                        .map_err(|e| AgentError::InvalidInput(e.to_string()))
                })
                .await?;
                let spec = self.spec().await?;
                let mut inputs = Vec::new();
                for s in &spec.inputs {
                    let values = if s.name.contains("mask") {
                        &encoded.attention_mask
                    } else {
                        &encoded.input_ids
                    };
                    inputs.push((s.name.clone(), int_tensor(s.dtype, values)?));
                }
                let out = self.run(inputs).await?;
                result.embedding = Some(first_row(&out)?);
            }
            StageKind::ClipVisual => {
                let recipe = recipe.clone();
                let image = input.image()?;
                let pixels = blocking(move || {
                    let cfg = recipe.visual.as_ref().ok_or_else(no_recipe)?;
                    Ok(herd_immich::clip::visual_input(&image, cfg)
                        .insert_axis(Axis(0))
                        .into_dyn())
                })
                .await?;
                let out = self.run_one(pixels).await?;
                result.embedding = Some(first_row(&out)?);
            }
            StageKind::FaceDetection => {
                let min_score = number("minScore", 0.7) as f32;
                let image = input.image()?;
                let (pixels, scale) = blocking(move || {
                    let (pixels, scale) = faces::detection_input(&image);
                    Ok((pixels.insert_axis(Axis(0)).into_dyn(), scale))
                })
                .await?;
                let out = self.run_one(pixels).await?;
                let found = blocking(move || {
                    let arrays = out.iter().map(f32_array).collect::<Result<Vec<_>, _>>()?;
                    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
                    faces::decode_detections(&views, scale, min_score)
                        .map_err(|e| AgentError::InvalidInput(format!("face detection: {e}")))
                })
                .await?;
                result.faces = Some(found);
            }
            StageKind::FaceRecognition => {
                let found = request.faces.unwrap_or_default();
                if found.is_empty() {
                    result.embeddings = Some(Vec::new());
                    return Ok(result);
                }
                at_most(found.len(), MAX_FACES, "faces")?;
                let image = input.image()?;
                let mut embeddings = Vec::new();
                // Cropped a model run at a time: what is held is one batch of crops.
                for group in found.chunks(self.batch_limit().await?) {
                    let (image, group) = (image.clone(), group.to_vec());
                    let crops = blocking(move || {
                        Ok(group
                            .iter()
                            .map(|f| faces::recognition_input(&image, &f.landmarks))
                            .collect::<Vec<_>>())
                    })
                    .await?;
                    let views: Vec<_> = crops.iter().map(|c| c.view()).collect();
                    let stacked = ndarray::stack(Axis(0), &views)
                        .map_err(|e| AgentError::InvalidInput(format!("face crops: {e}")))?;
                    let out = self.run_one(stacked.into_dyn()).await?;
                    embeddings.extend(rows(&out)?);
                }
                result.embeddings = Some(embeddings);
            }
            StageKind::OcrDetection => {
                let min_score = number("minScore", 0.5) as f32;
                let max_resolution = number("maxResolution", 736.0).clamp(32.0, 8192.0) as u32;
                let image = input.image()?;
                let (pixels, size) = blocking(move || {
                    let size = image.dimensions();
                    // Immich finds no text in an image under 32 pixels on a side.
                    if size.0 < 32 || size.1 < 32 {
                        return Ok((None, size));
                    }
                    let pixels = ocr::detection_input(&image, max_resolution);
                    Ok((Some(pixels.insert_axis(Axis(0)).into_dyn()), size))
                })
                .await?;
                let Some(pixels) = pixels else {
                    result.boxes = Some(Vec::new());
                    return Ok(result);
                };
                let out = self.run_one(pixels).await?;
                let boxes = blocking(move || {
                    let prob = f32_array(out.first().ok_or_else(no_output)?)?;
                    let shape = prob.shape().to_vec();
                    let (h, w) = match shape.as_slice() {
                        [.., h, w] => (*h, *w),
                        _ => {
                            return Err(AgentError::InvalidInput(
                                "ocr detection: output is not a map".into(),
                            ))
                        }
                    };
                    let prob = prob
                        .into_shape_with_order((h, w))
                        .map_err(|e| AgentError::InvalidInput(format!("ocr detection: {e}")))?;
                    Ok(ocr::detection_boxes(prob.view(), size, min_score))
                })
                .await?;
                result.boxes = Some(boxes);
            }
            StageKind::OcrRecognition => {
                let boxes = request.boxes.unwrap_or_default();
                if boxes.is_empty() {
                    result.texts = Some(Vec::new());
                    return Ok(result);
                }
                let count = boxes.len();
                at_most(count, MAX_TEXT_BOXES, "text boxes")?;
                let image = input.image()?;
                // Boxes come from detection, but a stage request can be sent by anyone:
                // what the crops would hold is bounded before any is made.
                let pixels: u64 = boxes
                    .iter()
                    .map(|b| {
                        let (w, h) = ocr::crop_size(&image, &b.points);
                        u64::from(w) * u64::from(h)
                    })
                    .sum();
                let image_pixels = u64::from(image.width()) * u64::from(image.height());
                let allowed = (4 * image_pixels).min(MAX_CROP_PIXELS);
                if pixels > allowed {
                    return Err(AgentError::InvalidInput(format!(
                        "the text boxes would crop {pixels} pixels, more than the {allowed} allowed for this image"
                    )));
                }
                let batches = blocking(move || {
                    let crops: Vec<RgbImage> =
                        boxes.iter().map(|b| ocr::crop(&image, &b.points)).collect();
                    Ok(ocr::recognition_batches(&crops))
                })
                .await?;
                let mut texts = vec![(String::new(), 0.0f32); count];
                for (indices, pixels) in batches {
                    let out = self.run_one(pixels.into_dyn()).await?;
                    let recipe = recipe.clone();
                    let decoded = blocking(move || {
                        let probs = f32_array(out.first().ok_or_else(no_output)?)?;
                        let probs = probs.into_dimensionality::<ndarray::Ix3>().map_err(|e| {
                            AgentError::InvalidInput(format!("ocr recognition: {e}"))
                        })?;
                        let charset = recipe.charset.as_ref().ok_or_else(no_recipe)?;
                        Ok(ocr::ctc_decode(probs.view(), charset))
                    })
                    .await?;
                    for (i, text) in indices.into_iter().zip(decoded) {
                        if let Some(slot) = texts.get_mut(i) {
                            *slot = text;
                        }
                    }
                }
                result.texts = Some(texts);
            }
        }
        Ok(result)
    }

    async fn spec(&self) -> Result<herd_core::tensor::ModelSpec, AgentError> {
        Ok(self
            .agent
            .cache
            .lease(self.model)?
            .ready()
            .await?
            .spec
            .clone())
    }

    /// Rows one model run may take: the model's batch limit, 1 for an unbatched model.
    async fn batch_limit(&self) -> Result<usize, AgentError> {
        let loaded = self.agent.cache.lease(self.model)?.ready().await?;
        Ok(if loaded.spec.batchable() {
            loaded.max_batch_size.max(1)
        } else {
            1
        })
    }

    /// Runs the model on one FP32 array given to its first input.
    async fn run_one(&self, pixels: ArrayD<f32>) -> Result<Vec<Tensor>, AgentError> {
        let spec = self.spec().await?;
        let name = spec.inputs.first().map(|s| s.name.clone()).ok_or_else(|| {
            AgentError::InvalidInput(format!("model '{}' has no input", self.model))
        })?;
        let shape = pixels.shape().iter().map(|&d| d as i64).collect();
        let data = match pixels.as_slice() {
            Some(values) => encode(values.iter().copied()),
            None => encode(pixels.iter().copied()),
        };
        let tensor = Tensor {
            dtype: DataType::Fp32,
            shape,
            data: Bytes::from(data),
        };
        self.run(vec![(name, tensor)]).await
    }

    /// One model run through the agent's ordinary path: validation, batching, limits.
    async fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<Tensor>, AgentError> {
        let mut request = ModelInferRequest {
            model_name: self.model.to_string(),
            ..Default::default()
        };
        for (name, t) in inputs {
            request.inputs.push(InferInputTensor {
                name,
                datatype: t.dtype.as_str().to_string(),
                shape: t.shape,
                ..Default::default()
            });
            request.raw_input_contents.push(t.data);
        }
        let response = crate::service::infer(
            self.agent,
            request,
            self.id.clone(),
            self.deadline,
            self.priority,
        )
        .await?;
        response
            .outputs
            .iter()
            .zip(response.raw_output_contents)
            .map(|(o, data)| {
                Ok(Tensor {
                    dtype: o
                        .datatype
                        .parse()
                        .map_err(|e| AgentError::InvalidInput(format!("{e}")))?,
                    shape: o.shape.clone(),
                    data,
                })
            })
            .collect()
    }
}

fn decode_image(bytes: &[u8]) -> Result<RgbImage, AgentError> {
    image_decode::decode_rgb(bytes, image_decode::DEFAULT_MAX_PIXELS)
        .map_err(|e| AgentError::InvalidInput(e.to_string()))
}

fn no_recipe() -> AgentError {
    AgentError::InvalidInput("the model's Immich processing is not set up".into())
}

fn no_output() -> AgentError {
    AgentError::InvalidInput("the model answered no output".into())
}

/// Token ids as the model's input type wants them (Immich's exports take INT32,
/// others INT64).
fn int_tensor(dtype: DataType, values: &[i32]) -> Result<Tensor, AgentError> {
    let data = match dtype {
        DataType::Int32 => encode(values.iter().copied()),
        DataType::Int64 => encode(values.iter().map(|&v| i64::from(v))),
        other => {
            return Err(AgentError::InvalidInput(format!(
                "a text model input of type {} (INT32 or INT64 expected)",
                other.as_str()
            )))
        }
    };
    Ok(Tensor {
        dtype,
        shape: vec![1, values.len() as i64],
        data: Bytes::from(data),
    })
}

fn f32_array(t: &Tensor) -> Result<ArrayD<f32>, AgentError> {
    if t.dtype != DataType::Fp32 {
        return Err(AgentError::InvalidInput(format!(
            "the model answered {} where FP32 was expected",
            t.dtype.as_str()
        )));
    }
    let shape: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), decode::<f32>(&t.data))
        .map_err(|e| AgentError::InvalidInput(format!("model output: {e}")))
}

/// Each row of the first output ([N, D] → N vectors of D).
fn rows(out: &[Tensor]) -> Result<Vec<Vec<f32>>, AgentError> {
    let a = f32_array(out.first().ok_or_else(no_output)?)?;
    let n = a.shape().first().copied().unwrap_or(0);
    let per_row = a.len().checked_div(n).unwrap_or(0);
    let a = a
        .into_shape_with_order((n, per_row))
        .map_err(|e| AgentError::InvalidInput(format!("model output: {e}")))?;
    Ok(a.outer_iter().map(|r| r.to_vec()).collect())
}

fn first_row(out: &[Tensor]) -> Result<Vec<f32>, AgentError> {
    rows(out)?
        .into_iter()
        .next()
        .ok_or_else(|| AgentError::InvalidInput("the model answered an empty embedding".into()))
}

/// CPU work (decoding, resizing, post-processing) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::task("immich processing", e))?
}
