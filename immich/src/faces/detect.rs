//! Face detection around buffalo_l's `det_10g` (SCRFD), as insightface's `RetinaFace`
//! class runs it for Immich (`model_zoo/retinaface.py`, `detect` and `forward`): the
//! letterboxed input, and the decoding of the model's nine outputs into faces.

use std::cmp::Ordering;

use image::RgbImage;
use ndarray::{Array3, ArrayView2, ArrayViewD, Axis, Ix2};

use super::resize::resize_linear;
use super::{Face, FaceError};

/// The detector's square input side: Immich prepares the model with
/// `input_size=(640, 640)`.
pub const DETECTION_SIZE: u32 = 640;

/// Feature-map strides of the three heads, in the model's output order.
const STRIDES: [usize; 3] = [8, 16, 32];
/// Anchors per feature-map cell; SCRFD with nine outputs has two.
const ANCHORS_PER_CELL: usize = 2;
/// The outputs: scores, box distances and keypoint offsets for each stride.
const OUTPUTS: usize = STRIDES.len() * 3;
/// insightface's `nms_thresh`.
const NMS_THRESHOLD: f32 = 0.4;
/// `blobFromImage(img, 1.0 / 128, size, (127.5, 127.5, 127.5))`.
const INPUT_MEAN: f32 = 127.5;
const INPUT_STD: f32 = 128.0;

/// The letterboxed detector input for `image`, as insightface's `RetinaFace.detect`
/// makes it: the long side resized to 640 and the other to `int()` of its scaled length
/// (`cv2.resize`, `INTER_LINEAR`), pasted at the top left of a black 640×640 image,
/// `(x − 127.5) / 128`, channels in RGB order (Immich hands insightface BGR, which
/// `blobFromImage(swapRB=True)` turns back), as CHW `[3, 640, 640]`.
///
/// Also returns `det_scale`, the factor from original to letterboxed pixels
/// (`new_height / height`), which [`decode_detections`] divides by.
///
/// Where Python would fail, this answers instead: a side that would shrink to 0 pixels
/// (an image more than 640 times wider than tall, or the reverse) is kept at 1, and an
/// empty image gives an all-padding input with `det_scale` 1.
pub fn detection_input(image: &RgbImage) -> (Array3<f32>, f32) {
    let size = DETECTION_SIZE as usize;
    let padding = (0.0 - INPUT_MEAN) / INPUT_STD;
    let mut blob = Array3::from_elem((3, size, size), padding);
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return (blob, 1.0);
    }
    let (new_width, new_height) = letterbox_size(width, height);
    let det_scale = (f64::from(new_height) / f64::from(height)) as f32;
    let resized = resize_linear(image, new_width, new_height);
    for (x, y, pixel) in resized.enumerate_pixels() {
        for (c, &value) in pixel.0.iter().enumerate() {
            blob[[c, y as usize, x as usize]] = (f32::from(value) - INPUT_MEAN) / INPUT_STD;
        }
    }
    (blob, det_scale)
}

/// `detect`'s resized size: `im_ratio = h / w` against the model's ratio 1.
fn letterbox_size(width: u32, height: u32) -> (u32, u32) {
    let side = f64::from(DETECTION_SIZE);
    let im_ratio = f64::from(height) / f64::from(width);
    if im_ratio > 1.0 {
        (((side / im_ratio) as u32).max(1), DETECTION_SIZE)
    } else {
        (DETECTION_SIZE, ((side * im_ratio) as u32).max(1))
    }
}

