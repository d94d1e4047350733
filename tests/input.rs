//! Image inputs: DICOM files generated here with dicom-object (8/12/16 bits, signed and
//! unsigned, MONOCHROME1/2, rescale slope/intercept, windows from the file or the caller, both
//! uncompressed transfer syntaxes) decoded and checked against the DICOM display formula
//! computed independently in f64 here; PNG/JPEG round trips through the `image` crate; bad
//! files are errors that name the file and what was expected.
// This file runs the `medkern` binary (feature `cli`, which turns on `image` and `dicom`).
#![cfg(feature = "cli")]

mod common;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, meta::FileMetaTableBuilder};
use medkern::input::{self, dicom as dcm};
use medkern::ops::{PixelRange, Preprocess};
use medkern::{DType, Device};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("medkern-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// What the generated DICOM file holds.
#[derive(Clone)]
struct Spec {
    rows: usize,
    cols: usize,
    alloc: u16,
    stored: u16,
    signed: bool,
    photometric: &'static str,
    slope: Option<f64>,
    intercept: Option<f64>,
    window: Option<(f64, f64)>,
    ts: &'static str,
    /// Raw words as written (may carry junk above Bits Stored).
    words: Vec<u16>,
    with_pixels: bool,
    spp: u16,
    /// Elements written last, replacing the ones above (crafted files).
    overrides: Vec<(Tag, VR, PrimitiveValue)>,
}

impl Spec {
    fn new(rows: usize, cols: usize, alloc: u16, stored: u16, words: Vec<u16>) -> Spec {
        Spec {
            rows,
            cols,
            alloc,
            stored,
            signed: false,
            photometric: "MONOCHROME2",
            slope: None,
            intercept: None,
            window: None,
            ts: dcm::EXPLICIT_VR_LE,
            words,
            with_pixels: true,
            spp: 1,
            overrides: vec![],
        }
    }
}

fn write_dicom(spec: &Spec, name: &str) -> PathBuf {
    let mut obj = InMemDicomObject::new_empty();
    let put = |obj: &mut InMemDicomObject, tag, vr, v: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, v));
    };
    put(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.1.1".into(),
    );
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234".into());
    put(&mut obj, tags::MODALITY, VR::CS, "DX".into());
    put(
        &mut obj,
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(spec.rows as u16),
    );
    put(
        &mut obj,
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(spec.cols as u16),
    );
    put(
        &mut obj,
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(spec.spp),
    );
    put(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        spec.photometric.into(),
    );
    put(
        &mut obj,
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(spec.alloc),
    );
    put(
        &mut obj,
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(spec.stored),
    );
    put(
        &mut obj,
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(spec.stored - 1),
    );
    put(
        &mut obj,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(u16::from(spec.signed)),
    );
    if let Some(s) = spec.slope {
        put(&mut obj, tags::RESCALE_SLOPE, VR::DS, format!("{s}").into());
    }
    if let Some(b) = spec.intercept {
        put(
            &mut obj,
            tags::RESCALE_INTERCEPT,
            VR::DS,
            format!("{b}").into(),
        );
    }
    if let Some((c, w)) = spec.window {
        put(&mut obj, tags::WINDOW_CENTER, VR::DS, format!("{c}").into());
        put(&mut obj, tags::WINDOW_WIDTH, VR::DS, format!("{w}").into());
    }
    if spec.with_pixels {
        let bytes: Vec<u8> = if spec.alloc == 8 {
            spec.words.iter().map(|&w| w as u8).collect()
        } else {
            spec.words.iter().flat_map(|w| w.to_le_bytes()).collect()
        };
        let vr = if spec.alloc == 8 { VR::OB } else { VR::OW };
        put(&mut obj, tags::PIXEL_DATA, vr, bytes.into());
    }
    for (tag, vr, v) in &spec.overrides {
        put(&mut obj, *tag, *vr, v.clone());
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(spec.ts))
        .expect("meta");
    let path = tmp(name);
    file.write_to_file(&path).expect("write dicom");
    path
}

/// The DICOM display value of one raw word, computed from the standard's definitions (PS3.3
/// C.7.6.3.1.1 stored bits, C.11.1 modality rescale, C.11.2.1.2 LINEAR VOI window,
/// MONOCHROME1 inverted), independently of the library.
fn expected(spec: &Spec, window: Option<(f64, f64)>, word: u16) -> f64 {
    let bits = u32::from(spec.stored);
    let v = u32::from(word) & ((1u32 << bits) - 1);
    let s = if spec.signed && v >= 1 << (bits - 1) {
        f64::from(v) - f64::from(1u32 << bits)
    } else {
        f64::from(v)
    };
    let (slope, icpt) = (spec.slope.unwrap_or(1.0), spec.intercept.unwrap_or(0.0));
    let m = slope * s + icpt;
    let t = match window {
        Some((c, w)) => {
            if m <= c - 0.5 - (w - 1.0) / 2.0 {
                0.0
            } else if m > c - 0.5 + (w - 1.0) / 2.0 {
                1.0
            } else {
                (m - (c - 0.5)) / (w - 1.0) + 0.5
            }
        }
        None => {
            let (smin, smax) = if spec.signed {
                (
                    -f64::from(1u32 << (bits - 1)),
                    f64::from(1u32 << (bits - 1)) - 1.0,
                )
            } else {
                (0.0, f64::from((1u32 << bits) - 1))
            };
            let (a, b) = (slope * smin + icpt, slope * smax + icpt);
            (m - a.min(b)) / (a.max(b) - a.min(b))
        }
    };
    if spec.photometric == "MONOCHROME1" {
        1.0 - t
    } else {
        t
    }
}

/// Deterministic words covering the stored range, with junk in the unused high bits.
fn words(n: usize, stored: u16, alloc: u16, seed: u64) -> Vec<u16> {
    let mut rng = common::SeedRng::new(seed);
    (0..n)
        .map(|i| {
            let max = (1u32 << stored) - 1;
            let v = match i {
                0 => 0,
                1 => max,
                2 => max / 2,
                _ => rng.below(u64::from(max) + 1) as u32,
            };
            let junk = if stored < alloc {
                (rng.below(1 << (alloc - stored)) as u32) << stored
            } else {
                0
            };
            (v | junk) as u16
        })
        .collect()
}

/// Decodes `spec` written to a file and checks every pixel against [`expected`], both through
/// the host display values and through `preprocess` on the CPU (identity resize, no
/// normalisation: the display value itself, in f32).
fn check(spec: &Spec, opts: dcm::DicomOptions, name: &str) {
    let path = write_dicom(spec, name);
    let img = dcm::read(&path, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((img.rows, img.cols), (spec.rows, spec.cols));
    assert_eq!(img.transfer_syntax, spec.ts);
    let window = match opts.window {
        dcm::WindowChoice::Given { center, width } => Some((center, width)),
        dcm::WindowChoice::File => spec.window,
        dcm::WindowChoice::Full => None,
    };
    let want: Vec<f64> = spec
        .words
        .iter()
        .map(|&w| expected(spec, window, w))
        .collect();
    let host = img.display_values();
    for (i, (g, w)) in host.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5,
            "{name}: pixel {i} (word {:#06x}): host display value {g}, expected {w}",
            spec.words[i]
        );
    }
    let PixelRange::Window { lo, hi } = img.range else {
        panic!("{name}: DICOM range must be a window")
    };
    let raw = img.clone().into_raw();
    let y = raw
        .preprocess(
            &Device::Cpu,
            &Preprocess {
                out_size: (spec.rows, spec.cols),
                range: img.range,
                mean: &[0.0],
                std: &[1.0],
                grey_to_rgb: false,
            },
            DType::F32,
        )
        .expect("preprocess")
        .to_host()
        .expect("host")
        .to_f64();
    // The window ends are f32 in the kernel: half an f32 step of the larger end, over the
    // window width, plus f32 rounding of the quotient.
    let tol = f64::from(hi.abs().max(lo.abs())) * 6e-8 / f64::from(hi - lo) + 1e-6;
    for (i, (g, w)) in y.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{name}: pixel {i}: preprocess gives {g}, expected {w} (tol {tol})"
        );
    }
    // The model input: resized, ImageNet-normalised, grey repeated over 3 channels.
    let m = raw
        .to_model_input(&Device::Cpu, (7, 5), DType::F32)
        .expect("model input");
    assert_eq!(m.shape(), [1, 7, 5, 3]);
}

