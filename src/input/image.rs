//! PNG / JPEG files into a [`RawImage`]: 8-bit grey stays 1-channel u8, 16-bit grey (PNG)
//! stays u16 with the full `[0, 65535]` window, everything else (RGB, RGBA, grey + alpha,
//! palette) becomes 8-bit RGB (alpha dropped, no compositing).
//!
//! PNG goes through the `image` crate, JPEG through `zune-jpeg` in strict mode (the `image`
//! crate's JPEG decoder is lenient: a truncated or corrupted JPEG decodes to a grey-filled
//! image without an error). Both under [`InputLimits`]: the dimensions from the header are
//! checked against [`InputLimits::max_pixels`] and the decoded size against
//! [`InputLimits::max_alloc_bytes`] before the pixels are allocated.
//!
//! A truncated JPEG is always an error. JPEG carries no checksum, so corruption inside the
//! scan data is an error only where it breaks the syntax (an invalid Huffman code, a stray
//! marker, data that end early); a corrupted byte that still decodes gives a wrong image, as
//! with any JPEG reader. PNG chunks are CRC-checked by the decoder.

use super::{InputLimits, RawImage, bad_file};
use crate::error::Result;
use crate::ops::PixelRange;
use crate::tensor::HostTensor;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::path::Path;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Decodes the image file at `path` (format from its content, not its extension) under the
/// default [`InputLimits`].
pub fn read(path: &Path) -> Result<RawImage> {
    read_with(path, &InputLimits::default())
}

/// [`read`] under the caller's limits. The file is read once.
pub fn read_with(path: &Path, limits: &InputLimits) -> Result<RawImage> {
    let bytes = super::read_file(path, limits.max_file_bytes)?;
    from_bytes(&bytes, path, limits)
}

/// Decodes an in-memory PNG / JPEG (`name` is used in messages) under the default
/// [`InputLimits`].
pub fn decode(bytes: &[u8], name: &str) -> Result<RawImage> {
    from_bytes(bytes, Path::new(name), &InputLimits::default())
}

/// Decodes an in-memory PNG / JPEG under `limits` (`path` names it in messages).
pub fn from_bytes(bytes: &[u8], path: &Path, limits: &InputLimits) -> Result<RawImage> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => decode_jpeg(bytes, path, limits),
        Ok(ImageFormat::Png) => decode_png(bytes, path, limits),
        _ => Err(bad_file(
            path,
            "not a PNG, JPEG or DICOM file (unrecognised content); expected a PNG or JPEG image \
             or a DICOM file with the DICM preamble",
        )),
    }
}

/// Checks `width × height` (and the decoded bytes at `bytes_per_pixel`) against `limits`.
fn check_size(
    path: &Path,
    (w, h): (u64, u64),
    bytes_per_pixel: u64,
    limits: &InputLimits,
) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(bad_file(
            path,
            format!("image is {w}x{h}; expected at least 1x1"),
        ));
    }
    let pixels = w.saturating_mul(h);
    if pixels > limits.max_pixels {
        return Err(bad_file(
            path,
            format!(
                "image is {w}x{h} = {pixels} pixels, more than the limit of {} \
                 (InputLimits::max_pixels)",
                limits.max_pixels
            ),
        ));
    }
    let bytes = pixels.saturating_mul(bytes_per_pixel);
    if bytes > limits.max_alloc_bytes {
        return Err(bad_file(
            path,
            format!(
                "image is {w}x{h} at {bytes_per_pixel} byte(s) per pixel = {bytes} bytes \
                 decoded, more than the limit of {} (InputLimits::max_alloc_bytes)",
                limits.max_alloc_bytes
            ),
        ));
    }
    Ok(())
}

fn decode_png(bytes: &[u8], path: &Path, limits: &InputLimits) -> Result<RawImage> {
    let cannot = |e: image::ImageError| bad_file(path, format!("cannot decode the image: {e}"));
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), ImageFormat::Png);
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(l);
    let decoder = reader.into_decoder().map_err(cannot)?;
    let (w, h) = decoder.dimensions();
    check_size(
        path,
        (u64::from(w), u64::from(h)),
        u64::from(decoder.color_type().bytes_per_pixel()),
        limits,
    )?;
    let img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    from_dynamic(img, &path.display().to_string())
}

