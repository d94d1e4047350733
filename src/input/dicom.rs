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
//!
//! Hostile files: the file is read once (at most [`InputLimits::max_file_bytes`]), and before
//! the DICOM parser sees it, its structure is walked without recursion: every declared length
//! must fit in the bytes left in the file (and in its enclosing item or sequence), and sequences
//! may nest at most [`InputLimits::max_dicom_depth`] levels (default 64; the parser recurses
//! once per level, so an unbounded depth would overflow the stack).

use super::{InputLimits, RawImage, bad_file, io_error};
use crate::error::Result;
use crate::ops::PixelRange;
use crate::tensor::HostTensor;
use dicom_core::VR;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTable, OpenFileOptions, Tag};
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
    /// File size and nesting limits (see [`InputLimits`]).
    pub limits: InputLimits,
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

/// True when the file carries the DICOM magic `DICM` at byte 128. Only a regular file is
/// opened (a FIFO would block): anything else is an error.
pub fn is_dicom(path: &Path) -> Result<bool> {
    super::check_regular_file(path)?;
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
    Ok(got == 132 && has_dicom_magic(&head))
}

/// True when `bytes` carry the DICOM magic `DICM` at byte 128.
pub fn has_dicom_magic(bytes: &[u8]) -> bool {
    super::has_dicom_magic(bytes)
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

/// Reads a single-frame grey DICOM image (see the module docs for what is supported). The
/// file is read once, under `opts.limits`.
pub fn read(path: &Path, opts: &DicomOptions) -> Result<DicomImage> {
    let bytes = super::read_file(path, opts.limits.max_file_bytes)?;
    from_bytes(&bytes, path, opts)
}

/// [`read`] of a file already in memory (`path` names it in messages).
pub fn from_bytes(bytes: &[u8], path: &Path, opts: &DicomOptions) -> Result<DicomImage> {
    if !has_dicom_magic(bytes) {
        return Err(bad_file(
            path,
            "not a DICOM file: no DICM magic at byte 128 (expected a DICOM Part 10 file with \
             its 128-byte preamble)",
        ));
    }
    // The file meta group first: an unsupported transfer syntax is reported as such even
    // when the data set parser could not read it. Its lengths are checked before the parser
    // reads it.
    let data_set = meta_group_end(bytes)
        .map_err(|e| bad_file(path, format!("unreadable DICOM file meta group: {e}")))?;
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
    check_structure(
        bytes,
        data_set,
        ts == EXPLICIT_VR_LE,
        opts.limits.max_dicom_depth,
    )
    .map_err(|e| bad_file(path, format!("malformed DICOM data set: {e}")))?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| bad_file(path, format!("unreadable DICOM data set: {e}")))?;
    decode(&obj, path, ts, opts)
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An explicit VR element header at `at`: `(vr, length, header bytes)`, as the parser's
/// explicit VR little endian decoder reads it (items and delimiters have no VR).
fn explicit_header(b: &[u8], at: usize) -> Option<(VR, u32, usize)> {
    let group = u16_at(b, at)?;
    if group == 0xFFFE {
        return Some((VR::UN, u32_at(b, at + 4)?, 8));
    }
    let vr_bytes: [u8; 2] = b.get(at + 4..at + 6)?.try_into().ok()?;
    let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
    let short = matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    );
    if short {
        Some((vr, u32::from(u16_at(b, at + 6)?), 8))
    } else {
        Some((vr, u32_at(b, at + 8)?, 12))
    }
}

