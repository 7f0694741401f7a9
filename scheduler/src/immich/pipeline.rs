//! A `/predict` request's stages, run as calls to the cluster's Immich models.

use std::sync::Arc;

use bytes::Bytes;
use herd_core::priority::Priority;
use herd_immich::entries::{self, Entry};
use herd_immich::stage::{self, NextStage, StageKind, StageRequest, StageResult};
use herd_proto::inference::infer_parameter::ParameterChoice;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::{InferParameter, ModelInferRequest};
use serde_json::{Map, Value};

use crate::error::SchedulerError;
use crate::state::Scheduler;

/// What a `/predict` form carries besides `entries`.
#[derive(Debug, Clone)]
pub enum Payload {
    Image(Bytes),
    Text(String),
}

/// Why a prediction failed; the HTTP front maps each to Immich's status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictError {
    /// 422: `entries` is not a pipeline Immich would send.
    #[error("{0}")]
    InvalidEntries(String),
    /// 400: the input is missing, not an image, too large, or a stage lacks its dependency.
    #[error("{0}")]
    BadInput(String),
    /// 500: an unknown model, a model that cannot load, a failed run (Immich's code).
    #[error("{0}")]
    Failed(String),
    /// 503: the cluster cannot serve now (no node up).
    #[error("{0}")]
    Unavailable(String),
}

/// What the HTTP front calls; the cluster implements it, tests fake it.
#[async_trait::async_trait]
pub trait Predict: Send + Sync + 'static {
    /// `entries` is the form's raw JSON text; the answer is the response body.
    async fn predict(
        &self,
        entries: &str,
        payload: Payload,
    ) -> Result<serde_json::Value, PredictError>;
    /// Whether `/ping` answers `pong`: the cluster can serve.
    async fn ready(&self) -> bool;
}

/// The cluster as Immich's ML server: each stage is one inference call to the Immich
/// model of the catalog that runs it, routed, batched and placed as any call is; the
/// agent that runs the model decodes the image and does the stage's processing.
pub struct ClusterPredict {
    scheduler: Arc<Scheduler>,
    /// Most pixels an image may have; refused from its header, before any decoding.
    max_pixels: u64,
}

impl ClusterPredict {
    pub fn new(scheduler: Arc<Scheduler>, max_pixels: u64) -> ClusterPredict {
        ClusterPredict {
            scheduler,
            max_pixels,
        }
    }

