//! Chest X-ray DICOM files (single-frame grey images) into a [`RawImage`] whose u16 pixels and
//! [`PixelRange::Window`] make [`crate::ops::preprocess()`] compute the DICOM display value.
//!
//! What is read:
//! - transfer syntaxes: Implicit VR Little Endian (`1.2.840.10008.1.2`) and Explicit VR Little
//!   Endian (`1.2.840.10008.1.2.1`); any other (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, big
//!   endian) is an error naming it;
//! - Samples per Pixel 1, Photometric Interpretation MONOCHROME1 or MONOCHROME2, one frame;
//! - Bits Allocated 8 or 16, Bits Stored ≤ Bits Allocated (8, 12, 16...), High Bit = Bits
//!   Stored − 1, Pixel Representation 0 (unsigned) or 1 (two's complement, sign-extended from
//!   Bits Stored); bits above Bits Stored are masked off;
//! - Rescale Slope / Intercept (default 1 / 0): modality value `m = slope·stored + intercept`;
//! - the VOI window: the caller's, else the file's first Window Center / Width, else the full
//!   range of the stored values; DICOM's LINEAR function (PS3.3 C.11.2.1.2):
//!   `t = clamp((m − (c − 0.5)) / (w − 1) + 0.5, 0, 1)`, i.e. `lo = c − 0.5 − (w − 1)/2`,
//!   `hi = c − 0.5 + (w − 1)/2`, `t = clamp((m − lo)/(hi − lo))`, for `w > 1`; `w = 1` is a
//!   step (C.11.2.1.2.1): `t = 0` for `m ≤ c − 0.5`, `1` above, exactly on the integer stored
//!   values; `w < 1` is an error;
//! - MONOCHROME1 (white = low values) is inverted: `t → 1 − t`, so every output is
//!   "bright = dense", as MONOCHROME2.
//!
//! Not read (the LINEAR window above is applied regardless): VOI LUT Function (SIGMOID,
//! LINEAR_EXACT), a VOI LUT Sequence or Modality LUT Sequence, Pixel Padding Value, overlays in
//! the high bits (masked off), multi-frame files (an error).
//!
//! How it reaches the kernel: the stored values are shifted to `u = stored − min_stored`
//! (0 for unsigned, `−2^(bits−1)` for signed) in `[0, 2^bits − 1]`, kept as u16; the modality
//! window is mapped back through the rescale into `u` units. When the display value decreases
//! with `u` (MONOCHROME1, or a negative slope, but not both) the data are mirrored,
//! `u' = 2^bits − 1 − u`, and the window with them; `preprocess` then computes exactly
//! `clamp((u − lo_u)/(hi_u − lo_u), 0, 1)` = the display value above (in f32).

use super::{RawImage, bad_file, io_error};
use crate::error::Result;
use crate::ops::PixelRange;
use crate::tensor::HostTensor;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTable, Tag};
use std::io::Read;
use std::path::Path;

/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Which VOI window [`read`] applies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum WindowChoice {
    /// The file's first Window Center / Width, or [`WindowChoice::Full`] when it has none.
    #[default]
    File,
    /// A window in modality units (after the rescale), e.g. `center 2048, width 4096`.
    Given { center: f64, width: f64 },
    /// The full range of the stored values (`[0, 2^bits − 1]`, or `[−2^(bits−1), 2^(bits−1) − 1]`
    /// signed), through the rescale.
    Full,
}

/// Options of [`read`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DicomOptions {
    pub window: WindowChoice,
}

/// A decoded DICOM image and what was read from its header.
#[derive(Clone, Debug)]
pub struct DicomImage {
    /// `u` values (see the module docs), `[1, rows, cols, 1]`.
    pub pixels: HostTensor,
    /// The window in `u` units that gives the display value.
    pub range: PixelRange,
    pub rows: usize,
    pub cols: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub monochrome1: bool,
    pub slope: f64,
    pub intercept: f64,
    /// The window applied, in modality units: `(center, width)`.
    pub window: (f64, f64),
    /// True when the data were mirrored (`u' = 2^bits − 1 − u`).
    pub mirrored: bool,
    pub transfer_syntax: String,
    pub source: String,
}

