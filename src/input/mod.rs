//! Reading medical images from files into host tensors, then into normalised NHWC tensors on
//! a [`Device`] through [`ops::preprocess()`] (one kernel on a GPU: value map, bilinear resize,
//! per-channel normalisation, grey → 3 channels).
//!
//! - `image` (Cargo feature `image`): PNG / JPEG through the `image` crate (8-bit grey or RGB;
//!   16-bit grey PNG kept at 16 bits).
//! - `dicom` (Cargo feature `dicom`): chest X-ray DICOM (uncompressed little-endian transfer
//!   syntaxes, MONOCHROME1/2, rescale slope/intercept, VOI window from the file or the caller).
//!
//! [`load`] picks the reader from the file's content (the `DICM` magic at byte 128), not its
//! name; a file whose reader this build lacks is an error naming the missing feature.
//!
//! # Resource limits
//!
//! Every reader enforces an [`InputLimits`] before the allocation it guards, so that a small
//! hostile file cannot make it allocate gigabytes, recurse without bound or hang:
//!
//! | limit | default | guards |
//! |---|---|---|
//! | [`InputLimits::max_file_bytes`] | 1 GiB | the bytes read from one file (read once, whole) |
//! | [`InputLimits::max_pixels`] | 64 Mpixel (64·2^20) | width × height of a PNG/JPEG, checked from its header before decoding |
//! | [`InputLimits::max_alloc_bytes`] | 256 MiB | what the PNG/JPEG decoder may allocate |
//! | [`InputLimits::max_dicom_depth`] | 64 | nesting of DICOM sequences (checked before parsing) |
//! | [`InputLimits::max_batch`] | 4096 | images in one batch call (C ABI, CLI); the models' own limit, [`DEFAULT_MAX_BATCH`], bounds their batches |
//!
//! A DICOM element whose declared length exceeds the bytes left in the file is always an error
//! (before anything is allocated for it). Only regular files are opened: a folder, FIFO,
//! socket or device is an error, not a hang. The `*_with` functions take the limits; the others
//! use [`InputLimits::default`].

#[cfg(feature = "dicom")]
pub mod dicom;
#[cfg(feature = "image")]
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
    /// before resizing so that objects keep their aspect ratio. Made in place (the image is
    /// taken, not copied: [`HostTensor::crop_nhwc`]); a square image comes back as it is.
    pub fn center_crop_square(self) -> Result<RawImage> {
        let (h, w) = self.size();
        if h == w {
            return Ok(self);
        }
        let side = h.min(w);
        let (top, left) = ((h - side) / 2, (w - side) / 2);
        Ok(RawImage {
            pixels: self.pixels.crop_nhwc(top, left, side, side)?,
            range: self.range,
            source: self.source,
        })
    }

    /// The image as a model sees it before normalisation: `[1, out_h, out_w, 3]` f32 display
    /// values in [0, 1] on `device` (this image's range, i.e. a DICOM's window; the same
    /// bilinear resize; grey repeated over 3 channels). Pictures drawn over a model's input
    /// (class activation maps) use it as background, so a DICOM shows through the window the
    /// model was given.
    pub fn display(&self, device: &Device, out_size: (usize, usize)) -> Result<Tensor> {
        self.preprocess(
            device,
            &Preprocess {
                out_size,
                range: self.range,
                mean: &[0.0; 3],
                std: &[1.0; 3],
                grey_to_rgb: self.channels() == 1,
            },
            DType::F32,
        )
    }

    /// [`ops::preprocess()`] of this image on `device` with the caller's parameters (its
    /// `range` replaces `p.range`).
    /// On the CPU the pixels are read where they are (no copy of the image).
    pub fn preprocess(&self, device: &Device, p: &Preprocess, dtype: DType) -> Result<Tensor> {
        let p = Preprocess {
            range: self.range,
            ..*p
        };
        match device {
            Device::Cpu => Ok(Tensor::Host(ops::preprocess::preprocess_host(
                &self.pixels,
                &p,
                dtype,
            )?)),
            Device::Gpu(_) => ops::preprocess(&self.pixels.to_device(device)?, &p, dtype),
        }
    }
}

/// Resource limits of the readers (see the module docs for the defaults and what each guards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// The largest file read, in bytes.
    pub max_file_bytes: u64,
    /// The largest PNG/JPEG, in pixels (width × height).
    pub max_pixels: u64,
    /// The most the PNG/JPEG decoder may allocate, in bytes.
    pub max_alloc_bytes: u64,
    /// The deepest nesting of DICOM sequences (a sequence inside an item of a sequence is depth
    /// 2). The data set is checked without recursion before it is parsed, so a deeper file is
    /// an error rather than a stack overflow in the parser.
    pub max_dicom_depth: usize,
    /// The most images (or files) one batch call takes, checked before anything is read or
    /// allocated for them (the C ABI's `mk_image_classify_u8`, the CLI's file lists).
    pub max_batch: usize,
}