    /// Runs one stage on the cluster and reads its answer.
    async fn run(
        &self,
        entry: &Entry,
        kind: StageKind,
        input: Bytes,
        request: &StageRequest,
    ) -> Result<StageResult, PredictError> {
        let model = StageKind::catalog_name(entry.task, entry.stage, &entry.model);
        let request_json = serde_json::to_vec(request)
            .map_err(|e| PredictError::Failed(format!("stage request: {e}")))?;
        let tensor = |name: &str, len: usize| InferInputTensor {
            name: name.to_string(),
            datatype: "UINT8".to_string(),
            shape: vec![len as i64],
            ..Default::default()
        };
        let mut parameters = std::collections::HashMap::new();
        parameters.insert(
            stage::PARAMETER.to_string(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam(kind.as_str().to_string())),
            },
        );
        let call = ModelInferRequest {
            model_name: model.clone(),
            inputs: vec![
                tensor(stage::INPUT, input.len()),
                tensor(stage::REQUEST, request_json.len()),
            ],
            raw_input_contents: vec![input, Bytes::from(request_json)],
            parameters,
            ..Default::default()
        };
        let id = herd_core::layers::request_id::RequestId::from_caller(None);
        // Immich marks a URL that answers 5xx unhealthy for 30 s: a full queue or a node
        // going away is waited out (bounded well inside Node's 300 s), not passed on.
        let waited = tokio::time::Instant::now();
        let mut pause = RETRY_FIRST;
        let response = loop {
            match self
                .scheduler
                .infer(call.clone(), None, id.as_str(), priority_of(kind), false)
                .await
            {
                Ok(response) => break response,
                Err(e) if passing(&e) && waited.elapsed() + pause < RETRY_FOR => {
                    tracing::debug!(model = %model, error = %e, "immich stage waits and tries again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                }
                Err(e) => return Err(stage_error(&entry.model, kind, e)),
            }
        };
        let bytes = response
            .outputs
            .iter()
            .position(|o| o.name == stage::RESULT)
            .and_then(|i| response.raw_output_contents.get(i))
            .ok_or_else(|| {
                PredictError::Failed(format!(
                    "{model} answered without a '{}' output",
                    stage::RESULT
                ))
            })?;
        serde_json::from_slice(bytes)
            .map_err(|e| PredictError::Failed(format!("{model} answered badly: {e}")))
    }
}

/// How long a stage keeps trying while the cluster is busy or a node comes and goes.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const RETRY_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A refusal that passes: a full queue or budget (RESOURCE_EXHAUSTED from an agent) or
/// a node that went away (UNAVAILABLE). A model that fits nowhere is not one.
fn passing(e: &SchedulerError) -> bool {
    matches!(
        e,
        SchedulerError::Agent {
            code: tonic::Code::ResourceExhausted | tonic::Code::Unavailable,
            ..
        }
    )
}

/// Search (CLIP textual) is what a user waits for; the rest are Immich's background
/// jobs and go after it under load.
fn priority_of(kind: StageKind) -> Priority {
    match kind {
        StageKind::ClipTextual => Priority::Interactive,
        _ => Priority::Bulk,
    }
}

/// A failed stage as Immich would answer it: a model it does not have or cannot load
/// is 500 (Immich's code); a bad image 400; a cluster that cannot serve 503.
fn stage_error(model: &str, kind: StageKind, e: SchedulerError) -> PredictError {
    use tonic::Code;
    let text = e.to_string();
    match e.code() {
        Code::NotFound => PredictError::Failed(format!(
            "model '{model}' ({}) is not in the Immich model cache (--immich-models)",
            kind.as_str()
        )),
        Code::InvalidArgument => PredictError::BadInput(text),
        Code::Unavailable | Code::ResourceExhausted => PredictError::Unavailable(text),
        _ => PredictError::Failed(text),
    }
}

#[async_trait::async_trait]
impl Predict for ClusterPredict {
    async fn predict(&self, entries: &str, payload: Payload) -> Result<Value, PredictError> {
        let entries =
            entries::parse(entries).map_err(|e| PredictError::InvalidEntries(e.to_string()))?;
        let plan = plan(&entries, &payload)?;
        let (input, size) = match payload {
            Payload::Image(bytes) => {
                let (width, height) = herd_immich::decode::dimensions(&bytes)
                    .map_err(|e| PredictError::BadInput(e.to_string()))?;
                if u64::from(width) * u64::from(height) > self.max_pixels {
                    return Err(PredictError::BadInput(format!(
                        "the image is {width}x{height} pixels, more than the {} pixels allowed",
                        self.max_pixels
                    )));
                }
                (bytes, Some((width, height)))
            }
            Payload::Text(text) => (Bytes::from(text.into_bytes()), None),
        };
        // Stages without a dependency run at once; each dependent one after its own.
        let tasks = plan.into_iter().map(|(first, second)| {
            let input = input.clone();
            async move {
                // The recognition goes along: the node that detects runs it too when it
                // has its model loaded, on the image it has already decoded.
                let request = StageRequest {
                    options: first.0.options.clone(),
                    then: second.map(|(entry, _)| NextStage {
                        model: StageKind::catalog_name(entry.task, entry.stage, &entry.model),
                        options: entry.options.clone(),
                    }),
                    ..Default::default()
                };
                let mut out = self.run(first.0, first.1, input.clone(), &request).await?;
                let Some((entry, kind)) = second else {
                    return Ok::<_, PredictError>((first.0.task, first.1, out, None));
                };
                let last = match out.then.take() {
                    Some(done) => *done,
                    None => {
                        let request = StageRequest {
                            options: entry.options.clone(),
                            faces: out.faces.clone(),
                            boxes: out.boxes.clone(),
                            then: None,
                        };
                        self.run(entry, kind, input, &request).await?
                    }
                };
                // Immich's recognizer keeps texts scoring above its minScore (0.9 unless
                // the entry says).
                let min_score = entry
                    .number("minScore", 0.9)
                    .map_err(|e| PredictError::InvalidEntries(e.to_string()))?;
                Ok((entry.task, kind, out, Some((last, min_score as f32))))
            }
        });
        let results = futures::future::try_join_all(tasks).await?;
        let mut response = Map::new();
        for (task, kind, first, second) in results {
            response.insert(
                task.as_str().to_string(),
                answer(kind, &first, second.as_ref(), size)?,
            );
        }
        if let Some((width, height)) = size {
            response.insert("imageHeight".into(), height.into());
            response.insert("imageWidth".into(), width.into());
        }
        Ok(Value::Object(response))
    }

