//! Text detection: Immich's `TextDetector._transform` before the model, RapidOCR's
//! `DBPostProcess` (as Immich configures it) and `sorted_boxes` after it.

use std::f64::consts::PI;

use fast_image_resize as fr;
use geo::{CoordsIter, MinimumRotatedRect, MultiPoint, Point as GeoPoint};
use image::{GrayImage, Luma, RgbImage};
use imageproc::contours::find_contours;
use imageproc::drawing::draw_polygon_mut;
use imageproc::morphology::{grayscale_dilate, Mask};
use imageproc::point::Point;
use ndarray::{Array3, ArrayView2};

use super::{resize, TextBox};

/// Immich answers no text, without running the model, for an image narrower or shorter
/// than this.
pub const MIN_DETECTION_SIDE: u32 = 32;

/// Binarisation threshold of the probability map.
const THRESH: f32 = 0.3;
const UNCLIP_RATIO: f64 = 1.6;
const MAX_CANDIDATES: usize = 1000;
/// DB's `min_size`: the short side of a candidate's rectangle, in map pixels.
const MIN_SIZE: f64 = 3.0;
/// Boxes whose top-left corners are this many pixels apart in y start a new line.
const LINE_GAP: f32 = 10.0;
/// pyclipper's default `ArcTolerance`, and Clipper's `def_arc_tolerance`.
const ARC_TOLERANCE: f64 = 0.25;

/// Immich's detection input: resized so that the shorter side is `max_resolution` at most
/// (never enlarged; the ratio is capped at 1), each side then rounded to a multiple of 32
/// (Python's `round`, half to even), PIL `LANCZOS`, channels BGR, `(x − 0.5) / 127.5`, CHW.
///
/// The normalisation is Immich's, not PP-OCR's `(x/255 − 0.5)/0.5`: Immich's `mean` is 0.5
/// and its `std` is `0.5 · 255`, so the model sees values in about [0, 2]. Immich resizes
/// with PIL's LANCZOS, not with RapidOCR's `cv2.resize` (INTER_LINEAR).
///
/// A side that would round to 0 (a `max_resolution` under 16) is made 32 here, where PIL
/// would raise. Add the batch axis to feed the model.
pub fn detection_input(image: &RgbImage, max_resolution: u32) -> Array3<f32> {
    let (width, height) = detection_size(image.width(), image.height(), max_resolution);
    let mut input = Array3::zeros((3, height as usize, width as usize));
    let lanczos = fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3);
    let Some(resized) = resize(image, width, height, lanczos) else {
        return input;
    };
    // As Immich: `img -= 0.5` then `img *= 1 / (0.5 * 255)`, in float32.
    let scale = 1.0f32 / (0.5f32 * 255.0);
    for (x, y, pixel) in resized.enumerate_pixels() {
        let [r, g, b] = pixel.0;
        for (channel, value) in [b, g, r].into_iter().enumerate() {
            input[[channel, y as usize, x as usize]] = (f32::from(value) - 0.5) * scale;
        }
    }
    input
}

/// The detection model's input size (width, height) for an image.
fn detection_size(width: u32, height: u32, max_resolution: u32) -> (u32, u32) {
    let (w, h) = (f64::from(width), f64::from(height));
    let shorter = if h < w { h } else { w };
    // `f64::min` ignores a NaN (0/0), leaving 1.
    let ratio = (f64::from(max_resolution) / shorter).min(1.0);
    let side = |s: f64| {
        let resized = (s * ratio).trunc();
        ((resized / 32.0).round_ties_even() * 32.0).max(32.0) as u32
    };
    (side(w), side(h))
}

