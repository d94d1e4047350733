//! PNG / JPEG files through the `image` crate into a [`RawImage`]: 8-bit grey stays 1-channel
//! u8, 16-bit grey (PNG) stays u16 with the full `[0, 65535]` window, everything else
//! (RGB, RGBA, grey + alpha, palette) becomes 8-bit RGB (alpha dropped, no compositing).

use super::{RawImage, bad_file, io_error};
use crate::error::Result;
use crate::ops::PixelRange;
use crate::tensor::HostTensor;
use image::{DynamicImage, ImageReader};
use std::path::Path;

/// Decodes the image file at `path` (format from its content, not its extension).
pub fn read(path: &Path) -> Result<RawImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    if reader.format().is_none() {
        return Err(bad_file(
            path,
            "not a PNG, JPEG or DICOM file (unrecognised content); expected a PNG or JPEG image \
             or a DICOM file with the DICM preamble",
        ));
    }
    let img = reader
        .decode()
        .map_err(|e| bad_file(path, format!("cannot decode the image: {e}")))?;
    from_dynamic(img, &path.display().to_string())
}

/// Decodes an in-memory PNG / JPEG (`name` is used in messages).
pub fn decode(bytes: &[u8], name: &str) -> Result<RawImage> {
    let p = Path::new(name);
    if image::guess_format(bytes).is_err() {
        return Err(bad_file(
            p,
            "not a PNG, JPEG or DICOM file (unrecognised content); expected a PNG or JPEG image \
             or a DICOM file with the DICM preamble",
        ));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| bad_file(p, format!("cannot decode the image: {e}")))?;
    from_dynamic(img, name)
}

/// Converts an already decoded image.
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
            HostTensor::new(&[1, h, w, 3], other.to_rgb8().into_raw())?,
            PixelRange::Scale(255.0),
        ),
    };
    Ok(RawImage {
        pixels,
        range,
        source: source.to_string(),
    })
}