#[test]
fn dicom_16bit_unsigned_monochrome2_full_range() {
    let (r, c) = (9, 11);
    let spec = Spec::new(r, c, 16, 16, words(r * c, 16, 16, 1));
    check(&spec, Default::default(), "u16_m2_full.dcm");
    check(
        &Spec {
            ts: dcm::IMPLICIT_VR_LE,
            ..spec.clone()
        },
        Default::default(),
        "u16_m2_full_implicit.dcm",
    );
}

#[test]
fn dicom_12bit_monochrome1_file_window_and_junk_high_bits() {
    let (r, c) = (8, 13);
    let spec = Spec {
        photometric: "MONOCHROME1",
        window: Some((1500.0, 2000.0)),
        ..Spec::new(r, c, 16, 12, words(r * c, 12, 16, 2))
    };
    check(&spec, Default::default(), "u12_m1_window.dcm");
    // The caller's window replaces the file's; Full ignores it.
    check(
        &spec,
        dcm::DicomOptions {
            window: dcm::WindowChoice::Given {
                center: 800.0,
                width: 901.0,
            },
            ..Default::default()
        },
        "u12_m1_given.dcm",
    );
    check(
        &spec,
        dcm::DicomOptions {
            window: dcm::WindowChoice::Full,
            ..Default::default()
        },
        "u12_m1_full.dcm",
    );
}

#[test]
fn dicom_signed_12bit_rescale_and_window() {
    let (r, c) = (10, 10);
    let spec = Spec {
        signed: true,
        slope: Some(2.5),
        intercept: Some(-1024.0),
        window: Some((-300.0, 3000.0)),
        ts: dcm::IMPLICIT_VR_LE,
        ..Spec::new(r, c, 16, 12, words(r * c, 12, 16, 3))
    };
    check(&spec, Default::default(), "s12_rescale_window.dcm");
    check(
        &spec,
        dcm::DicomOptions {
            window: dcm::WindowChoice::Full,
            ..Default::default()
        },
        "s12_rescale_full.dcm",
    );
    let mono1 = Spec {
        photometric: "MONOCHROME1",
        ts: dcm::EXPLICIT_VR_LE,
        ..spec.clone()
    };
    check(&mono1, Default::default(), "s12_rescale_window_m1.dcm");
}

#[test]
fn dicom_signed_16bit_negative_slope() {
    let (r, c) = (6, 7);
    let spec = Spec {
        signed: true,
        slope: Some(-0.5),
        intercept: Some(100.0),
        ..Spec::new(r, c, 16, 16, words(r * c, 16, 16, 4))
    };
    check(&spec, Default::default(), "s16_negslope_full.dcm");
    // Negative slope and MONOCHROME1: the two inversions cancel (no mirroring).
    let m1 = Spec {
        photometric: "MONOCHROME1",
        window: Some((0.0, 20000.0)),
        ..spec
    };
    check(&m1, Default::default(), "s16_negslope_m1.dcm");
    let img = dcm::read(&tmp("s16_negslope_m1.dcm"), &Default::default()).expect("read");
    assert!(!img.mirrored);
}

#[test]
fn dicom_8bit_unsigned_and_signed() {
    let (r, c) = (5, 9);
    let spec = Spec {
        window: Some((128.0, 100.0)),
        ..Spec::new(r, c, 8, 8, words(r * c, 8, 8, 5))
    };
    check(&spec, Default::default(), "u8_window.dcm");
    let signed = Spec {
        signed: true,
        photometric: "MONOCHROME1",
        window: None,
        ..spec
    };
    check(&signed, Default::default(), "s8_m1_full.dcm");
}

#[test]
fn dicom_loaded_through_input_load() {
    let spec = Spec::new(4, 4, 16, 12, words(16, 12, 16, 6));
    let path = write_dicom(&spec, "load.dcm");
    let raw = input::load(&path).expect("load");
    assert_eq!(raw.pixels.dtype(), DType::U16);
    assert_eq!(raw.size(), (4, 4));
    assert!(matches!(raw.range, PixelRange::Window { .. }));
}

/// `RawImage::display` (the background of class activation maps) shows a DICOM through the
/// file's window, as the model input was made: saturated outside it, grey on 3 channels.
#[test]
fn dicom_display_uses_the_window() {
    let (r, c) = (6, 9);
    let spec = Spec {
        photometric: "MONOCHROME1",
        window: Some((1500.0, 900.0)),
        ..Spec::new(r, c, 16, 12, words(r * c, 12, 16, 11))
    };
    let path = write_dicom(&spec, "display.dcm");
    let raw = input::load(&path).expect("load");
    let d = raw.display(&Device::Cpu, (r, c)).expect("display");
    assert_eq!(d.shape(), [1, r, c, 3]);
    assert_eq!(d.dtype(), DType::F32);
    let v = d.to_host().expect("host").to_f64();
    let want: Vec<f64> = spec
        .words
        .iter()
        .map(|&w| expected(&spec, spec.window, w))
        .collect();
    // Not a trivial picture: the window leaves both saturated and graded pixels.
    assert!(want.iter().any(|&w| w == 0.0 || w == 1.0));
    assert!(want.iter().any(|&w| w > 0.05 && w < 0.95));
    for (i, w) in want.iter().enumerate() {
        for ch in 0..3 {
            let g = v[i * 3 + ch];
            assert!(
                (g - w).abs() <= 1e-5,
                "pixel {i} channel {ch}: {g}, expected {w}"
            );
        }
    }
}

fn err_of<T>(r: medkern::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error, got a result"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dicom_bad_files_are_errors_naming_the_file() {
    let good = Spec::new(4, 5, 16, 16, words(20, 16, 16, 7));
    // Not DICOM.
    let p = tmp("not_dicom.dcm");
    std::fs::write(&p, b"hello, this is not a DICOM file at all").expect("write");
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(e.contains("not_dicom.dcm") && e.contains("DICM"), "{e}");
    // Missing pixel data.
    let p = write_dicom(
        &Spec {
            with_pixels: false,
            ..good.clone()
        },
        "no_pixels.dcm",
    );
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(
        e.contains("no_pixels.dcm") && e.contains("Pixel Data"),
        "{e}"
    );
    // Wrong length.
    let p = write_dicom(
        &Spec {
            words: good.words[..12].to_vec(),
            ..good.clone()
        },
        "short_pixels.dcm",
    );
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(
        e.contains("short_pixels.dcm") && e.contains("expected 40"),
        "{e}"
    );
    // Unsupported photometric interpretation.
    let p = write_dicom(
        &Spec {
            photometric: "RGB",
            spp: 3,
            ..good.clone()
        },
        "rgb.dcm",
    );
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(e.contains("rgb.dcm") && e.contains("MONOCHROME"), "{e}");
    // Bits Allocated 32.
    let p = write_dicom(
        &Spec {
            alloc: 32,
            stored: 32,
            ..good.clone()
        },
        "bits32.dcm",
    );
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(
        e.contains("bits32.dcm") && e.contains("Bits Allocated"),
        "{e}"
    );
    // A compressed transfer syntax (RLE Lossless): the UID patched in the meta group.
    let p = write_dicom(&good, "rle.dcm");
    let mut bytes = std::fs::read(&p).expect("read");
    let from = dcm::EXPLICIT_VR_LE.as_bytes();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("transfer syntax in meta");
    bytes[at..at + from.len()].copy_from_slice(b"1.2.840.10008.1.2.5");
    std::fs::write(&p, &bytes).expect("write");
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(
        e.contains("rle.dcm") && e.contains("1.2.840.10008.1.2.5") && e.contains("RLE Lossless"),
        "{e}"
    );
    // Truncated in the middle of the data set.
    let p = write_dicom(&good, "truncated.dcm");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() - 30]).expect("write");
    let e = err_of(dcm::read(&p, &Default::default()));
    assert!(e.contains("truncated.dcm"), "{e}");
    // A window of width < 1.
    let p = write_dicom(&good, "window.dcm");
    for width in [0.5, 0.0, -3.0] {
        let e = err_of(dcm::read(
            &p,
            &dcm::DicomOptions {
                window: dcm::WindowChoice::Given {
                    center: 10.0,
                    width,
                },
                ..Default::default()
            },
        ));
        assert!(
            e.contains("window.dcm") && e.contains("expected width >= 1"),
            "{e}"
        );
    }
    // Missing file.
    let e = err_of(dcm::read(&tmp("does_not_exist.dcm"), &Default::default()));
    assert!(e.contains("does_not_exist.dcm"), "{e}");
}

