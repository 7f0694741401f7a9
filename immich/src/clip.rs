//! CLIP's work around its two ONNX sessions, as Immich's ML server does it
//! (`immich_ml/models/clip/{visual,textual}.py`, `models/transforms.py`).
//!
//! - Image side: [`VisualConfig`] reads `preprocess_cfg.json`; [`visual_input`] resizes
//!   the shortest side with Pillow's own algorithm (ported here bit for bit: Pillow's
//!   fixed-point convolution, which no crate reproduces exactly), crops the centre,
//!   scales to `[0, 1]` and normalises, giving the model's CHW `image` input.
//! - Text side: [`TextEncoder`] is the Hugging Face `tokenizer.json` with Immich's
//!   padding and truncation to the context length, its whitespace collapsing, SigLIP's
//!   "canonicalize" cleaning and NLLB's language prefix.

use image::RgbImage;
use ndarray::Array3;
use serde_json::{Map, Value};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// OpenAI CLIP's channel means, as numpy turns open_clip's float64 constants into float32.
pub const OPENAI_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];
/// OpenAI CLIP's channel standard deviations.
pub const OPENAI_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];
/// open_clip's default text context length, used when `config.json` names none.
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;
/// Largest image side a `preprocess_cfg.json` may ask for (open_clip's largest is 518).
pub const MAX_IMAGE_SIZE: u32 = 4096;
/// Largest text context a `config.json` may ask for (open_clip's largest is 256).
pub const MAX_CONTEXT_LENGTH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("invalid preprocess_cfg.json: {0}")]
    PreprocessConfig(String),
    #[error("invalid CLIP config.json: {0}")]
    ModelConfig(String),
    #[error("invalid tokenizer_config.json: {0}")]
    TokenizerConfig(String),
    #[error("invalid tokenizer.json: {0}")]
    Tokenizer(String),
    #[error("cannot tokenize the text: {0}")]
    Encode(String),
}

/// Pillow's resampling filters (`PIL.Image.Resampling`), by the names
/// `preprocess_cfg.json` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Interpolation {
    /// The filter PIL names `name`, in any case (Immich's `get_pil_resampling`).
    pub fn from_name(name: &str) -> Option<Interpolation> {
        match name.to_ascii_lowercase().as_str() {
            "nearest" => Some(Interpolation::Nearest),
            "box" => Some(Interpolation::Box),
            "bilinear" => Some(Interpolation::Bilinear),
            "hamming" => Some(Interpolation::Hamming),
            "bicubic" => Some(Interpolation::Bicubic),
            "lanczos" => Some(Interpolation::Lanczos),
            _ => None,
        }
    }
}

/// How the image is brought to the model's square: the two modes Immich supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Shortest side to `size`, then the centre `size`×`size` crop.
    Shortest,
    /// Straight to `size`×`size`, ignoring the aspect ratio.
    Squash,
}

/// `preprocess_cfg.json` as open_clip saves it. The default is OpenAI CLIP's: 224,
/// bicubic, OpenAI's mean and std, "shortest".
#[derive(Debug, Clone, PartialEq)]
pub struct VisualConfig {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: Interpolation,
    pub resize_mode: ResizeMode,
}

impl Default for VisualConfig {
    fn default() -> Self {
        VisualConfig {
            size: 224,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            interpolation: Interpolation::Bicubic,
            resize_mode: ResizeMode::Shortest,
        }
    }
}