impl InputLimits {
    /// Default [`InputLimits::max_file_bytes`]: 1 GiB.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;
    /// Default [`InputLimits::max_pixels`]: 64 Mpixel.
    pub const DEFAULT_MAX_PIXELS: u64 = 64 << 20;
    /// Default [`InputLimits::max_alloc_bytes`]: 256 MiB.
    pub const DEFAULT_MAX_ALLOC_BYTES: u64 = 256 << 20;
    /// Default [`InputLimits::max_dicom_depth`]: 64 (radiographs nest a few levels; the parser
    /// recurses once per level, and 64 levels stay well inside a 2 MiB thread stack).
    pub const DEFAULT_MAX_DICOM_DEPTH: usize = 64;
    /// Default [`InputLimits::max_batch`]: [`DEFAULT_MAX_BATCH`].
    pub const DEFAULT_MAX_BATCH: usize = DEFAULT_MAX_BATCH;
}

/// The default batch limit of every batch entry point (texts of a BERT call, images of a CNN
/// or EXAM call, [`InputLimits::max_batch`]): 4096 items, well past a useful GPU batch, and
/// far below what a count read from a request could ask for.
pub const DEFAULT_MAX_BATCH: usize = 4096;

/// An [`Error::Invalid`] of `op` naming the limit and the count when a batch of `n` items
/// (`arg`: "texts", "images"...) exceeds `max`. Called before anything is allocated for them,
/// so that a count from a request cannot make a call allocate without bound.
pub fn check_batch(op: &'static str, arg: &'static str, n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(Error::Invalid {
            op,
            arg,
            detail: format!("{n} in one batch; expected at most {max} (the max_batch limit)"),
        });
    }
    Ok(())
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_alloc_bytes: Self::DEFAULT_MAX_ALLOC_BYTES,
            max_dicom_depth: Self::DEFAULT_MAX_DICOM_DEPTH,
            max_batch: Self::DEFAULT_MAX_BATCH,
        }
    }
}

/// Reads a PNG, JPEG or DICOM file (chosen by content) with the file's own DICOM window, if
/// any, under the default [`InputLimits`].
pub fn load(path: &Path) -> Result<RawImage> {
    load_with(path, &InputLimits::default())
}

/// [`load`] under the caller's limits. The file is read once.
///
/// A DICOM file in a build without the `dicom` feature, or any other file in a build without
/// the `image` feature, is an [`Error::Invalid`] saying which feature is missing.
pub fn load_with(path: &Path, limits: &InputLimits) -> Result<RawImage> {
    let bytes = read_file(path, limits.max_file_bytes)?;
    decode(&bytes, path, limits)
}

/// Decodes a PNG, JPEG or DICOM image (chosen by content) already in memory, under `limits`
/// (the byte count included); `name` stands for the file in messages (an upload has none).
/// Without the `dicom` or `image` feature, the format it needs is an [`Error::Invalid`].
pub fn decode(bytes: &[u8], name: &Path, limits: &InputLimits) -> Result<RawImage> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::Corrupt {
            op: OP,
            arg: "file",
            detail: format!(
                "{}: file has {} bytes, more than the limit of {} for PNG, JPEG or DICOM \
                 (InputLimits::max_file_bytes)",
                name.display(),
                bytes.len(),
                limits.max_file_bytes
            ),
        });
    }
    if has_dicom_magic(bytes) {
        #[cfg(feature = "dicom")]
        {
            let opts = dicom::DicomOptions {
                limits: *limits,
                ..Default::default()
            };
            Ok(dicom::from_bytes(bytes, name, &opts)?.into_raw())
        }
        #[cfg(not(feature = "dicom"))]
        Err(crate::error::feature_missing(
            OP,
            &format!("{}: reading a DICOM file", name.display()),
            "dicom",
        ))
    } else {
        #[cfg(feature = "image")]
        {
            image::from_bytes(bytes, name, limits)
        }
        #[cfg(not(feature = "image"))]
        Err(crate::error::feature_missing(
            OP,
            &format!("{}: decoding a PNG/JPEG image", name.display()),
            "image",
        ))
    }
}

/// True when `bytes` carry the DICOM magic `DICM` at byte 128 (`dicom::has_dicom_magic`, also
/// in builds without the `dicom` feature).
pub(crate) fn has_dicom_magic(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM".as_slice())
}