fn gradient_rgb(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(2)) as u8,
            (y * 255 / h.max(2)) as u8,
            ((x + y) * 127 / (w + h)) as u8,
        ])
    })
}

#[test]
fn png_round_trips_exactly() {
    let (w, h) = (37, 23);
    let rgb = gradient_rgb(w, h);
    let p = tmp("rgb.png");
    rgb.save(&p).expect("save");
    let raw = input::load(&p).expect("load png");
    assert_eq!(raw.pixels.shape(), [1, h as usize, w as usize, 3]);
    assert_eq!(
        raw.pixels.as_slice::<u8>().expect("u8"),
        rgb.as_raw().as_slice()
    );
    assert_eq!(raw.range, PixelRange::Scale(255.0));

    let grey = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]));
    let p = tmp("grey.png");
    grey.save(&p).expect("save");
    let raw = input::load(&p).expect("load grey png");
    assert_eq!(raw.pixels.shape(), [1, h as usize, w as usize, 1]);
    assert_eq!(
        raw.pixels.as_slice::<u8>().expect("u8"),
        grey.as_raw().as_slice()
    );

    let g16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(w, h, |x, y| {
        image::Luma([((x * 1777 + y * 911) % 65536) as u16])
    });
    let p = tmp("grey16.png");
    g16.save(&p).expect("save");
    let raw = input::load(&p).expect("load 16-bit png");
    assert_eq!(raw.pixels.dtype(), DType::U16);
    assert_eq!(
        raw.pixels.as_slice::<u16>().expect("u16"),
        g16.as_raw().as_slice()
    );
    assert_eq!(
        raw.range,
        PixelRange::Window {
            lo: 0.0,
            hi: 65535.0
        }
    );

    // RGBA: alpha dropped.
    let rgba = image::RgbaImage::from_fn(5, 4, |x, y| image::Rgba([x as u8, y as u8, 9, 17]));
    let p = tmp("rgba.png");
    rgba.save(&p).expect("save");
    let raw = input::load(&p).expect("load rgba png");
    assert_eq!(raw.pixels.shape(), [1, 4, 5, 3]);
    let px = raw.pixels.as_slice::<u8>().expect("u8");
    assert_eq!(&px[3 * 7..3 * 8], &[2, 1, 9]);

    // Preprocessed on the CPU at the same size: ToTensor + ImageNet normalisation.
    let y = input::load(&tmp("rgb.png"))
        .expect("load")
        .to_model_input(&Device::Cpu, (h as usize, w as usize), DType::F32)
        .expect("preprocess")
        .to_host()
        .expect("host")
        .to_f64();
    let mean = medkern::ops::preprocess::IMAGENET_MEAN;
    let std = medkern::ops::preprocess::IMAGENET_STD;
    for (i, (&v, &g)) in rgb.as_raw().iter().zip(&y).enumerate() {
        let c = i % 3;
        let want = (f64::from(v) / 255.0 - f64::from(mean[c])) / f64::from(std[c]);
        assert!((g - want).abs() < 1e-5, "element {i}: {g} vs {want}");
    }
}

#[test]
fn jpeg_round_trips_within_compression_error() {
    let (w, h) = (64, 48);
    let rgb = gradient_rgb(w, h);
    let p = tmp("rgb.jpg");
    rgb.save(&p).expect("save jpeg");
    let raw = input::load(&p).expect("load jpeg");
    assert_eq!(raw.pixels.shape(), [1, h as usize, w as usize, 3]);
    let got = raw.pixels.as_slice::<u8>().expect("u8");
    let mae = got
        .iter()
        .zip(rgb.as_raw())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .sum::<f64>()
        / got.len() as f64;
    assert!(mae < 3.0, "JPEG mean abs error {mae}");

    let grey = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 2 + y) as u8]));
    let p = tmp("grey.jpg");
    grey.save(&p).expect("save jpeg");
    let raw = input::load(&p).expect("load grey jpeg");
    assert_eq!(raw.pixels.shape(), [1, h as usize, w as usize, 1]);
    let got = raw.pixels.as_slice::<u8>().expect("u8");
    let mae = got
        .iter()
        .zip(grey.as_raw())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .sum::<f64>()
        / got.len() as f64;
    assert!(mae < 3.0, "grey JPEG mean abs error {mae}");
}

#[test]
fn corrupt_images_are_errors_naming_the_file() {
    let rgb = gradient_rgb(20, 20);
    let p = tmp("cut.png");
    rgb.save(&p).expect("save");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let e = err_of(input::load(&p));
    assert!(e.contains("cut.png") && e.contains("decode"), "{e}");

    let p = tmp("noise.bin");
    std::fs::write(&p, [7u8; 300]).expect("write");
    let e = err_of(input::load(&p));
    assert!(e.contains("noise.bin") && e.contains("PNG"), "{e}");

    let p = tmp("empty.png");
    std::fs::write(&p, []).expect("write");
    let e = err_of(input::load(&p));
    assert!(e.contains("empty.png"), "{e}");

    let e = err_of(input::load(&tmp("missing.png")));
    assert!(e.contains("missing.png"), "{e}");
}

/// The decoded images preprocessed on the GPU (resize, window, ImageNet normalisation, grey →
/// RGB) against the CPU reference; counted SKIP without a GPU.
#[test]
fn gpu_preprocess_of_decoded_images_matches_cpu() {
    let Some(dev) = common::test_device("input::gpu_preprocess_of_decoded_images_matches_cpu")
    else {
        return;
    };
    let (r, c) = (48, 64);
    let spec = Spec {
        photometric: "MONOCHROME1",
        signed: true,
        slope: Some(1.5),
        intercept: Some(-200.0),
        window: Some((300.0, 2500.0)),
        ..Spec::new(r, c, 16, 12, words(r * c, 12, 16, 11))
    };
    let dcm_path = write_dicom(&spec, "gpu.dcm");
    let png_path = tmp("gpu.png");
    gradient_rgb(45, 31).save(&png_path).expect("png");
    for path in [dcm_path, png_path] {
        let raw = input::load(&path).expect("load");
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let want = raw
                .to_model_input(&Device::Cpu, (37, 53), DType::F32)
                .expect("cpu")
                .to_host()
                .expect("host")
                .to_f64();
            let got = raw
                .to_model_input(&dev, (37, 53), dt)
                .expect("gpu")
                .to_host()
                .expect("host")
                .to_f64();
            // f32 source positions (as the kernel and PyTorch compute them) are off by a few
            // ulps of the input size (64): the bilinear weights move by that much, times the
            // largest step between neighbours after normalisation (1 / 0.225 ≈ 4.5).
            let pos_err = 6.0 * 2f64.powi(-24) * 65.0;
            let eps = match dt {
                DType::F32 => 2.0 * pos_err * 4.5 + 1e-6,
                DType::F16 => 2e-3,
                _ => 1.6e-2,
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= eps * (1.0 + w.abs()),
                    "{} {dt} element {i}: gpu {g} vs cpu {w}",
                    path.display()
                );
            }
        }
    }
}