impl VisualConfig {
    /// Parses `preprocess_cfg.json`. `size` is an integer or a square `[h, w]` list;
    /// `mean`/`std` are three numbers (or one, for all channels); `interpolation` a PIL
    /// filter name; `resize_mode` "shortest" or "squash" (Immich refuses open_clip's
    /// "longest"). Missing or null fields keep the default; unknown fields are ignored.
    pub fn from_json(text: &str) -> Result<VisualConfig, ClipError> {
        let bad = ClipError::PreprocessConfig;
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut cfg = VisualConfig::default();
        if let Some(size) = field(object, "size") {
            cfg.size = parse_size(size)?;
        }
        if let Some(mean) = field(object, "mean") {
            cfg.mean = parse_channels("mean", mean)?;
        }
        if let Some(std) = field(object, "std") {
            cfg.std = parse_channels("std", std)?;
            if cfg.std.contains(&0.0) {
                return Err(bad("std must not be 0".into()));
            }
        }
        if let Some(interpolation) = field(object, "interpolation") {
            let name = interpolation.as_str().ok_or_else(|| {
                bad(format!(
                    "interpolation must be a string, not {interpolation}"
                ))
            })?;
            cfg.interpolation = Interpolation::from_name(name)
                .ok_or_else(|| bad(format!("unknown interpolation {name:?}")))?;
        }
        if let Some(mode) = field(object, "resize_mode") {
            cfg.resize_mode = match mode.as_str() {
                Some("shortest") => ResizeMode::Shortest,
                Some("squash") => ResizeMode::Squash,
                _ => return Err(bad(format!("unsupported resize_mode {mode}"))),
            };
        }
        Ok(cfg)
    }
}

/// A field that is present and not null.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

fn parse_size(value: &Value) -> Result<u32, ClipError> {
    let bad = ClipError::PreprocessConfig;
    let side = |v: &Value| -> Result<u32, ClipError> {
        v.as_u64()
            .filter(|s| (1..=u64::from(MAX_IMAGE_SIZE)).contains(s))
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| {
                bad(format!(
                    "size {v} is not an integer from 1 to {MAX_IMAGE_SIZE}"
                ))
            })
    };
    match value {
        Value::Array(sides) => {
            let sides = sides.iter().map(side).collect::<Result<Vec<_>, _>>()?;
            match sides.as_slice() {
                [first, rest @ ..] if rest.iter().all(|s| s == first) => Ok(*first),
                [] => Err(bad("size is an empty list".into())),
                _ => Err(bad(format!("size {value} is not square"))),
            }
        }
        other => side(other),
    }
}

fn parse_channels(name: &str, value: &Value) -> Result<[f32; 3], ClipError> {
    let bad = |why: &str| ClipError::PreprocessConfig(format!("{name} {value} {why}"));
    // numpy's float32 array of Python floats: float64 first, then rounded to float32.
    let number = |v: &Value| -> Result<f32, ClipError> {
        v.as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad("holds something that is not a finite number"))
    };
    match value {
        Value::Array(items) => match items.as_slice() {
            [one] => Ok([number(one)?; 3]),
            [r, g, b] => Ok([number(r)?, number(g)?, number(b)?]),
            _ => Err(bad("must hold 1 or 3 numbers")),
        },
        other => Ok([number(other)?; 3]),
    }
}

/// The visual model's input for `image`: a CHW `[3, size, size]` array, ready for a
/// batch axis. As Immich: the shortest side resized to `size` (the other side
/// `int()`-truncated) with Pillow's filter, the centre crop at `int(w/2 - size/2)`,
/// `x/255`, then `x * (1/std) - mean/std` in float32, as numpy does it. Only the
/// cropped window is ever computed, so a 1×100000 strip costs no more than a square.
/// An image without pixels gives the input of a black image.
pub fn visual_input(image: &RgbImage, cfg: &VisualConfig) -> Array3<f32> {
    let pixels = visual_pixels(image, cfg);
    normalize(&pixels, cfg)
}

/// The resized and cropped `size`×`size` RGB image that [`visual_input`] normalises:
/// the input of a model that normalises inside (Immich's `normalizes_input` sessions).
pub fn visual_pixels(image: &RgbImage, cfg: &VisualConfig) -> RgbImage {
    let size = cfg.size;
    let window = match cfg.resize_mode {
        ResizeMode::Squash => Window::whole(u64::from(size), u64::from(size)),
        ResizeMode::Shortest => {
            let (width, height) = shortest_side_size(image.width(), image.height(), size);
            // crop_pil: left = int(width / 2 - size / 2), in floats, truncated to zero.
            let offset = |full: u64| (full as f64 / 2.0 - f64::from(size) / 2.0) as i64;
            Window {
                full_width: width,
                full_height: height,
                left: offset(width),
                top: offset(height),
                width: size as usize,
                height: size as usize,
            }
        }
    };
    let data = resize_window(image, cfg.interpolation, &window);
    RgbImage::from_raw(size, size, data).unwrap_or_else(|| RgbImage::new(size, size))
}