    async fn ready(&self) -> bool {
        self.scheduler.lock().nodes().any(|n| n.schedulable())
    }
}

type Planned<'a> = ((&'a Entry, StageKind), Option<(&'a Entry, StageKind)>);

/// Each task's stages in order (a detection and its recognition), checked against
/// the payload: an image task needs an image, a text task text; a recognition without
/// its detection is 400, as Immich answers it.
fn plan<'a>(entries: &'a [Entry], payload: &Payload) -> Result<Vec<Planned<'a>>, PredictError> {
    let mut planned: Vec<Planned<'a>> = Vec::new();
    for entry in entries {
        let kind = StageKind::of(entry.task, entry.stage).ok_or_else(|| {
            PredictError::InvalidEntries(format!(
                "{} has no model type {}",
                entry.task.as_str(),
                entry.stage.as_str()
            ))
        })?;
        match (payload, kind.takes_text()) {
            (Payload::Image(_), true) => {
                return Err(PredictError::BadInput(format!(
                    "{}.{} takes text, but an image was sent",
                    entry.task.as_str(),
                    entry.stage.as_str()
                )))
            }
            (Payload::Text(_), false) => {
                return Err(PredictError::BadInput(format!(
                    "{}.{} takes an image, but text was sent",
                    entry.task.as_str(),
                    entry.stage.as_str()
                )))
            }
            _ => {}
        }
        if entry.stage.depends_on().is_none() {
            planned.push(((entry, kind), None));
        }
    }
    for entry in entries {
        let Some(needed) = entry.stage.depends_on() else {
            continue;
        };
        let kind = StageKind::of(entry.task, entry.stage).ok_or_else(|| {
            PredictError::InvalidEntries(format!(
                "{} has no {}",
                entry.task.as_str(),
                entry.stage.as_str()
            ))
        })?;
        let first = planned
            .iter_mut()
            .find(|((e, _), second)| e.task == entry.task && e.stage == needed && second.is_none())
            .ok_or_else(|| {
                PredictError::BadInput(format!(
                    "Task {} of type {} depends on output of ({}, {})",
                    entry.task.as_str(),
                    entry.stage.as_str(),
                    needed.as_str(),
                    entry.task.as_str()
                ))
            })?;
        first.1 = Some((entry, kind));
    }
    Ok(planned)
}

/// The response's value for one task, as Immich writes it: embeddings as JSON
/// strings, face boxes in pixels, OCR boxes as fractions of the image's size.
fn answer(
    kind: StageKind,
    first: &StageResult,
    second: Option<&(StageResult, f32)>,
    size: Option<(u32, u32)>,
) -> Result<Value, PredictError> {
    let missing =
        |what: &str| PredictError::Failed(format!("{} answered without {what}", kind.as_str()));
    Ok(match kind {
        StageKind::ClipVisual | StageKind::ClipTextual => {
            let embedding = first
                .embedding
                .as_ref()
                .ok_or_else(|| missing("an embedding"))?;
            Value::String(vector_text(embedding))
        }
        StageKind::FaceDetection | StageKind::FaceRecognition => {
            let faces = first.faces.as_deref().ok_or_else(|| missing("faces"))?;
            let embeddings = match second {
                Some((s, _)) => Some(
                    s.embeddings
                        .as_deref()
                        .ok_or_else(|| missing("embeddings"))?,
                ),
                None => None,
            };
            let faces = faces.iter().enumerate().map(|(i, f)| {
                let mut face = serde_json::json!({
                    "boundingBox": {
                        "x1": f.bbox[0].round(), "y1": f.bbox[1].round(),
                        "x2": f.bbox[2].round(), "y2": f.bbox[3].round(),
                    },
                    "score": f.score,
                });
                if let Some(e) = embeddings.and_then(|e| e.get(i)) {
                    face["embedding"] = Value::String(vector_text(e));
                }
                face
            });
            Value::Array(faces.collect())
        }
        StageKind::OcrDetection | StageKind::OcrRecognition => {
            let boxes = first
                .boxes
                .as_deref()
                .ok_or_else(|| missing("text boxes"))?;
            let (width, height) = size.unwrap_or((1, 1));
            let (w, h) = (width.max(1) as f32, height.max(1) as f32);
            let (texts, min_score) = match second {
                Some((s, min)) => (s.texts.as_deref().ok_or_else(|| missing("texts"))?, *min),
                None => (&[][..], 0.0),
            };
            let mut out =
                serde_json::json!({"text": [], "box": [], "boxScore": [], "textScore": []});
            for (b, (text, score)) in boxes.iter().zip(texts) {
                if *score <= min_score {
                    continue;
                }
                push(&mut out, "text", Value::String(text.clone()));
                for p in b.points {
                    push(&mut out, "box", (p[0] / w).into());
                    push(&mut out, "box", (p[1] / h).into());
                }
                push(&mut out, "boxScore", b.score.into());
                push(&mut out, "textScore", (*score).into());
            }
            out
        }
    })
}

fn push(out: &mut Value, key: &str, v: Value) {
    if let Some(list) = out.get_mut(key).and_then(Value::as_array_mut) {
        list.push(v);
    }
}

/// A float vector as the JSON text Immich stores in pgvector: `[0.1,-0.2,…]`.
fn vector_text(values: &[f32]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_or_lost_node_is_waited_out() {
        let agent = |code| SchedulerError::Agent {
            code,
            message: "m".into(),
        };
        assert!(passing(&agent(tonic::Code::ResourceExhausted)));
        assert!(passing(&agent(tonic::Code::Unavailable)));
        assert!(!passing(&agent(tonic::Code::InvalidArgument)));
        assert!(!passing(&SchedulerError::Unplaceable("too big".into())));
        assert!(!passing(&SchedulerError::UnknownModel("m".into())));
    }
}