/// Rows / Columns are US (16-bit) in the standard; a crafted file may carry them as IS or SV
/// with values whose product × bytes per pixel wraps around (2^32 × 2^31 × 2 = 2^64 ≡ 0, so
/// empty Pixel Data "fits"): an error naming the file and the attribute, never a panic.
#[test]
fn dicom_huge_rows_or_columns_are_errors() {
    let crafted = |name: &str, overrides: Vec<(Tag, VR, PrimitiveValue)>| {
        let spec = Spec {
            overrides,
            ..Spec::new(1, 1, 16, 16, vec![])
        };
        let p = write_dicom(&spec, name);
        err_of(dcm::read(&p, &Default::default()))
    };
    let e = crafted(
        "huge_is_sv.dcm",
        vec![
            (tags::ROWS, VR::IS, "4294967296".into()),
            (tags::COLUMNS, VR::SV, PrimitiveValue::from(1i64 << 31)),
        ],
    );
    assert!(
        e.contains("huge_is_sv.dcm") && e.contains("Rows") && e.contains("4294967296"),
        "{e}"
    );
    let e = crafted(
        "huge_sv_sv.dcm",
        vec![
            (tags::ROWS, VR::SV, PrimitiveValue::from(1i64 << 31)),
            (tags::COLUMNS, VR::SV, PrimitiveValue::from(1i64 << 33)),
        ],
    );
    assert!(e.contains("huge_sv_sv.dcm") && e.contains("Rows"), "{e}");
    let e = crafted("wide.dcm", vec![(tags::COLUMNS, VR::IS, "65536".into())]);
    assert!(
        e.contains("wide.dcm") && e.contains("Columns") && e.contains("65535"),
        "{e}"
    );
    let e = crafted("negative.dcm", vec![(tags::ROWS, VR::IS, "-2".into())]);
    assert!(e.contains("negative.dcm") && e.contains("Rows"), "{e}");
    // The largest US values are accepted as far as the size goes (the Pixel Data is short).
    let e = crafted(
        "max_us.dcm",
        vec![
            (tags::ROWS, VR::US, PrimitiveValue::from(u16::MAX)),
            (tags::COLUMNS, VR::US, PrimitiveValue::from(u16::MAX)),
        ],
    );
    assert!(
        e.contains("max_us.dcm") && e.contains("Pixel Data has 0 bytes"),
        "{e}"
    );
}

/// An unparseable Number of Frames is an error, not one frame.
#[test]
fn dicom_unparseable_number_of_frames_is_an_error() {
    let spec = Spec::new(4, 5, 16, 16, words(20, 16, 16, 8));
    let ok = Spec {
        overrides: vec![(tags::NUMBER_OF_FRAMES, VR::IS, "1".into())],
        ..spec.clone()
    };
    dcm::read(&write_dicom(&ok, "frames_1.dcm"), &Default::default()).expect("1 frame");
    for (name, v) in [("frames_abc.dcm", "abc"), ("frames_float.dcm", "1.5x")] {
        let bad = Spec {
            overrides: vec![(tags::NUMBER_OF_FRAMES, VR::IS, v.into())],
            ..spec.clone()
        };
        let e = err_of(dcm::read(&write_dicom(&bad, name), &Default::default()));
        assert!(e.contains(name) && e.contains("Number of Frames"), "{e}");
    }
}

/// Window Width 1 is allowed (PS3.3 C.11.2.1.2.1): a step, `m <= c - 0.5` → 0, above → 1
/// (inverted for MONOCHROME1), checked on pixels exactly at, below and above the threshold,
/// with and without rescale, mirroring and a negative slope.
#[test]
fn dicom_window_width_one_is_a_step() {
    let step = |center: f64| dcm::DicomOptions {
        window: dcm::WindowChoice::Given { center, width: 1.0 },
        ..Default::default()
    };
    // 16-bit unsigned: threshold at stored 1000 (c − 0.5 = 1000), and between 1000 and 1001.
    let mut w = words(60, 16, 16, 11);
    w[3..8].copy_from_slice(&[999, 1000, 1001, 0, 65535]);
    let spec = Spec::new(6, 10, 16, 16, w);
    for (c, name) in [(1000.5, "step_u16_int.dcm"), (1000.75, "step_u16_frac.dcm")] {
        check(&spec, step(c), name);
        let m1 = Spec {
            photometric: "MONOCHROME1",
            ..spec.clone()
        };
        check(&m1, step(c), &format!("m1_{name}"));
    }
    // Thresholds outside the stored range: everything on one side.
    check(&spec, step(-100.0), "step_u16_below.dcm");
    check(&spec, step(1e6), "step_u16_above.dcm");
    // The file's own window of width 1.
    check(
        &Spec {
            window: Some((1000.5, 1.0)),
            ..spec.clone()
        },
        Default::default(),
        "step_u16_file.dcm",
    );
    // Signed, negative slope: m = 100 − s/2; c − 0.5 = 80 at s = 40.
    let mut w = words(42, 16, 16, 12);
    w[3..6].copy_from_slice(&[39, 40, 41]);
    let spec = Spec {
        signed: true,
        slope: Some(-0.5),
        intercept: Some(100.0),
        ..Spec::new(6, 7, 16, 16, w)
    };
    for (c, name) in [
        (80.5, "step_negslope.dcm"),
        (80.25, "step_negslope_frac.dcm"),
    ] {
        check(&spec, step(c), name);
        let m1 = Spec {
            photometric: "MONOCHROME1",
            ..spec.clone()
        };
        check(&m1, step(c), &format!("m1_{name}"));
    }
    // 12-bit with a positive rescale: m = 2s − 1024; c − 0.5 = −24 at s = 500.
    let mut w = words(40, 12, 16, 13);
    w[3..6].copy_from_slice(&[499, 500, 501]);
    let spec = Spec {
        slope: Some(2.0),
        intercept: Some(-1024.0),
        photometric: "MONOCHROME1",
        ..Spec::new(5, 8, 16, 12, w)
    };
    check(&spec, step(-23.5), "step_u12_m1_rescale.dcm");
    // 8-bit.
    let mut w = words(45, 8, 8, 14);
    w[3..6].copy_from_slice(&[99, 100, 101]);
    check(&Spec::new(5, 9, 8, 8, w), step(100.5), "step_u8.dcm");
}