/// Immich's `resize_pil`: the size that brings the shortest side to `size`.
fn shortest_side_size(width: u32, height: u32, size: u32) -> (u64, u64) {
    let (w, h, s) = (f64::from(width), f64::from(height), f64::from(size));
    if width == 0 || height == 0 {
        (u64::from(size), u64::from(size))
    } else if width < height {
        (u64::from(size), (h / w * s) as u64)
    } else {
        ((w / h * s) as u64, u64::from(size))
    }
}

/// `to_numpy` then `normalize` of Immich's transforms, channels first.
fn normalize(pixels: &RgbImage, cfg: &VisualConfig) -> Array3<f32> {
    let (width, height) = (pixels.width() as usize, pixels.height() as usize);
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / cfg.std[c]);
    let shift: [f32; 3] = std::array::from_fn(|c| cfg.mean[c] / cfg.std[c]);
    let raw = pixels.as_raw();
    Array3::from_shape_fn((3, height, width), |(c, y, x)| {
        let value = raw.get((y * width + x) * 3 + c).copied().unwrap_or(0);
        f32::from(value) / 255.0 * scale[c] - shift[c]
    })
}

/// Pillow's `Image.resize((width, height), filter)` of an RGB image, bit for bit.
pub fn pil_resize(image: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    let window = Window::whole(u64::from(width), u64::from(height));
    let data = resize_window(image, filter, &window);
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

/// A `width`×`height` window at (`left`, `top`) of the image resized to
/// `full_width`×`full_height`; pixels of the window outside it are black, as PIL's
/// `crop` makes them.
#[derive(Debug, Clone, Copy)]
struct Window {
    full_width: u64,
    full_height: u64,
    left: i64,
    top: i64,
    width: usize,
    height: usize,
}

impl Window {
    fn whole(width: u64, height: u64) -> Window {
        Window {
            full_width: width,
            full_height: height,
            left: 0,
            top: 0,
            width: usize::try_from(width).unwrap_or(0),
            height: usize::try_from(height).unwrap_or(0),
        }
    }
}

/// The window's RGB bytes, row by row.
fn resize_window(image: &RgbImage, filter: Interpolation, window: &Window) -> Vec<u8> {
    if image.width() == 0 || image.height() == 0 {
        return vec![0; window.width * window.height * 3];
    }
    match Kernel::of(filter) {
        Some(kernel) => convolve_window(image, kernel, window),
        None => nearest_window(image, window),
    }
}

/// Pillow's convolution filters (`libImaging/Resample.c`).
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Kernel {
    fn of(filter: Interpolation) -> Option<Kernel> {
        match filter {
            Interpolation::Nearest => None,
            Interpolation::Box => Some(Kernel::Box),
            Interpolation::Bilinear => Some(Kernel::Bilinear),
            Interpolation::Hamming => Some(Kernel::Hamming),
            Interpolation::Bicubic => Some(Kernel::Bicubic),
            Interpolation::Lanczos => Some(Kernel::Lanczos),
        }
    }

    fn support(self) -> f64 {
        match self {
            Kernel::Box => 0.5,
            Kernel::Bilinear | Kernel::Hamming => 1.0,
            Kernel::Bicubic => 2.0,
            Kernel::Lanczos => 3.0,
        }
    }

    /// Pillow's filter functions, with their exact operations and constants.
    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Kernel::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Kernel::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Kernel::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes 0.54f and 0.46f: float constants, widened.
                    x.sin() / x * (f64::from(0.54_f32) + f64::from(0.46_f32) * x.cos())
                }
            }
            Kernel::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Kernel::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's 8-bit fixed point: 22 fractional bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// The input pixels one output pixel reads along one axis, and their fixed-point weights.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// `precompute_coeffs` and `normalize_coeffs_8bpc` of Pillow for the output indices
