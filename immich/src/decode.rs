//! An uploaded image to RGB pixels, as Immich's server does it (PIL open, convert to
//! RGB, no EXIF rotation), refusing what is not an image, is cut short, or would
//! decode to more pixels than allowed (a decompression bomb) before decoding it.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, RgbImage};

/// Most pixels an image may have by default: 100 megapixels, above any camera's
/// original and far above Immich's 1440 px previews; PIL's own bomb limit is 179 M.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is not in a format herd can read (JPEG, PNG, WebP, BMP, GIF, TIFF)")]
    UnknownFormat,
    #[error("the image is {width}x{height} pixels, more than the {limit} pixels allowed")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
}

/// The image's size from its header alone, without decoding the pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    reader(bytes)?
        .into_dimensions()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))
}

/// Decodes `bytes` to RGB, checking the size its header states against `max_pixels`
/// first.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let (width, height) = dimensions(bytes)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let mut reader = reader(bytes)?;
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Corrupt(
            "the JPEG is cut short (no end-of-image marker after its last scan)".into(),
        ));
    }
    // A second guard inside the decoder: what it allocates is bounded too (an
    // animated or layered file can state one size and hold more).
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    Ok(image.into_rgb8())
}

/// PIL refuses a JPEG cut short ("image file is truncated"), where the decoder under
/// `image` fills the missing rows with grey. Entropy-coded data stuffs every 0xFF, so
/// the last start-of-scan marker is the image's last scan (an EXIF thumbnail's markers
/// come before it), and a whole file has the end-of-image marker after it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xFF, 0xDA];
    const EOI: [u8; 2] = [0xFF, 0xD9];
    bytes
        .windows(2)
        .rposition(|w| w == SOS)
        .is_some_and(|scan| bytes[scan..].windows(2).any(|w| w == EOI))
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    }

    #[test]
    fn decodes_an_image_to_rgb() {
        let img = decode_rgb(&png(5, 3), DEFAULT_MAX_PIXELS).expect("decoded");
        assert_eq!(img.dimensions(), (5, 3));
        assert_eq!(img.get_pixel(4, 2).0, [4, 2, 7]);
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        assert_eq!(
            decode_rgb(b"hello, not an image", DEFAULT_MAX_PIXELS),
            Err(DecodeError::UnknownFormat)
        );
    }

    #[test]
    fn refuses_a_truncated_image() {
        let bytes = png(64, 64);
        let cut = &bytes[..bytes.len() / 2];
        assert!(matches!(
            decode_rgb(cut, DEFAULT_MAX_PIXELS),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn refuses_a_jpeg_cut_short_but_reads_a_whole_one() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).expect("jpeg");
        let bytes = out.into_inner();
        assert_eq!(
            decode_rgb(&bytes, DEFAULT_MAX_PIXELS)
                .expect("whole")
                .dimensions(),
            (64, 48)
        );
        // Bytes after the end-of-image marker are tolerated, as PIL does.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing bytes");
        assert!(decode_rgb(&trailing, DEFAULT_MAX_PIXELS).is_ok());
        for cut in [bytes.len() - 2, bytes.len() * 3 / 4, bytes.len() / 2] {
            assert!(
                matches!(
                    decode_rgb(&bytes[..cut], DEFAULT_MAX_PIXELS),
                    Err(DecodeError::Corrupt(_))
                ),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn refuses_too_many_pixels_from_the_header() {
        let err = decode_rgb(&png(100, 100), 9_999).expect_err("too large");
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width: 100,
                height: 100,
                limit: 9_999
            }
        );
    }
}