/// DB post-processing of the detection model's probability map (`[H, W]`, batch and
/// channel removed), as Immich configures RapidOCR's `DBPostProcess`: threshold 0.3,
/// 2×2 dilation, contours, minimum-area rectangles of at least 3 pixels, "fast" score (the
/// mean probability inside the rectangle) of at least `min_score`, unclip ratio 1.6, short
/// side of at least 5, mapped to `original_size` (width, height), rounded, clipped to the
/// image, and ordered as Immich orders them (see `sort_reading_order`).
///
/// Deviations, each tiny: a NaN score counts as too low (Python would keep the box); the
/// rectangle is filled with imageproc's scanline rather than `cv2.fillPoly`, which can
/// differ by a pixel along slanted edges; the 1000-candidate cap counts contours in
/// OpenCV's order (reversed discovery), which matters only past 1000 contours.
pub fn detection_boxes(
    prob: ArrayView2<'_, f32>,
    original_size: (u32, u32),
    min_score: f32,
) -> Vec<TextBox> {
    let (height, width) = prob.dim();
    let (dest_width, dest_height) = original_size;
    if width == 0 || height == 0 || dest_width == 0 || dest_height == 0 {
        return Vec::new();
    }
    let (Ok(map_width), Ok(map_height)) = (u32::try_from(width), u32::try_from(height)) else {
        return Vec::new();
    };
    let bitmap = bitmap(prob, map_width, map_height);

    let mut boxes = Vec::new();
    for contour in contours(&bitmap).into_iter().take(MAX_CANDIDATES) {
        let Some((rect, side)) = mini_box(&contour) else {
            continue;
        };
        if side < MIN_SIZE {
            continue;
        }
        let score = box_score_fast(prob, &rect);
        // RapidOCR skips when `box_thresh > score`; NaN is skipped too.
        if score.is_nan() || score < f64::from(min_score) {
            continue;
        }
        let expanded = unclip(&rect, UNCLIP_RATIO);
        let Some((rect, side)) = mini_box(&expanded) else {
            continue;
        };
        if side < MIN_SIZE + 2.0 {
            continue;
        }
        // float32 as in numpy: `clip(round(x / width * dest_width), 0, dest_width)`.
        let scale = |v: f64, from: usize, to: u32| {
            ((v as f32 / from as f32 * to as f32).round_ties_even()).clamp(0.0, to as f32)
        };
        let scaled =
            rect.map(|[x, y]| [scale(x, width, dest_width), scale(y, height, dest_height)]);
        if let Some(points) = filter_box(scaled, dest_width, dest_height) {
            boxes.push(TextBox {
                points,
                score: score as f32,
            });
        }
    }
    sort_reading_order(&mut boxes);
    boxes
}

/// `prob > 0.3`, then `cv2.dilate` with a 2×2 kernel of ones. OpenCV anchors a 2×2 kernel
/// at (1, 1), so a pixel takes the maximum of itself and its left, upper and upper-left
/// neighbours; imageproc's `Mask` with centre (1, 1) is exactly that, and like OpenCV it
/// lets nothing in from outside the image.
fn bitmap(prob: ArrayView2<'_, f32>, width: u32, height: u32) -> GrayImage {
    let mut mask = GrayImage::new(width, height);
    for ((y, x), &p) in prob.indexed_iter() {
        if p > THRESH {
            mask.put_pixel(x as u32, y as u32, Luma([255]));
        }
    }
    let kernel = Mask::from_image(&GrayImage::from_pixel(2, 2, Luma([255])), 1, 1);
    grayscale_dilate(&mask, &kernel)
}

/// All borders, outer and hole (`RETR_LIST`), in OpenCV's order.
///
/// `cv2.findContours` pads the image with a zero frame first; so does this, because
/// imageproc would otherwise miss outer borders that start in column 0. Both trace Suzuki
/// and Abe's borders; OpenCV lists them in reverse order of discovery, imageproc in order.
/// imageproc keeps every border pixel (`CHAIN_APPROX_NONE`) where RapidOCR asks for
/// `CHAIN_APPROX_SIMPLE`; the dropped points lie on straight runs, so the minimum-area
/// rectangles are the same.
fn contours(bitmap: &GrayImage) -> Vec<Vec<[f64; 2]>> {
    let mut framed = GrayImage::new(bitmap.width() + 2, bitmap.height() + 2);
    image::imageops::replace(&mut framed, bitmap, 1, 1);
    let mut found = find_contours::<i32>(&framed);
    found.reverse();
    found
        .into_iter()
        .map(|contour| {
            contour
                .points
                .iter()
                .map(|p| [f64::from(p.x - 1), f64::from(p.y - 1)])
                .collect()
        })
        .collect()
}

