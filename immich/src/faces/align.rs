//! Face alignment for ArcFace (buffalo_l's `w600k_r50`), as insightface's
//! `utils/face_align.norm_crop` does it: the similarity transform that takes the five
//! detected keypoints onto ArcFace's 112×112 template (scikit-image's
//! `SimilarityTransform.estimate`, Umeyama's method), `cv2.warpAffine` with a black
//! border, then `blobFromImages(crop, 1 / 127.5, (112, 112), 127.5, swapRB=True)`.

use image::RgbImage;
use nalgebra::{Matrix2, Vector2};
use ndarray::Array3;

/// The side of the aligned crop ArcFace reads.
pub const RECOGNITION_SIZE: u32 = 112;

/// insightface's `arcface_src`: where the left eye, right eye, nose tip and mouth
/// corners of a 112×112 ArcFace crop lie (float32 in insightface, kept so here).
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// `blobFromImages(..., scalefactor=1/127.5, mean=127.5)`: OpenCV subtracts the mean
/// and multiplies by the factor, both as float32.
const INPUT_MEAN: f32 = 127.5;
const INPUT_SCALE: f32 = (1.0f64 / 127.5) as f32;

/// A 2×3 affine matrix `[[a, b, tx], [c, d, ty]]` taking `(x, y)` to
/// `(a x + b y + tx, c x + d y + ty)`.
pub type Affine = [[f64; 3]; 2];

