//! The C ABI (src/capi.rs, include/medkern.h):
//! - every function's error path: NULL handles and pointers, bad names and enum values, short
//!   buffers (nothing written), missing files; each a status code plus a message naming the
//!   argument;
//! - results through the ABI equal the Rust API's on the real MiniLM and EfficientNet-Lite0
//!   (which tests/bert.rs and tests/efficientnet.rs check against candle), row layout and
//!   normalisation included; the random-weight sepsis net and EXAM through the ABI;
//! - a C program (tests/c/capi_smoke.c) compiled with `cc -std=c11 -Wall -Wextra -Werror
//!   -pedantic` against the header, linked to `libmedkern.so`, and run, also under valgrind
//!   (no memory error, no definite leak; a counted SKIP without valgrind, a failure with
//!   MEDKERN_REQUIRE_VALGRIND=1); the header also compiles as C++.
//!
//! Real-model tests need scripts/setup-models (`MEDKERN_SKIP_MODELS=1`: counted SKIP).
// This file needs the `tokenizers` and `image` features (text entry points, PNG fixtures).
#![cfg(all(feature = "tokenizers", feature = "image"))]

mod common;
use common::model_or_skip;

use common::skip;
use medkern::capi::*;
use medkern::model::bert::{BertModel, BertTokenizer, Pooling};
use medkern::{DType, Device};
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr;

fn last_error() -> String {
    // SAFETY: mk_last_error returns a live NUL-terminated string.
    unsafe { CStr::from_ptr(mk_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn open(spec: &str) -> *mut MkDevice {
    let mut d = ptr::null_mut();
    // SAFETY: valid string and out-pointer.
    let st = unsafe { mk_device_open(c(spec).as_ptr(), &mut d) };
    assert_eq!(st, MkStatus::Ok, "mk_device_open({spec}): {}", last_error());
    assert!(!d.is_null());
    d
}

#[test]
fn identity_and_device_handles() {
    assert_eq!(mk_abi_version(), 3);
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(mk_version()) }
        .to_str()
        .expect("utf8");
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let dev = open("cpu");
    // SAFETY: live handle.
    assert_eq!(unsafe { mk_device_is_gpu(dev) }, 0);
    assert_eq!(last_error(), "", "a success clears the last error");
    // The two-call string protocol.
    let mut need = 0usize;
    // SAFETY: NULL buffer with cap 0 is allowed; needed is writable.
    let st = unsafe { mk_device_describe(dev, ptr::null_mut(), 0, &mut need) };
    assert_eq!(st, MkStatus::BufferTooSmall);
    assert!(last_error().contains("buffer holds 0"), "{}", last_error());
    let mut buf = vec![0x7f as c_char; need];
    // SAFETY: buf holds `need` bytes.
    let st = unsafe { mk_device_describe(dev, buf.as_mut_ptr(), need, ptr::null_mut()) };
    assert_eq!(st, MkStatus::Ok, "{}", last_error());
    // SAFETY: NUL-terminated by the call.
    let desc = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .expect("utf8");
    assert_eq!(desc, Device::Cpu.describe());
    assert_eq!(desc.len() + 1, need);
    // One byte short: refused, the buffer untouched.
    let mut short = vec![0x7f as c_char; need - 1];
    // SAFETY: short holds need-1 bytes.
    let st = unsafe { mk_device_describe(dev, short.as_mut_ptr(), need - 1, ptr::null_mut()) };
    assert_eq!(st, MkStatus::BufferTooSmall);
    assert!(short.iter().all(|&b| b == 0x7f));
    // SAFETY: live handle, then NULL (accepted).
    unsafe {
        mk_device_free(dev);
        mk_device_free(ptr::null_mut());
    }
    // "auto" (and NULL) open something: the GPU when one works, else the CPU.
    let mut d = ptr::null_mut();
    // SAFETY: NULL spec is documented as "auto".
    assert_eq!(unsafe { mk_device_open(ptr::null(), &mut d) }, MkStatus::Ok);
    // SAFETY: live handle.
    unsafe {
        assert_eq!(
            mk_device_is_gpu(d) == 1,
            matches!(Device::best(), Device::Gpu(_))
        );
        mk_device_free(d);
    }
}

/// Issue 15: "auto" fell back to the CPU without a trace of why the GPU was not used. The
/// handle keeps the reason and mk_device_describe reports it; a GPU, or "cpu" asked for, says
/// nothing of the kind.
#[test]
fn auto_device_keeps_why_the_gpu_was_not_used() {
    let describe = |d: *mut MkDevice| {
        let mut need = 0usize;
        // SAFETY: live handle; NULL buffer with cap 0, then a buffer of `need` bytes.
        unsafe {
            mk_device_describe(d, ptr::null_mut(), 0, &mut need);
            let mut buf = vec![0 as c_char; need];
            let st = mk_device_describe(d, buf.as_mut_ptr(), need, ptr::null_mut());
            assert_eq!(st, MkStatus::Ok, "{}", last_error());
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    };
    let auto = open("auto");
    let desc = describe(auto);
    match Device::best_or_why() {
        (Device::Cpu, Some(why)) => {
            // SAFETY: live handle.
            assert_eq!(unsafe { mk_device_is_gpu(auto) }, 0);
            assert_eq!(
                desc,
                format!("cpu (auto: the GPU did not start: {why})"),
                "the reason, as the Rust API gives it"
            );
        }
        (dev, _) => assert_eq!(desc, dev.describe()),
    }
    let cpu = open("cpu");
    assert_eq!(describe(cpu), "cpu");
    // SAFETY: live handles, freed once.
    unsafe {
        mk_device_free(auto);
        mk_device_free(cpu);
    }
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    let mut d = ptr::null_mut();
    for (spec, word) in [("tpu", "tpu"), ("gpu:x", "gpu:x"), ("", "\"\"")] {
        // SAFETY: valid string and out-pointer.
        let st = unsafe { mk_device_open(c(spec).as_ptr(), &mut d) };
        assert_eq!(st, MkStatus::InvalidArgument, "{spec}");
        let e = last_error();
        assert!(e.contains("spec") && e.contains(word), "{e}");
        assert!(d.is_null(), "nothing is returned on failure");
    }
    // A GPU ordinal that cannot exist: a device error, never a panic.
    // SAFETY: valid string and out-pointer.
    let st = unsafe { mk_device_open(c("gpu:4096").as_ptr(), &mut d) };
    assert_eq!(st, MkStatus::Device, "{}", last_error());
    // NULL out-pointer.
    // SAFETY: testing the NULL check.
    let st = unsafe { mk_device_open(c("cpu").as_ptr(), ptr::null_mut()) };
    assert_eq!(st, MkStatus::InvalidArgument);
    assert!(last_error().contains("out"), "{}", last_error());
    // Non-UTF-8 text.
    let bad = [0xffu8 as c_char, 0];
    // SAFETY: NUL-terminated.
    let st = unsafe { mk_device_open(bad.as_ptr(), &mut d) };
    assert_eq!(st, MkStatus::InvalidArgument);
    assert!(last_error().contains("UTF-8"), "{}", last_error());

    let dev = open("cpu");
    let mut bert = ptr::null_mut();
    // A folder that is not there.
    // SAFETY: valid handle, strings and out-pointer throughout.
    unsafe {
        let st = mk_bert_load(dev, c("/nonexistent/model").as_ptr(), 0, 0, &mut bert);
        assert_eq!(st, MkStatus::Io, "{}", last_error());
        assert!(
            last_error().contains("/nonexistent/model"),
            "{}",
            last_error()
        );
        let st = mk_bert_load(dev, c("/tmp").as_ptr(), 7, 0, &mut bert);
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("dtype") && last_error().contains('7'));
        let st = mk_bert_load(ptr::null(), c("/tmp").as_ptr(), 0, 0, &mut bert);
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("dev"), "{}", last_error());
        assert!(bert.is_null());
        // Functions on NULL model handles.
        let mut out = [0f32; 4];
        let texts = [c("x")];
        let tp: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
        let st = mk_bert_embed(ptr::null(), tp.as_ptr(), 1, 0, 0, out.as_mut_ptr(), 4);
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("model"), "{}", last_error());
        assert_eq!(mk_bert_dim(ptr::null()), 0);
        assert_eq!(mk_bert_num_labels(ptr::null()), 0);
        mk_bert_free(ptr::null_mut());

        let mut img = ptr::null_mut();
        let st = mk_image_model_load(dev, c("vgg16").as_ptr(), ptr::null(), 0, &mut img);
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("vgg16") && last_error().contains("lite0"));
        let st = mk_image_model_load(
            dev,
            c("cxr").as_ptr(),
            c("/nonexistent/w.safetensors").as_ptr(),
            0,
            &mut img,
        );
        assert_eq!(st, MkStatus::Io, "{}", last_error());
        assert!(img.is_null());
        assert_eq!(mk_image_model_num_outputs(ptr::null()), 0);
        mk_image_model_free(ptr::null_mut());
        let mut ex = ptr::null_mut();
        let st = mk_exam_load(dev, c("/nonexistent/exam.safetensors").as_ptr(), 0, &mut ex);
        assert_eq!(st, MkStatus::Io, "{}", last_error());
        mk_exam_free(ptr::null_mut());
        mk_device_free(dev);
    }
}

