//! `cv2.resize(image, (width, height))` with its default `INTER_LINEAR`, for 8-bit RGB
//! images, computed the way OpenCV computes it on x86-64, so that the letterboxed
//! detector input matches insightface's byte for byte.
//!
//! Why not `fast_image_resize`: its `Interpolation(Bilinear)` has the same pixel-centre
//! convention (`src = (dst + 0.5) * scale - 0.5`, edges replicated), but it rounds the
//! horizontal pass to `u8` before the vertical one and uses other fixed-point weights;
//! OpenCV keeps the horizontal sums at full precision. The two differ by one level in
//! many pixels, so this follows OpenCV's own arithmetic (`imgproc/src/resize.cpp`):
//!
//! * per output column `fx = (float)((dx + 0.5) * scale_x - 0.5)` with
//!   `scale_x = 1 / (dst_w / src_w)`, `sx = floor(fx)`, weights
//!   `round((1 - fx) * 2048)` and `round(fx * 2048)` (11 bits, ties to even); a tap left
//!   of the image, or `sx >= src_w - 1`, clamps to the edge pixel with weight 2048;
//! * the same per output row, the two source rows clamped into the image;
//! * horizontal sums `S = p0 * a0 + p1 * a1` kept as `i32`;
//! * vertical `((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2 >> 2` for the part of
//!   each row the SIMD kernel (`VResizeLinearVec_32s8u`, 8 or 16 lanes) covers, and
//!   `(S0 * b0 + S1 * b1 + 2^21) >> 22` for the last `len % 8` values of a row, which
//!   OpenCV finishes in scalar code. (Exact 2x downscales, which OpenCV routes to
//!   `INTER_AREA`, give the same `(a + b + c + d + 2) >> 2` through this formula, and an
//!   unchanged size is a copy either way.)
//!
//! ARM builds of OpenCV use NEON's rounding multiply in the vertical pass instead and can
//! differ from this by one level.

use image::RgbImage;

/// OpenCV's `INTER_RESIZE_COEF_BITS`: the weights are fixed point with 11 bits.
const COEF_SCALE: f32 = 2048.0;
/// Values of a row that OpenCV's 128-bit SIMD kernels handle at a time; the remainder
/// goes through its scalar formula.
const SIMD_LANES: usize = 8;

/// One output coordinate: the first source index and the two fixed-point weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    index: usize,
    next: usize,
    w0: i32,
    w1: i32,
}

/// The taps along one axis, as OpenCV's `resize` tables them.
fn taps(src_len: u32, dst_len: u32, clamp_fraction: bool) -> Vec<Tap> {
    let last = i64::from(src_len) - 1;
    let inv_scale = f64::from(dst_len) / f64::from(src_len);
    let scale = 1.0 / inv_scale;
    (0..dst_len)
        .map(|d| {
            let mut f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = i64::from(f.floor() as i32);
            f -= s as f32;
            if clamp_fraction {
                // Columns: outside taps collapse onto the edge pixel with all the weight.
                if s < 0 {
                    f = 0.0;
                    s = 0;
                }
                if s >= last {
                    f = 0.0;
                    s = last;
                }
            }
            let w0 = ((1.0 - f) * COEF_SCALE).round_ties_even() as i32;
            let w1 = (f * COEF_SCALE).round_ties_even() as i32;
            // Rows keep their weights and clamp each row index into the image.
            let index = s.clamp(0, last) as usize;
            let next = (s + 1).clamp(0, last) as usize;
            Tap {
                index,
                next,
                w0,
                w1,
            }
        })
        .collect()
}

/// `cv2.resize(src, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)`. An empty source
/// or target gives an image of the target size, black where nothing maps.
pub(crate) fn resize_linear(src: &RgbImage, dst_w: u32, dst_h: u32) -> RgbImage {
    let (src_w, src_h) = src.dimensions();
    if src_w == 0 || src_h == 0 || dst_w == 0 || dst_h == 0 {
        return RgbImage::new(dst_w, dst_h);
    }
    if (src_w, src_h) == (dst_w, dst_h) {
        return src.clone();
    }
    let columns = taps(src_w, dst_w, true);
    let rows = taps(src_h, dst_h, false);
    let src_row_len = src_w as usize * 3;
    let row_len = dst_w as usize * 3;
    let simd_end = row_len / SIMD_LANES * SIMD_LANES;
    let pixels = src.as_raw();

    let horizontal = |y: usize, out: &mut Vec<i32>| {
        out.clear();
        let row = &pixels[y * src_row_len..(y + 1) * src_row_len];
        for tap in &columns {
            for c in 0..3 {
                let p0 = i32::from(row[tap.index * 3 + c]);
                let p1 = i32::from(row[tap.next * 3 + c]);
                out.push(p0 * tap.w0 + p1 * tap.w1);
            }
        }
    };

    let mut out = vec![0u8; row_len * dst_h as usize];
    let mut upper = Vec::with_capacity(row_len);
    let mut lower = Vec::with_capacity(row_len);
    let mut cached = (usize::MAX, usize::MAX);
    for (dst_row, tap) in out.chunks_exact_mut(row_len).zip(&rows) {
        if cached != (tap.index, tap.next) {
            horizontal(tap.index, &mut upper);
            horizontal(tap.next, &mut lower);
            cached = (tap.index, tap.next);
        }
        for (x, value) in dst_row.iter_mut().enumerate() {
            let (s0, s1) = (upper[x], lower[x]);
            *value = if x < simd_end {
                // v_mul_hi(v_pack(S >> 4), beta): 16-bit lanes, high half of the product.
                let t0 = ((s0 >> 4) * tap.w0) >> 16;
                let t1 = ((s1 >> 4) * tap.w1) >> 16;
                ((t0 + t1 + 2) >> 2).clamp(0, 255) as u8
            } else {
                ((s0 * tap.w0 + s1 * tap.w1 + (1 << 21)) >> 22).clamp(0, 255) as u8
            };
        }
    }
    RgbImage::from_raw(dst_w, dst_h, out).unwrap_or_else(|| RgbImage::new(dst_w, dst_h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 9]));
        assert_eq!(resize_linear(&image, 5, 3), image);
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let image = RgbImage::from_pixel(7, 5, image::Rgb([200, 3, 77]));
        for (w, h) in [(16, 11), (3, 2), (1, 1), (640, 457)] {
            let out = resize_linear(&image, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 3, 77]), "{w}x{h}");
        }
    }

    #[test]
    fn doubling_interpolates_at_quarter_pixels() {
        // One row 0, 100: OpenCV gives 0, 25, 75, 100 (edges replicate).
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 100; 3]));
        let out = resize_linear(&image, 4, 1);
        let reds: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(reds, [0, 25, 75, 100]);
    }

    #[test]
    fn halving_averages_blocks() {
        let image = RgbImage::from_fn(4, 2, |x, y| image::Rgb([(x * 10 + y) as u8; 3]));
        let out = resize_linear(&image, 2, 1);
        // (0 + 10 + 1 + 11 + 2) >> 2 = 6, (20 + 30 + 21 + 31 + 2) >> 2 = 26
        let reds: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(reds, [6, 26]);
    }

    #[test]
    fn empty_images_do_not_panic() {
        let empty = RgbImage::new(0, 0);
        assert_eq!(resize_linear(&empty, 4, 4).dimensions(), (4, 4));
        let one = RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]));
        assert_eq!(resize_linear(&one, 0, 3).dimensions(), (0, 3));
    }
}