#[test]
fn center_crop_square_keeps_the_middle() {
    use medkern::input::RawImage;
    use medkern::ops::PixelRange;
    // 2 x 5 RGB u8: the middle 2 x 2 square is columns 1..3.
    let px: Vec<u8> = (0..2 * 5 * 3).map(|v| v as u8 + 1).collect();
    let raw = RawImage {
        pixels: medkern::HostTensor::new(&[1, 2, 5, 3], px.clone()).expect("pixels"),
        range: PixelRange::Scale(255.0),
        source: "test".into(),
    };
    let c = raw.center_crop_square().expect("crop");
    assert_eq!(c.pixels.shape(), &[1, 2, 2, 3]);
    let want: Vec<u8> = (0..2)
        .flat_map(|y| (1..3).flat_map(move |x| (0..3).map(move |k| (y * 5 + x) * 3 + k)))
        .map(|i| px[i])
        .collect();
    assert_eq!(c.pixels.as_slice::<u8>().expect("u8"), want.as_slice());
    // 5 x 2 u16 grey: rows 1..3.
    let px16: Vec<u16> = (0..10).map(|v| 1000 + v).collect();
    let raw = RawImage {
        pixels: medkern::HostTensor::new(&[1, 5, 2, 1], px16).expect("pixels"),
        range: PixelRange::Window {
            lo: 0.0,
            hi: 4095.0,
        },
        source: "test".into(),
    };
    let c = raw.center_crop_square().expect("crop");
    assert_eq!(c.pixels.shape(), &[1, 2, 2, 1]);
    assert_eq!(
        c.pixels.as_slice::<u16>().expect("u16"),
        &[1002, 1003, 1004, 1005]
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs (issue 15): deep nesting, lengths beyond the file, decompression bombs,
// truncated and corrupted JPEGs, files that are not regular files.

/// Records the largest single allocation request made on the current thread, so that a test
/// can show that a small hostile file never asks for gigabytes (a request that overcommit
/// would grant, or that fails cleanly, still counts).
struct Tracking;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note_allocation(n: usize) {
    let _ = LARGEST.try_with(|c| {
        if n > c.get() {
            c.set(n);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        note_allocation(new);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// `f()` and the largest single allocation it requested on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

/// The byte where the data set of a DICOM file starts (after the file meta group, whose
/// group length (0002,0000) is the UL value at bytes 140..144).
fn data_set_start(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[128..132], b"DICM");
    assert_eq!(&bytes[132..136], &[2, 0, 0, 0], "group length first");
    144 + u32::from_le_bytes(bytes[140..144].try_into().expect("4 bytes")) as usize
}

/// A good small DICOM file with `insert` placed at the start of its data set.
fn dicom_with(name: &str, ts: &'static str, insert: &[u8]) -> PathBuf {
    let spec = Spec {
        ts,
        ..Spec::new(4, 5, 16, 16, words(20, 16, 16, 31))
    };
    let p = write_dicom(&spec, name);
    let mut bytes = std::fs::read(&p).expect("read");
    let at = data_set_start(&bytes);
    bytes.splice(at..at, insert.iter().copied());
    std::fs::write(&p, &bytes).expect("write");
    p
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// A sequence header of (0008,1115) Referenced Series Sequence (SQ in the dictionary, so
/// implicit VR reads it as a sequence too) with length `len`.
fn seq_header(explicit: bool, len: u32) -> Vec<u8> {
    let mut v = [le16(0x0008), le16(0x1115)].concat();
    if explicit {
        v.extend_from_slice(b"SQ\0\0");
    }
    v.extend_from_slice(&le32(len));
    v
}

fn item_header(len: u32) -> Vec<u8> {
    [le16(0xFFFE).as_slice(), &le16(0xE000), &le32(len)].concat()
}

/// `depth` nested sequences of undefined length, each with one item of undefined length.
fn nested_undefined(explicit: bool, depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth {
        v.extend(seq_header(explicit, u32::MAX));
        v.extend(item_header(u32::MAX));
    }
    for _ in 0..depth {
        v.extend([le16(0xFFFE).as_slice(), &le16(0xE00D), &le32(0)].concat());
        v.extend([le16(0xFFFE).as_slice(), &le16(0xE0DD), &le32(0)].concat());
    }
    v
}

/// `depth` nested sequences of defined length, each with one item of defined length.
fn nested_defined(explicit: bool, depth: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut item = item_header(v.len() as u32);
        item.extend(&v);
        let mut seq = seq_header(explicit, item.len() as u32);
        seq.extend(item);
        v = seq;
    }
    v
}

/// Issue 15, defect 1: 20,000 nested sequences overflowed the stack inside the DICOM object
/// builder (abort). Now an error naming the file and the limit; depth up to the limit (64)
/// still reads, a lower limit can be set, and defined-length nesting is bounded too.
#[test]
fn dicom_deep_nesting_is_an_error_not_a_stack_overflow() {
    for (ts, explicit) in [(dcm::EXPLICIT_VR_LE, true), (dcm::IMPLICIT_VR_LE, false)] {
        let tag = if explicit { "explicit" } else { "implicit" };
        let p = dicom_with(
            &format!("deep_undefined_{tag}.dcm"),
            ts,
            &nested_undefined(explicit, 20_000),
        );
        let e = err_of(dcm::read(&p, &Default::default()));
        assert!(
            e.contains(&format!("deep_undefined_{tag}.dcm"))
                && e.contains("nested deeper than 64")
                && e.contains("max_dicom_depth"),
            "{e}"
        );
        // Through input::load as well (what the CLI and the C ABI call).
        let e = err_of(input::load(&p));
        assert!(e.contains("nested deeper than 64"), "{e}");

        let p = dicom_with(
            &format!("deep_defined_{tag}.dcm"),
            ts,
            &nested_defined(explicit, 20_000),
        );
        let e = err_of(dcm::read(&p, &Default::default()));
        assert!(
            e.contains(&format!("deep_defined_{tag}.dcm")) && e.contains("nested deeper than 64"),
            "{e}"
        );

        // At the limit: read (on a test thread's 2 MiB stack), and the image is intact.
        for (name, bytes) in [
            ("at_limit_undefined", nested_undefined(explicit, 64)),
            ("at_limit_defined", nested_defined(explicit, 64)),
        ] {
            let p = dicom_with(&format!("{name}_{tag}.dcm"), ts, &bytes);
            let d = dcm::read(&p, &Default::default()).expect("64 levels are read");
            assert_eq!((d.rows, d.cols), (4, 5));
            let p = dicom_with(
                &format!("{name}_plus1_{tag}.dcm"),
                ts,
                &if name.contains("undefined") {
                    nested_undefined(explicit, 65)
                } else {
                    nested_defined(explicit, 65)
                },
            );
            let e = err_of(dcm::read(&p, &Default::default()));
            assert!(e.contains("nested deeper than 64"), "{e}");
        }

        // A lower limit from the caller.
        let p = dicom_with(
            &format!("depth4_{tag}.dcm"),
            ts,
            &nested_undefined(explicit, 4),
        );
        let opts = dcm::DicomOptions {
            limits: input::InputLimits {
                max_dicom_depth: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = err_of(dcm::read(&p, &opts));
        assert!(e.contains("nested deeper than 3"), "{e}");
        dcm::read(&p, &Default::default()).expect("4 levels under the default limit");
    }
}

/// Issue 15, defect 2: an element declaring 0xFFFFFFF0 bytes in a file of a few hundred bytes
/// made the parser ask for 4 GB. Now an error before any allocation: in the data set, inside
/// a sequence item, and in the file meta group.
#[test]
fn dicom_length_beyond_the_file_is_an_error_before_allocating() {
    for (ts, explicit) in [(dcm::EXPLICIT_VR_LE, true), (dcm::IMPLICIT_VR_LE, false)] {
        let tag = if explicit { "explicit" } else { "implicit" };
        // A private OB element of 0xFFFFFFF0 bytes, 8 bytes present.
        let mut el = [le16(0x0009), le16(0x1010)].concat();
        if explicit {
            el.extend_from_slice(b"OB\0\0");
        }
        el.extend_from_slice(&le32(0xFFFF_FFF0));
        el.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let p = dicom_with(&format!("huge_len_{tag}.dcm"), ts, &el);
        let (r, largest) = largest_allocation(|| dcm::read(&p, &Default::default()));
        let e = err_of(r);
        assert!(
            e.contains(&format!("huge_len_{tag}.dcm"))
                && e.contains("(0009,1010)")
                && e.contains("declares 4294967280 bytes"),
            "{e}"
        );
        let size = std::fs::metadata(&p).expect("meta").len() as usize;
        assert!(
            largest <= 4 * size + 64 * 1024,
            "reading a {size}-byte file asked for {largest} bytes at once"
        );

        // An item longer than its (defined-length) sequence.
        let mut seq = seq_header(explicit, 16);
        seq.extend(item_header(1000));
        seq.extend([0u8; 8]);
        let p = dicom_with(&format!("item_past_seq_{tag}.dcm"), ts, &seq);
        let e = err_of(dcm::read(&p, &Default::default()));
        assert!(
            e.contains(&format!("item_past_seq_{tag}.dcm")) && e.contains("declares 1000 bytes"),
            "{e}"
        );
    }
    // In the file meta group: the Implementation Class UID (0002,0012) given 0xFFFF bytes
    // (the short 16-bit length of a UI), far more than the file holds... and the largest
    // 32-bit length, on an OB element (0002,0001) of the meta group.
    let good = write_dicom(
        &Spec::new(4, 5, 16, 16, words(20, 16, 16, 32)),
        "meta_ok.dcm",
    );
    let bytes = std::fs::read(&good).expect("read");
    let at = bytes
        .windows(4)
        .position(|w| w == [2, 0, 1, 0])
        .expect("(0002,0001) in the meta group");
    assert_eq!(&bytes[at + 4..at + 6], b"OB");
    let mut bad = bytes.clone();
    bad[at + 8..at + 12].copy_from_slice(&le32(0xFFFF_FFF0));
    let p = tmp("meta_huge.dcm");
    std::fs::write(&p, &bad).expect("write");
    let (r, largest) = largest_allocation(|| dcm::read(&p, &Default::default()));
    let e = err_of(r);
    assert!(
        e.contains("meta_huge.dcm") && e.contains("meta group") && e.contains("4294967280"),
        "{e}"
    );
    assert!(largest < 1 << 20, "asked for {largest} bytes");
}

/// A file larger than InputLimits::max_file_bytes is refused before it is read.
#[test]
fn input_file_size_limit() {
    let p = write_dicom(
        &Spec::new(4, 5, 16, 16, words(20, 16, 16, 33)),
        "size_limit.dcm",
    );
    let size = std::fs::metadata(&p).expect("meta").len();
    let limits = input::InputLimits {
        max_file_bytes: size - 1,
        ..Default::default()
    };
    let e = err_of(input::load_with(&p, &limits));
    assert!(
        e.contains("size_limit.dcm") && e.contains("max_file_bytes"),
        "{e}"
    );
    input::load_with(
        &p,
        &input::InputLimits {
            max_file_bytes: size,
            ..Default::default()
        },
    )
    .expect("at the limit");
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A small PNG whose IHDR is rewritten to claim `w`×`h` (CRC fixed).
fn png_claiming(name: &str, w: u32, h: u32) -> PathBuf {
    let grey = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x + y) as u8]));
    let p = tmp(name);
    grey.save(&p).expect("save");
    let mut b = std::fs::read(&p).expect("read");
    assert_eq!(&b[12..16], b"IHDR");
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&p, &b).expect("write");
    p
}

/// A small JPEG whose frame header (SOF0) is rewritten to claim `w`×`h`.
fn jpeg_claiming(name: &str, w: u16, h: u16) -> PathBuf {
    let p = tmp(name);
    gradient_rgb(16, 16).save(&p).expect("save jpeg");
    let mut b = std::fs::read(&p).expect("read");
    let sof = b
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2).
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    std::fs::write(&p, &b).expect("write");
    p
}

/// Issue 15, defect 3: a small PNG claiming 20000×20000 allocated 400 MB (and 4 GB on the
/// way to the model); a small JPEG claiming 12000×12000 decoded (grey-filled) at 432 MB. Now
/// both are errors from the header, naming the limit, without a large allocation; the limits
/// can be raised or lowered by the caller.
#[test]
fn image_dimension_bombs_are_errors_before_allocating() {
    let p = png_claiming("bomb.png", 20_000, 20_000);
    let size = std::fs::metadata(&p).expect("meta").len();
    assert!(size < 1000, "{size}");
    let (r, largest) = largest_allocation(|| input::load(&p));
    let e = err_of(r);
    assert!(
        e.contains("bomb.png") && e.contains("20000x20000") && e.contains("max_pixels"),
        "{e}"
    );
    assert!(
        largest < 16 << 20,
        "a {size}-byte PNG asked for {largest} bytes"
    );

    let p = jpeg_claiming("bomb.jpg", 12_000, 12_000);
    let (r, largest) = largest_allocation(|| input::load(&p));
    let e = err_of(r);
    assert!(
        e.contains("bomb.jpg") && e.contains("12000x12000") && e.contains("max_pixels"),
        "{e}"
    );
    assert!(largest < 16 << 20, "a small JPEG asked for {largest} bytes");

    // Within the pixel limit but over the allocation limit (RGB, 3 bytes a pixel).
    let p = jpeg_claiming("wide.jpg", 8000, 8000);
    let limits = input::InputLimits {
        max_alloc_bytes: 100 << 20,
        ..Default::default()
    };
    let e = err_of(input::load_with(&p, &limits));
    assert!(
        e.contains("wide.jpg") && e.contains("max_alloc_bytes"),
        "{e}"
    );

    // The caller's limits: a 16×16 image is refused under 100 pixels, read by default.
    let small = tmp("small.png");
    gradient_rgb(16, 16).save(&small).expect("save");
    let tiny = input::InputLimits {
        max_pixels: 100,
        ..Default::default()
    };
    let e = err_of(input::load_with(&small, &tiny));
    assert!(e.contains("small.png") && e.contains("256 pixels"), "{e}");
    input::load(&small).expect("16x16 under the default limits");
    let small = tmp("small.jpg");
    gradient_rgb(16, 16).save(&small).expect("save");
    let e = err_of(input::load_with(&small, &tiny));
    assert!(e.contains("small.jpg") && e.contains("256 pixels"), "{e}");
    let e = err_of(input::image::decode(
        &std::fs::read(tmp("bomb.png")).expect("read"),
        "in-memory.png",
    ));
    assert!(
        e.contains("in-memory.png") && e.contains("max_pixels"),
        "{e}"
    );
}

/// A noisy 128×96 RGB JPEG (so that its scan data are most of the file).
fn noisy_jpeg(name: &str) -> (PathBuf, Vec<u8>) {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let img = image::RgbImage::from_fn(128, 96, |x, y| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s % 64) as u32;
        image::Rgb([
            ((x * 2 + n) % 256) as u8,
            ((y * 2 + n) % 256) as u8,
            ((x + y + n) % 256) as u8,
        ])
    });
    let p = tmp(name);
    img.save(&p).expect("save jpeg");
    let b = std::fs::read(&p).expect("read");
    (p, b)
}