/// Random u8 RGB pixels `[n, h, w, 3]` (not zeros: the nets must see structure).
fn pixels(n: usize, h: usize, w: usize, seed: u64) -> Vec<u8> {
    let mut r = common::SeedRng::new(seed);
    (0..n * h * w * 3)
        .map(|i| ((i % 97) as f64 + 100.0 * r.uniform()) as u8)
        .collect()
}

#[test]
fn sepsis_and_exam_through_the_abi() {
    let dev = open("cpu");
    // SAFETY: valid handles, strings, buffers of the stated lengths throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_image_model_load(dev, c("sepsis").as_ptr(), ptr::null(), MK_DTYPE_F32, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(mk_image_model_num_outputs(m), 2);
        // Two images, one non-square (cropped to its centre square) of a size the model does
        // not take natively (resized).
        let (h, w) = (61, 83);
        let px = pixels(2, h, w, 5);
        let mut out = vec![f32::NAN; 5];
        // Bad shapes and short buffers: errors, nothing written.
        let st = mk_image_classify_u8(m, px.as_ptr(), 2, h, w, 4, out.as_mut_ptr(), 4);
        assert_eq!(st, MkStatus::Shape, "{}", last_error());
        let st = mk_image_classify_u8(m, px.as_ptr(), 2, h, w, 3, out.as_mut_ptr(), 3);
        assert_eq!(st, MkStatus::BufferTooSmall, "{}", last_error());
        assert!(last_error().contains("needs 4"), "{}", last_error());
        assert!(out.iter().all(|v| v.is_nan()));
        let st = mk_image_classify_u8(m, ptr::null(), 2, h, w, 3, out.as_mut_ptr(), 4);
        assert_eq!(st, MkStatus::InvalidArgument);
        let st = mk_image_classify_u8(m, px.as_ptr(), 2, h, w, 3, out.as_mut_ptr(), 5);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert!(out[..4].iter().all(|v| v.is_finite()), "{out:?}");
        assert!(out[4].is_nan(), "wrote past n × outputs");
        assert_ne!(out[0..2], out[2..4], "different images, different logits");
        // Each row equals the image classified alone (batch rows are independent).
        let mut one = [f32::NAN; 2];
        let st = mk_image_classify_u8(m, px[h * w * 3..].as_ptr(), 1, h, w, 3, one.as_mut_ptr(), 2);
        assert_eq!(st, MkStatus::Ok);
        assert_eq!(one, [out[2], out[3]]);
        mk_image_model_free(m);

        // EXAM: a PNG file and an EMR record.
        let mut ex = ptr::null_mut();
        let st = mk_exam_load(dev, ptr::null(), MK_DTYPE_F32, &mut ex);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let dir = std::env::temp_dir().join(format!("medkern-capi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let png = dir.join("cxr.png");
        let grey: Vec<u8> = pixels(1, 96, 80, 9).into_iter().step_by(3).collect();
        image::GrayImage::from_raw(80, 96, grey)
            .expect("image")
            .save(&png)
            .expect("write png");
        let pngc = c(png.to_str().expect("utf8 path"));
        let emr = c(r#"{"age": 63, "spo2": 91, "respiratory_rate": 24}"#);
        let mut o = MkExamOutput::default();
        let st = mk_exam_predict(ex, pngc.as_ptr(), emr.as_ptr(), &mut o);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let s: f32 = o.ordinal_probs.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "{o:?}");
        let best = (0..5)
            .max_by(|&a, &b| o.ordinal_probs[a].total_cmp(&o.ordinal_probs[b]))
            .expect("5 classes");
        assert_eq!(o.ordinal_class as usize, best);
        assert!((0.0..=1.0).contains(&o.oxygen_24h) && (0.0..=1.0).contains(&o.oxygen_72h));
        // Bad EMR: not JSON; a value of the wrong type.
        let st = mk_exam_predict(ex, pngc.as_ptr(), c("{age: 63").as_ptr(), &mut o);
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("emr_json"), "{}", last_error());
        let st = mk_exam_predict(ex, pngc.as_ptr(), c(r#"{"age": "old"}"#).as_ptr(), &mut o);
        assert_ne!(st, MkStatus::Ok);
        assert!(last_error().contains("age"), "{}", last_error());
        let st = mk_exam_predict(ex, pngc.as_ptr(), emr.as_ptr(), ptr::null_mut());
        assert_eq!(st, MkStatus::InvalidArgument);
        mk_exam_free(ex);
        mk_device_free(dev);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

const TEXTS: [&str; 4] = [
    "The patient presents with fever, productive cough and shortness of breath.",
    "Chest X-ray shows bilateral infiltrates.",
    "a",
    "Oxygen saturation 88% on room air; started on 2 L/min nasal cannula.",
];

/// MiniLM through the ABI on `spec`; returns (texts embedding, ids embedding, dim).
fn minilm_abi(spec: &str, dir: &Path, pooling: i32, normalize: i32) -> (Vec<f32>, Vec<f32>, usize) {
    let dev = open(spec);
    // SAFETY: valid handles, strings, buffers of the stated lengths throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_bert_load(dev, c(dir.to_str().expect("utf8")).as_ptr(), 0, 0, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        mk_device_free(dev); // the model keeps its device
        let dim = mk_bert_dim(m);
        let cs: Vec<CString> = TEXTS.iter().map(|t| c(t)).collect();
        let ptrs: Vec<*const c_char> = cs.iter().map(|s| s.as_ptr()).collect();
        let n = TEXTS.len();
        let mut out = vec![f32::NAN; n * dim + 1];
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            n,
            pooling,
            normalize,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert!(out[n * dim].is_nan(), "wrote past n × dim");
        out.truncate(n * dim);
        // The same through pre-tokenised ids (one concatenated array).
        let tok = BertTokenizer::load(dir, 512).expect("tokenizer");
        let ids = tok.encode(&TEXTS).expect("encode");
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let flat: Vec<u32> = ids.concat();
        let mut out2 = vec![f32::NAN; n * dim];
        let st = mk_bert_embed_ids(
            m,
            flat.as_ptr(),
            lens.as_ptr(),
            n,
            pooling,
            normalize,
            out2.as_mut_ptr(),
            out2.len(),
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        // Errors: short buffer (nothing written), bad pooling, no texts, NULL text.
        let mut short = vec![f32::NAN; n * dim - 1];
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            n,
            pooling,
            0,
            short.as_mut_ptr(),
            short.len(),
        );
        assert_eq!(st, MkStatus::BufferTooSmall);
        assert!(short.iter().all(|v| v.is_nan()));
        let st = mk_bert_embed(m, ptrs.as_ptr(), n, 5, 0, out2.as_mut_ptr(), out2.len());
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("pooling"), "{}", last_error());
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            0,
            pooling,
            0,
            out2.as_mut_ptr(),
            out2.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument);
        let nulls = [ptr::null::<c_char>()];
        let st = mk_bert_embed(
            m,
            nulls.as_ptr(),
            1,
            pooling,
            0,
            out2.as_mut_ptr(),
            out2.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("texts"), "{}", last_error());
        let empty: [usize; 1] = [0];
        let st = mk_bert_embed_ids(
            m,
            flat.as_ptr(),
            empty.as_ptr(),
            1,
            0,
            0,
            out2.as_mut_ptr(),
            dim,
        );
        assert_ne!(st, MkStatus::Ok, "an empty sequence is an error");
        mk_bert_free(m);
        (out, out2, dim)
    }
}

#[test]
fn minilm_through_the_abi_equals_the_rust_api() {
    let Some(dir) = model_or_skip(
        "minilm_through_the_abi_equals_the_rust_api",
        "all-MiniLM-L6-v2",
    ) else {
        return;
    };
    let model = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
    let ids = BertTokenizer::load(&dir, 512)
        .expect("tokenizer")
        .encode(&TEXTS)
        .expect("encode");
    for (pooling, pool) in [
        (MK_POOLING_MEAN, Pooling::Mean),
        (MK_POOLING_CLS, Pooling::Cls),
        (MK_POOLING_MAX, Pooling::Max),
    ] {
        let want: Vec<Vec<f32>> = model.embed(&ids, pool).expect("embed");
        let (raw, raw_ids, dim) = minilm_abi("cpu", &dir, pooling, 0);
        assert_eq!(dim, 384);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&raw[i * dim..(i + 1) * dim], &w[..], "row {i} ({pool:?})");
            assert_eq!(&raw_ids[i * dim..(i + 1) * dim], &w[..], "ids row {i}");
        }
        let (unit, _, _) = minilm_abi("cpu", &dir, pooling, 1);
        for (i, w) in want.iter().enumerate() {
            let norm = w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            for (j, &v) in w.iter().enumerate() {
                let e = f64::from(v) / norm;
                let g = f64::from(unit[i * dim + j]);
                assert!(
                    (g - e).abs() <= 1e-6 + 1e-6 * e.abs(),
                    "row {i} col {j}: {g} vs {e}"
                );
            }
        }
    }
}