/// RapidOCR's `get_mini_boxes`: the minimum-area rectangle (`cv2.minAreaRect`, here geo's
/// search over the convex hull's edges) as top-left, top-right, bottom-right, bottom-left,
/// and its shorter side.
fn mini_box(points: &[[f64; 2]]) -> Option<([[f64; 2]; 4], f64)> {
    if points.is_empty() {
        return None;
    }
    let cloud: MultiPoint<f64> = points.iter().map(|&[x, y]| GeoPoint::new(x, y)).collect();
    let rect = cloud.minimum_rotated_rect()?;
    let mut corners = [[0.0; 2]; 4];
    let mut count = 0;
    for (slot, coord) in corners.iter_mut().zip(rect.exterior().coords_iter()) {
        // `cv2.boxPoints` gives float32. Rounding to it also drops the ~1e-15 noise of
        // geo's rotations, which truncation (pyclipper's, `astype(np.int32)`) would
        // otherwise turn into a whole pixel: 9.999999999999996 is 10 in float32.
        *slot = [f64::from(coord.x as f32), f64::from(coord.y as f32)];
        count += 1;
    }
    if count < 4 {
        return None;
    }
    let side = distance(corners[0], corners[1]).min(distance(corners[1], corners[2]));
    // Python's `sorted(..., key=x)` is stable; then the upper of each pair comes first, the
    // later one winning a tie in y.
    corners.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (top_left, bottom_left) = if corners[1][1] > corners[0][1] {
        (corners[0], corners[1])
    } else {
        (corners[1], corners[0])
    };
    let (top_right, bottom_right) = if corners[3][1] > corners[2][1] {
        (corners[2], corners[3])
    } else {
        (corners[3], corners[2])
    };
    Some(([top_left, top_right, bottom_right, bottom_left], side))
}

fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