/// Issue 15, defect 4: a truncated JPEG (the first 10% of the file, or half of it) and one
/// with flipped bytes in its scan data classified with exit 0: the lenient decoder fills the
/// missing blocks with grey. Now errors naming the file (the lenient decoder of the `image`
/// crate is shown to accept each of them, so the test checks what it means to).
#[test]
fn truncated_or_corrupted_jpegs_are_errors_naming_the_file() {
    let (_, good) = noisy_jpeg("noisy.jpg");
    input::image::decode(&good, "noisy.jpg").expect("the intact JPEG decodes");
    let sos = good
        .windows(2)
        .position(|m| m == [0xFF, 0xDA])
        .expect("SOS marker");
    assert!(sos < good.len() / 10, "headers {sos} of {}", good.len());
    for (name, len) in [
        ("tenth.jpg", good.len() / 10),
        ("half.jpg", good.len() / 2),
        ("no_tail.jpg", good.len() - 200),
    ] {
        let cut = &good[..len];
        assert!(
            image::load_from_memory(cut).is_ok(),
            "{name}: the lenient decoder accepts it"
        );
        let p = tmp(name);
        std::fs::write(&p, cut).expect("write");
        let e = err_of(input::load(&p));
        assert!(e.contains(name) && e.contains("decode"), "{name}: {e}");
    }
    // 20 bytes of the scan data XOR-ed with junk. JPEG has no checksum, so only corruption
    // that breaks its syntax (an invalid Huffman code, a stray marker, a premature end) can be
    // detected; these two seeds do, and the lenient decoder returns an image for both.
    for seed in [7u64, 21] {
        let mut bad = good.clone();
        let mut r = seed;
        for _ in 0..20 {
            r = r
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let at = sos + 20 + (r >> 33) as usize % (good.len() - sos - 22);
            bad[at] ^= ((r >> 20) as u8) | 1;
        }
        assert!(
            image::load_from_memory(&bad).is_ok(),
            "seed {seed}: the lenient decoder accepts it"
        );
        let name = format!("flipped_{seed}.jpg");
        let p = tmp(&name);
        std::fs::write(&p, &bad).expect("write");
        let e = err_of(input::load(&p));
        assert!(e.contains(&name) && e.contains("corrupt"), "{e}");
    }
}

/// Only regular files are opened: a FIFO made the reader block forever, a folder gave an
/// I/O error. Both are errors naming what the path is (within a time limit), as are dangling
/// links and link loops.
#[cfg(unix)]
#[test]
fn fifos_and_folders_are_errors_not_hangs() {
    let dir = common::TempDir::new("input-fifo");
    let fifo = dir.path().join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send((
                input::load(&f).map(|_| ()).map_err(|e| e.to_string()),
                dcm::is_dicom(&f).map_err(|e| e.to_string()),
            ));
        });
        let (load, sniff) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("reading a FIFO hangs");
        let e = load.expect_err("a FIFO is an error");
        assert!(e.contains("pipe.png") && e.contains("FIFO"), "{e}");
        let e = sniff.expect_err("a FIFO is an error");
        assert!(e.contains("FIFO"), "{e}");
    } else {
        println!("SKIP input::fifos_and_folders_are_errors_not_hangs (FIFO part): no mkfifo");
    }
    let e = err_of(input::load(dir.path()));
    assert!(e.contains("a folder"), "{e}");
    // Links that cannot be followed say so.
    let dangling = dir.path().join("dangling.png");
    let looped = dir.path().join("loop.png");
    std::os::unix::fs::symlink(dir.path().join("nowhere.png"), &dangling).expect("link");
    std::os::unix::fs::symlink(&looped, &looped).expect("link");
    for p in [dangling, looped] {
        let e = err_of(input::load(&p));
        assert!(e.contains("symbolic link that cannot be followed"), "{e}");
    }
}