/// MK_POOLING_DEFAULT takes MiniLM's sentence-transformers modules: mean pooling, then its
/// Normalize module (unit rows even with normalize 0); max_len 0 is its max_seq_length (256).
#[test]
fn minilm_default_pooling_follows_the_folder() {
    let Some(dir) = model_or_skip(
        "minilm_default_pooling_follows_the_folder",
        "all-MiniLM-L6-v2",
    ) else {
        return;
    };
    let (unit, unit_ids, dim) = minilm_abi("cpu", &dir, MK_POOLING_DEFAULT, 0);
    let (want, _, _) = minilm_abi("cpu", &dir, MK_POOLING_MEAN, 1);
    assert_eq!(unit, want);
    assert_eq!(unit_ids, want);
    for row in unit.chunks(dim) {
        let n = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((n - 1.0).abs() < 1e-6, "norm {n}");
    }
    let dev = open("cpu");
    // SAFETY: valid handles, strings and buffers throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_bert_load(dev, c(dir.to_str().expect("utf8")).as_ptr(), 0, 0, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let long = "fever ".repeat(400);
        let text = c(&long);
        let ptrs = [text.as_ptr()];
        let mut out = vec![0f32; dim];
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            1,
            MK_POOLING_DEFAULT,
            0,
            out.as_mut_ptr(),
            dim,
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        // The text's first 256 tokens, mean-pooled and scaled to unit length here.
        let ids = BertTokenizer::load(&dir, 256)
            .expect("tokenizer")
            .encode(&[long.as_str()])
            .expect("ids");
        assert_eq!(ids[0].len(), 256);
        let model = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
        let mean = &model.embed(&ids, Pooling::Mean).expect("embed")[0];
        let n = mean
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        for (j, (&g, &w)) in out.iter().zip(mean).enumerate() {
            let e = f64::from(w) / n;
            assert!((f64::from(g) - e).abs() <= 1e-6, "col {j}: {g} vs {e}");
        }
        mk_bert_free(m);
        mk_device_free(dev);
    }
}