/// `first..first + count` of an axis resized from `in_size` to `out_size`, with the
/// full image's coefficients (each index's depend on nothing but the index). `None` for
/// indices outside `0..out_size`.
fn axis_taps(
    kernel: Kernel,
    in_size: u32,
    out_size: u64,
    first: i64,
    count: usize,
) -> Vec<Option<Taps>> {
    // Pillow's box is float: (double)(in1 - in0) / outSize with in0 = 0.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = kernel.support() * filter_scale;
    let ss = 1.0 / filter_scale;
    let in_size = i64::from(in_size);
    (0..count)
        .map(|i| {
            let xx = first.checked_add(i64::try_from(i).ok()?)?;
            if xx < 0 || xx as u64 >= out_size {
                return None;
            }
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) casts: truncation towards zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size);
            let mut weights: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| kernel.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            let one = f64::from(1_u32 << PRECISION_BITS);
            let weights = weights
                .into_iter()
                .map(|w| {
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Some(Taps {
                start: usize::try_from(xmin).ok()?,
                weights,
            })
        })
        .collect()
}

/// Taps that copy: for an axis Pillow leaves alone because its size does not change.
fn identity_taps(in_size: u32, first: i64, count: usize) -> Vec<Option<Taps>> {
    (0..count)
        .map(|i| {
            let x = first.checked_add(i64::try_from(i).ok()?)?;
            if x < 0 || x >= i64::from(in_size) {
                return None;
            }
            Some(Taps {
                start: usize::try_from(x).ok()?,
                weights: vec![1 << PRECISION_BITS],
            })
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResampleInner`: a horizontal pass over the rows the vertical pass
/// reads, into 8-bit pixels, then the vertical pass, for the window's pixels only.
fn convolve_window(image: &RgbImage, kernel: Kernel, window: &Window) -> Vec<u8> {
    let (in_width, in_height) = (image.width(), image.height());
    let taps = |in_size: u32, out_size: u64, first: i64, count: usize| {
        if out_size == u64::from(in_size) {
            identity_taps(in_size, first, count)
        } else {
            axis_taps(kernel, in_size, out_size, first, count)
        }
    };
    let columns = taps(in_width, window.full_width, window.left, window.width);
    let rows = taps(in_height, window.full_height, window.top, window.height);
    let mut out = vec![0_u8; window.width * window.height * 3];

    // The source rows the vertical pass reads.
    let first_row = rows.iter().flatten().map(|t| t.start).min();
    let end_row = rows
        .iter()
        .flatten()
        .map(|t| t.start + t.weights.len())
        .max();
    let (Some(first_row), Some(end_row)) = (first_row, end_row) else {
        return out;
    };
    let src = image.as_raw();
    let in_stride = in_width as usize * 3;
    let stride = window.width * 3;

    let mut temp = vec![0_u8; end_row.saturating_sub(first_row) * stride];
    for (row, line) in (first_row..end_row).zip(temp.chunks_exact_mut(stride.max(1))) {
        let Some(src_row) = src.get(row * in_stride..(row + 1) * in_stride) else {
            continue;
        };
        for (column, pixel) in columns.iter().zip(line.chunks_exact_mut(3)) {
            let Some(t) = column else { continue };
            let mut acc = [HALF; 3];
            let from = t.start * 3;
            match src_row.get(from..from + t.weights.len() * 3) {
                // The usual case, checked once: the compiler keeps the three sums in
                // registers (this loop is most of a CLIP request's CPU time).
                Some(span) => {
                    for (source, &k) in span.chunks_exact(3).zip(&t.weights) {
                        for (sum, &v) in acc.iter_mut().zip(source) {
                            *sum = sum.wrapping_add(i32::from(v).wrapping_mul(k));
                        }
                    }
                }
                // Taps past the row's end read as 0.
                None => {
                    for (i, &k) in t.weights.iter().enumerate() {
                        let at = (t.start + i) * 3;
                        for (c, sum) in acc.iter_mut().enumerate() {
                            let v = i32::from(src_row.get(at + c).copied().unwrap_or(0));
                            *sum = sum.wrapping_add(v.wrapping_mul(k));
                        }
                    }
                }
            }
            for (p, sum) in pixel.iter_mut().zip(acc) {
                *p = clip8(sum);
            }
        }
    }

    for (row, line) in rows.iter().zip(out.chunks_exact_mut(stride.max(1))) {
        let Some(t) = row else { continue };
        let mut acc = vec![HALF; stride];
        for (i, &k) in t.weights.iter().enumerate() {
            let at = (t.start + i - first_row) * stride;
            let Some(temp_row) = temp.get(at..at + stride) else {
                continue;
            };
            for (sum, &v) in acc.iter_mut().zip(temp_row) {
                *sum = sum.wrapping_add(i32::from(v).wrapping_mul(k));
            }
        }
        for (p, sum) in line.iter_mut().zip(acc) {
            *p = clip8(sum);
        }
    }
    out
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`): source positions stepped by repeated
/// addition from the first pixel's centre, as Pillow accumulates them.
fn nearest_window(image: &RgbImage, window: &Window) -> Vec<u8> {
    let (in_width, in_height) = (image.width(), image.height());
    let columns = nearest_positions(in_width, window.full_width, window.left, window.width);
    let rows = nearest_positions(in_height, window.full_height, window.top, window.height);
    let src = image.as_raw();
    let mut out = vec![0_u8; window.width * window.height * 3];
    for (row, line) in rows
        .iter()
        .zip(out.chunks_exact_mut((window.width * 3).max(1)))
    {
        let Some(y) = row else { continue };
        for (column, pixel) in columns.iter().zip(line.chunks_exact_mut(3)) {
            let Some(x) = column else { continue };
            let at = (y * in_width as usize + x) * 3;
            if let Some(source) = src.get(at..at + 3) {
                pixel.copy_from_slice(source);
            }
        }
    }
    out
}

/// Source indices of output positions `first..first + count` (None outside the image).
fn nearest_positions(in_size: u32, out_size: u64, first: i64, count: usize) -> Vec<Option<usize>> {
    // Past this many steps the running sum is replaced by a product, not to loop for ever.
    const MAX_STEPS: i64 = 1 << 24;
    let step = f64::from(in_size as f32) / out_size as f64;
    let source = |position: f64| -> Option<usize> {
        // COORD(v): -1 below zero, else (int)v.
        (position >= 0.0 && position < f64::from(in_size)).then_some(position as usize)
    };
    let mut positions = vec![None; count];
    let end = first.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
    let in_range = |x: i64| x >= 0 && (x as u64) < out_size;
    if first.max(0) > MAX_STEPS {
        for (i, slot) in positions.iter_mut().enumerate() {
            let x = first.saturating_add(i as i64);
            if in_range(x) {
                *slot = source(step * 0.5 + x as f64 * step);
            }
        }
        return positions;
    }
    let mut position = step * 0.5;
    for x in 0..end.min(i64::try_from(out_size).unwrap_or(i64::MAX)) {
        if x >= first {
            if let Some(slot) = positions.get_mut((x - first) as usize) {
                *slot = source(position);
            }
        }
        position += step;
    }
    positions
}

/// Immich's `_MCLIP_MODELS`: text models that take `input_ids` and `attention_mask`.
const MCLIP_MODELS: [&str; 4] = [
    "LABSE-Vit-L-14",
    "XLM-Roberta-Large-Vit-B-16Plus",
    "XLM-Roberta-Large-Vit-B-32",
    "XLM-Roberta-Large-Vit-L-14",
];

/// Immich's `WEBLATE_TO_FLORES200`: the app's language codes to NLLB's.
const WEBLATE_TO_FLORES200: [(&str, &str); 56] = [
    ("af", "afr_Latn"),
    ("ar", "arb_Arab"),
    ("az", "azj_Latn"),
    ("be", "bel_Cyrl"),
    ("bg", "bul_Cyrl"),
    ("ca", "cat_Latn"),
    ("cs", "ces_Latn"),
    ("da", "dan_Latn"),
    ("de", "deu_Latn"),
    ("el", "ell_Grek"),
    ("en", "eng_Latn"),
    ("es", "spa_Latn"),
    ("et", "est_Latn"),
    ("fa", "pes_Arab"),
    ("fi", "fin_Latn"),
    ("fr", "fra_Latn"),
    ("he", "heb_Hebr"),
    ("hi", "hin_Deva"),
    ("hr", "hrv_Latn"),
    ("hu", "hun_Latn"),
    ("hy", "hye_Armn"),
    ("id", "ind_Latn"),
    ("it", "ita_Latn"),
    ("ja", "jpn_Hira"),
    ("kmr", "kmr_Latn"),
    ("ko", "kor_Hang"),
    ("lb", "ltz_Latn"),
    ("lt", "lit_Latn"),
    ("lv", "lav_Latn"),
    ("mfa", "zsm_Latn"),
    ("mk", "mkd_Cyrl"),
    ("mn", "khk_Cyrl"),
    ("mr", "mar_Deva"),
    ("ms", "zsm_Latn"),
    ("nb-NO", "nob_Latn"),
    ("nn", "nno_Latn"),
    ("nl", "nld_Latn"),
    ("pl", "pol_Latn"),
    ("pt-BR", "por_Latn"),
    ("pt", "por_Latn"),
    ("ro", "ron_Latn"),
    ("ru", "rus_Cyrl"),
    ("sk", "slk_Latn"),
    ("sl", "slv_Latn"),
    ("sr-Cyrl", "srp_Cyrl"),
    ("sv", "swe_Latn"),
    ("ta", "tam_Taml"),
    ("te", "tel_Telu"),
    ("th", "tha_Thai"),
    ("tr", "tur_Latn"),
    ("uk", "ukr_Cyrl"),
    ("ur", "urd_Arab"),
    ("vi", "vie_Latn"),
    ("zh-CN", "zho_Hans"),
    ("zh-Hans", "zho_Hans"),
    ("zh-TW", "zho_Hant"),
];

/// The FLORES-200 code Immich prefixes for `language`: the exact code, else the part
/// before the first `-`, else English.
fn flores_code(language: &str) -> &'static str {
    let find = |code: &str| {
        WEBLATE_TO_FLORES200
            .iter()
            .find(|(weblate, _)| *weblate == code)
            .map(|(_, flores)| *flores)
    };
    find(language)
        .or_else(|| language.split('-').next().and_then(find))
        .unwrap_or("eng_Latn")
}

/// Immich's `clean_name`: the part after the last `/`, with `:` and `\` made `_` and
/// `.` dropped.
fn clean_model_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.chars()
        .filter(|&c| c != '.')
        .map(|c| if c == ':' || c == '\\' { '_' } else { c })
        .collect()
}

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators 0x1C–0x1F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Immich's `clean_text`: whitespace runs to one space, trimmed; with `canonicalize`,
/// ASCII punctuation (Python's `string.punctuation`) removed and the text lowercased.
fn clean_text(text: &str, canonicalize: bool) -> String {
    let joined = text
        .split(is_python_space)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if canonicalize {
        joined
            .chars()
            .filter(|c| !c.is_ascii_punctuation())
            .collect::<String>()
            .to_lowercase()
    } else {
        joined
    }
}