/// Where the data set starts: the end of the file meta group as the parser finds it (its
/// group length (0002,0000), then whole elements until that many bytes are read), with every
/// element length checked against the bytes left.
fn meta_group_end(b: &[u8]) -> std::result::Result<usize, String> {
    let truncated = |at: usize| format!("truncated element header at byte {at}");
    let at = 132;
    let (g, e) = (
        u16_at(b, at).ok_or_else(|| truncated(at))?,
        u16_at(b, at + 2).ok_or_else(|| truncated(at))?,
    );
    let (_, len, hlen) = explicit_header(b, at).ok_or_else(|| truncated(at))?;
    if (g, e) != (0x0002, 0x0000) || len != 4 {
        return Err(format!(
            "expected the group length (0002,0000) of 4 bytes at byte {at}, found \
             ({g:04X},{e:04X}) of {len} bytes"
        ));
    }
    let group_len = u32_at(b, at + hlen).ok_or_else(|| truncated(at))?;
    let mut pos = at + hlen + 4;
    let mut read: u32 = 0;
    while read < group_len {
        let (_, len, hlen) = explicit_header(b, pos).ok_or_else(|| truncated(pos))?;
        let left = b.len() - pos - hlen;
        if len == UNDEFINED || len as usize > left {
            return Err(length_error(b, pos, len, left, "the file"));
        }
        pos += hlen + len as usize;
        read = read.saturating_add(hlen as u32).saturating_add(len);
    }
    Ok(pos)
}

fn length_error(b: &[u8], at: usize, len: u32, left: usize, container: &str) -> String {
    let (g, e) = (u16_at(b, at).unwrap_or(0), u16_at(b, at + 2).unwrap_or(0));
    if len == UNDEFINED {
        format!(
            "element ({g:04X},{e:04X}) at byte {at} has an undefined length where a defined one is required"
        )
    } else {
        format!(
            "element ({g:04X},{e:04X}) at byte {at} declares {len} bytes, but only {left} are \
             left in {container}"
        )
    }
}

#[derive(Clone, Copy, PartialEq)]
enum FrameKind {
    /// A sequence of items.
    Sequence,
    /// Encapsulated pixel data: items of raw bytes.
    Fragments,
    /// An item of a sequence: a nested data set.
    Item,
}

struct Frame {
    kind: FrameKind,
    /// The byte where it ends, for a defined length.
    end: Option<usize>,
}

/// Enters a sequence, fragments or item at byte `at`; sequences count towards `max_depth`.
fn open(
    stack: &mut Vec<Frame>,
    depth: &mut usize,
    max_depth: usize,
    kind: FrameKind,
    end: Option<usize>,
    at: usize,
) -> std::result::Result<(), String> {
    if kind != FrameKind::Item {
        *depth += 1;
        if *depth > max_depth {
            return Err(format!(
                "sequences nested deeper than {max_depth} levels (at byte {at}); the limit is \
                 InputLimits::max_dicom_depth"
            ));
        }
    }
    stack.push(Frame { kind, end });
    Ok(())
}