#[test]
fn gpu_minilm_through_the_abi() {
    let Some(_gpu) = common::gpu_or_skip("gpu_minilm_through_the_abi") else {
        return;
    };
    let Some(dir) = model_or_skip("gpu_minilm_through_the_abi", "all-MiniLM-L6-v2") else {
        return;
    };
    let spec = if common::emulated() { "emu" } else { "gpu:0" };
    let (gpu, _, dim) = minilm_abi(spec, &dir, MK_POOLING_MEAN, 1);
    let (cpu, _, _) = minilm_abi("cpu", &dir, MK_POOLING_MEAN, 1);
    for i in 0..TEXTS.len() {
        let cos: f64 = (0..dim)
            .map(|j| f64::from(gpu[i * dim + j]) * f64::from(cpu[i * dim + j]))
            .sum();
        assert!(cos > 0.999, "text {i}: f16 GPU vs f32 CPU cosine {cos}");
    }
}

#[test]
fn lite0_through_the_abi_equals_the_rust_api() {
    let test = "lite0_through_the_abi_equals_the_rust_api";
    let (Some(w), Some(imgs)) = (
        model_or_skip(test, "efficientnet-lite0/model.safetensors"),
        model_or_skip(test, "images"),
    ) else {
        return;
    };
    let dev = open("cpu");
    // SAFETY: valid handles, strings, buffers of the stated lengths throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let wc = c(w.to_str().expect("utf8"));
        let st = mk_image_model_load(dev, c("lite0").as_ptr(), wc.as_ptr(), MK_DTYPE_F32, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(mk_image_model_num_outputs(m), 1000);
        // The file path and the decoded pixels give the same logits; the photograph's class
        // is among the right ones (the Rust test's list).
        let photo = imgs.join("chelsea.png");
        let mut from_file = vec![f32::NAN; 1000];
        let pc = c(photo.to_str().expect("utf8"));
        let st = mk_image_classify_file(m, pc.as_ptr(), from_file.as_mut_ptr(), 1000);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let rgb = image::open(&photo).expect("decode").to_rgb8();
        let (iw, ih) = (rgb.width() as usize, rgb.height() as usize);
        let mut from_px = vec![f32::NAN; 1000];
        let st = mk_image_classify_u8(
            m,
            rgb.as_raw().as_ptr(),
            1,
            ih,
            iw,
            3,
            from_px.as_mut_ptr(),
            1000,
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(from_file, from_px);
        let top = medkern::model::efficientnet::top_k(&from_file, 1)[0];
        assert!((281..=285).contains(&top), "cat photo → class {top}");
        mk_image_model_free(m);
        mk_device_free(dev);
    }
}

/// MiniLM with a random 3-way classification head (and id2label) written to a temp folder.
fn minilm_with_head(dir: &Path) -> PathBuf {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let out = std::env::temp_dir().join(format!("medkern-capi-cls-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read MiniLM");
    let st = SafeTensors::deserialize(&bytes).expect("MiniLM safetensors");
    let mut rng = common::SeedRng::new(77);
    let mut rand = |n: usize, s: f64| -> Vec<u8> {
        (0..n)
            .flat_map(|_| ((rng.normal() * s) as f32).to_le_bytes())
            .collect()
    };
    let (w, b) = (rand(3 * 384, 0.05), rand(3, 0.1));
    let mut views: Vec<(String, TensorView)> = st.tensors();
    views.push((
        "classifier.weight".into(),
        TensorView::new(Dtype::F32, vec![3, 384], &w).expect("view"),
    ));
    views.push((
        "classifier.bias".into(),
        TensorView::new(Dtype::F32, vec![3], &b).expect("view"),
    ));
    std::fs::write(
        out.join("model.safetensors"),
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("json");
    cfg["id2label"] = serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"});
    std::fs::write(out.join("config.json"), cfg.to_string()).expect("write config");
    std::fs::copy(dir.join("tokenizer.json"), out.join("tokenizer.json")).expect("tokenizer");
    out
}

#[test]
fn classification_through_the_abi_equals_the_rust_api() {
    let test = "classification_through_the_abi_equals_the_rust_api";
    let Some(dir) = model_or_skip(test, "all-MiniLM-L6-v2") else {
        return;
    };
    let cls = minilm_with_head(&dir);
    let model = BertModel::load(&cls, &Device::Cpu, DType::F32).expect("load");
    let ids = BertTokenizer::load(&cls, 512)
        .expect("tokenizer")
        .encode(&TEXTS)
        .expect("encode");
    let want: Vec<f32> = model.classify(&ids).expect("classify").concat();
    let dev = open("cpu");
    // SAFETY: valid handles, strings, buffers of the stated lengths throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_bert_load(dev, c(cls.to_str().expect("utf8")).as_ptr(), 0, 0, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(mk_bert_num_labels(m), 3);
        for (i, name) in ["negative", "neutral", "positive"].iter().enumerate() {
            let mut buf = [0 as c_char; 16];
            let st = mk_bert_label(m, i, buf.as_mut_ptr(), buf.len(), ptr::null_mut());
            assert_eq!(st, MkStatus::Ok, "{}", last_error());
            assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str(), Ok(*name));
        }
        let mut buf = [0 as c_char; 16];
        let st = mk_bert_label(m, 3, buf.as_mut_ptr(), buf.len(), ptr::null_mut());
        assert_eq!(st, MkStatus::InvalidArgument);
        assert!(last_error().contains("index 3"), "{}", last_error());
        let n = TEXTS.len();
        let cs: Vec<CString> = TEXTS.iter().map(|t| c(t)).collect();
        let ptrs: Vec<*const c_char> = cs.iter().map(|s| s.as_ptr()).collect();
        let mut got = vec![f32::NAN; 3 * n + 1];
        let st = mk_bert_classify(m, ptrs.as_ptr(), n, got.as_mut_ptr(), got.len());
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert!(got[3 * n].is_nan());
        assert_eq!(&got[..3 * n], &want[..]);
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let flat = ids.concat();
        let mut got2 = vec![f32::NAN; 3 * n];
        let st = mk_bert_classify_ids(m, flat.as_ptr(), lens.as_ptr(), n, got2.as_mut_ptr(), 3 * n);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(got2, want);
        let st = mk_bert_classify_ids(
            m,
            flat.as_ptr(),
            lens.as_ptr(),
            n,
            got2.as_mut_ptr(),
            3 * n - 1,
        );
        assert_eq!(st, MkStatus::BufferTooSmall);
        // Different texts, different logits (the head is not constant).
        assert_ne!(want[0..3], want[3..6]);
        mk_bert_free(m);
        mk_device_free(dev);
    }
    let _ = std::fs::remove_dir_all(&cls);
}

/// The C compiler, or None after a counted SKIP.
fn cc_or_skip(test: &str) -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    match std::process::Command::new(&cc).arg("--version").output() {
        Ok(o) if o.status.success() => Some(cc),
        _ => {
            skip(test, &format!("no C compiler ({cc})"));
            None
        }
    }
}