/// A small deterministic mutation sweep (not coverage-guided fuzzing): valid DICOM (both
/// transfer syntaxes, with a nested sequence), PNG and JPEG files with bytes flipped, runs of
/// bytes set to 0xFF or 0x00, 32-bit fields overwritten with large lengths, and truncations.
/// Every case must return (Ok or Err) without a panic and without asking for more than
/// 64 MiB at once.
#[test]
fn mutated_files_never_panic_nor_allocate_much() {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for (ts, explicit) in [(dcm::EXPLICIT_VR_LE, true), (dcm::IMPLICIT_VR_LE, false)] {
        let mut nested = nested_undefined(explicit, 3);
        nested.extend(nested_defined(explicit, 2));
        let p = dicom_with(&format!("fuzz_seed_{explicit}.dcm"), ts, &nested);
        seeds.push(("dcm", std::fs::read(&p).expect("read")));
    }
    let png = tmp("fuzz_seed.png");
    gradient_rgb(24, 16).save(&png).expect("save");
    seeds.push(("png", std::fs::read(&png).expect("read")));
    let (_, jpg) = noisy_jpeg("fuzz_seed.jpg");
    seeds.push(("jpg", jpg));
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut cases = 0;
    for (kind, seed) in &seeds {
        for _ in 0..2000 {
            let mut b = seed.clone();
            let n = b.len() as u64;
            match next() % 5 {
                0 => {
                    for _ in 0..1 + next() % 8 {
                        let at = (next() % n) as usize;
                        b[at] ^= 1 << (next() % 8);
                    }
                }
                1 => {
                    let at = (next() % n) as usize;
                    let len = (1 + next() % 6) as usize;
                    let v = if next() % 2 == 0 { 0xFF } else { 0x00 };
                    for x in b.iter_mut().skip(at).take(len) {
                        *x = v;
                    }
                }
                2 => {
                    let at = (next() % n.saturating_sub(4).max(1)) as usize;
                    let v: u32 =
                        [0xFFFF_FFF0, 0x7FFF_FFFF, 0x0010_0000, 0xFFFF_FFFF][(next() % 4) as usize];
                    if at + 4 <= b.len() {
                        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
                3 => b.truncate((next() % n) as usize),
                _ => {
                    let at = (next() % n) as usize;
                    let len = (next() % 64) as usize;
                    let end = (at + len).min(b.len());
                    b.drain(at..end);
                }
            }
            cases += 1;
            let name = format!("mutant.{kind}");
            let (r, largest) = largest_allocation(|| {
                std::panic::catch_unwind(|| match *kind {
                    "dcm" => dcm::from_bytes(&b, std::path::Path::new(&name), &Default::default())
                        .map(|_| ()),
                    _ => input::image::decode(&b, &name).map(|_| ()),
                })
            });
            assert!(r.is_ok(), "{kind} case {cases} panicked");
            assert!(
                largest <= 64 << 20,
                "{kind} case {cases} asked for {largest} bytes at once"
            );
        }
    }
}

/// Issue 15: `medkern exam` opened the image twice (the DICOM check, then the decoder). It
/// now reads the bytes once under the input limits and decodes those: a DICOM (with the
/// file's window or the given one) and a PNG both go through, the window options stay
/// DICOM-only, and --max-file-bytes applies to either format.
#[test]
fn cli_exam_reads_a_dicom_or_a_png() {
    let (r, c) = (24, 20);
    let spec = Spec {
        window: Some((1500.0, 2000.0)),
        ..Spec::new(r, c, 16, 12, words(r * c, 12, 16, 15))
    };
    let dcm_path = write_dicom(&spec, "exam-cli.dcm");
    let png_path = tmp("exam-cli.png");
    image::GrayImage::from_fn(c as u32, r as u32, |x, y| {
        image::Luma([(x * 7 + y * 3) as u8])
    })
    .save(&png_path)
    .expect("png");
    let emr = tmp("exam-cli-emr.json");
    std::fs::write(&emr, r#"{"age": 64, "spo2": 93}"#).expect("emr");
    let run = |image: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["exam", "--device", "cpu", "--image"])
            .arg(image)
            .arg("--emr")
            .arg(&emr)
            .args(extra)
            .output()
            .expect("run medkern");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let json = out
            .status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"));
        (json, stderr)
    };
    let (v, err) = run(&dcm_path, &[]);
    let v = v.unwrap_or_else(|| panic!("dicom: {err}"));
    let info = &v["image_input"];
    assert_eq!(info["format"], "dicom", "{v}");
    assert_eq!(
        (info["rows"].as_u64(), info["columns"].as_u64()),
        (Some(24), Some(20))
    );
    assert_eq!(info["window"]["center"], 1500.0);
    assert!(v["oxygen_24h"].as_f64().is_some_and(f64::is_finite), "{v}");
    let (v, err) = run(
        &dcm_path,
        &["--window-center", "800", "--window-width", "901"],
    );
    let v = v.unwrap_or_else(|| panic!("dicom, given window: {err}"));
    assert_eq!(v["image_input"]["window"]["width"], 901.0);

    let (v, err) = run(&png_path, &[]);
    let v = v.unwrap_or_else(|| panic!("png: {err}"));
    let info = &v["image_input"];
    assert_eq!(info["format"], "image", "{v}");
    assert_eq!(
        (info["height"].as_u64(), info["width"].as_u64()),
        (Some(24), Some(20))
    );
    assert!(v["oxygen_24h"].as_f64().is_some_and(f64::is_finite), "{v}");
    let (v, err) = run(
        &png_path,
        &["--window-center", "800", "--window-width", "901"],
    );
    assert!(v.is_none() && err.contains("DICOM files only"), "{err}");

    for p in [&dcm_path, &png_path] {
        let (v, err) = run(p, &["--max-file-bytes", "100"]);
        assert!(v.is_none(), "{}: over --max-file-bytes", p.display());
        assert!(
            err.contains("max_file_bytes") && err.contains(&p.display().to_string()),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Issue 15: the CPU preprocessing resamples straight from the u8 pixels. It converted the whole
/// image to f64 first (8 bytes per pixel byte: 96 MB for this 12 MB image) before shrinking it
/// to the model's 224 x 224.
#[test]
fn cpu_preprocess_makes_no_f64_copy_of_the_whole_image() {
    let (h, w) = (2000usize, 2000usize);
    let px: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 251) as u8).collect();
    let x = medkern::Tensor::new(&Device::Cpu, &[1, h, w, 3], px).expect("tensor");
    let p = Preprocess::imagenet((224, 224));
    let (y, largest) = largest_allocation(|| medkern::ops::preprocess(&x, &p, DType::F32));
    let y = y.expect("preprocess").to_host().expect("host");
    assert_eq!(y.shape(), &[1, 224, 224, 3]);
    assert!(
        largest < h * w * 3,
        "largest allocation {largest} bytes: a copy of the whole {}-byte image or more",
        h * w * 3
    );
    // The values are the reference's, computed here from the same pixels widened to f64.
    let xs: Vec<f64> = x.to_host().expect("host").to_f64();
    let want = medkern::reference::preprocess::preprocess(
        &xs,
        (1, h, w, 3),
        (224, 224, 3),
        medkern::reference::preprocess::ValueMap {
            lo: 0.0,
            range: 255.0,
            clamp01: false,
        },
        &p.mean.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        &p.std.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    );
    let got = y.to_f64();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(*g, (*w as f32) as f64, "pixel value {i}");
    }
}

/// Issue 15: on the CPU backend, `RawImage::preprocess` cloned the whole image
/// (`HostTensor::to_device(&Device::Cpu)` copies) and `center_crop_square` copied the crop
/// into a new buffer: two full-size copies of a 12 MB image before it is shrunk to 224 x 224.
/// The crop now moves the rows inside the image's own buffer and the CPU preprocess reads the
/// pixels where they are; the values are those of the old path (crop made by hand, then
/// `ops::preprocess`).
#[test]
fn cpu_crop_and_preprocess_make_no_copy_of_the_image() {
    use medkern::input::RawImage;
    let (h, w) = (1500usize, 2000usize);
    let px: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 251) as u8).collect();
    let p = Preprocess::imagenet((224, 224));
    let raw = RawImage {
        pixels: medkern::HostTensor::new(&[1, h, w, 3], px.clone()).expect("pixels"),
        range: PixelRange::Scale(255.0),
        source: "test".into(),
    };
    // Preprocess alone, on the uncropped image.
    let (y, largest) = largest_allocation(|| raw.preprocess(&Device::Cpu, &p, DType::F32));
    y.expect("preprocess");
    assert!(
        largest < h * w * 3,
        "preprocess: largest allocation {largest} bytes: a copy of the whole {}-byte image",
        h * w * 3
    );
    // Crop, then preprocess: what medkern classify and the C ABI do.
    let (y, largest) = largest_allocation(|| {
        raw.center_crop_square()
            .and_then(|c| c.preprocess(&Device::Cpu, &p, DType::F32))
    });
    let y = y.expect("crop + preprocess").to_host().expect("host");
    assert!(
        largest < h * h * 3,
        "crop + preprocess: largest allocation {largest} bytes: a copy of the {}-byte crop",
        h * h * 3
    );
    let left = (w - h) / 2;
    let crop: Vec<u8> = (0..h)
        .flat_map(|r| {
            px[(r * w + left) * 3..(r * w + left + h) * 3]
                .iter()
                .copied()
        })
        .collect();
    let x = medkern::Tensor::new(&Device::Cpu, &[1, h, h, 3], crop).expect("crop tensor");
    let want = medkern::ops::preprocess(&x, &p, DType::F32)
        .expect("reference")
        .to_host()
        .expect("host");
    assert_eq!(y, want);
}

