//! Reading medical images from files into host tensors, then into normalised NHWC tensors on
//! a [`Device`] through [`ops::preprocess()`] (one kernel on a GPU: value map, bilinear resize,
//! per-channel normalisation, grey → 3 channels).
//!
//! - [`image`]: PNG / JPEG through the `image` crate (8-bit grey or RGB; 16-bit grey PNG kept
//!   at 16 bits).
//! - [`dicom`]: chest X-ray DICOM (uncompressed little-endian transfer syntaxes, MONOCHROME1/2,
//!   rescale slope/intercept, VOI window from the file or the caller).
//!
//! [`load`] picks the reader from the file's content (the `DICM` magic at byte 128), not its
//! name.

pub mod dicom;
pub mod image;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, PixelRange, Preprocess};
use crate::tensor::{Device, HostTensor, Tensor};
use std::path::Path;

pub(crate) const OP: &str = "input";

/// One decoded image on the host, ready for [`ops::preprocess()`]: `pixels` is u8
/// `[1, H, W, C]` (C = 1 grey or 3 RGB) or u16 `[1, H, W, 1]`, and `range` maps its raw values
/// to `[0, 1]` display values (`Scale(255)` for u8, a window for u16).
#[derive(Clone, Debug)]
pub struct RawImage {
    pub pixels: HostTensor,
    pub range: PixelRange,
    /// The file it came from (for messages and reports).
    pub source: String,
}

impl RawImage {
    /// `(H, W)`.
    pub fn size(&self) -> (usize, usize) {
        let s = self.pixels.shape();
        (s[1], s[2])
    }
    /// Channels of the raw pixels (1 or 3).
    pub fn channels(&self) -> usize {
        self.pixels.shape()[3]
    }

    /// Uploads the raw pixels to `device` and preprocesses them into `[1, out_h, out_w, 3]` of
    /// `dtype`: display values in [0, 1] (see [`RawImage::range`]), bilinear resize to
    /// `out_size`, then `(t − mean[c]) / std[c]` with ImageNet's statistics; grey images are
    /// repeated over the 3 channels (what ImageNet-initialised CNNs expect).
    pub fn to_model_input(
        &self,
        device: &Device,
        out_size: (usize, usize),
        dtype: DType,
    ) -> Result<Tensor> {
        self.preprocess(
            device,
            &Preprocess {
                out_size,
                range: self.range,
                mean: &ops::preprocess::IMAGENET_MEAN,
                std: &ops::preprocess::IMAGENET_STD,
                grey_to_rgb: self.channels() == 1,
            },
            dtype,
        )
    }

    /// The central square of the image (side `min(H, W)`), as ImageNet evaluation crops
    /// before resizing so that objects keep their aspect ratio.
    pub fn center_crop_square(&self) -> Result<RawImage> {
        let (h, w) = self.size();
        let c = self.channels();
        let side = h.min(w);
        let (top, left) = ((h - side) / 2, (w - side) / 2);
        let elem = self.pixels.dtype().size();
        let row = w * c * elem;
        let bytes = self.pixels.bytes();
        let mut out = Vec::with_capacity(side * side * c * elem);
        for y in top..top + side {
            let start = y * row + left * c * elem;
            out.extend_from_slice(&bytes[start..start + side * c * elem]);
        }
        let shape = [1, side, side, c];
        let pixels = match self.pixels.dtype() {
            DType::U16 => HostTensor::new(
                &shape,
                out.chunks_exact(2)
                    .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                    .collect::<Vec<u16>>(),
            )?,
            _ => HostTensor::new(&shape, out)?,
        };
        Ok(RawImage {
            pixels,
            range: self.range,
            source: self.source.clone(),
        })
    }

    /// [`ops::preprocess()`] of this image on `device` with the caller's parameters (its
    /// `range` replaces `p.range`).
    pub fn preprocess(&self, device: &Device, p: &Preprocess, dtype: DType) -> Result<Tensor> {
        let x = self.pixels.to_device(device)?;
        ops::preprocess(
            &x,
            &Preprocess {
                range: self.range,
                ..*p
            },
            dtype,
        )
    }
}

/// Reads a PNG, JPEG or DICOM file (chosen by content) with the file's own DICOM window, if
/// any.
pub fn load(path: &Path) -> Result<RawImage> {
    if dicom::is_dicom(path)? {
        Ok(dicom::read(path, &dicom::DicomOptions::default())?.into_raw())
    } else {
        image::read(path)
    }
}

pub(crate) fn bad_file(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Invalid {
        op: OP,
        arg: "file",
        detail: format!("{}: {detail}", path.display()),
    }
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        op: OP,
        path: path.display().to_string(),
        source: e,
    }
}