fn decode_jpeg(bytes: &[u8], path: &Path, limits: &InputLimits) -> Result<RawImage> {
    let cannot = |e: zune_jpeg::errors::DecodeErrors| {
        bad_file(
            path,
            format!("cannot decode the image: JPEG: {e:?} (a truncated or corrupted JPEG)"),
        )
    };
    // The largest side the pixel limit allows (a JPEG side is at most 65535).
    let side = usize::try_from(limits.max_pixels)
        .unwrap_or(usize::MAX)
        .min(65535);
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(side)
        .set_max_height(side);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    dec.decode_headers().map_err(cannot)?;
    let (Some((w, h)), Some(input)) = (dec.dimensions(), dec.input_colorspace()) else {
        return Err(bad_file(
            path,
            "cannot decode the image: JPEG headers without dimensions",
        ));
    };
    let grey = matches!(input, ColorSpace::Luma | ColorSpace::LumaA);
    let (out, channels) = if grey {
        (ColorSpace::Luma, 1)
    } else {
        (ColorSpace::RGB, 3)
    };
    check_size(path, (w as u64, h as u64), channels as u64, limits)?;
    if let Some(blocks) = frame_blocks(bytes)
        && (bytes.len() as u64).saturating_mul(8) < blocks
    {
        return Err(bad_file(
            path,
            format!(
                "cannot decode the image: JPEG frame of {w}x{h} has {blocks} 8x8 blocks, each \
                 coding at least one bit, but the file has only {} bytes (a truncated scan \
                 or a forged frame size)",
                bytes.len()
            ),
        ));
    }
    dec.set_options((*dec.options()).jpeg_set_out_colorspace(out));
    let pixels = dec.decode().map_err(cannot)?;
    if pixels.len() != w * h * channels {
        return Err(bad_file(
            path,
            format!(
                "cannot decode the image: JPEG decoded to {} bytes; expected {w}x{h}x{channels}",
                pixels.len()
            ),
        ));
    }
    Ok(RawImage {
        pixels: HostTensor::new(&[1, h, w, channels], pixels)?,
        range: PixelRange::Scale(255.0),
        source: path.display().to_string(),
    })
}

/// The number of 8×8 blocks in the frame of a Huffman-coded JPEG (from its SOF header), or
/// None (arithmetic coding, or no frame header before the first scan). Each block of each
/// component codes at least one Huffman symbol (its DC difference, in baseline and
/// progressive JPEG alike), so a file of fewer than `blocks / 8` bytes cannot hold the image.
/// Checked because zune-jpeg, even in strict mode, pads a scan that ends at an EOI marker
/// with zero bits and returns a mostly grey image: a 700-byte file whose header claims
/// 8000×8000 decoded to 192 MB of grey and classified with exit 0.
fn frame_blocks(bytes: &[u8]) -> Option<u64> {
    let be16 = |at: usize| -> Option<u64> {
        Some(u64::from(u16::from_be_bytes([
            *bytes.get(at)?,
            *bytes.get(at + 1)?,
        ])))
    };
    let mut at = 2; // after SOI
    loop {
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1; // fill bytes
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        let len = usize::try_from(be16(at + 2)?).ok()?;
        match marker {
            // The Huffman-coded frames, SOF0..SOF7 (C4 is DHT). Arithmetic coding (SOF9..)
            // can code a block in less than a bit: no bound.
            0xC0..=0xC7 if marker != 0xC4 => {
                let seg = at + 4;
                let (h, w) = (be16(seg + 1)?, be16(seg + 3)?);
                let n = usize::from(*bytes.get(seg + 5)?);
                let factors: Vec<(u64, u64)> = (0..n)
                    .map(|c| {
                        let hv = *bytes.get(seg + 6 + 3 * c + 1)?;
                        Some((u64::from(hv >> 4).max(1), u64::from(hv & 15).max(1)))
                    })
                    .collect::<Option<_>>()?;
                let hmax = factors.iter().map(|f| f.0).max()?;
                let vmax = factors.iter().map(|f| f.1).max()?;
                // A component's size is the frame's scaled by its sampling factors (T.81
                // A.1.1), rounded up, in blocks of 8×8.
                return Some(
                    factors
                        .iter()
                        .map(|&(hc, vc)| {
                            (w * hc).div_ceil(hmax).div_ceil(8)
                                * (h * vc).div_ceil(vmax).div_ceil(8)
                        })
                        .sum(),
                );
            }
            0xC9..=0xCF if marker != 0xCC => return None,
            0xDA | 0xD9 => return None, // SOS or EOI before a frame header
            _ => at += 2 + len,
        }
    }
}

/// Converts an already decoded image (without copying 8-bit grey, 16-bit grey or 8-bit RGB).
pub fn from_dynamic(img: DynamicImage, source: &str) -> Result<RawImage> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(bad_file(
            Path::new(source),
            format!("image is {w}x{h}; expected at least 1x1"),
        ));
    }
    let (pixels, range) = match img {
        DynamicImage::ImageLuma8(g) => (
            HostTensor::new(&[1, h, w, 1], g.into_raw())?,
            PixelRange::Scale(255.0),
        ),
        DynamicImage::ImageLuma16(g) => (
            HostTensor::new(&[1, h, w, 1], g.into_raw())?,
            PixelRange::Window {
                lo: 0.0,
                hi: 65535.0,
            },
        ),
        other => (
            HostTensor::new(&[1, h, w, 3], other.into_rgb8().into_raw())?,
            PixelRange::Scale(255.0),
        ),
    };
    Ok(RawImage {
        pixels,
        range,
        source: source.to_string(),
    })
}