/// The faces in the detector's outputs for one image, as insightface's
/// `RetinaFace.detect(img, max_num=0)` with `det_thresh = min_score` finds them.
///
/// `outputs` are the model's nine outputs in its output order: scores (`[N, 1]`), box
/// distances (`[N, 4]`) and keypoint offsets (`[N, 10]`) for strides 8, 16 and 32, with
/// `N = 2 · (640 / stride)²`; each may keep a leading batch axis of size 1. Anchor `i`
/// sits at cell `i / 2` of its stride's grid (row-major), at pixel
/// `(column · stride, row · stride)`; distances and offsets are in units of the stride.
///
/// Each anchor with `score >= min_score` becomes a box `(cx − l, cy − t, cx + r, cy + b)`
/// and keypoints `(cx + dx, cy + dy)`, divided by `det_scale` into original pixels
/// (not rounded, not clipped; Immich rounds the box). Faces come out in decreasing score,
/// ties in anchor order, after insightface's greedy NMS: IoU with its "+1" pixel areas,
/// a box dropped when its overlap with a kept one is not `<= 0.4`, so a NaN coordinate
/// suppresses as numpy's comparisons do. Scores that are NaN never pass the threshold.
pub fn decode_detections(
    outputs: &[ArrayViewD<'_, f32>],
    det_scale: f32,
    min_score: f32,
) -> Result<Vec<Face>, FaceError> {
    if outputs.len() != OUTPUTS {
        return Err(FaceError::OutputCount {
            expected: OUTPUTS,
            actual: outputs.len(),
        });
    }
    if !(det_scale.is_finite() && det_scale > 0.0) {
        return Err(FaceError::InvalidScale(det_scale));
    }
    let levels = STRIDES.len();
    let mut faces = Vec::new();
    for (level, &stride) in STRIDES.iter().enumerate() {
        let cells = DETECTION_SIZE as usize / stride;
        let anchors = cells * cells * ANCHORS_PER_CELL;
        let scores = rows(outputs, level, anchors, 1)?;
        let distances = rows(outputs, level + levels, anchors, 4)?;
        let offsets = rows(outputs, level + 2 * levels, anchors, 10)?;
        // insightface multiplies the predictions by the stride (float32) before use.
        let s = stride as f32;
        for (i, score) in scores.column(0).iter().copied().enumerate() {
            if score.is_nan() || score < min_score {
                continue;
            }
            let cell = i / ANCHORS_PER_CELL;
            let cx = ((cell % cells) * stride) as f32;
            let cy = ((cell / cells) * stride) as f32;
            let d = distances.row(i);
            let bbox =
                [cx - d[0] * s, cy - d[1] * s, cx + d[2] * s, cy + d[3] * s].map(|v| v / det_scale);
            let k = offsets.row(i);
            let landmarks = std::array::from_fn(|p| {
                [
                    (cx + k[2 * p] * s) / det_scale,
                    (cy + k[2 * p + 1] * s) / det_scale,
                ]
            });
            faces.push(Face {
                bbox,
                score,
                landmarks,
            });
        }
    }
    // Stable: equal scores keep anchor order, which is what numpy's two reversed
    // argsorts in `detect` and `nms` give for the small arrays that pass a threshold.
    faces.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal));
    Ok(nms(faces))
}

/// Output `index` as `[anchors, columns]`, from `[anchors, columns]`,
/// `[1, anchors, columns]` or, for one column, `[anchors]`.
fn rows<'a>(
    outputs: &'a [ArrayViewD<'_, f32>],
    index: usize,
    anchors: usize,
    columns: usize,
) -> Result<ArrayView2<'a, f32>, FaceError> {
    let output = &outputs[index];
    let shape = output.shape();
    let wrong = || FaceError::OutputShape {
        index,
        actual: shape.to_vec(),
        anchors,
        columns,
    };
    let view = match *shape {
        [n] if n == anchors && columns == 1 => output.view().insert_axis(Axis(1)),
        [n, k] if n == anchors && k == columns => output.view(),
        [1, n, k] if n == anchors && k == columns => output.index_axis(Axis(0), 0),
        _ => return Err(wrong()),
    };
    view.into_dimensionality::<Ix2>().map_err(|_| wrong())
}

/// numpy's `maximum`/`minimum`: NaN wins.
fn np_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