/// `valgrind` when `valgrind --version` runs; otherwise None after a counted SKIP, or a failure
/// with MEDKERN_REQUIRE_VALGRIND=1 (scripts/test sets it: the CI machines have valgrind).
fn valgrind_or_skip(test: &str) -> Option<&'static str> {
    // The valgrind run uses the CPU device whatever the test device, so the plain run (no
    // MEDKERN_TEST_DEVICE / MEDKERN_TEST_BACKEND) makes it once; scripts/test's emulated and
    // CPU self-check passes would only repeat it (about 40 s each).
    if ["MEDKERN_TEST_DEVICE", "MEDKERN_TEST_BACKEND"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
    {
        skip(
            test,
            "valgrind runs in the plain run only (it uses the CPU device whatever the test device)",
        );
        return None;
    }
    let vg = "valgrind";
    match std::process::Command::new(vg).arg("--version").output() {
        Ok(o) if o.status.success() => return Some(vg),
        _ => {}
    }
    if std::env::var("MEDKERN_REQUIRE_VALGRIND").is_ok_and(|v| v == "1") {
        panic!("{test}: MEDKERN_REQUIRE_VALGRIND=1 but `valgrind --version` does not run");
    }
    skip(test, "no valgrind (the C program's run under valgrind)");
    None
}

/// The C program compiled against the header and linked to libmedkern.so, run as a C user
/// runs it; then (issue 15) under valgrind on the CPU, the full run (status 0) and an early
/// exit (a missing MiniLM folder: status 1), each with no memory error and no definite leak.
#[test]
fn c_program_links_and_runs() {
    let test = "c_program_links_and_runs";
    let Some(cc) = cc_or_skip(test) else { return };
    let (Some(minilm), Some(w), Some(imgs)) = (
        model_or_skip(test, "all-MiniLM-L6-v2"),
        model_or_skip(test, "efficientnet-lite0/model.safetensors"),
        model_or_skip(test, "images"),
    ) else {
        return;
    };
    // The header and C source: the repository, or where the GPU bundle unpacked them.
    let root = std::env::var_os("MEDKERN_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    // cargo builds the cdylib beside the test binaries (target/<profile>/deps/libmedkern.so;
    // the copy in target/<profile>/ is refreshed only by `cargo build`, so it can be stale); in
    // the GPU bundle, tests/capi runs next to ../libmedkern.so.
    let exe = std::env::current_exe().expect("test exe");
    let deps = exe.parent().expect("deps folder").to_path_buf();
    let lib_dir = [Some(deps.clone()), deps.parent().map(Path::to_path_buf)]
        .into_iter()
        .flatten()
        .find(|d| d.join("libmedkern.so").is_file())
        .unwrap_or_else(|| panic!("no libmedkern.so in {} or its parent", deps.display()));
    let out = std::env::temp_dir().join(format!("medkern-capi-smoke-{}", std::process::id()));
    let status = std::process::Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("tests/c/capi_smoke.c"))
        .arg("-L")
        .arg(&lib_dir)
        .args(["-lmedkern", "-lm", "-o"])
        .arg(&out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on tests/c/capi_smoke.c");
    // The header is also valid C++ (extern "C" guards).
    let cxx = std::process::Command::new(&cc)
        .args([
            "-x",
            "c++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root.join("include"))
        .arg(root.join("include/medkern.h"))
        .status()
        .expect("run cc as C++");
    assert!(cxx.success(), "include/medkern.h does not compile as C++");
    // The GPU when one works (as a server would run it), else the CPU.
    let device = match Device::best() {
        Device::Gpu(_) => "gpu:0",
        Device::Cpu => "cpu",
    };
    let run = std::process::Command::new(&out)
        .env("LD_LIBRARY_PATH", &lib_dir)
        .arg(device)
        .arg(&minilm)
        .arg(&w)
        .arg(imgs.join("rocket.jpg"))
        .args(["657", "744", "812"])
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the C program failed:\n{stdout}");
    assert!(stdout.contains("0 failure(s)") && !stdout.contains("FAIL"));
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count() >= 20,
        "{stdout}"
    );

    if let Some(vg) = valgrind_or_skip(test) {
        let missing = PathBuf::from("/nonexistent/all-MiniLM-L6-v2");
        for (minilm, want) in [(&minilm, 0), (&missing, 1)] {
            let run = std::process::Command::new(vg)
                .args([
                    "--error-exitcode=99",
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite",
                ])
                .arg(&out)
                .env("LD_LIBRARY_PATH", &lib_dir)
                .arg("cpu")
                .arg(minilm)
                .arg(&w)
                .arg(imgs.join("rocket.jpg"))
                .args(["657", "744", "812"])
                .output()
                .expect("run valgrind");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr),
            );
            let what = format!("under valgrind with {}", minilm.display());
            assert_eq!(
                run.status.code(),
                Some(want),
                "{what} (99: valgrind found errors):\n{stdout}\n{stderr}"
            );
            assert!(
                stderr.contains("ERROR SUMMARY: 0 errors"),
                "{what}:\n{stderr}"
            );
            if want == 1 {
                assert!(
                    stdout.contains("FAIL") && stdout.contains(&*missing.to_string_lossy()),
                    "{what}: the failed load is reported\n{stdout}"
                );
            }
        }
    }
    let _ = std::fs::remove_file(&out);
}

/// Issue 15, defect 5: MiniLM with all-NaN word embeddings loaded, and `mk_bert_embed`
/// returned OK with NaN embeddings. The load now fails, naming the tensor; nothing is
/// returned in the out-pointer.
#[test]
fn bert_with_non_finite_weights_is_refused_through_the_abi() {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let test = "bert_with_non_finite_weights_is_refused_through_the_abi";
    let Some(dir) = model_or_skip(test, "all-MiniLM-L6-v2") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("medkern-capi-nan-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read MiniLM");
    let st = SafeTensors::deserialize(&bytes).expect("MiniLM safetensors");
    let name = "embeddings.word_embeddings.weight";
    let shape = st.tensor(name).expect("word embeddings").shape().to_vec();
    let nan: Vec<u8> = (0..shape.iter().product::<usize>())
        .flat_map(|_| f32::NAN.to_le_bytes())
        .collect();
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    views.push((
        name.into(),
        TensorView::new(Dtype::F32, shape, &nan).expect("view"),
    ));
    std::fs::write(
        out.join("model.safetensors"),
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), out.join(f)).expect("copy");
    }
    let dev = open("cpu");
    // SAFETY: valid handles, strings and out-pointer.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_bert_load(dev, c(out.to_str().expect("utf8")).as_ptr(), 0, 0, &mut m);
        assert_eq!(st, MkStatus::CorruptInput, "{}", last_error());
        assert!(m.is_null());
        let e = last_error();
        assert!(e.contains(name) && e.contains("non-finite"), "{e}");
        mk_device_free(dev);
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Issue 15, defect 10 (class names): the header named EXAM's ordinal classes "room air,
/// low-flow, high-flow, non-invasive, mechanical ventilation" while the model's are room_air,
/// low_flow, high_flow_or_niv, mechanical_ventilation, death, so a client reported P(death)
/// as P(ventilation). `mk_exam_class_name` returns the model's names, and the header agrees.
#[test]
fn exam_class_names_come_from_the_model_and_the_header_agrees() {
    use medkern::model::exam::ORDINAL_CLASSES;
    for (k, want) in ORDINAL_CLASSES.iter().enumerate() {
        let p = mk_exam_class_name(k);
        assert!(!p.is_null(), "class {k}");
        // SAFETY: a static NUL-terminated string.
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str(), Ok(*want));
    }
    assert!(mk_exam_class_name(ORDINAL_CLASSES.len()).is_null());
    assert!(mk_exam_class_name(usize::MAX).is_null());
    let header = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/medkern.h"),
    )
    .expect("header");
    assert!(
        header.contains("const char *mk_exam_class_name(size_t k);"),
        "the header declares mk_exam_class_name"
    );
    assert!(
        !header.contains("non-invasive, mechanical ventilation"),
        "old class list"
    );
    let listed = ORDINAL_CLASSES.join(", ");
    let flat: String = header.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&listed), "the header lists {listed}");
}