/// What a path that is not a regular file is, for messages.
fn file_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
    }
    if ft.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// The metadata of `path` when it is a regular file (following links); an error naming what
/// it is otherwise.
#[cfg(feature = "dicom")]
pub(crate) fn check_regular_file(path: &Path) -> Result<std::fs::Metadata> {
    check_regular(OP, path, "PNG, JPEG or DICOM")
}

/// [`check_regular_file`] for any file: `op` names the caller, `what` the content expected.
fn check_regular(op: &'static str, path: &Path, what: &str) -> Result<std::fs::Metadata> {
    let not_regular = |detail: String| Error::Corrupt {
        op,
        arg: "file",
        detail: format!("{}: {detail}", path.display()),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if link {
                return Err(not_regular(format!(
                    "is a symbolic link that cannot be followed (dangling, or a loop): {e}; \
                     expected a regular file ({what})"
                )));
            }
            return Err(Error::Io {
                op,
                path: path.display().to_string(),
                source: e,
            });
        }
    };
    if !meta.is_file() {
        return Err(not_regular(format!(
            "is {}; expected a regular file ({what})",
            file_kind(&meta.file_type())
        )));
    }
    Ok(meta)
}

/// Reads a whole file that must be a regular file: a model's weights, config or tokenizer, an
/// EMR record, sample sentences. A FIFO would block the read forever and a device such as
/// /dev/zero would fill memory until the process dies, so anything else is an error naming
/// what the path is, before it is opened (as [`read_file`] does for images). `op` names the
/// caller in messages and `what` the content expected ("a safetensors checkpoint").
///
/// The file may hold at most [`max_model_file_bytes`] bytes (default
/// [`DEFAULT_MAX_MODEL_FILE_BYTES`]), checked before anything is allocated for it.
pub fn read_regular(op: &'static str, path: &Path, what: &str) -> Result<Vec<u8>> {
    read_regular_max(op, path, what, max_model_file_bytes())
}

/// Default of [`max_model_file_bytes`]: 2 GiB, above the largest checkpoint of the model
/// families medkern runs (BERT-large in f32, 1.3 GB).
pub const DEFAULT_MAX_MODEL_FILE_BYTES: u64 = 2 << 30;

static MAX_MODEL_FILE_BYTES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_MODEL_FILE_BYTES);

/// The largest file [`read_regular`] reads: model weights, `config.json`, `tokenizer.json`,
/// EMR records, sentence files (images have [`InputLimits::max_file_bytes`]). A process-wide
/// setting, as the files are read by loaders that take only a path; a caller who needs a
/// per-call limit reads the bytes itself and uses the loaders' `from_safetensors`/`from_bytes`.
pub fn max_model_file_bytes() -> u64 {
    MAX_MODEL_FILE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets [`max_model_file_bytes`] for the whole process (0: back to the default). The CLI's
/// `--max-model-bytes` and the C ABI's `mk_set_max_model_file_bytes` set it.
pub fn set_max_model_file_bytes(bytes: u64) {
    let v = if bytes == 0 {
        DEFAULT_MAX_MODEL_FILE_BYTES
    } else {
        bytes
    };
    MAX_MODEL_FILE_BYTES.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The bytes of a model's weights file: mapped read-only ([`map_regular`]), or read when the
/// file is empty (an empty file cannot be mapped).
pub enum ModelBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for ModelBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Read(v) => v,
        }
    }
}

/// [`read_regular`]'s checks (a regular file, at most [`max_model_file_bytes`]), then the file
/// mapped read-only instead of read: a checkpoint is converted from the page cache without a
/// second copy of it on the heap. The file must not be truncated or rewritten while mapped
/// (as with any mapping, the process would then see the new bytes or a bus error).
pub fn map_regular(op: &'static str, path: &Path, what: &str) -> Result<ModelBytes> {
    let max = max_model_file_bytes();
    let io = |e: std::io::Error| Error::Io {
        op,
        path: path.display().to_string(),
        source: e,
    };
    check_regular(op, path, what)?;
    let f = std::fs::File::open(path).map_err(io)?;
    // The opened file itself is checked: the path may have changed since.
    let meta = f.metadata().map_err(io)?;
    let detail = if !meta.is_file() {
        format!("is not a regular file once opened; expected a regular file ({what})")
    } else if meta.len() > max {
        format!(
            "file has {} bytes, more than the limit of {max} for {what} \
             (input::set_max_model_file_bytes, --max-model-bytes, mk_set_max_model_file_bytes)",
            meta.len()
        )
    } else {
        String::new()
    };
    if !detail.is_empty() {
        return Err(Error::Corrupt {
            op,
            arg: "file",
            detail: format!("{}: {detail}", path.display()),
        });
    }
    if meta.len() == 0 {
        return Ok(ModelBytes::Read(Vec::new()));
    }
    // SAFETY: a read-only mapping of a regular file opened read-only, owned by the returned
    // value and only read through it; the documented condition (the file is not modified
    // while mapped) is the caller's, as for every loader that maps weights.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(ModelBytes::Mapped(map))
}