fn np_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// insightface's `RetinaFace.nms` over faces sorted by decreasing score, in float32.
fn nms(faces: Vec<Face>) -> Vec<Face> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let areas: Vec<f32> = faces.iter().map(|f| area(&f.bbox)).collect();
    let mut order: Vec<usize> = (0..faces.len()).collect();
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let a = &faces[i].bbox;
        order = rest
            .iter()
            .copied()
            .filter(|&j| {
                let b = &faces[j].bbox;
                let w = np_max(0.0, np_min(a[2], b[2]) - np_max(a[0], b[0]) + 1.0);
                let h = np_max(0.0, np_min(a[3], b[3]) - np_max(a[1], b[1]) + 1.0);
                let inter = w * h;
                let overlap = inter / (areas[i] + areas[j] - inter);
                overlap <= NMS_THRESHOLD
            })
            .collect();
    }
    let mut faces: Vec<Option<Face>> = faces.into_iter().map(Some).collect();
    keep.into_iter()
        .filter_map(|i| faces.get_mut(i).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3 as A3, ArrayD};

    /// Nine zero outputs of the real shapes, optionally with a batch axis.
    fn zero_outputs(batched: bool) -> Vec<ArrayD<f32>> {
        let mut outputs = Vec::new();
        for columns in [1, 4, 10] {
            for stride in STRIDES {
                let n = (640 / stride) * (640 / stride) * 2;
                outputs.push(if batched {
                    A3::<f32>::zeros((1, n, columns)).into_dyn()
                } else {
                    Array2::<f32>::zeros((n, columns)).into_dyn()
                });
            }
        }
        outputs
    }

    fn set(outputs: &mut [ArrayD<f32>], index: usize, anchor: usize, values: &[f32]) {
        let batched = outputs[index].ndim() == 3;
        for (c, &v) in values.iter().enumerate() {
            if batched {
                outputs[index][[0, anchor, c]] = v;
            } else {
                outputs[index][[anchor, c]] = v;
            }
        }
    }

    fn decode(outputs: &[ArrayD<f32>], scale: f32, min: f32) -> Result<Vec<Face>, FaceError> {
        let views: Vec<_> = outputs.iter().map(|o| o.view()).collect();
        decode_detections(&views, scale, min)
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn one_anchor_decodes_to_its_box_and_keypoints() {
        for batched in [false, true] {
            let mut outputs = zero_outputs(batched);
            // Stride 16, grid 40x40: cell (row 3, column 5), second anchor.
            let anchor = (3 * 40 + 5) * 2 + 1;
            let (cx, cy) = (5.0 * 16.0, 3.0 * 16.0);
            set(&mut outputs, 1, anchor, &[0.9]);
            set(&mut outputs, 4, anchor, &[1.0, 2.0, 3.0, 4.0]);
            let kps: Vec<f32> = (0..10).map(|v| v as f32 * 0.25).collect();
            set(&mut outputs, 7, anchor, &kps);
            let faces = decode(&outputs, 0.5, 0.5).expect("decoded");
            assert_eq!(faces.len(), 1, "batched {batched}");
            let face = &faces[0];
            assert_eq!(face.score, 0.9);
            let expected = [cx - 16.0, cy - 32.0, cx + 48.0, cy + 64.0].map(|v| v / 0.5);
            assert!(face.bbox.iter().zip(expected).all(|(&a, b)| close(a, b)));
            for (p, point) in face.landmarks.iter().enumerate() {
                let ex = (cx + kps[2 * p] * 16.0) / 0.5;
                let ey = (cy + kps[2 * p + 1] * 16.0) / 0.5;
                assert!(close(point[0], ex) && close(point[1], ey), "{p}: {point:?}");
            }
        }
    }

    #[test]
    fn overlapping_boxes_keep_the_higher_score() {
        let mut outputs = zero_outputs(false);
        // Two stride-8 anchors of the same cell (10, 10): nearly the same box.
        let anchor = (10 * 80 + 10) * 2;
        set(&mut outputs, 0, anchor, &[0.8]);
        set(&mut outputs, 0, anchor + 1, &[0.95]);
        set(&mut outputs, 3, anchor, &[2.0, 2.0, 2.0, 2.0]);
        set(&mut outputs, 3, anchor + 1, &[2.0, 2.0, 2.5, 2.5]);
        // A far one at stride 32, cell (0, 0), lower score: kept, and last.
        set(&mut outputs, 2, 0, &[0.75]);
        set(&mut outputs, 5, 0, &[0.0, 0.0, 1.0, 1.0]);
        let faces = decode(&outputs, 1.0, 0.7).expect("decoded");
        let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
        assert_eq!(scores, [0.95, 0.75]);
        assert!(close(faces[0].bbox[2], 80.0 + 20.0));
    }

    #[test]
    fn iou_uses_plus_one_areas() {
        // [0,0,9,9] and [5,0,14,9]: +1 areas 100 each, intersection 5 x 10, IoU 1/3: both
        // kept. [0,0,9,9] and [3,0,12,9]: intersection 7 x 10, IoU 70/130: one kept.
        let face = |x: f32, score: f32| Face {
            bbox: [x, 0.0, x + 9.0, 9.0],
            score,
            landmarks: [[0.0; 2]; 5],
        };
        assert_eq!(nms(vec![face(0.0, 0.9), face(5.0, 0.8)]).len(), 2);
        assert_eq!(nms(vec![face(0.0, 0.9), face(3.0, 0.8)]).len(), 1);
        // Two degenerate boxes at one point overlap fully with +1 areas: (1*1)/(1+1-1).
        let point = |score| Face {
            bbox: [4.0, 4.0, 4.0, 4.0],
            score,
            landmarks: [[0.0; 2]; 5],
        };
        assert_eq!(nms(vec![point(0.9), point(0.8)]).len(), 1);
    }

    #[test]
    fn below_threshold_and_nan_give_nothing() {
        let mut outputs = zero_outputs(false);
        set(&mut outputs, 0, 17, &[0.69]);
        set(&mut outputs, 1, 3, &[f32::NAN]);
        assert!(decode(&outputs, 1.0, 0.7).expect("decoded").is_empty());
        // A NaN box among passing scores does not panic.
        set(&mut outputs, 0, 17, &[0.9]);
        set(&mut outputs, 3, 17, &[f32::NAN, 0.0, 1.0, 1.0]);
        set(&mut outputs, 2, 5, &[0.8]);
        let faces = decode(&outputs, 1.0, 0.7).expect("decoded");
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].score, 0.9);
    }

    #[test]
    fn equal_scores_keep_anchor_order() {
        let mut outputs = zero_outputs(false);
        set(&mut outputs, 1, 100, &[0.9]);
        set(&mut outputs, 0, 900, &[0.9]);
        set(&mut outputs, 0, 5, &[0.9]);
        let faces = decode(&outputs, 1.0, 0.5).expect("decoded");
        // Stride 8 anchors 5 and 900 (cells 2 and 450), then stride 16 anchor 100.
        let corners: Vec<[f32; 2]> = faces.iter().map(|f| [f.bbox[0], f.bbox[1]]).collect();
        assert_eq!(corners, [[16.0, 0.0], [400.0, 40.0], [160.0, 16.0]]);
    }

    #[test]
    fn wrong_outputs_are_errors() {
        let outputs = zero_outputs(false);
        assert!(matches!(
            decode(&outputs[..8], 1.0, 0.5),
            Err(FaceError::OutputCount {
                expected: 9,
                actual: 8
            })
        ));
        let mut bad = zero_outputs(false);
        bad[4] = Array2::<f32>::zeros((3200, 5)).into_dyn();
        assert!(matches!(
            decode(&bad, 1.0, 0.5),
            Err(FaceError::OutputShape { index: 4, .. })
        ));
        let mut batched = zero_outputs(true);
        batched[0] = A3::<f32>::zeros((2, 12800, 1)).into_dyn();
        assert!(matches!(
            decode(&batched, 1.0, 0.5),
            Err(FaceError::OutputShape { index: 0, .. })
        ));
        assert!(matches!(
            decode(&outputs, 0.0, 0.5),
            Err(FaceError::InvalidScale(_))
        ));
        assert!(matches!(
            decode(&outputs, f32::NAN, 0.5),
            Err(FaceError::InvalidScale(_))
        ));
        // Scores as a flat [N] are accepted.
        let mut flat = zero_outputs(false);
        flat[0] = ndarray::Array1::<f32>::zeros(12800).into_dyn();
        assert!(decode(&flat, 1.0, 0.5).expect("decoded").is_empty());
    }

    #[test]
    fn letterbox_of_a_wide_image() {
        // 300 x 200: ratio 2/3, width to 640, height int(640 * 2/3) = 426.
        let image = RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 128]));
        let (blob, scale) = detection_input(&image);
        assert_eq!(blob.shape(), &[3, 640, 640]);
        assert_eq!(scale, (426.0f64 / 200.0) as f32);
        let pad = -127.5 / 128.0;
        // Inside: the flat colour, R then G then B.
        assert_eq!(blob[[0, 0, 0]], (255.0 - 127.5) / 128.0);
        assert_eq!(blob[[1, 425, 639]], -127.5 / 128.0);
        assert_eq!(blob[[2, 200, 300]], (128.0 - 127.5) / 128.0);
        // Below row 426: padding.
        assert_eq!(blob[[0, 426, 0]], pad);
        assert_eq!(blob[[2, 639, 639]], pad);
    }

    #[test]
    fn letterbox_of_a_tall_image() {
        let image = RgbImage::from_pixel(100, 333, image::Rgb([10, 20, 30]));
        let (blob, scale) = detection_input(&image);
        // ratio 3.33: height 640, width int(640 / 3.33) = 192.
        assert_eq!(scale, (640.0f64 / 333.0) as f32);
        assert_eq!(blob[[0, 639, 191]], (10.0 - 127.5) / 128.0);
        assert_eq!(blob[[0, 0, 192]], -127.5 / 128.0);
        assert_eq!(letterbox_size(100, 333), (192, 640));
        assert_eq!(letterbox_size(640, 640), (640, 640));
        assert_eq!(letterbox_size(1440, 1080), (640, 480));
    }

    #[test]
    fn tiny_and_extreme_images_do_not_panic() {
        for (w, h) in [(1, 1), (1, 2000), (5000, 1), (0, 0), (0, 7)] {
            let image = RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
            let (blob, scale) = detection_input(&image);
            assert_eq!(blob.shape(), &[3, 640, 640]);
            assert!(scale.is_finite() && scale > 0.0, "{w}x{h}");
        }
    }
}