/// Issue 15, defect 10 (status and message lifetime): corrupt weights returned
/// MK_ERR_INVALID_ARGUMENT where the header promised MK_ERR_IO; a file's unusable content now
/// has its own status, MK_ERR_CORRUPT_INPUT, and a missing file stays MK_ERR_IO. The pointer
/// from mk_last_error() was freed by the next call, even a successful one; it now stays valid
/// until the thread's next failing call, while mk_last_error() reads "" after a success.
#[test]
fn corrupt_input_status_and_last_error_lifetime() {
    let mut d = ptr::null_mut();
    // SAFETY: valid strings and out-pointers; `first` is read while valid per the contract.
    unsafe {
        let st = mk_device_open(c("tpu:0").as_ptr(), &mut d);
        assert_eq!(st, MkStatus::InvalidArgument);
        let first = mk_last_error();
        let msg = CStr::from_ptr(first).to_owned();
        assert!(msg.to_str().is_ok_and(|m| m.contains("tpu:0")), "{msg:?}");
        // Successful calls: "" now, and the failure's message still readable.
        let dev = open("cpu");
        assert_eq!(last_error(), "");
        let mut img = ptr::null_mut();
        let st = mk_image_model_load(
            dev,
            c("sepsis").as_ptr(),
            ptr::null(),
            MK_DTYPE_F32,
            &mut img,
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        assert_eq!(CStr::from_ptr(first), msg.as_c_str());

        // A truncated JPEG and a PNG claiming 20000x20000: corrupt input; a missing file: I/O.
        let dir = std::env::temp_dir().join(format!("medkern-capi-corrupt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jpg = dir.join("cut.jpg");
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 9]))
            .save(&jpg)
            .expect("save");
        let bytes = std::fs::read(&jpg).expect("read");
        std::fs::write(&jpg, &bytes[..bytes.len() / 2]).expect("write");
        let mut out = [f32::NAN; 2];
        let st = mk_image_classify_file(
            img,
            c(jpg.to_str().expect("utf8")).as_ptr(),
            out.as_mut_ptr(),
            2,
        );
        assert_eq!(st, MkStatus::CorruptInput, "{}", last_error());
        assert!(last_error().contains("cut.jpg"), "{}", last_error());
        assert!(out.iter().all(|v| v.is_nan()), "nothing written");
        let st = mk_image_classify_file(
            img,
            c(dir.join("missing.png").to_str().expect("utf8")).as_ptr(),
            out.as_mut_ptr(),
            2,
        );
        assert_eq!(st, MkStatus::Io, "{}", last_error());
        // The earlier message was replaced by a failure: a new pointer now.
        assert!(last_error().contains("missing.png"), "{}", last_error());
        mk_image_model_free(img);
        mk_device_free(dev);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Input limits are settable per handle through the ABI (0 keeps a default).
#[test]
fn input_limits_through_the_abi() {
    let dir = std::env::temp_dir().join(format!("medkern-capi-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let png = dir.join("small.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(&png)
        .expect("save");
    let pc = c(png.to_str().expect("utf8"));
    let emr = c(r#"{"age": 63}"#);
    let dev = open("cpu");
    // SAFETY: valid handles, strings and buffers throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_image_model_load(dev, c("sepsis").as_ptr(), ptr::null(), MK_DTYPE_F32, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let mut out = [f32::NAN; 2];
        assert_eq!(
            mk_image_classify_file(m, pc.as_ptr(), out.as_mut_ptr(), 2),
            MkStatus::Ok
        );
        assert_eq!(
            mk_image_model_set_input_limits(m, 0, 100, 0, 0, 0),
            MkStatus::Ok
        );
        let st = mk_image_classify_file(m, pc.as_ptr(), out.as_mut_ptr(), 2);
        assert_eq!(st, MkStatus::CorruptInput, "{}", last_error());
        assert!(
            last_error().contains("small.png") && last_error().contains("max_pixels"),
            "{}",
            last_error()
        );
        assert_eq!(
            mk_image_model_set_input_limits(m, 100, 0, 0, 0, 0),
            MkStatus::Ok
        );
        let st = mk_image_classify_file(m, pc.as_ptr(), out.as_mut_ptr(), 2);
        assert_eq!(st, MkStatus::CorruptInput, "{}", last_error());
        assert!(last_error().contains("max_file_bytes"), "{}", last_error());
        assert_eq!(
            mk_image_model_set_input_limits(m, 0, 0, 0, 0, 0),
            MkStatus::Ok
        );
        assert_eq!(
            mk_image_classify_file(m, pc.as_ptr(), out.as_mut_ptr(), 2),
            MkStatus::Ok
        );
        let st = mk_image_model_set_input_limits(ptr::null_mut(), 0, 0, 0, 0, 0);
        assert_eq!(st, MkStatus::InvalidArgument);
        mk_image_model_free(m);

        let mut ex = ptr::null_mut();
        assert_eq!(
            mk_exam_load(dev, ptr::null(), MK_DTYPE_F32, &mut ex),
            MkStatus::Ok
        );
        let mut o = MkExamOutput::default();
        assert_eq!(mk_exam_set_input_limits(ex, 0, 100, 0, 0), MkStatus::Ok);
        let st = mk_exam_predict(ex, pc.as_ptr(), emr.as_ptr(), &mut o);
        assert_eq!(st, MkStatus::CorruptInput, "{}", last_error());
        assert!(last_error().contains("max_pixels"), "{}", last_error());
        assert_eq!(mk_exam_set_input_limits(ex, 0, 0, 0, 0), MkStatus::Ok);
        let st = mk_exam_predict(ex, pc.as_ptr(), emr.as_ptr(), &mut o);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        mk_exam_free(ex);
        mk_device_free(dev);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: the status was picked from the error's argument name ("weights", "file"), so a
/// bad config inside an EXAM checkpoint's metadata (argument "config") came back as
/// MK_ERR_INVALID_ARGUMENT, not the MK_ERR_CORRUPT_INPUT the header documents for a file that
/// was read but cannot be used. The error's variant now decides: a config that does not parse
/// or does not validate is corrupt input, while a weights path that is not UTF-8 (the caller's
/// argument) is MK_ERR_INVALID_ARGUMENT.
#[test]
fn corrupt_config_in_exam_weights_is_corrupt_input() {
    use medkern::model::exam::{CONFIG_KEY, ExamConfig, ExamModel};
    use safetensors::tensor::SafeTensors;
    let dir = common::TempDir::new("capi-exam-config");
    let good = ExamModel::random_checkpoint(&ExamConfig::default(), 0).expect("checkpoint");
    let st = SafeTensors::deserialize(&good).expect("safetensors");
    let config = serde_json::to_value(ExamConfig::default()).expect("config json");
    let edit = |k: &str, v: serde_json::Value| {
        let mut c = config.clone();
        c[k] = v;
        c.to_string()
    };
    let cases = [
        ("not JSON", "{\"cross_layers\": 3,".to_string(), CONFIG_KEY),
        ("no deep layer", edit("deep", serde_json::json!([])), "deep"),
        (
            "too wide",
            edit("fusion", serde_json::json!(1u64 << 40)),
            "fusion",
        ),
        (
            "not ResNet-34's",
            edit("image_features", serde_json::json!(100)),
            "512",
        ),
    ];
    let dev = open("cpu");
    for (what, text, named) in cases {
        let meta = std::collections::HashMap::from([(CONFIG_KEY.to_string(), text)]);
        let bytes = safetensors::serialize(st.tensors(), Some(meta)).expect("serialize");
        let path = dir.path().join("exam.safetensors");
        std::fs::write(&path, bytes).expect("write");
        let mut ex = ptr::null_mut();
        // SAFETY: valid handle, strings and out-pointer.
        let status = unsafe {
            mk_exam_load(
                dev,
                c(path.to_str().expect("utf8")).as_ptr(),
                MK_DTYPE_F32,
                &mut ex,
            )
        };
        assert_eq!(status, MkStatus::CorruptInput, "{what}: {}", last_error());
        assert!(ex.is_null(), "{what}");
        let e = last_error();
        assert!(e.contains("config") && e.contains(named), "{what}: {e}");
    }
    // The caller's own bad string stays an invalid argument.
    let not_utf8 = CString::new(vec![0xffu8, 0xfe]).expect("no NUL");
    let mut ex = ptr::null_mut();
    // SAFETY: valid handle, NUL-terminated string and out-pointer.
    let status = unsafe { mk_exam_load(dev, not_utf8.as_ptr(), MK_DTYPE_F32, &mut ex) };
    assert_eq!(status, MkStatus::InvalidArgument, "{}", last_error());
    assert!(last_error().contains("weights"), "{}", last_error());
    // SAFETY: a handle from mk_device_open, freed once.
    unsafe { mk_device_free(dev) };
}

/// Issue 15: a BERT folder whose config.json the model cannot use (an activation without a
/// kernel, a head dim past the attention kernel's) was MK_ERR_INVALID_ARGUMENT, as if the
/// caller had passed a bad argument; it is MK_ERR_CORRUPT_INPUT, as for the CNN checkpoints.
#[test]
fn unusable_bert_config_is_corrupt_input() {
    let test = "unusable_bert_config_is_corrupt_input";
    let Some(minilm) = model_or_skip(test, "all-MiniLM-L6-v2") else {
        return;
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(minilm.join("config.json")).expect("MiniLM config"))
            .expect("MiniLM config JSON");
    let dev = open("cpu");
    for (what, key, value, named) in [
        ("mish", "hidden_act", serde_json::json!("mish"), "mish"),
        (
            "one head of 384",
            "num_attention_heads",
            serde_json::json!(1),
            "head_dim 384",
        ),
    ] {
        let dir = common::TempDir::new(&format!("capi-bert-config-{key}"));
        let mut cfg = config.clone();
        cfg[key] = value;
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).expect("config");
        for f in ["model.safetensors", "tokenizer.json"] {
            std::os::unix::fs::symlink(minilm.join(f), dir.path().join(f)).expect("link");
        }
        let mut m = ptr::null_mut();
        let p = c(dir.path().to_str().expect("utf8"));
        // SAFETY: valid handle, string and out-pointer.
        let st = unsafe { mk_bert_load(dev, p.as_ptr(), MK_DTYPE_F32, 0, &mut m) };
        assert_eq!(st, MkStatus::CorruptInput, "{what}: {}", last_error());
        assert!(m.is_null(), "{what}");
        let e = last_error();
        assert!(e.contains("config") && e.contains(named), "{what}: {e}");
    }
    // SAFETY: a handle from mk_device_open, freed once.
    unsafe { mk_device_free(dev) };
}

/// Issue 15: the batch of one call (texts, id sequences, images) was not bounded, nor was
/// `max_len` by the model's positions. Over the limit, the call fails before it reads the
/// texts or ids (MK_ERR_INVALID_ARGUMENT naming max_batch and the count given); a `max_len`
/// over the model's max_position_embeddings fails at load.
#[test]
fn batch_and_max_len_limits_through_the_abi() {
    let test = "batch_and_max_len_limits_through_the_abi";
    let Some(dir) = model_or_skip(test, "all-MiniLM-L6-v2") else {
        return;
    };
    let dev = open("cpu");
    let p = c(dir.to_str().expect("utf8"));
    // SAFETY: valid handles, strings and buffers of the stated lengths throughout.
    unsafe {
        let mut m = ptr::null_mut();
        let st = mk_bert_load(dev, p.as_ptr(), MK_DTYPE_F32, 100_000, &mut m);
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        assert!(m.is_null());
        let e = last_error();
        assert!(
            e.contains("max_len") && e.contains("100000") && e.contains("512"),
            "{e}"
        );
        let st = mk_bert_load(dev, p.as_ptr(), MK_DTYPE_F32, 512, &mut m);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let dim = mk_bert_dim(m);
        let n = 4097;
        let mut out = vec![f32::NAN; n * dim];
        // Texts: the last pointer is NULL, which is never read.
        let a = c("a");
        let mut texts = vec![a.as_ptr(); n];
        texts[n - 1] = ptr::null();
        let st = mk_bert_embed(
            m,
            texts.as_ptr(),
            n,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        let e = last_error();
        assert!(
            e.contains("max_batch") && e.contains("4097") && e.contains("4096"),
            "{e}"
        );
        // Ids: empty sequences, refused for the count before they are read.
        let lens = vec![0usize; n];
        let ids = [0u32; 1];
        let st = mk_bert_embed_ids(
            m,
            ids.as_ptr(),
            lens.as_ptr(),
            n,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        assert!(last_error().contains("max_batch"), "{}", last_error());
        assert!(out.iter().all(|v| v.is_nan()), "nothing written");
        // An id sequence past the model's 512 positions, refused before it is copied.
        let long = vec![101u32; 513];
        let st = mk_bert_embed_ids(
            m,
            long.as_ptr(),
            [513usize].as_ptr(),
            1,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        assert!(
            last_error().contains("513") && last_error().contains("max_position_embeddings"),
            "{}",
            last_error()
        );

        // mk_bert_set_input_limits: 2 texts a call, then 16 bytes a text; 0 keeps a default.
        let texts = [c("a"), c("b"), c("c")];
        let ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
        assert_eq!(mk_bert_set_input_limits(m, 2, 0), MkStatus::Ok);
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            3,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        let e = last_error();
        assert!(
            e.contains("max_batch") && e.contains("3 in one batch") && e.contains("at most 2"),
            "{e}"
        );
        let ids = [101u32, 1037, 102, 101, 1038, 102, 101, 1039, 102];
        let st = mk_bert_embed_ids(
            m,
            ids.as_ptr(),
            [3usize; 3].as_ptr(),
            3,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            2,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let long_word = c(&"x".repeat(100));
        assert_eq!(mk_bert_set_input_limits(m, 0, 16), MkStatus::Ok);
        let st = mk_bert_embed(
            m,
            &long_word.as_ptr(),
            1,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        assert!(last_error().contains("max_text_bytes"), "{}", last_error());
        assert_eq!(mk_bert_set_input_limits(m, 0, 0), MkStatus::Ok);
        let st = mk_bert_embed(
            m,
            ptrs.as_ptr(),
            3,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::Ok, "defaults again: {}", last_error());
        let st = mk_bert_embed(
            m,
            &long_word.as_ptr(),
            1,
            MK_POOLING_MEAN,
            0,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, MkStatus::Ok, "defaults again: {}", last_error());
        assert_eq!(
            mk_bert_set_input_limits(ptr::null_mut(), 0, 0),
            MkStatus::InvalidArgument
        );
        mk_bert_free(m);

        // Images: mk_image_classify_u8 over max_batch.
        let mut img = ptr::null_mut();
        let st = mk_image_model_load(
            dev,
            c("sepsis").as_ptr(),
            ptr::null(),
            MK_DTYPE_F32,
            &mut img,
        );
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        let px = pixels(3, 8, 8, 1);
        let mut logits = [f32::NAN; 6];
        let st = mk_image_classify_u8(img, px.as_ptr(), 4097, 8, 8, 3, logits.as_mut_ptr(), 6);
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        let e = last_error();
        assert!(
            e.contains("max_batch") && e.contains("4097") && e.contains("4096"),
            "{e}"
        );
        assert_eq!(
            mk_image_model_set_input_limits(img, 0, 0, 0, 0, 2),
            MkStatus::Ok
        );
        let st = mk_image_classify_u8(img, px.as_ptr(), 3, 8, 8, 3, logits.as_mut_ptr(), 6);
        assert_eq!(st, MkStatus::InvalidArgument, "{}", last_error());
        assert!(last_error().contains("at most 2"), "{}", last_error());
        assert!(logits.iter().all(|v| v.is_nan()), "nothing written");
        let st = mk_image_classify_u8(img, px.as_ptr(), 2, 8, 8, 3, logits.as_mut_ptr(), 6);
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        mk_image_model_free(img);
        mk_device_free(dev);
    }
}

/// A raw handle moved between threads: the ABI's handles are documented as usable from any
/// thread (their Rust types are Send + Sync: tests/threads.rs).
struct Sent<T>(*mut T);
// SAFETY: only the handles of this file, whose pointees are Send + Sync.
unsafe impl<T> Send for Sent<T> {}

/// Issue 15: a handle created on one thread, used on others (4 at once) and freed on a third
/// works, with results bit-identical to those on the creating thread; and mk_last_error is
/// per thread: two threads failing differently at the same time each read their own message,
/// and a thread whose last call succeeded reads "".
#[test]
fn handles_cross_threads_and_last_error_is_per_thread() {
    let (h, w) = (20, 24);
    let pixels: Vec<u8> = (0..h * w * 3).map(|i| (i * 37 % 251) as u8).collect();
    let classify = |m: *mut MkImageModel| {
        let mut out = [f32::NAN; 2];
        // SAFETY: a live handle; pixels holds h·w·3 bytes; out holds 2 floats.
        let st =
            unsafe { mk_image_classify_u8(m, pixels.as_ptr(), 1, h, w, 3, out.as_mut_ptr(), 2) };
        assert_eq!(st, MkStatus::Ok, "{}", last_error());
        out.map(f32::to_bits)
    };
    // Created on one thread (with its own result)...
    let (dev, model, want) = std::thread::scope(|s| {
        s.spawn(|| {
            let dev = open("cpu");
            let mut m = ptr::null_mut();
            // SAFETY: valid handle, strings and out-pointer.
            let st = unsafe {
                mk_image_model_load(dev, c("sepsis").as_ptr(), ptr::null(), MK_DTYPE_F32, &mut m)
            };
            assert_eq!(st, MkStatus::Ok, "{}", last_error());
            (Sent(dev), Sent(m), classify(m))
        })
        .join()
        .expect("creating thread")
    });
    // ...used on four others at once...
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let m = Sent(model.0);
                let classify = &classify;
                s.spawn(move || {
                    let m = m;
                    (0..2).all(|_| classify(m.0) == want)
                })
            })
            .collect();
        for h in hs {
            assert!(h.join().expect("using thread"), "a result differs");
        }
    });
    // ...and freed on a third.
    std::thread::spawn(move || {
        let (dev, model) = (dev, model);
        // SAFETY: live handles from the creating thread, freed once.
        unsafe {
            mk_image_model_free(model.0);
            mk_device_free(dev.0);
        }
    })
    .join()
    .expect("freeing thread");

    // Two threads fail differently at the same time; a third succeeds.
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        let fail = |spec: &'static str| {
            let barrier = &barrier;
            s.spawn(move || {
                let mut d = ptr::null_mut();
                // SAFETY: valid string and out-pointer.
                let st = unsafe { mk_device_open(c(spec).as_ptr(), &mut d) };
                assert_eq!(st, MkStatus::InvalidArgument);
                barrier.wait(); // both have failed before either reads
                barrier.wait(); // the succeeding thread has run
                last_error()
            })
        };
        let a = fail("tpu:0");
        let b = fail("gpu:banana");
        let ok = s.spawn(|| {
            barrier.wait();
            let d = open("cpu");
            // SAFETY: a live handle, freed once.
            unsafe { mk_device_free(d) };
            let e = last_error();
            barrier.wait();
            e
        });
        let (ea, eb) = (a.join().expect("a"), b.join().expect("b"));
        assert!(ea.contains("tpu:0") && !ea.contains("banana"), "{ea}");
        assert!(eb.contains("gpu:banana") && !eb.contains("tpu"), "{eb}");
        assert_eq!(ok.join().expect("ok"), "");
    });
}
