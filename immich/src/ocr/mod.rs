//! OCR as Immich's machine-learning server does it: RapidOCR 3.x's pieces around two
//! PP-OCR models, with Immich's own overrides where it has them.
//!
//! The agent runs the models between these steps:
//!
//! 1. skip images with a side under [`MIN_DETECTION_SIDE`] (Immich answers no text);
//! 2. [`detection_input`] → the detection model (input `x`) → its `[1, 1, H, W]`
//!    probability map → [`detection_boxes`];
//! 3. [`crop`] each box → [`recognition_batches`] → the recognition model →
//!    `[N, T, C]` probabilities → [`ctc_decode`] with the [`charset`];
//! 4. keep the texts whose score is above the recognition `minScore` (strictly), and
//!    divide the box corners by the image's width and height for the answer.
//!
//! Where Immich's code does something surprising, this follows Immich and says so, since
//! herd's answers are to match Immich's:
//! - detection input is resized with PIL's LANCZOS (not cv2's INTER_LINEAR) and normalised
//!   as `(x − 0.5) / 127.5` (Immich's `mean` is not scaled by 255), channels in BGR order;
//! - crops are taken with PIL's perspective transform and bicubic filter (not
//!   `cv2.warpPerspective`) and fed to the recogniser as BGR arrays.
//!
//! Where Immich's output is an accident, this does the intended thing instead:
//! - Immich pairs the scores in detector order with the boxes in reading order (neither
//!   RapidOCR's `TextDetector` nor Immich reorders `scores`); a [`TextBox`] keeps its own
//!   score;
//! - Immich's `sorted_boxes` indexes its line ids twice (`line_ids[y_order]`), which puts
//!   lines out of order whenever the detector's order is not already top to bottom; this
//!   sorts as RapidOCR 3.x's `sorted_boxes` does.

mod detect;
mod recognize;

pub use detect::{detection_boxes, detection_input, MIN_DETECTION_SIDE};
pub use recognize::{
    charset, crop, crop_size, ctc_decode, recognition_batches, REC_BATCH_SIZE, REC_HEIGHT,
    REC_MIN_WIDTH,
};

use fast_image_resize as fr;
use image::RgbImage;

/// One detected text region. It travels from the detection stage to the recognition
/// stage as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextBox {
    /// Corners in pixels of the original image, clockwise from the top-left one.
    pub points: [[f32; 2]; 4],
    /// Mean text probability inside the box's minimum-area rectangle, before unclipping.
    pub score: f32,
}

/// Resizes with `fast_image_resize`; `None` for an empty source or target.
///
/// `Convolution(Lanczos3)` is PIL's `LANCZOS` (same support scaling and 8-bit fixed point);
/// `Interpolation(Bilinear)` is cv2's `INTER_LINEAR` (a fixed two-tap kernel, half-pixel
/// centres), up to the last bit of rounding.
fn resize(image: &RgbImage, width: u32, height: u32, algorithm: fr::ResizeAlg) -> Option<RgbImage> {
    if image.width() == 0 || image.height() == 0 || width == 0 || height == 0 {
        return None;
    }
    let src = fr::images::TypedImageRef::<fr::pixels::U8x3>::from_buffer(
        image.width(),
        image.height(),
        image.as_raw(),
    )
    .ok()?;
    let mut dst = fr::images::TypedImage::<fr::pixels::U8x3>::new(width, height);
    fr::Resizer::new()
        .resize_typed(
            &src,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(algorithm),
        )
        .ok()?;
    let raw = dst.pixels().iter().flat_map(|p| p.0).collect();
    RgbImage::from_raw(width, height, raw)
}