/// RapidOCR's `box_score_fast`: the mean probability over the pixels of `rect` filled, in
/// its bounding box clipped to the map; 0 when no pixel is covered.
fn box_score_fast(prob: ArrayView2<'_, f32>, rect: &[[f64; 2]; 4]) -> f64 {
    let (height, width) = prob.dim();
    let span = |values: [f64; 4], limit: usize| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min).floor();
        let high = values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .ceil();
        let clip = |v: f64| (v as i64).clamp(0, limit as i64 - 1);
        (clip(low), clip(high))
    };
    let (x_min, x_max) = span(rect.map(|p| p[0]), width);
    let (y_min, y_max) = span(rect.map(|p| p[1]), height);
    let (mask_width, mask_height) = ((x_max - x_min + 1) as u32, (y_max - y_min + 1) as u32);
    let mut mask = GrayImage::new(mask_width, mask_height);

    // numpy's `astype(np.int32)` truncates toward zero.
    let mut polygon: Vec<Point<i32>> = Vec::with_capacity(4);
    for [x, y] in rect {
        let point = Point::new((x - x_min as f64) as i32, (y - y_min as f64) as i32);
        if polygon.last() != Some(&point) {
            polygon.push(point);
        }
    }
    while polygon.len() > 1 && polygon.first() == polygon.last() {
        polygon.pop();
    }
    match polygon.as_slice() {
        [] => {}
        [only] => {
            if let (Ok(x), Ok(y)) = (u32::try_from(only.x), u32::try_from(only.y)) {
                if x < mask_width && y < mask_height {
                    mask.put_pixel(x, y, Luma([1]));
                }
            }
        }
        // Like `cv2.fillPoly`, this fills the inside and draws the outline.
        _ => draw_polygon_mut(&mut mask, &polygon, Luma([1])),
    }

    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y, value) in mask.enumerate_pixels() {
        if value[0] != 0 {
            let (row, col) = ((y_min as u32 + y) as usize, (x_min as u32 + x) as usize);
            sum += f64::from(prob[[row, col]]);
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// RapidOCR's `unclip`: grows the rectangle by `area · ratio / perimeter` with pyclipper's
/// round joins.
///
/// geo 0.30 has no buffer operation, so this is Clipper 6.4's `ClipperOffset` for one
/// closed polygon with `jtRound`, written out: pyclipper truncates the corners to integers,
/// offsets each edge along its normal, joins the corners with arcs whose step follows the
/// arc tolerance 0.25, and rounds every output vertex to an integer. Clipper's closing
/// union only removes self-intersections, which a convex input has none of (and which would
/// not change the minimum-area rectangle taken next).
fn unclip(rect: &[[f64; 2]; 4], ratio: f64) -> Vec<[f64; 2]> {
    // shapely's `Polygon(box).area` and `.length`.
    let mut twice_area = 0.0;
    let mut perimeter = 0.0;
    for i in 0..4 {
        let (a, b) = (rect[i], rect[(i + 1) % 4]);
        twice_area += a[0] * b[1] - b[0] * a[1];
        perimeter += distance(a, b);
    }
    if perimeter.is_nan() || perimeter <= 0.0 {
        return Vec::new();
    }
    let delta = twice_area.abs() / 2.0 * ratio / perimeter;
    let path = rect.map(|[x, y]| [x.trunc() as i64, y.trunc() as i64]);
    round_offset(&path, delta)
        .into_iter()
        .map(|[x, y]| [x as f64, y as f64])
        .collect()
}

/// Clipper 6.4's `ClipperOffset::Execute` for one closed polygon, `jtRound`, `delta > 0`.
fn round_offset(path: &[[i64; 2]], delta: f64) -> Vec<[i64; 2]> {
    // AddPath: drop a repeated closing point and consecutive repeats; under 3 points is none.
    let mut end = path.len();
    while end > 1 && path[0] == path[end - 1] {
        end -= 1;
    }
    let mut src: Vec<[i64; 2]> = Vec::with_capacity(end);
    for &point in &path[..end] {
        if src.last() != Some(&point) {
            src.push(point);
        }
    }
    if src.len() < 3 {
        return Vec::new();
    }
    // FixOrientations: make the outer polygon's orientation positive, so that a positive
    // delta grows it.
    if clipper_area(&src) < 0.0 {
        src.reverse();
    }
    if delta.abs() < 1e-20 {
        return src;
    }

    // DoOffset.
    let tolerance = if ARC_TOLERANCE > delta.abs() * ARC_TOLERANCE {
        delta.abs() * ARC_TOLERANCE
    } else {
        ARC_TOLERANCE
    };
    let mut steps = PI / (1.0 - tolerance / delta.abs()).acos();
    if steps > delta.abs() * PI {
        steps = delta.abs() * PI;
    }
    let (step_sin, step_cos) = (2.0 * PI / steps).sin_cos();
    let steps_per_rad = steps / (2.0 * PI);

    let len = src.len();
    let normals: Vec<[f64; 2]> = (0..len)
        .map(|j| unit_normal(src[j], src[(j + 1) % len]))
        .collect();
    // Clipper's `Round`: half away from zero.
    let at = |p: [i64; 2], n: [f64; 2]| {
        [
            (p[0] as f64 + n[0] * delta).round() as i64,
            (p[1] as f64 + n[1] * delta).round() as i64,
        ]
    };

    let mut dest = Vec::new();
    let mut k = len - 1;
    for j in 0..len {
        // OffsetPoint(j, k, jtRound).
        let (nk, nj, pj) = (normals[k], normals[j], src[j]);
        let mut sin_a = nk[0] * nj[1] - nj[0] * nk[1];
        if (sin_a * delta).abs() < 1.0 {
            let cos_a = nk[0] * nj[0] + nj[1] * nk[1];
            if cos_a > 0.0 {
                // Nearly straight on: one point, and `k` stays where it was.
                dest.push(at(pj, nk));
                continue;
            }
        } else {
            sin_a = sin_a.clamp(-1.0, 1.0);
        }
        if sin_a * delta < 0.0 {
            dest.push(at(pj, nk));
            dest.push(pj);
            dest.push(at(pj, nj));
        } else {
            // DoRound(j, k).
            let angle = sin_a.atan2(nk[0] * nj[0] + nk[1] * nj[1]);
            let count = ((steps_per_rad * angle.abs()).round() as i64).max(1);
            let (mut x, mut y) = (nk[0], nk[1]);
            for _ in 0..count {
                dest.push(at(pj, [x, y]));
                let previous = x;
                x = x * step_cos - step_sin * y;
                y = previous * step_sin + y * step_cos;
            }
            dest.push(at(pj, nj));
        }
        k = j;
    }
    dest
}

/// Clipper's `Area` (positive for its "positive" orientation).
fn clipper_area(poly: &[[i64; 2]]) -> f64 {
    let mut a = 0.0;
    let mut j = poly.len() - 1;
    for (i, p) in poly.iter().enumerate() {
        let q = poly[j];
        a += (q[0] as f64 + p[0] as f64) * (q[1] as f64 - p[1] as f64);
        j = i;
    }
    -a * 0.5
}

/// Clipper's `GetUnitNormal`.
fn unit_normal(from: [i64; 2], to: [i64; 2]) -> [f64; 2] {
    if from == to {
        return [0.0, 0.0];
    }
    let (dx, dy) = ((to[0] - from[0]) as f64, (to[1] - from[1]) as f64);
    let f = 1.0 / dx.hypot(dy);
    [dy * f, -dx * f]
}

/// RapidOCR's `filter_det_res` for one box: corners ordered clockwise from the top-left,
/// clipped to `[0, width − 1] × [0, height − 1]`, dropped when its top or left edge is
/// shorter than 4 pixels.
fn filter_box(points: [[f32; 2]; 4], width: u32, height: u32) -> Option<[[f32; 2]; 4]> {
    let (max_x, max_y) = ((width - 1) as f32, (height - 1) as f32);
    let ordered =
        order_points_clockwise(points).map(|[x, y]| [x.clamp(0.0, max_x), y.clamp(0.0, max_y)]);
    let side = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // `int(norm) <= 3` drops it.
    if side(ordered[0], ordered[1]) < 4.0 || side(ordered[0], ordered[3]) < 4.0 {
        return None;
    }
    Some(ordered)
}

/// imutils' `order_points`: the two leftmost points (by x) are the top-left and
/// bottom-left (by y), the others the top-right and bottom-right.
fn order_points_clockwise(points: [[f32; 2]; 4]) -> [[f32; 2]; 4] {
    let mut by_x = points;
    by_x.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut left = [by_x[0], by_x[1]];
    let mut right = [by_x[2], by_x[3]];
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Immich's `TextDetector.sorted_boxes` (v2.4.1), with its two quirks kept so that the
/// answers match Immich's: it indexes the line ids twice (`line_ids[y_order]`), so lines
/// can come out of reading order (with OpenCV's contour order, often the bottom line
/// first); and it reorders the boxes but not their scores, so the i-th score stays the
/// i-th box found's.
fn sort_reading_order(boxes: &mut [TextBox]) {
    let n = boxes.len();
    let y = |i: usize| boxes[i].points[0][1];
    let x = |i: usize| boxes[i].points[0][0];
    // Stable sorts, as numpy's `kind="stable"`.
    let mut y_order: Vec<usize> = (0..n).collect();
    y_order.sort_by(|&a, &b| y(a).total_cmp(&y(b)));
    let mut line_ids = vec![0u32; n];
    for k in 1..n {
        let gap = (y(y_order[k]) - y(y_order[k - 1])).abs();
        line_ids[k] = line_ids[k - 1] + u32::from(gap >= LINE_GAP);
    }
    let key = |k: usize| f64::from(line_ids[y_order[k]]) * 1e6 + f64::from(x(y_order[k]));
    let mut final_order: Vec<usize> = (0..n).collect();
    final_order.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let points: Vec<[[f32; 2]; 4]> = final_order
        .iter()
        .map(|&k| boxes[y_order[k]].points)
        .collect();
    for (text_box, points) in boxes.iter_mut().zip(points) {
        text_box.points = points;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn fill(map: &mut Array2<f32>, x: std::ops::Range<usize>, y: std::ops::Range<usize>, v: f32) {
        for row in y {
            for col in x.clone() {
                map[[row, col]] = v;
            }
        }
    }

    #[test]
    fn sizes_follow_immich() {
        // Shorter side to 736 at most, never enlarged, multiples of 32 (half to even).
        assert_eq!(detection_size(1920, 1080, 736), (1312, 736));
        assert_eq!(detection_size(1080, 1920, 736), (736, 1312));
        assert_eq!(detection_size(640, 480, 736), (640, 480));
        // 80 / 32 = 2.5 rounds to 2; 48 / 32 = 1.5 rounds to 2.
        assert_eq!(detection_size(80, 48, 736), (64, 64));
        assert_eq!(detection_size(100, 40, 736), (96, 32));
        assert_eq!(detection_size(0, 0, 0), (32, 32));
    }

    #[test]
    fn input_is_bgr_chw_with_immich_normalisation() {
        let mut image = RgbImage::from_pixel(64, 64, image::Rgb([255, 0, 128]));
        image.put_pixel(0, 0, image::Rgb([255, 0, 128]));
        let input = detection_input(&image, 736);
        assert_eq!(input.dim(), (3, 64, 64));
        let expect = |v: f32| (v - 0.5) / 127.5;
        assert!((input[[0, 10, 10]] - expect(128.0)).abs() < 1e-6); // B
        assert!((input[[1, 10, 10]] - expect(0.0)).abs() < 1e-6); // G
        assert!((input[[2, 10, 10]] - expect(255.0)).abs() < 1e-6); // R
        let big = RgbImage::from_pixel(2000, 1000, image::Rgb([10, 20, 30]));
        assert_eq!(detection_input(&big, 736).dim(), (3, 736, 1472));
        assert_eq!(
            detection_input(&RgbImage::new(0, 0), 736).dim(),
            (3, 32, 32)
        );
    }

    #[test]
    fn three_rectangles_become_three_boxes() {
        // A 100×60 map of a 200×120 image: a box on the second line, then two on the first,
        // the right one listed first by the detector.
        let mut map = Array2::<f32>::zeros((60, 100));
        fill(&mut map, 10..40, 10..20, 1.0);
        fill(&mut map, 60..90, 12..22, 1.0);
        fill(&mut map, 20..70, 40..50, 1.0);
        let mut boxes = detection_boxes(map.view(), (200, 120), 0.5);
        assert_eq!(boxes.len(), 3, "{boxes:?}");
        // Found bottom first (OpenCV's contour order): the scores stay in that order. The
        // fast score averages over the dilated rectangle, whose last row and column are
        // the dilation's zeros: 30·10 ones in 31·11 pixels.
        let scores: Vec<f32> = boxes.iter().map(|b| b.score).collect();
        for (got, want) in scores
            .iter()
            .zip([500.0 / 561.0, 300.0 / 341.0, 300.0 / 341.0])
        {
            assert!((got - want).abs() < 1e-6, "{boxes:?}");
        }
        // Geometry in reading order (Immich's own order is checked on its own below).
        boxes.sort_by(|a, b| {
            let key = |t: &TextBox| ((t.points[0][1] / 20.0).floor(), t.points[0][0]);
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let lefts: Vec<f32> = boxes.iter().map(|b| b.points[0][0]).collect();
        let tops: Vec<f32> = boxes.iter().map(|b| b.points[0][1]).collect();
        assert!(lefts[0] < lefts[1] && tops[2] > tops[0] + 20.0, "{boxes:?}");
        for b in &boxes {
            let [tl, tr, br, bl] = b.points;
            assert!(tl[0] < tr[0] && tl[1] < bl[1] && br[0] == tr[0] && br[1] == bl[1]);
        }
        // The first rectangle covers map pixels x 10..=39, y 10..=19, dilated to 40 and 20:
        // a 30×10 rectangle of border-pixel centres, grown by 30·10·1.6/80 = 6 on each side,
        // then doubled: x 2·(10 − 6) = 8 to 2·(40 + 6) = 92, y 2·4 = 8 to 2·26 = 52.
        let first = &boxes[0].points;
        assert_eq!(first, &[[8.0, 8.0], [92.0, 8.0], [92.0, 52.0], [8.0, 52.0]]);
    }

    #[test]
    fn low_scores_small_regions_and_empty_maps_give_nothing() {
        let mut map = Array2::<f32>::zeros((60, 100));
        fill(&mut map, 10..40, 10..20, 0.4); // above the 0.3 threshold, below 0.5
        fill(&mut map, 60..90, 10..20, 0.9);
        let boxes = detection_boxes(map.view(), (100, 60), 0.5);
        assert_eq!(boxes.len(), 1);
        assert!(boxes[0].points[0][0] > 50.0);
        assert!((boxes[0].score - 0.9 * 300.0 / 341.0).abs() < 1e-6);

        let mut tiny = Array2::<f32>::zeros((20, 20));
        fill(&mut tiny, 5..7, 5..7, 1.0);
        assert!(detection_boxes(tiny.view(), (20, 20), 0.5).is_empty());
        assert!(detection_boxes(Array2::<f32>::zeros((60, 100)).view(), (100, 60), 0.5).is_empty());
        assert!(detection_boxes(Array2::<f32>::zeros((0, 0)).view(), (100, 60), 0.5).is_empty());
        assert!(detection_boxes(map.view(), (0, 0), 0.5).is_empty());
        assert!(
            detection_boxes(Array2::<f32>::from_elem((3, 1), 1.0).view(), (1, 1), 0.0).is_empty()
        );
        assert!(detection_boxes(
            Array2::<f32>::from_elem((40, 40), f32::NAN).view(),
            (40, 40),
            0.0
        )
        .is_empty());
    }

    #[test]
    fn boxes_at_the_map_edges_are_found_and_clipped() {
        let mut map = Array2::<f32>::zeros((40, 80));
        fill(&mut map, 0..30, 0..12, 1.0);
        fill(&mut map, 50..80, 28..40, 1.0);
        let boxes = detection_boxes(map.view(), (80, 40), 0.5);
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        assert!(boxes.iter().any(|b| b.points[0] == [0.0, 0.0]), "{boxes:?}");
        assert!(
            boxes.iter().any(|b| b.points[2] == [79.0, 39.0]),
            "{boxes:?}"
        );
    }

    #[test]
    fn rotated_regions_keep_their_angle() {
        let mut map = Array2::<f32>::zeros((100, 100));
        for t in 0..60 {
            for w in 0..8 {
                map[[20 + t + w, 20 + t]] = 1.0;
            }
        }
        let boxes = detection_boxes(map.view(), (100, 100), 0.3);
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let [tl, tr, _, _] = boxes[0].points;
        assert!(tr[1] - tl[1] > 20.0, "{boxes:?}");
    }

    #[test]
    fn boxes_are_ordered_as_immich_orders_them() {
        let at = |x: f32, y: f32| TextBox {
            points: [[x, y], [x + 5.0, y], [x + 5.0, y + 5.0], [x, y + 5.0]],
            score: x,
        };
        let mut boxes = vec![
            at(50.0, 40.0),
            at(30.0, 5.0),
            at(0.0, 9.0),
            at(10.0, 30.0),
            at(90.0, 0.0),
        ];
        sort_reading_order(&mut boxes);
        // numpy on Immich's code gives this order (its double indexing puts 50 before 10).
        let order: Vec<f32> = boxes.iter().map(|b| b.points[0][0]).collect();
        assert_eq!(order, vec![0.0, 30.0, 50.0, 10.0, 90.0]);
        // The scores stay where they were found.
        let scores: Vec<f32> = boxes.iter().map(|b| b.score).collect();
        assert_eq!(scores, vec![50.0, 30.0, 0.0, 10.0, 90.0]);
    }

    #[test]
    fn clipper_round_offset_grows_a_square() {
        let square = [[0, 0], [10, 0], [10, 10], [0, 10]];
        for path in [square, [[0, 10], [10, 10], [10, 0], [0, 0]]] {
            let grown = round_offset(&path, 2.0);
            let xs: Vec<i64> = grown.iter().map(|p| p[0]).collect();
            let ys: Vec<i64> = grown.iter().map(|p| p[1]).collect();
            assert_eq!(xs.iter().min(), Some(&-2));
            assert_eq!(xs.iter().max(), Some(&12));
            assert_eq!(ys.iter().min(), Some(&-2));
            assert_eq!(ys.iter().max(), Some(&12));
            // Arcs at the corners: more than the 8 points of a mitred square.
            assert!(grown.len() > 8, "{grown:?}");
        }
        assert!(round_offset(&[[0, 0], [0, 0], [1, 1]], 2.0).is_empty());
    }

    #[test]
    fn mini_box_orders_corners() {
        let points = [[2.0, 1.0], [8.0, 1.0], [8.0, 5.0], [2.0, 5.0], [5.0, 3.0]];
        let (rect, side) = mini_box(&points).expect("a rectangle");
        assert!((side - 4.0).abs() < 1e-9);
        let rounded = rect.map(|[x, y]| [x.round(), y.round()]);
        assert_eq!(rounded, [[2.0, 1.0], [8.0, 1.0], [8.0, 5.0], [2.0, 5.0]]);
        assert!(mini_box(&[]).is_none());
        assert!(mini_box(&[[1.0, 1.0]]).is_none_or(|(_, side)| side == 0.0));
    }
}