/// The ArcFace recognition input for the face with `landmarks` (pixels of `image`, as
/// [`decode_detections`](super::decode_detections) gives them): `norm_crop` to 112×112,
/// `(x − 127.5) / 127.5`, channels in RGB order (insightface warps Immich's BGR image
/// and `swapRB` turns it back), CHW `[3, 112, 112]`.
///
/// Landmarks that fix no transform (all at one point, or not finite) give the crop of
/// an all-black image, as OpenCV's warp with scikit-image's NaN matrix does.
pub fn recognition_input(image: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Array3<f32> {
    let size = RECOGNITION_SIZE as usize;
    let src = landmarks.map(|p| p.map(f64::from));
    let dst = ARCFACE_TEMPLATE.map(|p| p.map(f64::from));
    let crop = match similarity_transform(&src, &dst) {
        Some(matrix) => warp_affine(image, &matrix, RECOGNITION_SIZE, RECOGNITION_SIZE),
        None => RgbImage::new(RECOGNITION_SIZE, RECOGNITION_SIZE),
    };
    let mut blob = Array3::zeros((3, size, size));
    for (x, y, pixel) in crop.enumerate_pixels() {
        for (c, &value) in pixel.0.iter().enumerate() {
            blob[[c, y as usize, x as usize]] = (f32::from(value) - INPUT_MEAN) * INPUT_SCALE;
        }
    }
    blob
}

/// The least-squares similarity transform (rotation, uniform scale, translation)
/// taking `src` points onto `dst`, by Umeyama's method exactly as scikit-image's
/// `_umeyama(src, dst, estimate_scale=True)` computes it, reflection handling and rank
/// tests included. `None` where scikit-image answers NaN: no points, points that differ
/// in count, all `src` (or `dst`) points at one place, or non-finite input.
pub fn similarity_transform(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Affine> {
    if src.is_empty() || src.len() != dst.len() {
        return None;
    }
    let n = src.len() as f64;
    let point = |p: &[f64; 2]| Vector2::new(p[0], p[1]);
    let src_mean = src.iter().map(point).sum::<Vector2<f64>>() / n;
    let dst_mean = dst.iter().map(point).sum::<Vector2<f64>>() / n;
    // A = dst_demeanᵀ · src_demean / n
    let mut a = Matrix2::zeros();
    let mut src_variance = 0.0;
    for (s, d) in src.iter().zip(dst) {
        let s = point(s) - src_mean;
        let d = point(d) - dst_mean;
        a += d * s.transpose();
        src_variance += s.norm_squared();
    }
    a /= n;
    src_variance /= n;
    if !a.iter().all(|v| v.is_finite()) {
        return None;
    }

    let mut d = Vector2::new(1.0, 1.0);
    if a.determinant() < 0.0 {
        d[1] = -1.0;
    }
    // nalgebra's `new` sorts the singular values in decreasing order, as LAPACK does.
    let svd = a.svd(true, true);
    let (u, vt) = (svd.u?, svd.v_t?);
    let s = svd.singular_values;
    let tolerance = s.max() * 2.0 * f64::EPSILON;
    let rank = s.iter().filter(|&&v| v > tolerance).count();
    let rotation = match rank {
        0 => return None,
        1 => {
            if u.determinant() * vt.determinant() > 0.0 {
                u * vt
            } else {
                u * Matrix2::from_diagonal(&Vector2::new(1.0, -1.0)) * vt
            }
        }
        _ => u * Matrix2::from_diagonal(&d) * vt,
    };
    let scale = 1.0 / src_variance * s.dot(&d);
    let translation = dst_mean - scale * (rotation * src_mean);
    let m = rotation * scale;
    let affine = [
        [m[(0, 0)], m[(0, 1)], translation[0]],
        [m[(1, 0)], m[(1, 1)], translation[1]],
    ];
    affine
        .iter()
        .flatten()
        .all(|v| v.is_finite())
        .then_some(affine)
}

/// `cv2.warpAffine(src, matrix, (width, height))` with `INTER_LINEAR` and a black
/// constant border, as OpenCV 4.11 and later compute it for 8-bit images
/// (`imgproc/src/warp_kernels.simd.hpp`, the default non-approximate kernel):
///
/// * the matrix is inverted in double as `warpAffine` does without `WARP_INVERSE_MAP`,
///   then cast to float;
/// * destination pixel `(x, y)` samples the source at `M⁻¹ · (x, y)`, with no half-pixel
///   shift: `sx = fma(m0, x, (float)(m1 y + m2))`, likewise `sy`;
/// * the four neighbours of `(floor(sx), floor(sy))`, each 0 when outside the source;
/// * `v0 = fma(ax, p01 − p00, p00)`, `v1 = fma(ax, p11 − p10, p10)`,
///   `v = fma(ay, v1 − v0, v0)`, rounded half to even and saturated.
///
/// Not `imageproc::geometric_transformations::warp`: it samples at pixel centres
/// (`x + 0.5`), fills only where all four neighbours lie inside, and rounds otherwise.
/// OpenCV before 4.11 used 5-bit fixed-point sub-pixel tables instead of floats; its
/// results differ from these by at most one level in a few pixels.
pub(crate) fn warp_affine(src: &RgbImage, matrix: &Affine, width: u32, height: u32) -> RgbImage {
    let [[a, b, c], [d, e, f]] = *matrix;
    let det = a * e - b * d;
    let det = if det != 0.0 { 1.0 / det } else { 0.0 };
    let (m0, m1, m3, m4) = (e * det, -b * det, -d * det, a * det);
    let (m2, m5) = (-m0 * c - m1 * f, -m3 * c - m4 * f);
    let m = [m0, m1, m2, m3, m4, m5].map(|v| v as f32);

    let (src_w, src_h) = (i64::from(src.width()), i64::from(src.height()));
    let pixels = src.as_raw();
    let fetch = |x: i64, y: i64, channel: usize| -> f32 {
        if (0..src_w).contains(&x) && (0..src_h).contains(&y) {
            f32::from(pixels[((y * src_w + x) * 3) as usize + channel])
        } else {
            0.0
        }
    };

    let mut out = RgbImage::new(width, height);
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let sx = m[0].mul_add(xf, yf * m[1] + m[2]);
        let sy = m[3].mul_add(xf, yf * m[4] + m[5]);
        if !(sx.is_finite() && sy.is_finite()) {
            continue;
        }
        let (fx, fy) = (sx.floor(), sy.floor());
        let (ax, ay) = (sx - fx, sy - fy);
        // Beyond ±2^62 every neighbour is outside anyway; `as` saturates.
        let (ix, iy) = (fx as i64, fy as i64);
        for (channel, value) in pixel.0.iter_mut().enumerate() {
            let p00 = fetch(ix, iy, channel);
            let p01 = fetch(ix.saturating_add(1), iy, channel);
            let p10 = fetch(ix, iy.saturating_add(1), channel);
            let p11 = fetch(ix.saturating_add(1), iy.saturating_add(1), channel);
            let v0 = ax.mul_add(p01 - p00, p00);
            let v1 = ax.mul_add(p11 - p10, p10);
            let v = ay.mul_add(v1 - v0, v0);
            *value = v.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(m: &Affine, p: [f64; 2]) -> [f64; 2] {
        [
            m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
            m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
        ]
    }

    #[test]
    fn recovers_a_known_similarity() {
        let (scale, angle, tx, ty) = (1.7f64, 0.6f64, -12.5, 40.25);
        let (sin, cos) = angle.sin_cos();
        let truth = [
            [scale * cos, -scale * sin, tx],
            [scale * sin, scale * cos, ty],
        ];
        let src = ARCFACE_TEMPLATE.map(|p| p.map(f64::from));
        let dst = src.map(|p| apply(&truth, p));
        let found = similarity_transform(&src, &dst).expect("a transform");
        for (row, expected) in found.iter().zip(truth) {
            for (v, e) in row.iter().zip(expected) {
                assert!((v - e).abs() < 1e-9, "{found:?} vs {truth:?}");
            }
        }
    }

    #[test]
    fn reflections_are_not_fitted() {
        // Mirrored points: the best similarity is a rotation, never a flip (det > 0).
        let src = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
        let dst = src.map(|[x, y]| [-x, y]);
        let m = similarity_transform(&src, &dst).expect("a transform");
        assert!(m[0][0] * m[1][1] - m[0][1] * m[1][0] > 0.0);
    }

    #[test]
    fn degenerate_points_have_no_transform() {
        let same = [[3.0, 4.0]; 5];
        assert!(similarity_transform(&same, &same).is_none());
        assert!(similarity_transform(&[], &[]).is_none());
        let nan = [[f64::NAN, 0.0], [1.0, 1.0]];
        assert!(similarity_transform(&nan, &[[0.0, 0.0], [1.0, 1.0]]).is_none());
        // Collinear points still fit (rank one).
        let line = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]];
        let m = similarity_transform(&line, &line).expect("a transform");
        assert!((apply(&m, [1.0, 1.0])[0] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn template_landmarks_crop_the_image_unchanged() {
        let image = RgbImage::from_fn(112, 112, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x * 7 + y * 3) % 256) as u8])
        });
        let blob = recognition_input(&image, &ARCFACE_TEMPLATE);
        assert_eq!(blob.shape(), &[3, 112, 112]);
        for (x, y, pixel) in image.enumerate_pixels() {
            for c in 0..3 {
                let expected = (f32::from(pixel[c]) - 127.5) / 127.5;
                let got = blob[[c, y as usize, x as usize]];
                assert!(
                    (got - expected).abs() < 1e-6,
                    "({x}, {y}, {c}): {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn warp_samples_without_half_pixel_shift() {
        // A shift by +0.5 in x: each output is the mean of two neighbours, and the last
        // column blends with the black border.
        let image = RgbImage::from_fn(4, 1, |x, _| image::Rgb([(x * 10 + 10) as u8; 3]));
        let shift = [[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]];
        let out = warp_affine(&image, &shift, 4, 1);
        let reds: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        // 15, 25, 35 and (40 + 0) / 2 = 20
        assert_eq!(reds, [15, 25, 35, 20]);
        // Rounds half to even: 12.5 -> 12
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([(x * 25) as u8; 3]));
        let out = warp_affine(&image, &shift, 1, 1);
        assert_eq!(out.get_pixel(0, 0)[0], 12);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let image = RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]));
        let blob = recognition_input(&image, &[[0.5, 0.5]; 5]);
        assert!(blob.iter().all(|&v| v == -1.0));
        let nan = [[f32::NAN; 2]; 5];
        assert!(recognition_input(&image, &nan).iter().all(|&v| v == -1.0));
        let huge = [
            [1e30, -1e30],
            [3e30, 2.0],
            [0.0, 1e30],
            [5.0, 5.0],
            [1e-30, 0.0],
        ];
        let blob = recognition_input(&image, &huge);
        assert!(blob.iter().all(|v| v.is_finite()));
        let empty = RgbImage::new(0, 0);
        let blob = recognition_input(&empty, &ARCFACE_TEMPLATE);
        assert!(blob.iter().all(|&v| v == -1.0));
    }
}
