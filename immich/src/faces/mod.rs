//! Immich's facial recognition, the processing around its two models as insightface
//! does it for Immich's ML server: the detector's letterboxed input and the decoding of
//! its outputs into faces ([`detection_input`], [`decode_detections`]), then each
//! face's aligned crop for ArcFace ([`recognition_input`]). The resize and warp follow
//! OpenCV's own arithmetic, so the tensors match Python's number for number.

mod align;
mod detect;
mod resize;

pub use align::{
    recognition_input, similarity_transform, Affine, ARCFACE_TEMPLATE, RECOGNITION_SIZE,
};
pub use detect::{decode_detections, detection_input, DETECTION_SIZE};

/// One detected face, in pixels of the image given to [`detection_input`]. It travels
/// from the detection stage to the recognition stage as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Face {
    /// `x1, y1, x2, y2`, neither rounded nor clipped to the image.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Left eye, right eye, nose tip, left and right mouth corners, `[x, y]` each.
    pub landmarks: [[f32; 2]; 5],
}

/// Outputs that are not what a nine-output SCRFD detector at 640×640 gives.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("the face detector gave {actual} outputs, expected {expected}")]
    OutputCount { expected: usize, actual: usize },
    #[error(
        "face detector output {index} has shape {actual:?}, expected [{anchors}, {columns}] \
         or [1, {anchors}, {columns}]"
    )]
    OutputShape {
        index: usize,
        actual: Vec<usize>,
        anchors: usize,
        columns: usize,
    },
    #[error("the letterbox scale {0} is not a positive finite number")]
    InvalidScale(f32),
}