impl DicomImage {
    pub fn into_raw(self) -> RawImage {
        RawImage {
            pixels: self.pixels,
            range: self.range,
            source: self.source,
        }
    }

    /// The display values in [0, 1] computed on the host in f64 (row-major, one per pixel):
    /// what `preprocess` computes before its resize and normalisation.
    pub fn display_values(&self) -> Vec<f64> {
        let PixelRange::Window { lo, hi } = self.range else {
            return vec![];
        };
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        self.pixels
            .to_f64()
            .iter()
            .map(|&u| ((u - lo) / (hi - lo)).clamp(0.0, 1.0))
            .collect()
    }
}

/// True when the file carries the DICOM magic `DICM` at byte 128.
pub fn is_dicom(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut head = [0u8; 132];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(io_error(path, e)),
        }
    }
    Ok(got == 132 && &head[128..132] == b"DICM")
}

/// The name of a well-known transfer syntax UID (for messages).
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        IMPLICIT_VR_LE => "Implicit VR Little Endian",
        EXPLICIT_VR_LE => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "High-Throughput JPEG 2000"
        }
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => "unknown transfer syntax",
    }
}

/// Reads a single-frame grey DICOM image (see the module docs for what is supported).
pub fn read(path: &Path, opts: &DicomOptions) -> Result<DicomImage> {
    if !is_dicom(path)? {
        return Err(bad_file(
            path,
            "not a DICOM file: no DICM magic at byte 128 (expected a DICOM Part 10 file with \
             its 128-byte preamble)",
        ));
    }
    // The file meta group first: an unsupported transfer syntax is reported as such even
    // when the data set parser could not read it.
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let meta = FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| bad_file(path, format!("unreadable DICOM file meta group: {e}")))?;
    let ts = meta.transfer_syntax().to_string();
    if ts != IMPLICIT_VR_LE && ts != EXPLICIT_VR_LE {
        return Err(bad_file(
            path,
            format!(
                "transfer syntax {ts} ({}) is not supported; expected an uncompressed one: \
                 {IMPLICIT_VR_LE} (Implicit VR Little Endian) or {EXPLICIT_VR_LE} (Explicit VR \
                 Little Endian)",
                transfer_syntax_name(&ts)
            ),
        ));
    }
    let obj = dicom_object::open_file(path)
        .map_err(|e| bad_file(path, format!("unreadable DICOM data set: {e}")))?;
    decode(&obj, path, ts, opts)
}

fn uint(obj: &DefaultDicomObject, path: &Path, tag: Tag, name: &str) -> Result<Option<i64>> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_int::<i64>()
            .map(Some)
            .map_err(|err| bad_file(path, format!("{name} {tag}: not an integer ({err})"))),
    }
}

fn required(obj: &DefaultDicomObject, path: &Path, tag: Tag, name: &str) -> Result<i64> {
    uint(obj, path, tag, name)?.ok_or_else(|| bad_file(path, format!("missing {name} {tag}")))
}

fn float(obj: &DefaultDicomObject, path: &Path, tag: Tag, name: &str) -> Result<Option<f64>> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => {
            let v = e
                .to_multi_float64()
                .map_err(|err| bad_file(path, format!("{name} {tag}: not a number ({err})")))?;
            match v.first() {
                Some(x) if x.is_finite() => Ok(Some(*x)),
                Some(x) => Err(bad_file(path, format!("{name} {tag} is {x}"))),
                None => Ok(None),
            }
        }
    }
}

