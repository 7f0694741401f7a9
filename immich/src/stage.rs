//! How one stage of a `/predict` request travels from the scheduler to the agent that
//! runs its model, over the ordinary KServe inference call: the request names the
//! stage in a parameter and carries the encoded image (or the text) and a small JSON
//! request as UINT8 tensors; the agent answers one UINT8 tensor of JSON. The image
//! is decoded, and every pre- and post-processing step runs, on that agent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::entries::{Stage, Task};
use crate::faces::Face;
use crate::ocr::TextBox;

/// The request parameter that names the stage; without it a request reaches the
/// ONNX model as is (Triton clients can still call it with tensors).
pub const PARAMETER: &str = "herd-immich";
/// UINT8 input: the encoded image or the UTF-8 text.
pub const INPUT: &str = "input";
/// UINT8 input: a [`StageRequest`] as JSON.
pub const REQUEST: &str = "request";
/// UINT8 output: a [`StageResult`] as JSON.
pub const RESULT: &str = "result";

/// One model's processing: a task and model type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    ClipVisual,
    ClipTextual,
    FaceDetection,
    FaceRecognition,
    OcrDetection,
    OcrRecognition,
}

impl StageKind {
    pub fn of(task: Task, stage: Stage) -> Option<StageKind> {
        Some(match (task, stage) {
            (Task::Clip, Stage::Visual) => StageKind::ClipVisual,
            (Task::Clip, Stage::Textual) => StageKind::ClipTextual,
            (Task::FacialRecognition, Stage::Detection) => StageKind::FaceDetection,
            (Task::FacialRecognition, Stage::Recognition) => StageKind::FaceRecognition,
            (Task::Ocr, Stage::Detection) => StageKind::OcrDetection,
            (Task::Ocr, Stage::Recognition) => StageKind::OcrRecognition,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::ClipVisual => "clip-visual",
            StageKind::ClipTextual => "clip-textual",
            StageKind::FaceDetection => "facial-recognition-detection",
            StageKind::FaceRecognition => "facial-recognition-recognition",
            StageKind::OcrDetection => "ocr-detection",
            StageKind::OcrRecognition => "ocr-recognition",
        }
    }

    pub fn parse(text: &str) -> Option<StageKind> {
        [
            StageKind::ClipVisual,
            StageKind::ClipTextual,
            StageKind::FaceDetection,
            StageKind::FaceRecognition,
            StageKind::OcrDetection,
            StageKind::OcrRecognition,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }

    /// Whether its input is text rather than an image.
    pub fn takes_text(self) -> bool {
        self == StageKind::ClipTextual
    }

    /// Its task and model type.
    pub fn parts(self) -> (Task, Stage) {
        match self {
            StageKind::ClipVisual => (Task::Clip, Stage::Visual),
            StageKind::ClipTextual => (Task::Clip, Stage::Textual),
            StageKind::FaceDetection => (Task::FacialRecognition, Stage::Detection),
            StageKind::FaceRecognition => (Task::FacialRecognition, Stage::Recognition),
            StageKind::OcrDetection => (Task::Ocr, Stage::Detection),
            StageKind::OcrRecognition => (Task::Ocr, Stage::Recognition),
        }
    }

    /// The other stage of a two-stage task (a detection's recognition and back).
    pub fn partner(self) -> Option<StageKind> {
        match self {
            StageKind::FaceDetection => Some(StageKind::FaceRecognition),
            StageKind::FaceRecognition => Some(StageKind::FaceDetection),
            StageKind::OcrDetection => Some(StageKind::OcrRecognition),
            StageKind::OcrRecognition => Some(StageKind::OcrDetection),
            _ => None,
        }
    }

    /// The stage that runs on this one's output, if any.
    pub fn next(self) -> Option<StageKind> {
        match self {
            StageKind::FaceDetection | StageKind::OcrDetection => self.partner(),
            _ => None,
        }
    }

    /// The catalog's name for a model of the Immich cache:
    /// `immich.<task>.<type>.<modelName>` (cleaned names hold no `.`, so it is one
    /// plain name and cannot collide with another stage's).
    pub fn catalog_name(task: Task, stage: Stage, model: &str) -> String {
        format!("immich.{}.{}.{model}", task.as_str(), stage.as_str())
    }
}

/// What a stage gets besides its input: the entry's options and the output of the
/// stage it depends on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Face recognition: the detected faces to align and embed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<Face>>,
    /// OCR recognition: the detected text boxes to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<Vec<TextBox>>,
    /// A detection's recognition, to run on the same node when that node has its model
    /// loaded: the image is then decoded once and sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<NextStage>,
}

/// The stage to run after this one, where it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NextStage {
    /// Its model's catalog name.
    pub model: String,
    #[serde(default)]
    pub options: Map<String, Value>,
}

/// A stage's answer; which fields are set depends on the stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// CLIP: the embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Face detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<Face>>,
    /// Face recognition: one embedding per face, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// OCR detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<Vec<TextBox>>,
    /// OCR recognition: per box, its text and score (before the minScore filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub texts: Option<Vec<(String, f32)>>,
    /// The next stage's result, when it ran on the same node ([`StageRequest::then`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Box<StageResult>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip_and_catalog_names_are_plain() {
        for task in [Task::Clip, Task::FacialRecognition, Task::Ocr] {
            for &stage in task.stages() {
                let kind = StageKind::of(task, stage).expect("a stage of its task");
                assert_eq!(StageKind::parse(kind.as_str()), Some(kind));
                assert_eq!(kind.parts(), (task, stage));
                if let Some(partner) = kind.partner() {
                    assert_eq!(partner.partner(), Some(kind));
                    assert_eq!(partner.parts().0, task);
                }
                let name = StageKind::catalog_name(task, stage, "buffalo_l");
                assert!(!name.contains('/'));
            }
        }
        assert_eq!(StageKind::of(Task::Clip, Stage::Detection), None);
    }

    #[test]
    fn requests_and_results_travel_as_json() {
        let request = StageRequest {
            faces: Some(vec![Face {
                bbox: [1.0, 2.0, 3.0, 4.0],
                score: 0.9,
                landmarks: [[0.5; 2]; 5],
            }]),
            ..Default::default()
        };
        let text = serde_json::to_string(&request).expect("json");
        assert_eq!(
            serde_json::from_str::<StageRequest>(&text).expect("back"),
            request
        );
        let result: StageResult =
            serde_json::from_str(r#"{"embedding":[0.5,-1]}"#).expect("parsed");
        assert_eq!(result.embedding, Some(vec![0.5, -1.0]));
    }
}
