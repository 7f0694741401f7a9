//! Text recognition: Immich's `get_crop_img_list`, then RapidOCR's `TextRecognizer`
//! batching and `CTCLabelDecode`.

use fast_image_resize as fr;
use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::Projection;
use ndarray::{Array4, ArrayView1, ArrayView3};

use super::resize;

/// Crops per recognition batch: Immich's default `max_batch_size.text_recognition`.
pub const REC_BATCH_SIZE: usize = 6;
/// Height of the recognition model's input.
pub const REC_HEIGHT: u32 = 48;
/// The narrowest recognition input (`rec_img_shape = (3, 48, 320)`): a batch is padded to
/// `int(48 · max(320/48, widest crop's width/height))`.
pub const REC_MIN_WIDTH: u32 = 320;

/// The size (width, height) of [`crop`]'s result for a box: its longer opposite sides,
/// as float32 norms truncated (`astype(np.int32)`), each at least 1 and at most the
/// image's width plus height.
pub fn crop_size(image: &RgbImage, points: &[[f32; 2]; 4]) -> (u32, u32) {
    let [p0, p1, p2, p3] = *points;
    let norm = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let limit = image.width().saturating_add(image.height()).max(1);
    let side = |v: f32| (v as u32).clamp(1, limit);
    (
        side(norm(p1, p0).max(norm(p2, p3))),
        side(norm(p0, p3).max(norm(p1, p2))),
    )
}

/// Immich's `get_crop_img_list` for one box: the quadrilateral `points` (top-left,
/// top-right, bottom-right, bottom-left, in pixels of `image`) warped to a
/// `int(max(top, bottom edge)) × int(max(left, right edge))` image, then turned 90°
/// counter-clockwise (PIL's `rotate(90, expand=True)`) when it is at least 1.5 times as
/// tall as wide. The result is RGB; [`recognition_batches`] feeds it as BGR, as Immich does.
///
/// Immich warps with PIL's `Image.transform(PERSPECTIVE, BICUBIC)`; the homography comes
/// from imageproc's `Projection`, but the sampling is PIL's, written out here, because
/// imageproc's bicubic differs where it matters: it is Catmull-Rom (PIL's cubic has
/// a = −1), it blacks out every sample within two pixels of the image edge (PIL repeats
/// the edge pixels, and boxes are often clipped to the edge), and it rounds where PIL
/// truncates. Samples outside the image are black, as in PIL.
///
/// A side that would be 0 is 1; a side longer than the image's width plus height (only for
/// points far outside the image) is cut to that.
pub fn crop(image: &RgbImage, points: &[[f32; 2]; 4]) -> RgbImage {
    let [p0, p1, p2, p3] = *points;
    let (width, height) = crop_size(image, points);

    let mut out = RgbImage::new(width, height);
    let finite = points.iter().flatten().all(|v| v.is_finite());
    if finite && image.width() > 0 && image.height() > 0 {
        let (w, h) = (width as f32, height as f32);
        let from = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)];
        let to = [p0, p1, p2, p3].map(|[x, y]| (x, y));
        if let Some(projection) = Projection::from_control_points(from, to) {
            for (x, y, pixel) in out.enumerate_pixels_mut() {
                // PIL samples each output pixel at its centre.
                let (sx, sy) = projection * (x as f32 + 0.5, y as f32 + 0.5);
                if let Some(value) = pil_bicubic(image, f64::from(sx), f64::from(sy)) {
                    *pixel = value;
                }
            }
        }
    }
    if f64::from(height) / f64::from(width) >= 1.5 {
        image::imageops::rotate270(&out)
    } else {
        out
    }
}

/// PIL's `bicubic_filter32RGB` (libImaging/Geometry.c): `None` outside
/// `[0, w) × [0, h)`; pixel centres at +0.5; edge pixels repeated; the cubic with
/// a = −1; clamped to [0, 255] and truncated.
fn pil_bicubic(image: &RgbImage, x: f64, y: f64) -> Option<Rgb<u8>> {
    let (width, height) = (image.width(), image.height());
    if !(x >= 0.0 && x < f64::from(width) && y >= 0.0 && y < f64::from(height)) {
        return None;
    }
    let (x, y) = (x - 0.5, y - 0.5);
    let (fx, fy) = (x.floor(), y.floor());
    let (dx, dy) = (x - fx, y - fy);
    let (left, top) = (fx as i64 - 1, fy as i64 - 1);
    let clip = |v: i64, size: u32| v.clamp(0, i64::from(size) - 1) as u32;
    let mut out = [0u8; 3];
    for (band, slot) in out.iter_mut().enumerate() {
        let row = |r: i64| {
            let at = |c: i64| f64::from(image.get_pixel(clip(c, width), clip(r, height))[band]);
            cubic(at(left), at(left + 1), at(left + 2), at(left + 3), dx)
        };
        let v = cubic(row(top), row(top + 1), row(top + 2), row(top + 3), dy);
        *slot = if v <= 0.0 {
            0
        } else if v >= 255.0 {
            255
        } else {
            v as u8
        };
    }
    Some(Rgb(out))
}