/// [`read_regular`] with the limit given.
pub(crate) fn read_regular_max(
    op: &'static str,
    path: &Path,
    what: &str,
    max_bytes: u64,
) -> Result<Vec<u8>> {
    read_bounded(
        op,
        path,
        what,
        max_bytes,
        "input::set_max_model_file_bytes, --max-model-bytes, mk_set_max_model_file_bytes",
    )
}

/// Reads a whole regular file of at most `max_bytes` bytes, checked before anything is
/// allocated for it (and again while reading: the file may grow in between). `limit` names
/// where the limit is set, for the message.
fn read_bounded(
    op: &'static str,
    path: &Path,
    what: &str,
    max_bytes: u64,
    limit: &str,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = check_regular(op, path, what)?;
    let corrupt = |detail: String| Error::Corrupt {
        op,
        arg: "file",
        detail: format!("{}: {detail}", path.display()),
    };
    let too_big = |len: u64| {
        corrupt(format!(
            "file has {len} bytes, more than the limit of {max_bytes} for {what} ({limit})"
        ))
    };
    if meta.len() > max_bytes {
        return Err(too_big(meta.len()));
    }
    let io = |e: std::io::Error| Error::Io {
        op,
        path: path.display().to_string(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(meta.len() as usize)
        .map_err(|e| corrupt(format!("cannot allocate {} bytes: {e}", meta.len())))?;
    f.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a whole regular file of at most `max_bytes` bytes ([`InputLimits::max_file_bytes`]).
/// Anything else (a folder, a FIFO, which would block forever, a device, a larger file) is an
/// error before it is opened. Public so that a caller who picks the decoder itself reads the
/// file once, then calls `dicom::from_bytes` or `image::from_bytes`.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    read_bounded(
        OP,
        path,
        "PNG, JPEG or DICOM",
        max_bytes,
        "InputLimits::max_file_bytes",
    )
}

#[cfg(any(feature = "dicom", feature = "image"))]
pub(crate) fn bad_file(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        op: OP,
        arg: "file",
        detail: format!("{}: {detail}", path.display()),
    }
}

#[cfg(feature = "dicom")]
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        op: OP,
        path: path.display().to_string(),
        source: e,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    /// Without a reader's feature, `load` of its file is an error naming the op and the
    /// feature (no panic), after the file is read and recognised.
    #[cfg(not(all(feature = "image", feature = "dicom")))]
    #[test]
    fn files_without_their_reader_feature_are_errors_naming_it() {
        let dir = std::env::temp_dir().join(format!("medkern-no-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut dicom = vec![0u8; 140];
        dicom[128..132].copy_from_slice(b"DICM");
        let png = b"\x89PNG\r\n\x1a\n0000".to_vec();
        for (name, bytes, feature, on) in [
            ("x.dcm", dicom, "dicom", cfg!(feature = "dicom")),
            ("x.png", png, "image", cfg!(feature = "image")),
        ] {
            if on {
                continue;
            }
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write");
            let msg = load(&p).expect_err("no reader").to_string();
            assert!(
                msg.starts_with("input: ")
                    && msg.contains(&format!("built without the `{feature}` feature"))
                    && msg.contains(name),
                "{msg}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 15: a model file was read whole whatever its size (a 4 GiB checkpoint failed only
    /// for want of memory). Over the limit is an error naming the limit, before any read.
    #[test]
    fn model_files_over_the_limit_are_refused_before_reading() {
        let dir = std::env::temp_dir().join(format!("medkern-read-max-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("w.safetensors");
        std::fs::write(&p, vec![7u8; 1000]).expect("write");
        let e =
            read_regular_max("t", &p, "a safetensors checkpoint", 999).expect_err("over the limit");
        let msg = e.to_string();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(
            msg.contains("1000 bytes") && msg.contains("limit of 999"),
            "{msg}"
        );
        assert_eq!(
            read_regular_max("t", &p, "x", 1000).expect("at the limit"),
            vec![7u8; 1000]
        );
        assert_eq!(max_model_file_bytes(), DEFAULT_MAX_MODEL_FILE_BYTES);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