/// The text model's input: `input_ids` (Immich's `text` input for OpenCLIP models) and
/// the attention mask, both `context_length` long.
#[derive(Debug, Clone, PartialEq)]
pub struct TextInput {
    pub input_ids: Vec<i32>,
    pub attention_mask: Vec<i32>,
}

/// The text side of a CLIP model: its tokenizer with Immich's padding and truncation to
/// the context length, and Immich's text cleaning.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    context_length: usize,
    canonicalize: bool,
    nllb: bool,
    mclip: bool,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("context_length", &self.context_length)
            .field("canonicalize", &self.canonicalize)
            .field("nllb", &self.nllb)
            .field("mclip", &self.mclip)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Builds the encoder from `tokenizer.json`, the model's `config.json` (its
    /// `text_cfg.context_length`, default 77, and `text_cfg.tokenizer_kwargs.clean ==
    /// "canonicalize"`, as Immich reads them) and the model's name (`nllb*`: language
    /// prefix; Immich's M-CLIP names: attention mask). Without `config.json` (Immich
    /// requires one) names containing "siglip", other than NLLB's, are canonicalised.
    ///
    /// Immich pads with `tokenizer_config.json`'s `pad_token`: pass that file to
    /// [`TextEncoder::with_tokenizer_config`]. Until then the pad is `tokenizer.json`'s
    /// own padding token, or id 0.
    pub fn new(
        tokenizer_json: &[u8],
        config_json: Option<&str>,
        model_name: &str,
    ) -> Result<TextEncoder, ClipError> {
        let name = clean_model_name(model_name);
        let nllb = name.starts_with("nllb");
        let mclip = MCLIP_MODELS.contains(&name.as_str());
        let (context_length, canonicalize) = match config_json {
            Some(text) => text_config(text)?,
            None => (
                DEFAULT_CONTEXT_LENGTH,
                !nllb && name.to_lowercase().contains("siglip"),
            ),
        };
        let tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| ClipError::Tokenizer(e.to_string()))?;
        let (pad_id, pad_token) = match tokenizer.get_padding() {
            Some(padding) => (padding.pad_id, padding.pad_token.clone()),
            None => (0, tokenizer.id_to_token(0).unwrap_or_default()),
        };
        let mut encoder = TextEncoder {
            tokenizer,
            context_length,
            canonicalize,
            nllb,
            mclip,
        };
        encoder.set_padding(pad_id, pad_token)?;
        Ok(encoder)
    }

    /// Pads with `tokenizer_config.json`'s `pad_token`, as Immich does.
    pub fn with_tokenizer_config(
        mut self,
        tokenizer_config_json: &str,
    ) -> Result<TextEncoder, ClipError> {
        let bad = ClipError::TokenizerConfig;
        let value: Value =
            serde_json::from_str(tokenizer_config_json).map_err(|e| bad(e.to_string()))?;
        // A string, or an AddedToken object as some transformers versions save it.
        let pad = value
            .get("pad_token")
            .ok_or_else(|| bad("no pad_token".into()))?;
        let pad_token = pad
            .as_str()
            .or_else(|| pad.get("content").and_then(Value::as_str))
            .ok_or_else(|| bad(format!("pad_token {pad} is not a token")))?
            .to_string();
        let pad_id = self.tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            bad(format!(
                "pad_token {pad_token:?} is not in tokenizer.json's vocabulary"
            ))
        })?;
        self.set_padding(pad_id, pad_token)?;
        Ok(self)
    }

    /// `enable_padding(length=context_length, ...)` and `enable_truncation(context_length)`.
    fn set_padding(&mut self, pad_id: u32, pad_token: String) -> Result<(), ClipError> {
        self.tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(self.context_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: self.context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ClipError::Tokenizer(e.to_string()))?;
        Ok(())
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Whether the model takes `input_ids` and `attention_mask` (M-CLIP) rather than
    /// one `text` input.
    pub fn takes_attention_mask(&self) -> bool {
        self.mclip
    }

    /// Token ids padded with the pad token / truncated to `context_length` (the special
    /// tokens kept), and the attention mask (1 for real tokens). `language` matters to
    /// NLLB models only: its FLORES-200 code is prefixed to the text, without a space,
    /// as Immich does.
    pub fn encode(&self, text: &str, language: Option<&str>) -> Result<TextInput, ClipError> {
        let mut text = clean_text(text, self.canonicalize);
        if self.nllb && !self.mclip {
            if let Some(language) = language {
                text.insert_str(0, flores_code(language));
            }
        }
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ClipError::Encode(e.to_string()))?;
        let to_i32 = |values: &[u32]| -> Result<Vec<i32>, ClipError> {
            values
                .iter()
                .map(|&v| {
                    i32::try_from(v)
                        .map_err(|_| ClipError::Encode(format!("token id {v} exceeds int32")))
                })
                .collect()
        };
        let input = TextInput {
            input_ids: to_i32(encoding.get_ids())?,
            attention_mask: to_i32(encoding.get_attention_mask())?,
        };
        if input.input_ids.len() != self.context_length
            || input.attention_mask.len() != self.context_length
        {
            return Err(ClipError::Encode(format!(
                "{} tokens after padding, not the context length {}",
                input.input_ids.len(),
                self.context_length
            )));
        }
        Ok(input)
    }
}