/// PIL's `BICUBIC` macro.
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// RapidOCR's `TextRecognizer` batching: crops sorted by width/height (stably; numpy's
/// default sort is not, which can only swap crops of equal ratio), in batches of
/// [`REC_BATCH_SIZE`]; each batch `[n, 3, 48, W]` with
/// `W = int(48 · max(320/48, the batch's widest width/height))`; each crop resized to
/// height 48 and width `min(ceil(48 · width/height), W)` with cv2's INTER_LINEAR, channels
/// BGR (Immich's crops are cv2 arrays), `(x/255 − 0.5)/0.5`, then zeros to the right.
///
/// Returns, per batch, the indices into `crops` of its rows, in row order, and the array.
pub fn recognition_batches(crops: &[RgbImage]) -> Vec<(Vec<usize>, Array4<f32>)> {
    let ratio = |crop: &RgbImage| {
        if crop.height() == 0 {
            0.0
        } else {
            f64::from(crop.width()) / f64::from(crop.height())
        }
    };
    let mut order: Vec<usize> = (0..crops.len()).collect();
    order.sort_by(|&a, &b| ratio(&crops[a]).total_cmp(&ratio(&crops[b])));

    let height = f64::from(REC_HEIGHT);
    let bilinear = fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear);
    order
        .chunks(REC_BATCH_SIZE)
        .map(|rows| {
            let widest = rows
                .iter()
                .map(|&i| ratio(&crops[i]))
                .fold(f64::from(REC_MIN_WIDTH) / height, f64::max);
            let width = (height * widest) as usize;
            let mut batch = Array4::zeros((rows.len(), 3, REC_HEIGHT as usize, width));
            for (n, &i) in rows.iter().enumerate() {
                let wanted = (height * ratio(&crops[i])).ceil();
                let resized_width = if wanted > width as f64 {
                    width
                } else {
                    wanted as usize
                };
                let Ok(resized_width) = u32::try_from(resized_width) else {
                    continue;
                };
                let Some(resized) = resize(&crops[i], resized_width, REC_HEIGHT, bilinear) else {
                    continue;
                };
                for (x, y, pixel) in resized.enumerate_pixels() {
                    let [r, g, b] = pixel.0;
                    for (channel, value) in [b, g, r].into_iter().enumerate() {
                        batch[[n, channel, y as usize, x as usize]] =
                            (f32::from(value) / 255.0 - 0.5) / 0.5;
                    }
                }
            }
            (rows.to_vec(), batch)
        })
        .collect()
}

/// RapidOCR's `CTCLabelDecode` of `[N, T, C]` probabilities: per step the most probable
/// class (the first on a tie), repeats collapsed, then blanks (class 0) dropped; the text is
/// the kept classes' characters and the score the mean of their probabilities (each rounded
/// to 5 decimals, and the mean too), 0 when nothing is kept.
///
/// Where Python would fail or differ, this goes on: NaN probabilities never win a step (an
/// all-NaN step is a blank), a class past the end of `charset` adds no character but
/// counts in the score, and a step with no classes is a blank.
pub fn ctc_decode(probs: ArrayView3<'_, f32>, charset: &[String]) -> Vec<(String, f32)> {
    probs
        .outer_iter()
        .map(|steps| {
            let mut text = String::new();
            let mut confidences = Vec::new();
            let mut previous = None;
            for step in steps.outer_iter() {
                let (class, probability) = argmax(step);
                let keep = previous != Some(class) && class != 0;
                previous = Some(class);
                if keep {
                    if let Some(character) = charset.get(class) {
                        text.push_str(character);
                    }
                    confidences.push(round5(f64::from(probability)));
                }
            }
            let score = if confidences.is_empty() {
                0.0
            } else {
                round5(confidences.iter().sum::<f64>() / confidences.len() as f64)
            };
            (text, score as f32)
        })
        .collect()
}