/// Walks the data set at `b[start..]` as the parser will (explicit or implicit VR little
/// endian; in implicit VR an element is a sequence when the standard dictionary says SQ, as
/// in the parser), with a heap stack instead of recursion. Errors: a declared length beyond the
/// file or its enclosing item/sequence; sequences nested deeper than `max_depth`; an item
/// structure the parser could not read (a non-item inside a sequence, a stray delimiter).
fn check_structure(
    b: &[u8],
    start: usize,
    explicit: bool,
    max_depth: usize,
) -> std::result::Result<(), String> {
    let dict = StandardDataDictionary;
    let mut stack: Vec<Frame> = Vec::new();
    let mut depth = 0usize;
    let mut pos = start;
    loop {
        // Close the frames whose defined length ends here.
        while let Some(f) = stack.last() {
            match f.end {
                Some(end) if pos == end => {
                    if f.kind != FrameKind::Item {
                        depth = depth.saturating_sub(1);
                    }
                    stack.pop();
                }
                Some(end) if pos > end => {
                    return Err(format!(
                        "the content at byte {pos} runs past the end of its enclosing \
                         sequence or item (byte {end})"
                    ));
                }
                _ => break,
            }
        }
        // Fewer than 8 bytes cannot hold an element header: the parser stops there.
        if b.len().saturating_sub(pos) < 8 {
            return Ok(());
        }
        // The innermost defined end bounds every length inside it.
        let limit = stack
            .iter()
            .rev()
            .find_map(|f| f.end)
            .unwrap_or(b.len())
            .min(b.len());
        let tag = (u16_at(b, pos).unwrap_or(0), u16_at(b, pos + 2).unwrap_or(0));
        let top = stack.last().map(|f| f.kind);
        match top {
            Some(FrameKind::Sequence) | Some(FrameKind::Fragments) => {
                let len = u32_at(b, pos + 4).unwrap_or(0);
                let at = pos;
                pos += 8;
                if pos > limit {
                    return Err(format!("truncated item header at byte {at}"));
                }
                match tag {
                    ITEM if len == UNDEFINED && top == Some(FrameKind::Sequence) => {
                        open(&mut stack, &mut depth, max_depth, FrameKind::Item, None, at)?;
                    }
                    ITEM if len != UNDEFINED && len as usize <= limit - pos => {
                        if top == Some(FrameKind::Fragments) {
                            pos += len as usize;
                        } else {
                            open(
                                &mut stack,
                                &mut depth,
                                max_depth,
                                FrameKind::Item,
                                Some(pos + len as usize),
                                at,
                            )?;
                        }
                    }
                    ITEM => {
                        return Err(length_error(
                            b,
                            at,
                            len,
                            limit - pos,
                            "the file or its sequence",
                        ));
                    }
                    SEQUENCE_END => {
                        depth = depth.saturating_sub(1);
                        stack.pop();
                    }
                    (g, e) => {
                        return Err(format!(
                            "({g:04X},{e:04X}) at byte {at} inside a sequence; expected an item \
                             (FFFE,E000) or a sequence delimiter (FFFE,E0DD)"
                        ));
                    }
                }
            }
            Some(FrameKind::Item) | None => {
                if tag.0 == 0xFFFE {
                    let at = pos;
                    pos += 8;
                    match (tag, stack.last()) {
                        (ITEM_END, Some(Frame { end: None, .. })) => {
                            stack.pop();
                        }
                        // Ignored by the parser outside a sequence.
                        (ITEM_END, None) => {}
                        ((g, e), _) => {
                            return Err(format!(
                                "unexpected ({g:04X},{e:04X}) at byte {at} among the elements of a data set"
                            ));
                        }
                    }
                    continue;
                }
                let (vr, len, hlen) = if explicit {
                    explicit_header(b, pos)
                        .ok_or_else(|| format!("truncated element header at byte {pos}"))?
                } else {
                    let vr = if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                        VR::OW
                    } else {
                        dict.by_tag(Tag(tag.0, tag.1))
                            .map(|entry| entry.vr().relaxed())
                            .unwrap_or(VR::UN)
                    };
                    (vr, u32_at(b, pos + 4).unwrap_or(0), 8)
                };
                let at = pos;
                pos += hlen;
                if pos > limit {
                    return Err(format!("truncated element header at byte {at}"));
                }
                if len == UNDEFINED {
                    if tag == PIXEL_DATA {
                        open(
                            &mut stack,
                            &mut depth,
                            max_depth,
                            FrameKind::Fragments,
                            None,
                            at,
                        )?;
                    } else {
                        // The parser reads any other undefined length as a sequence.
                        open(
                            &mut stack,
                            &mut depth,
                            max_depth,
                            FrameKind::Sequence,
                            None,
                            at,
                        )?;
                    }
                } else if len as usize > limit - pos {
                    return Err(length_error(
                        b,
                        at,
                        len,
                        limit - pos,
                        "the file or its enclosing item",
                    ));
                } else if vr == VR::SQ {
                    open(
                        &mut stack,
                        &mut depth,
                        max_depth,
                        FrameKind::Sequence,
                        Some(pos + len as usize),
                        at,
                    )?;
                } else if len as usize % value_size(vr) != 0 {
                    // The parser reads binary numbers whole and would leave the remainder
                    // unread, then take the next element header from the wrong byte.
                    return Err(format!(
                        "element ({:04X},{:04X}) at byte {at} of VR {vr:?} declares {len} \
                         bytes, not a multiple of its value size {}",
                        tag.0,
                        tag.1,
                        value_size(vr)
                    ));
                } else {
                    pos += len as usize;
                }
            }
        }
    }
}

/// The size of one value of a binary numeric VR (1 for bytes and text).
fn value_size(vr: VR) -> usize {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::AT | VR::OF | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
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