fn decode(
    obj: &DefaultDicomObject,
    path: &Path,
    ts: String,
    opts: &DicomOptions,
) -> Result<DicomImage> {
    let rows = required(obj, path, tags::ROWS, "Rows")?;
    let cols = required(obj, path, tags::COLUMNS, "Columns")?;
    // Rows and Columns are US (unsigned 16-bit) in the standard; a file may still carry them
    // under another VR (IS, SV...), whose values must not reach the size arithmetic.
    for (name, tag, v) in [("Rows", tags::ROWS, rows), ("Columns", tags::COLUMNS, cols)] {
        if !(1..=i64::from(u16::MAX)).contains(&v) {
            return Err(bad_file(
                path,
                format!("{name} {tag} is {v}; expected 1..=65535 (an unsigned 16-bit US value)"),
            ));
        }
    }
    let (rows, cols) = (rows as usize, cols as usize);
    let spp = uint(obj, path, tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1);
    let photometric = match obj.get(tags::PHOTOMETRIC_INTERPRETATION) {
        Some(e) => e
            .to_str()
            .map(|s| s.trim_end_matches([' ', '\0']).to_string())
            .unwrap_or_default(),
        None => String::new(),
    };
    let monochrome1 = match photometric.as_str() {
        "MONOCHROME1" => true,
        "MONOCHROME2" => false,
        other => {
            return Err(bad_file(
                path,
                format!(
                    "photometric interpretation {other:?} is not supported; expected MONOCHROME1 \
                     or MONOCHROME2 (grey radiographs)"
                ),
            ));
        }
    };
    if spp != 1 {
        return Err(bad_file(
            path,
            format!("Samples per Pixel is {spp}; expected 1 (grey)"),
        ));
    }
    let frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => e.to_int::<i64>().map_err(|err| {
            bad_file(
                path,
                format!(
                    "Number of Frames {}: not an integer ({err}); expected 1 (a single frame)",
                    tags::NUMBER_OF_FRAMES
                ),
            )
        })?,
    };
    if frames != 1 {
        return Err(bad_file(
            path,
            format!("Number of Frames is {frames}; expected a single frame"),
        ));
    }
    let alloc = required(obj, path, tags::BITS_ALLOCATED, "Bits Allocated")?;
    if alloc != 8 && alloc != 16 {
        return Err(bad_file(
            path,
            format!("Bits Allocated is {alloc}; expected 8 or 16"),
        ));
    }
    let stored = uint(obj, path, tags::BITS_STORED, "Bits Stored")?.unwrap_or(alloc);
    if !(1..=alloc).contains(&stored) {
        return Err(bad_file(
            path,
            format!("Bits Stored is {stored}; expected 1..={alloc} (Bits Allocated)"),
        ));
    }
    let high = uint(obj, path, tags::HIGH_BIT, "High Bit")?.unwrap_or(stored - 1);
    if high != stored - 1 {
        return Err(bad_file(
            path,
            format!(
                "High Bit is {high}; expected {} (Bits Stored − 1, low-aligned data)",
                stored - 1
            ),
        ));
    }
    let signed = match uint(
        obj,
        path,
        tags::PIXEL_REPRESENTATION,
        "Pixel Representation",
    )? {
        None | Some(0) => false,
        Some(1) => true,
        Some(v) => {
            return Err(bad_file(
                path,
                format!("Pixel Representation is {v}; expected 0 (unsigned) or 1 (signed)"),
            ));
        }
    };
    let slope = float(obj, path, tags::RESCALE_SLOPE, "Rescale Slope")?.unwrap_or(1.0);
    let intercept = float(obj, path, tags::RESCALE_INTERCEPT, "Rescale Intercept")?.unwrap_or(0.0);
    if slope == 0.0 {
        return Err(bad_file(
            path,
            "Rescale Slope is 0; expected a non-zero slope",
        ));
    }
    let pd = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| bad_file(path, "missing Pixel Data (7FE0,0010); expected an image"))?;
    let raw = pd.to_bytes().map_err(|e| {
        bad_file(
            path,
            format!("Pixel Data is not native (uncompressed) data: {e}"),
        )
    })?;
    let bytes_per = (alloc / 8) as usize;
    let (n, need) = match rows
        .checked_mul(cols)
        .and_then(|n| Some((n, n.checked_mul(bytes_per)?)))
    {
        Some(v) => v,
        None => {
            return Err(bad_file(
                path,
                format!("image of {rows} rows × {cols} columns × {bytes_per} byte(s) is too large"),
            ));
        }
    };
    // Odd lengths are padded to even in the file: allow one trailing byte.
    if raw.len() < need || raw.len() > need + 1 {
        return Err(bad_file(
            path,
            format!(
                "Pixel Data has {} bytes; expected {need} ({rows} rows × {cols} columns × \
                 {bytes_per} byte(s))",
                raw.len()
            ),
        ));
    }
    let bits = stored as u32;
    let mask: u32 = if bits == 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let min_stored: i64 = if signed { -(1i64 << (bits - 1)) } else { 0 };
    let max_u = f64::from(mask);
    // u = stored − min_stored, in [0, 2^bits − 1].
    let u: Vec<u16> = (0..n)
        .map(|i| {
            let word = if bytes_per == 1 {
                u32::from(raw[i])
            } else {
                u32::from(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]))
            } & mask;
            let s = if signed && word & (1 << (bits - 1)) != 0 {
                i64::from(word) - (1i64 << bits)
            } else {
                i64::from(word)
            };
            (s - min_stored) as u16
        })
        .collect();
    // The window in modality units.
    let (center, width) = match opts.window {
        WindowChoice::Given { center, width } => (center, width),
        WindowChoice::File | WindowChoice::Full => {
            let file = if opts.window == WindowChoice::File {
                match (
                    float(obj, path, tags::WINDOW_CENTER, "Window Center")?,
                    float(obj, path, tags::WINDOW_WIDTH, "Window Width")?,
                ) {
                    (Some(c), Some(w)) => Some((c, w)),
                    _ => None,
                }
            } else {
                None
            };
            file.unwrap_or_else(|| {
                // Full range: the window whose lo/hi are the extreme modality values.
                let a = slope * min_stored as f64 + intercept;
                let b = slope * (min_stored as f64 + max_u) + intercept;
                let (lo, hi) = (a.min(b), a.max(b));
                // lo = c − 0.5 − (w−1)/2, hi = c − 0.5 + (w−1)/2.
                ((lo + hi) / 2.0 + 0.5, hi - lo + 1.0)
            })
        }
    };
    if !(center.is_finite() && width.is_finite() && width >= 1.0) {
        return Err(bad_file(
            path,
            format!("window center {center}, width {width}; expected width >= 1 (finite values)"),
        ));
    }
    // Back to u units: stored = (m − intercept)/slope, u = stored − min_stored.
    let to_u = |m: f64| (m - intercept) / slope - min_stored as f64;
    let mirrored = monochrome1 ^ (slope < 0.0);
    let mirror = |v: f64| if mirrored { max_u - v } else { v };
    let (lo, hi) = if width == 1.0 {
        // A step (PS3.3 C.11.2.1.2.1, w = 1): m ≤ c − 0.5 → 0, m > c − 0.5 → 1 (before the
        // MONOCHROME1 inversion). In the kernel's (possibly mirrored) u units the display value
        // is 1 exactly where u > t (MONOCHROME2) or u ≥ t (MONOCHROME1, the inverted step), t
        // the threshold there: with integer u that is the window [k, k + 1] for the last u
        // whose display value is 0, k in [−1, max_u].
        let t = mirror(to_u(center - 0.5));
        let k = if monochrome1 {
            t.ceil() - 1.0
        } else {
            t.floor()
        };
        let k = k.clamp(-1.0, max_u);
        (k, k + 1.0)
    } else {
        let lo_m = center - 0.5 - (width - 1.0) / 2.0;
        let hi_m = center - 0.5 + (width - 1.0) / 2.0;
        let (a, b) = (mirror(to_u(lo_m)), mirror(to_u(hi_m)));
        (a.min(b), a.max(b))
    };
    let pixels = if mirrored {
        u.iter()
            .map(|&v| (max_u as u32 - u32::from(v)) as u16)
            .collect()
    } else {
        u
    };
    Ok(DicomImage {
        pixels: HostTensor::new(&[1, rows, cols, 1], pixels)?,
        range: PixelRange::Window {
            lo: lo as f32,
            hi: hi as f32,
        },
        rows,
        cols,
        bits_allocated: alloc as u16,
        bits_stored: stored as u16,
        signed,
        monochrome1,
        slope,
        intercept,
        window: (center, width),
        mirrored,
        transfer_syntax: ts,
        source: path.display().to_string(),
    })
}