/// numpy's `argmax` and `max` of one step, NaN aside.
fn argmax(step: ArrayView1<'_, f32>) -> (usize, f32) {
    let mut best = (0, f32::NAN);
    for (i, &p) in step.iter().enumerate() {
        if p > best.1 || (best.1.is_nan() && !p.is_nan()) {
            best = (i, p);
        }
    }
    if best.1.is_nan() {
        (0, 0.0)
    } else {
        best
    }
}

/// `round(x, 5)` as numpy does it (scale, round half to even, unscale).
fn round5(x: f64) -> f64 {
    (x * 1e5).round_ties_even() / 1e5
}

/// The recognition charset from the ONNX metadata value of `character` or from a dict
/// file's text, as RapidOCR builds it: `"blank"` at index 0 (CTC's blank), one entry per
/// line (a final newline ends the last line rather than starting an empty one; `\r` and
/// `\n` trimmed from both ends of each line, as `read_character_file` does), and `" "`
/// appended last.
///
/// RapidOCR splits the metadata with Python's `str.splitlines`, which also breaks at
/// `\v`, `\f`, `\x1c`–`\x1e`, `\x85`, `U+2028` and `U+2029`; PP-OCR's charsets contain
/// none of them.
pub fn charset(text: &str) -> Vec<String> {
    let mut characters = vec!["blank".to_owned()];
    if !text.is_empty() {
        let body = text.strip_suffix('\n').unwrap_or(text);
        characters.extend(
            body.split('\n')
                .map(|line| line.trim_matches(['\r', '\n']).to_owned()),
        );
    }
    characters.push(" ".to_owned());
    characters
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn crop_of_an_axis_aligned_box_is_the_sub_image() {
        let image = pattern(120, 80);
        let points = [[10.0, 20.0], [70.0, 20.0], [70.0, 50.0], [10.0, 50.0]];
        let cropped = crop(&image, &points);
        let expected = image::imageops::crop_imm(&image, 10, 20, 60, 30).to_image();
        assert_eq!(cropped.dimensions(), (60, 30));
        assert_eq!(cropped, expected);
        // Touching the image edges: edge pixels repeat, nothing turns black.
        let whole = crop(
            &image,
            &[[0.0, 0.0], [120.0, 0.0], [120.0, 80.0], [0.0, 80.0]],
        );
        assert_eq!(whole, image);
    }

    #[test]
    fn a_tall_box_is_turned_counter_clockwise() {
        let image = pattern(100, 100);
        let points = [[10.0, 10.0], [30.0, 10.0], [30.0, 70.0], [10.0, 70.0]];
        let cropped = crop(&image, &points);
        assert_eq!(cropped.dimensions(), (60, 20));
        // Counter-clockwise: the sub-image's top-right pixel ends up at the top-left.
        assert_eq!(cropped.get_pixel(0, 0), image.get_pixel(29, 10));
        assert_eq!(cropped.get_pixel(59, 19), image.get_pixel(10, 69));
        // 1.5 exactly turns too; just under does not.
        let square_ish = [[0.0, 0.0], [20.0, 0.0], [20.0, 30.0], [0.0, 30.0]];
        assert_eq!(crop(&image, &square_ish).dimensions(), (30, 20));
        let not_quite = [[0.0, 0.0], [21.0, 0.0], [21.0, 31.0], [0.0, 31.0]];
        assert_eq!(crop(&image, &not_quite).dimensions(), (21, 31));
    }

    #[test]
    fn crop_survives_odd_points() {
        let image = pattern(50, 50);
        assert_eq!(crop(&image, &[[5.0, 5.0]; 4]).dimensions(), (1, 1));
        let nan = [[f32::NAN, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]];
        let _ = crop(&image, &nan);
        let far = [[-1e9, -1e9], [1e9, -1e9], [1e9, 1e9], [-1e9, 1e9]];
        assert_eq!(crop(&image, &far).dimensions(), (100, 100));
        let rotated = [[25.0, 0.0], [50.0, 25.0], [25.0, 50.0], [0.0, 25.0]];
        assert_eq!(crop(&image, &rotated).dimensions(), (35, 35));
        let _ = crop(&RgbImage::new(0, 0), &rotated);
    }

    #[test]
    fn batches_sort_by_ratio_and_pad_to_the_widest() {
        let crops: Vec<RgbImage> = [
            (96, 48),
            (480, 48),
            (10, 20),
            (48, 48),
            (200, 10),
            (30, 30),
            (60, 20),
        ]
        .iter()
        .map(|&(w, h)| RgbImage::from_pixel(w, h, Rgb([255, 0, 0])))
        .collect();
        let batches = recognition_batches(&crops);
        assert_eq!(batches.len(), 2);
        let (rows, first) = &batches[0];
        // Ratios: 2, 10, 0.5, 1, 20, 1, 3.
        assert_eq!(rows, &vec![2, 3, 5, 0, 6, 1]);
        // Widest is 10 → 480; below 320/48 the minimum 320 holds.
        assert_eq!(first.dim(), (6, 3, 48, 480));
        let (rows, second) = &batches[1];
        assert_eq!(rows, &vec![4]);
        assert_eq!(second.dim(), (1, 3, 48, 960));
        // Red in BGR: channel 2 is 1, channels 0 and 1 are −1; padding is 0.
        assert_eq!(first[[0, 2, 10, 5]], 1.0);
        assert_eq!(first[[0, 0, 10, 5]], -1.0);
        // The 10×20 crop is 24 wide at height 48.
        assert_eq!(first[[0, 2, 10, 23]], 1.0);
        assert_eq!(first[[0, 2, 10, 24]], 0.0);
        assert_eq!(first[[3, 1, 47, 95]], -1.0);
        assert_eq!(first[[3, 1, 47, 96]], 0.0);

        let only_small = recognition_batches(&[RgbImage::from_pixel(20, 40, Rgb([0, 0, 0]))]);
        assert_eq!(only_small[0].1.dim(), (1, 3, 48, 320));
        assert!(recognition_batches(&[]).is_empty());
        let empty = recognition_batches(&[RgbImage::new(0, 0), RgbImage::new(5, 0)]);
        assert_eq!(empty[0].1.dim(), (2, 3, 48, 320));
        assert!(empty[0].1.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn ctc_collapses_repeats_and_blanks() {
        let charset = charset("a\nb\nc\n");
        // Classes: 0 blank, 1 a, 2 b, 3 c, 4 space.
        let steps = [
            (1, 0.9),
            (1, 0.8),
            (0, 0.99),
            (1, 0.7),
            (2, 0.6),
            (2, 0.5),
            (4, 0.55),
            (3, 0.4),
        ];
        let mut probs = Array3::<f32>::from_elem((2, steps.len(), 5), 0.01);
        for (t, &(class, p)) in steps.iter().enumerate() {
            probs[[0, t, class]] = p;
        }
        for t in 0..steps.len() {
            probs[[1, t, 0]] = 0.9;
        }
        let decoded = ctc_decode(probs.view(), &charset);
        assert_eq!(decoded[0].0, "aab c");
        let mean = (0.9 + 0.7 + 0.6 + 0.55 + 0.4) / 5.0;
        assert!((decoded[0].1 - mean).abs() < 1e-5, "{decoded:?}");
        assert_eq!(decoded[1], (String::new(), 0.0));

        // Ties go to the first class; NaN never wins; classes past the charset add nothing.
        let mut odd = Array3::<f32>::zeros((1, 3, 7));
        odd[[0, 0, 2]] = 0.5;
        odd[[0, 0, 3]] = 0.5;
        odd[[0, 1, 1]] = f32::NAN;
        odd[[0, 1, 3]] = 0.6;
        odd[[0, 2, 6]] = 0.9;
        let decoded = ctc_decode(odd.view(), &charset);
        assert_eq!(decoded[0].0, "bc");
        assert!((decoded[0].1 - (0.5 + 0.6 + 0.9) / 3.0).abs() < 1e-5);
        assert!(
            ctc_decode(Array3::<f32>::zeros((1, 4, 0)).view(), &charset)[0]
                .0
                .is_empty()
        );
        assert!(ctc_decode(Array3::<f32>::zeros((0, 4, 5)).view(), &charset).is_empty());
    }

    #[test]
    fn charset_adds_blank_and_space() {
        let expect = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(charset("a\nb\nc"), expect(&["blank", "a", "b", "c", " "]));
        assert_eq!(charset("a\r\nb\r\n"), expect(&["blank", "a", "b", " "]));
        assert_eq!(charset("a\n\n b\n"), expect(&["blank", "a", "", " b", " "]));
        assert_eq!(charset(""), expect(&["blank", " "]));
        assert_eq!(charset("\n"), expect(&["blank", "", " "]));
    }
}