/// `config.json`'s `text_cfg`: the context length and whether to canonicalise.
fn text_config(text: &str) -> Result<(usize, bool), ClipError> {
    let bad = ClipError::ModelConfig;
    let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let text_cfg = value.get("text_cfg").filter(|v| !v.is_null());
    let context_length = match text_cfg
        .and_then(|cfg| cfg.get("context_length"))
        .filter(|v| !v.is_null())
    {
        None => DEFAULT_CONTEXT_LENGTH,
        Some(length) => length
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_CONTEXT_LENGTH).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "context_length {length} is not an integer from 1 to {MAX_CONTEXT_LENGTH}"
                ))
            })?,
    };
    let canonicalize = text_cfg
        .and_then(|cfg| cfg.get("tokenizer_kwargs"))
        .and_then(|kwargs| kwargs.get("clean"))
        .and_then(Value::as_str)
        == Some("canonicalize");
    Ok((context_length, canonicalize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 41×29 image whose pixels follow a formula (the same in the generator).
    fn pattern() -> RgbImage {
        RgbImage::from_fn(41, 29, |x, y| {
            image::Rgb([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * x + 3 * y) % 256) as u8,
                ((x * y * 7 + 5) % 256) as u8,
            ])
        })
    }

    /// Bytes Pillow 10.4 gives for `pattern().resize(...)` (made with Immich's Pillow in
    /// .cache/immich-venv): the resize is Pillow's to the byte.
    #[test]
    fn pil_resize_matches_pillow_to_the_byte() {
        let bicubic: [u8; 189] = [
            100, 9, 28, 131, 45, 83, 136, 134, 97, 111, 121, 110, 130, 126, 95, 140, 124, 112, 117,
            114, 124, 126, 105, 164, 141, 141, 50, 136, 21, 85, 119, 57, 142, 143, 146, 134, 125,
            135, 135, 113, 139, 131, 138, 137, 137, 123, 126, 133, 119, 119, 147, 160, 108, 111,
            151, 34, 100, 113, 70, 137, 126, 158, 136, 141, 129, 139, 117, 130, 129, 125, 132, 134,
            139, 140, 132, 114, 133, 123, 136, 106, 134, 147, 46, 108, 130, 82, 132, 113, 168, 144,
            134, 106, 141, 125, 130, 124, 117, 109, 137, 144, 125, 130, 128, 150, 127, 116, 121,
            120, 114, 58, 103, 142, 95, 140, 118, 177, 131, 125, 111, 144, 143, 147, 152, 117, 117,
            121, 125, 131, 125, 139, 141, 128, 104, 126, 125, 102, 71, 108, 132, 109, 125, 129,
            175, 128, 114, 88, 124, 140, 150, 131, 131, 131, 115, 120, 115, 120, 136, 104, 124,
            116, 130, 141, 113, 83, 115, 125, 121, 142, 144, 187, 140, 120, 103, 133, 121, 123,
            115, 140, 135, 119, 116, 122, 134, 132, 115, 130, 153, 143, 133,
        ];
        let lanczos: [u8; 195] = [
            67, 9, 23, 183, 24, 87, 81, 61, 107, 166, 120, 105, 95, 191, 108, 141, 61, 123, 124,
            159, 97, 114, 121, 119, 158, 133, 121, 92, 109, 121, 171, 104, 164, 74, 117, 140, 189,
            139, 32, 149, 26, 75, 135, 41, 143, 102, 78, 141, 166, 139, 139, 84, 197, 137, 180, 74,
            141, 74, 166, 130, 175, 116, 129, 79, 158, 146, 162, 126, 136, 108, 120, 119, 130, 135,
            144, 153, 86, 122, 184, 44, 97, 78, 59, 132, 177, 94, 135, 86, 167, 137, 153, 171, 147,
            110, 64, 140, 127, 163, 127, 144, 91, 129, 96, 124, 140, 173, 130, 127, 80, 147, 124,
            183, 156, 127, 74, 102, 118, 105, 62, 88, 119, 77, 135, 148, 111, 127, 93, 188, 132,
            172, 137, 120, 75, 77, 148, 183, 182, 147, 81, 115, 123, 172, 124, 113, 92, 123, 125,
            148, 127, 130, 120, 123, 122, 105, 128, 137, 72, 79, 104, 177, 94, 138, 80, 127, 133,
            163, 207, 134, 108, 111, 142, 136, 100, 117, 128, 146, 120, 109, 106, 112, 161, 159,
            126, 88, 108, 130, 180, 104, 124, 76, 123, 135, 183, 147, 137,
        ];
        assert_eq!(
            pil_resize(&pattern(), 9, 7, Interpolation::Bicubic).into_raw(),
            bicubic.to_vec()
        );
        assert_eq!(
            pil_resize(&pattern(), 13, 5, Interpolation::Lanczos).into_raw(),
            lanczos.to_vec()
        );
    }
}