/// `HostTensor::crop_nhwc` crops every image of a batch in place, any dtype, and refuses a
/// window outside the image.
#[test]
fn crop_nhwc_crops_each_image_in_place() {
    let (n, h, w, c) = (2usize, 4usize, 5usize, 2usize);
    let v: Vec<u16> = (0..n * h * w * c).map(|i| i as u16).collect();
    let t = medkern::HostTensor::new(&[n, h, w, c], v.clone()).expect("tensor");
    let got = t.clone().crop_nhwc(1, 2, 2, 3).expect("crop");
    assert_eq!(got.shape(), &[n, 2, 3, c]);
    let want: Vec<u16> = (0..n)
        .flat_map(|i| (1..3).flat_map(move |y| (2..5).map(move |x| (i, y, x))))
        .flat_map(|(i, y, x)| (0..c).map(move |k| (((i * h + y) * w + x) * c + k) as u16))
        .collect();
    assert_eq!(got.as_slice::<u16>().expect("u16"), want.as_slice());
    let whole = t.clone().crop_nhwc(0, 0, h, w).expect("whole");
    assert_eq!(whole.as_slice::<u16>().expect("u16"), v.as_slice());
    for (top, left, rows, cols) in [(3, 0, 2, 1), (0, 4, 1, 2), (usize::MAX, 0, 2, 1)] {
        let e = t
            .clone()
            .crop_nhwc(top, left, rows, cols)
            .expect_err("outside")
            .to_string();
        assert!(e.contains("crop_nhwc") && e.contains("4 x 5"), "{e}");
    }
}

/// Issue 15: the image models bound the images of one call (default 4096,
/// `with_max_batch`), before anything is allocated for them: an error naming max_batch and
/// the count, for the CNNs, their u8 entry points and EXAM; a batch within the limit runs.
#[test]
fn image_models_bound_their_batch() {
    use medkern::model::efficientnet::{self as en, EfficientNet, EfficientNetConfig};
    use medkern::model::exam::{ExamConfig, ExamModel};
    use medkern::model::resnet::{self, ResNet, ResNetConfig};
    use medkern::model::sepsis::{self, Autoencoder, SepsisNet};
    let dev = Device::Cpu;
    let f32x = |n: usize, s: usize| {
        medkern::Tensor::new(&dev, &[n, s, s, 3], vec![0.5f32; n * s * s * 3]).expect("x")
    };
    let u8x =
        |n: usize| medkern::Tensor::new(&dev, &[n, 8, 8, 3], vec![9u8; n * 8 * 8 * 3]).expect("u8");
    let refused = |what: &str, r: medkern::Result<()>| {
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{what}: 3 images over max_batch 2"));
        let msg = e.to_string();
        assert!(
            matches!(e, medkern::Error::Invalid { .. })
                && msg.contains("max_batch")
                && msg.contains("3 in one batch")
                && msg.contains("at most 2"),
            "{what}: {msg}"
        );
    };
    let s = SepsisNet::from_safetensors(
        &sepsis::random_sepsis(1).to_safetensors().expect("bytes"),
        &dev,
        DType::F32,
    )
    .expect("sepsis");
    assert_eq!(s.max_batch(), medkern::input::DEFAULT_MAX_BATCH);
    let s = s.with_max_batch(2);
    refused("sepsis", s.forward(&f32x(3, 8)).map(|_| ()));
    refused("sepsis u8", s.classify_u8(&u8x(3), (8, 8)).map(|_| ()));
    s.forward(&f32x(2, 8)).expect("2 images run");
    let r = ResNet::from_safetensors(
        &resnet::random_resnet(&ResNetConfig::resnet18(4), 1)
            .to_safetensors()
            .expect("bytes"),
        ResNetConfig::resnet18(4),
        &dev,
        DType::F32,
    )
    .expect("resnet")
    .with_max_batch(2);
    refused("resnet", r.forward(&f32x(3, 8)).map(|_| ()));
    refused("resnet u8", r.classify_u8(&u8x(3), (8, 8)).map(|_| ()));
    let ae = Autoencoder::from_safetensors(
        &sepsis::random_autoencoder(1)
            .to_safetensors()
            .expect("bytes"),
        &dev,
        DType::F32,
    )
    .expect("autoencoder")
    .with_max_batch(2);
    refused("autoencoder", ae.forward(&f32x(3, 8)).map(|_| ()));
    let cfg = EfficientNetConfig::lite(0).expect("lite0");
    let e = EfficientNet::from_bytes(
        &en::to_safetensors(&en::random_weights(&cfg, 1).expect("weights")).expect("bytes"),
        cfg,
        &dev,
        DType::F32,
    )
    .expect("lite0")
    .with_max_batch(2);
    refused("efficientnet", e.forward(&f32x(3, 8)).map(|_| ()));
    let x = ExamModel::random(&ExamConfig::default(), 1, &dev, DType::F32)
        .expect("exam")
        .with_max_batch(2);
    assert_eq!(x.max_batch(), 2);
    let emr = medkern::Tensor::new(
        &dev,
        &[3, x.head.config.emr.dim()],
        vec![0f32; 3 * x.head.config.emr.dim()],
    )
    .expect("emr");
    refused("exam", x.forward(&f32x(3, 8), &emr).map(|_| ()));
}

/// The default batch limit is documented, and `InputLimits::max_batch` defaults to it.
#[test]
fn batch_limit_default_is_4096() {
    assert_eq!(medkern::input::DEFAULT_MAX_BATCH, 4096);
    assert_eq!(input::InputLimits::default().max_batch, 4096);
    medkern::input::check_batch("op", "images", 4096, 4096).expect("at the limit");
    let e = medkern::input::check_batch("op", "images", 4097, 4096)
        .expect_err("over")
        .to_string();
    assert_eq!(
        e,
        "op: invalid images: 4097 in one batch; expected at most 4096 (the max_batch limit)"
    );
}
