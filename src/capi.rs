//! The C ABI (`include/medkern.h`), for inference servers written in C, C++, Go or Python
//! (ctypes/cffi) that link `libmedkern.so` instead of the Rust crate.
//!
//! Conventions, the same for every function:
//! - Every function that can fail returns an [`MkStatus`] (`MK_OK` = 0); the message of the
//!   last failure on the calling thread is [`mk_last_error`] (it names the op, what was given
//!   and what was expected, like the Rust [`Error`]).
//! - Objects are opaque handles made by `mk_*_open`/`mk_*_load` and released by `mk_*_free`
//!   (NULL is accepted and ignored). A handle may be used by one thread at a time; distinct
//!   handles may be used from different threads at once.
//! - Outputs go to caller-owned buffers whose length (in elements) is passed alongside; a
//!   buffer that is too small is `MK_ERR_BUFFER_TOO_SMALL` and nothing is written.
//! - No panic crosses the boundary: a panic becomes `MK_ERR_INTERNAL` with its message.

use crate::DType;
use crate::error::{Error, Result};
use crate::input::{self, RawImage};
#[cfg(feature = "tokenizers")]
use crate::model::bert::BertTokenizer;
use crate::model::bert::{self, BertModel, Pooling};
use crate::model::efficientnet::{self as en, EfficientNet, EfficientNetConfig};
use crate::model::exam::{ExamConfig, ExamModel};
use crate::model::sentence;
use crate::model::sepsis::{self, SepsisNet};
use crate::ops::Preprocess;
use crate::ops::preprocess::PixelRange;
use crate::tensor::{Device, HostTensor, Tensor};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// Bumped on any incompatible change of `include/medkern.h` (2: `MK_ERR_CORRUPT_INPUT`; 3:
/// `mk_image_model_set_input_limits` takes `max_batch`).
pub const MK_ABI_VERSION: u32 = 3;

const OP: &str = "capi";

/// Status codes of the C ABI (`mk_status` in the header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MkStatus {
    Ok = 0,
    /// A NULL pointer, a bad string, an unknown name, a value out of range.
    InvalidArgument = 1,
    /// An operand or input of the wrong shape.
    Shape = 2,
    /// An operand of the wrong dtype.
    DType = 3,
    /// No NVIDIA driver, no such GPU, a GPU too old for a kernel, or data on the wrong device.
    Device = 4,
    /// A CUDA driver call failed.
    Cuda = 5,
    /// A file could not be read (missing, unreadable).
    Io = 6,
    /// A caller's output buffer is too small; nothing was written.
    BufferTooSmall = 7,
    /// A bug in medkern (a caught panic, an NVRTC failure at run time).
    Internal = 8,
    /// A file was read but its content cannot be used: corrupt or non-finite weights, tensors
    /// that do not match the model, a malformed, truncated or over-limit image or DICOM file,
    /// a path that is not a regular file; or a non-finite result.
    CorruptInput = 9,
}

/// Precision of a model's activations and weights (`mk_dtype`).
pub const MK_DTYPE_DEFAULT: i32 = 0;
pub const MK_DTYPE_F32: i32 = 1;
pub const MK_DTYPE_F16: i32 = 2;
pub const MK_DTYPE_BF16: i32 = 3;
/// Sentence pooling (`mk_pooling`). `MK_POOLING_DEFAULT` takes the model folder's
/// sentence-transformers settings (its Pooling mode, else mean; plus its Normalize module).
pub const MK_POOLING_DEFAULT: i32 = -1;
pub const MK_POOLING_MEAN: i32 = 0;
pub const MK_POOLING_CLS: i32 = 1;
pub const MK_POOLING_MAX: i32 = 2;

thread_local! {
    /// The message of this thread's last failure: replaced only by the next failure, so a
    /// pointer from mk_last_error() stays valid across successful calls.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// Whether this thread's last call succeeded (mk_last_error() then returns "").
    static LAST_OK: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn set_last_error(msg: &str) {
    // Interior NULs cannot be represented in a C string; they never occur in our messages
    // but a user-supplied name could carry one.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
    LAST_OK.with(|ok| ok.set(false));
}

fn status_of(e: &Error) -> MkStatus {
    match e {
        Error::BufferTooSmall { .. } => MkStatus::BufferTooSmall,
        // The content of a file (weights, a config read from one, an image) or a result
        // derived from it: the variant says so, whatever the message.
        Error::Corrupt { .. } => MkStatus::CorruptInput,
        Error::Invalid { .. } | Error::UnknownKernel { .. } => MkStatus::InvalidArgument,
        Error::Shape { .. } => MkStatus::Shape,
        Error::DType { .. } => MkStatus::DType,
        Error::NoDriver { .. }
        | Error::NoDevice { .. }
        | Error::ArchTooLow { .. }
        | Error::ArchMismatch { .. }
        | Error::Device { .. } => MkStatus::Device,
        Error::Driver { .. } | Error::Launch { .. } => MkStatus::Cuda,
        Error::Io { .. } => MkStatus::Io,
        Error::Nvrtc(_) => MkStatus::Internal,
    }
}

/// Runs `f`, turning an `Err` or a panic into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<()>) -> MkStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            LAST_OK.with(|ok| ok.set(true));
            MkStatus::Ok
        }
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            status_of(&e)
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("medkern: internal error (panic): {what}"));
            MkStatus::Internal
        }
    }
}

/// Unusable content of a file, or a non-finite result computed from one: [`Error::Corrupt`].
fn corrupt(arg: &'static str, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        op: OP,
        arg,
        detail: detail.into(),
    }
}

fn invalid(arg: &'static str, detail: impl Into<String>) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail: detail.into(),
    }
}

fn too_small(func: &str, needed: usize, given: usize) -> Error {
    Error::BufferTooSmall {
        op: OP,
        what: func.into(),
        given,
        needed,
        unit: "elements",
    }
}

/// A reference from a handle pointer, or an Err naming the argument.
///
/// # Safety
/// `p` is NULL or a pointer this module returned and that has not been freed.
unsafe fn handle<'a, T>(p: *const T, arg: &'static str) -> Result<&'a T> {
    // SAFETY: per the contract, a non-NULL `p` is a live Box<T> of ours.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(arg, "NULL handle"))
}

/// A UTF-8 string from a C string, or an Err naming the argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, arg: &'static str) -> Result<&'a str> {
    if p.is_null() {
        return Err(invalid(arg, "NULL string"));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| invalid(arg, format!("not UTF-8: {e}")))
}

/// Stores `v` through the out-pointer `out` (which must not be NULL).
///
/// # Safety
/// `out` is NULL or valid for a write of one `*mut T`.
unsafe fn put<T>(out: *mut *mut T, v: T) -> Result<()> {
    if out.is_null() {
        return Err(invalid("out", "NULL out-pointer"));
    }
    // SAFETY: non-NULL and writable per the contract.
    unsafe { *out = Box::into_raw(Box::new(v)) };
    Ok(())
}

/// Copies `values` into the caller's buffer `out[..len]`.
///
/// # Safety
/// `out` is NULL or valid for `len` writes of f32.
unsafe fn write_out(func: &str, values: &[f32], out: *mut f32, len: usize) -> Result<()> {
    if out.is_null() {
        return Err(invalid("out", format!("{func}: NULL output buffer")));
    }
    if len < values.len() {
        return Err(too_small(func, values.len(), len));
    }
    // SAFETY: `out` is valid for `len >= values.len()` writes per the contract.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len()) };
    Ok(())
}

/// Copies `s` and a NUL into `buf[..cap]` for `func`; `*needed` (if not NULL) gets
/// `s.len() + 1`.
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or valid for `cap` writes; `needed` is NULL or writable.
unsafe fn write_str(
    func: &str,
    s: &str,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> Result<()> {
    let n = s.len() + 1;
    if !needed.is_null() {
        // SAFETY: writable per the contract.
        unsafe { *needed = n };
    }
    if cap < n || buf.is_null() {
        return Err(Error::BufferTooSmall {
            op: OP,
            what: format!("{func} (a string of {n} bytes with its NUL)"),
            given: cap,
            needed: n,
            unit: "bytes",
        });
    }
    // SAFETY: `buf` is valid for `cap >= n` writes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

fn dtype_of(code: i32, dev: &Device) -> Result<DType> {
    Ok(match code {
        MK_DTYPE_DEFAULT => bert::default_dtype(dev),
        MK_DTYPE_F32 => DType::F32,
        MK_DTYPE_F16 => DType::F16,
        MK_DTYPE_BF16 => DType::BF16,
        c => {
            return Err(invalid(
                "dtype",
                format!("{c}; expected MK_DTYPE_DEFAULT (0), F32 (1), F16 (2) or BF16 (3)"),
            ));
        }
    })
}

/// `dims` multiplied, or an Err when the product overflows.
fn product(arg: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| invalid(arg, format!("{dims:?} overflows")))
}

// ---------------------------------------------------------------------------------------------
// Library

/// `MK_ABI_VERSION` of the library (compare with the header's at start-up).
#[unsafe(no_mangle)]
pub extern "C" fn mk_abi_version() -> u32 {
    MK_ABI_VERSION
}

/// Sets the largest model file (weights, `config.json`, `tokenizer.json`) the `mk_*_load`
/// functions read, for the whole process; 0 restores the default (2 GiB). A larger file is
/// `MK_ERR_CORRUPT_INPUT` before it is read.
#[unsafe(no_mangle)]
pub extern "C" fn mk_set_max_model_file_bytes(bytes: u64) {
    crate::input::set_max_model_file_bytes(bytes);
}

/// The crate version, a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn mk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the calling thread's last failure, or "" when its last call succeeded.
/// A pointer to a failure's message stays valid until the thread's next failing call
/// (successful calls in between do not free it); "" is a static string.
#[unsafe(no_mangle)]
pub extern "C" fn mk_last_error() -> *const c_char {
    if LAST_OK.with(std::cell::Cell::get) {
        return c"".as_ptr();
    }
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

// ---------------------------------------------------------------------------------------------
// Devices

/// A device handle (`mk_device`) and, for `"auto"` on the CPU, why the GPU was not used (kept
/// for mk_device_describe: a client otherwise cannot tell "no GPU" from "the GPU failed").
pub struct MkDevice(Device, Option<String>);

/// Opens a device: `"auto"` (or NULL: the first GPU if one works, else the CPU, with the
/// reason kept for mk_device_describe), `"cpu"`, `"gpu"`/`"cuda"` (ordinal 0) or
/// `"gpu:N"`/`"cuda:N"`.
///
/// # Safety
/// `spec` is NULL or a NUL-terminated string; `out` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_device_open(spec: *const c_char, out: *mut *mut MkDevice) -> MkStatus {
    guard(|| {
        let s = if spec.is_null() {
            "auto"
        } else {
            // SAFETY: forwarded contract.
            unsafe { text(spec, "spec") }?
        };
        let mut why = None;
        let dev = match s {
            "auto" => {
                let (dev, e) = Device::best_or_why();
                why = e.map(|e| e.to_string());
                dev
            }
            "cpu" => Device::Cpu,
            "gpu" | "cuda" => Device::gpu(0)?,
            "emu" => Device::emulated()?,
            _ => {
                let n = s
                    .strip_prefix("gpu:")
                    .or_else(|| s.strip_prefix("cuda:"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        invalid(
                            "spec",
                            format!(
                                "{s:?}; expected \"auto\", \"cpu\", \"gpu\", \"gpu:N\" or \"emu\""
                            ),
                        )
                    })?;
                Device::gpu(n)?
            }
        };
        // SAFETY: forwarded contract.
        unsafe { put(out, MkDevice(dev, why)) }
    })
}

/// 1 when the device is a GPU, 0 for the CPU or a NULL handle.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_device_is_gpu(dev: *const MkDevice) -> i32 {
    // SAFETY: forwarded contract.
    match unsafe { dev.as_ref() } {
        Some(d) => i32::from(matches!(d.0, Device::Gpu(_))),
        None => 0,
    }
}

/// A description of the device (name, compute capability, memory) into `buf[..cap]`;
/// `*needed` gets the bytes required (with the NUL) even when `buf` is too small. A device
/// opened as `"auto"` that fell back to the CPU reads `cpu (auto: the GPU did not start:
/// <reason>)`.
///
/// # Safety
/// `dev` is NULL or a live handle; `buf` is valid for `cap` writes; `needed` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_device_describe(
    dev: *const MkDevice,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let d = unsafe { handle(dev, "dev") }?;
        let text = match &d.1 {
            Some(why) => format!("{} (auto: the GPU did not start: {why})", d.0.describe()),
            None => d.0.describe(),
        };
        // SAFETY: forwarded contract.
        unsafe { write_str("mk_device_describe", &text, buf, cap, needed) }
    })
}

/// Releases a device handle (models keep their own reference to the device).
///
/// # Safety
/// `dev` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_device_free(dev: *mut MkDevice) {
    if !dev.is_null() {
        // SAFETY: a Box we made, freed once per the contract.
        drop(unsafe { Box::from_raw(dev) });
    }
}

// ---------------------------------------------------------------------------------------------
// BERT-family encoders

/// A BERT/DistilBERT/ALBERT encoder with its tokenizer (`mk_bert`).
pub struct MkBert {
    model: BertModel,
    /// None without a tokenizer.json; always None in a build without the `tokenizers` feature.
    #[cfg(feature = "tokenizers")]
    tokenizer: Option<BertTokenizer>,
    dim: usize,
    /// The folder's pooling and Normalize module (`MK_POOLING_DEFAULT`).
    pooling: Pooling,
    normalize: bool,
}

/// Loads a Hugging Face model folder (`config.json`, `model.safetensors`, and
/// `tokenizer.json` when texts are to be embedded) onto `dev`. Sequences are truncated to
/// `max_len` tokens (0: a sentence-transformers folder's `max_seq_length`, else the model's
/// `max_position_embeddings`). A folder with `modules.json` is read as sentence-transformers
/// reads it (see [`crate::model::sentence`]); its pooling applies with `MK_POOLING_DEFAULT`.
///
/// # Safety
/// `dev` is a live handle; `dir` a NUL-terminated path; `out` valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_load(
    dev: *const MkDevice,
    dir: *const c_char,
    dtype: i32,
    max_len: usize,
    out: *mut *mut MkBert,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (d, dir) = unsafe { (handle(dev, "dev")?, text(dir, "dir")?) };
        let root = PathBuf::from(dir);
        let dtype = dtype_of(dtype, &d.0)?;
        let st = sentence::read(&root)?;
        let dir = st.as_ref().map_or(root, |s| s.transformer_dir.clone());
        let model = BertModel::load(&dir, &d.0, dtype)?;
        // Past the model's positions a text's tokens could not run: refused here, not at
        // the first long text.
        let max_len = match (max_len, st.as_ref().and_then(|s| s.max_seq_length)) {
            (0, Some(n)) => n.min(model.config.max_len(None)?),
            (n, _) => model.config.max_len((n != 0).then_some(n))?,
        };
        #[cfg(feature = "tokenizers")]
        let tokenizer = if dir.join("tokenizer.json").is_file() {
            Some(BertTokenizer::load(&dir, max_len)?)
        } else {
            None
        };
        // Without the tokenizer the folder still loads: its *_ids functions work, and the
        // text functions say which feature is missing.
        #[cfg(not(feature = "tokenizers"))]
        let _ = max_len;
        let dim = model.config.hidden_size;
        if let Some(s) = &st {
            if s.word_embedding_dimension.is_some_and(|w| w != dim) {
                return Err(corrupt(
                    "dir",
                    format!(
                        "{}: word_embedding_dimension is not the model's hidden size {dim}",
                        s.pooling_file.display()
                    ),
                ));
            }
            // Texts reach the tokenizer as given: a do_lower_case it does not meet is refused
            // rather than run cased.
            #[cfg(feature = "tokenizers")]
            if s.do_lower_case && tokenizer.as_ref().is_some_and(|t| !t.lowercases()) {
                return Err(corrupt(
                    "dir",
                    format!(
                        "{}: sentence_bert_config.json has do_lower_case but tokenizer.json                          keeps case; expected a lower-casing tokenizer (the C ABI passes texts                          as given)",
                        dir.display()
                    ),
                ));
            }
        }
        let (pooling, normalize) = st
            .as_ref()
            .map_or((Pooling::Mean, false), |s| (s.pooling, s.normalize));
        // SAFETY: forwarded contract.
        unsafe {
            put(
                out,
                MkBert {
                    model,
                    #[cfg(feature = "tokenizers")]
                    tokenizer,
                    dim,
                    pooling,
                    normalize,
                },
            )
        }
    })
}

/// Sets the limits of `m`'s calls: the most texts or id sequences one call takes
/// (`max_batch`, default [`input::DEFAULT_MAX_BATCH`]) and the most bytes of one text that
/// are tokenised (`max_text_bytes`, default [`bert::DEFAULT_MAX_TEXT_BYTES`]); 0 keeps a
/// limit's default.
///
/// # Safety
/// `m` is a live handle not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_set_input_limits(
    m: *mut MkBert,
    max_batch: usize,
    max_text_bytes: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: per the contract, a non-NULL `m` is a live handle of ours used only here.
        let m = unsafe { m.as_mut() }.ok_or_else(|| invalid("model", "NULL handle"))?;
        let or = |v: usize, default: usize| if v == 0 { default } else { v };
        let max_batch = or(max_batch, input::DEFAULT_MAX_BATCH);
        let max_text_bytes = or(max_text_bytes, bert::DEFAULT_MAX_TEXT_BYTES);
        m.model.set_max_batch(max_batch);
        #[cfg(feature = "tokenizers")]
        {
            m.tokenizer = m.tokenizer.take().map(|t| {
                t.with_max_batch(max_batch)
                    .with_max_text_bytes(max_text_bytes)
            });
        }
        #[cfg(not(feature = "tokenizers"))]
        let _ = max_text_bytes;
        Ok(())
    })
}

/// The batch limit of `m`'s calls, before any text or id is read.
fn bert_batch(m: &MkBert, n: usize) -> Result<()> {
    input::check_batch(OP, "n", n, m.model.max_batch())
}

/// Width of an embedding (the hidden size), 0 for a NULL handle.
///
/// # Safety
/// `m` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_dim(m: *const MkBert) -> usize {
    // SAFETY: forwarded contract.
    unsafe { m.as_ref() }.map_or(0, |m| m.dim)
}

/// Labels of the classification head (0 when the checkpoint has none, or a NULL handle).
///
/// # Safety
/// `m` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_num_labels(m: *const MkBert) -> usize {
    // SAFETY: forwarded contract.
    unsafe { m.as_ref() }.map_or(0, |m| {
        if m.model.has_classifier() {
            m.model.labels().len()
        } else {
            0
        }
    })
}

/// The name of label `i` (from the checkpoint's id2label) into `buf[..cap]`.
///
/// # Safety
/// `m` is a live handle; `buf` valid for `cap` writes; `needed` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_label(
    m: *const MkBert,
    i: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        let labels = m.model.labels();
        let l = labels.get(i).ok_or_else(|| {
            invalid(
                "label",
                format!("index {i}; the model has {} labels", labels.len()),
            )
        })?;
        // SAFETY: forwarded contract.
        unsafe { write_str("mk_bert_label", l, buf, cap, needed) }
    })
}

/// [`encode`] in a build without the `tokenizers` feature: an error naming it.
///
/// # Safety
/// Reads nothing.
#[cfg(not(feature = "tokenizers"))]
unsafe fn encode(_: &MkBert, _: *const *const c_char, _: usize) -> Result<Vec<Vec<u32>>> {
    Err(crate::error::feature_missing(
        OP,
        "tokenizing texts (use the *_ids functions)",
        "tokenizers",
    ))
}

/// Token ids of `n` C strings.
///
/// # Safety
/// `texts` is valid for `n` reads of NUL-terminated strings.
#[cfg(feature = "tokenizers")]
unsafe fn encode(m: &MkBert, texts: *const *const c_char, n: usize) -> Result<Vec<Vec<u32>>> {
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
        invalid(
            "model",
            "the model folder has no tokenizer.json; use the *_ids functions",
        )
    })?;
    if n == 0 {
        return Err(invalid("n", "0 texts"));
    }
    if texts.is_null() {
        return Err(invalid("texts", "NULL array"));
    }
    // SAFETY: valid for n reads per the contract.
    let ptrs = unsafe { std::slice::from_raw_parts(texts, n) };
    let strs = ptrs
        .iter()
        // SAFETY: each is NULL or NUL-terminated per the contract.
        .map(|&p| unsafe { text(p, "texts") })
        .collect::<Result<Vec<&str>>>()?;
    tok.encode(&strs)
}

/// `n` id sequences given as one concatenated array and their lengths, each at most
/// `max_tokens` long (checked before any is copied).
///
/// # Safety
/// `lens` is valid for `n` reads, `ids` for their sum.
unsafe fn id_rows(
    ids: *const u32,
    lens: *const usize,
    n: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    if n == 0 {
        return Err(invalid("n", "0 sequences"));
    }
    if lens.is_null() {
        return Err(invalid("lens", "NULL array"));
    }
    // SAFETY: valid for n reads per the contract.
    let lens = unsafe { std::slice::from_raw_parts(lens, n) };
    if let Some((i, l)) = lens.iter().enumerate().find(|(_, l)| **l > max_tokens) {
        return Err(invalid(
            "lens",
            format!(
                "sequence {i} has {l} tokens; expected at most {max_tokens} (the model's \
                 max_position_embeddings)"
            ),
        ));
    }
    let total = lens
        .iter()
        .try_fold(0usize, |a, &l| a.checked_add(l))
        .ok_or_else(|| invalid("lens", "sum overflows"))?;
    if ids.is_null() {
        return Err(invalid("ids", "NULL array"));
    }
    // SAFETY: valid for sum(lens) reads per the contract.
    let all = unsafe { std::slice::from_raw_parts(ids, total) };
    let mut rows = Vec::with_capacity(n);
    let mut at = 0;
    for &l in lens {
        rows.push(all[at..at + l].to_vec());
        at += l;
    }
    Ok(rows)
}

/// The pooling of `code` and whether the folder asks for unit rows (`MK_POOLING_DEFAULT`).
fn pooling_of(m: &MkBert, code: i32) -> Result<(Pooling, bool)> {
    match code {
        MK_POOLING_DEFAULT => Ok((m.pooling, m.normalize)),
        MK_POOLING_MEAN => Ok((Pooling::Mean, false)),
        MK_POOLING_CLS => Ok((Pooling::Cls, false)),
        MK_POOLING_MAX => Ok((Pooling::Max, false)),
        c => Err(invalid(
            "pooling",
            format!(
                "{c}; expected MK_POOLING_DEFAULT (-1), MK_POOLING_MEAN (0), MK_POOLING_CLS (1)                  or MK_POOLING_MAX (2)"
            ),
        )),
    }
}

fn embed_rows(m: &MkBert, ids: &[Vec<u32>], pooling: i32, normalize: i32) -> Result<Vec<f32>> {
    let (pooling, folder_normalize) = pooling_of(m, pooling)?;
    let normalize = i32::from(normalize != 0 || folder_normalize);
    let rows = m.model.embed(ids, pooling)?;
    let mut flat = Vec::with_capacity(rows.len() * m.dim);
    for (i, mut r) in rows.into_iter().enumerate() {
        // As the image path: a non-finite output is an error, never written as a result.
        if let Some(j) = r.iter().position(|v| !v.is_finite()) {
            return Err(corrupt(
                "weights",
                format!(
                    "embedding {i} has a non-finite value {} at {j} (non-finite weights or \
                     input?)",
                    r[j]
                ),
            ));
        }
        if normalize != 0 {
            let norm = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            if norm > 0.0 {
                r.iter_mut()
                    .for_each(|v| *v = (f64::from(*v) / norm) as f32);
            }
        }
        flat.extend(r);
    }
    Ok(flat)
}

/// The logits of a text batch, flattened; a non-finite one is an error (as the image path).
fn finite_logits(rows: Vec<Vec<f32>>) -> Result<Vec<f32>> {
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    if let Some(bad) = flat.iter().position(|z| !z.is_finite()) {
        return Err(corrupt(
            "weights",
            format!(
                "logit {bad} is {} (non-finite weights or input?)",
                flat[bad]
            ),
        ));
    }
    Ok(flat)
}

/// Sentence embeddings of `n` texts into `out[n × dim]` (row-major), L2-normalised when
/// `normalize` is non-zero (or, with `MK_POOLING_DEFAULT`, when the folder has a Normalize
/// module).
///
/// # Safety
/// `m` is a live handle; `texts` valid for `n` NUL-terminated strings; `out` for `out_len`
/// writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_embed(
    m: *const MkBert,
    texts: *const *const c_char,
    n: usize,
    pooling: i32,
    normalize: i32,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        bert_batch(m, n)?;
        check_len("mk_bert_embed", product("n", &[n, m.dim])?, out, out_len)?;
        // SAFETY: forwarded contract.
        let ids = unsafe { encode(m, texts, n) }?;
        let flat = embed_rows(m, &ids, pooling, normalize)?;
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_bert_embed", &flat, out, out_len) }
    })
}

/// As [`mk_bert_embed`] from token ids (for servers that tokenise themselves): sequence `i`
/// is `ids[sum(lens[..i]) ..][..lens[i]]`, with its [CLS]/[SEP].
///
/// # Safety
/// `m` is a live handle; `lens` valid for `n` reads, `ids` for their sum; `out` for
/// `out_len` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_embed_ids(
    m: *const MkBert,
    ids: *const u32,
    lens: *const usize,
    n: usize,
    pooling: i32,
    normalize: i32,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        bert_batch(m, n)?;
        check_len(
            "mk_bert_embed_ids",
            product("n", &[n, m.dim])?,
            out,
            out_len,
        )?;
        // SAFETY: forwarded contract.
        let rows = unsafe { id_rows(ids, lens, n, m.model.config.max_position_embeddings) }?;
        let flat = embed_rows(m, &rows, pooling, normalize)?;
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_bert_embed_ids", &flat, out, out_len) }
    })
}

/// Classification logits of `n` texts into `out[n × num_labels]`.
///
/// # Safety
/// As [`mk_bert_embed`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_classify(
    m: *const MkBert,
    texts: *const *const c_char,
    n: usize,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        bert_batch(m, n)?;
        let labels = head_labels(m)?;
        check_len(
            "mk_bert_classify",
            product("n", &[n, labels])?,
            out,
            out_len,
        )?;
        // SAFETY: forwarded contract.
        let ids = unsafe { encode(m, texts, n) }?;
        let flat = finite_logits(m.model.classify(&ids)?)?;
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_bert_classify", &flat, out, out_len) }
    })
}

/// As [`mk_bert_classify`] from token ids (laid out as in [`mk_bert_embed_ids`]).
///
/// # Safety
/// As [`mk_bert_embed_ids`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_classify_ids(
    m: *const MkBert,
    ids: *const u32,
    lens: *const usize,
    n: usize,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        bert_batch(m, n)?;
        let labels = head_labels(m)?;
        check_len(
            "mk_bert_classify_ids",
            product("n", &[n, labels])?,
            out,
            out_len,
        )?;
        // SAFETY: forwarded contract.
        let rows = unsafe { id_rows(ids, lens, n, m.model.config.max_position_embeddings) }?;
        let flat = finite_logits(m.model.classify(&rows)?)?;
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_bert_classify_ids", &flat, out, out_len) }
    })
}

/// Labels of the classification head, or an Err when the checkpoint has none.
fn head_labels(m: &MkBert) -> Result<usize> {
    if !m.model.has_classifier() {
        return Err(invalid(
            "model",
            "the checkpoint has no classification head (classifier.weight)",
        ));
    }
    Ok(m.model.labels().len())
}

/// Releases a model.
///
/// # Safety
/// `m` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_bert_free(m: *mut MkBert) {
    if !m.is_null() {
        // SAFETY: a Box we made, freed once per the contract.
        drop(unsafe { Box::from_raw(m) });
    }
}

/// Fails before any work when the caller's buffer cannot hold `needed` elements.
fn check_len(func: &str, needed: usize, out: *const f32, len: usize) -> Result<()> {
    if out.is_null() {
        return Err(invalid("out", format!("{func}: NULL output buffer")));
    }
    if len < needed {
        return Err(too_small(func, needed, len));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Image classifiers

enum ImageNet {
    Sepsis(Box<SepsisNet>),
    Effnet(Box<EfficientNet>),
}

/// An image classifier (`mk_image_model`): `"lite0"` (EfficientNet-Lite0, 1000 ImageNet
/// logits), `"cxr"` (EfficientNet-B7 chest X-ray triage, 1 abnormal logit) or `"sepsis"`
/// (the ResNet-18-based sepsis classifier, 2 logits: no sepsis, sepsis).
pub struct MkImageModel {
    net: ImageNet,
    prep: Preprocess<'static>,
    outputs: usize,
    device: Device,
    dtype: DType,
    /// Limits of the files it reads ([`mk_image_model_set_input_limits`]).
    limits: input::InputLimits,
}

/// The seed of the random weights used when no weight file is given.
pub const MK_RANDOM_SEED: u64 = 42;

/// Loads an image classifier of `kind` from a safetensors file `weights` (NULL: seeded
/// random weights, for smoke tests only: the outputs mean nothing).
///
/// # Safety
/// `dev` is a live handle; `kind` NUL-terminated; `weights` NULL or NUL-terminated; `out`
/// valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_model_load(
    dev: *const MkDevice,
    kind: *const c_char,
    weights: *const c_char,
    dtype: i32,
    out: *mut *mut MkImageModel,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (d, kind) = unsafe { (handle(dev, "dev")?, text(kind, "kind")?) };
        let weights = if weights.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            Some(PathBuf::from(unsafe { text(weights, "weights") }?))
        };
        let device = d.0.clone();
        let dtype = dtype_of(dtype, &device)?;
        let (net, prep, outputs) = match kind {
            "sepsis" => {
                let m = match &weights {
                    Some(p) => SepsisNet::load(p, &device, dtype)?,
                    None => SepsisNet::from_safetensors(
                        &sepsis::random_sepsis(MK_RANDOM_SEED).to_safetensors()?,
                        &device,
                        dtype,
                    )?,
                };
                (
                    ImageNet::Sepsis(Box::new(m)),
                    Preprocess::imagenet((224, 224)),
                    2,
                )
            }
            "lite0" | "cxr" => {
                let cfg = if kind == "cxr" {
                    EfficientNetConfig::b(7)?.with_head(en::Head::ChestXray)
                } else {
                    EfficientNetConfig::lite(0)?
                };
                let prep = cfg.preprocess();
                let outputs = cfg.num_outputs();
                let m = match &weights {
                    Some(p) => EfficientNet::load(p, cfg, &device, dtype)?,
                    None => EfficientNet::from_bytes(
                        &en::to_safetensors(&en::random_weights(&cfg, MK_RANDOM_SEED)?)?,
                        cfg,
                        &device,
                        dtype,
                    )?,
                };
                (ImageNet::Effnet(Box::new(m)), prep, outputs)
            }
            k => {
                return Err(invalid(
                    "kind",
                    format!("{k:?}; expected \"lite0\", \"cxr\" or \"sepsis\""),
                ));
            }
        };
        // SAFETY: forwarded contract.
        unsafe {
            put(
                out,
                MkImageModel {
                    net,
                    prep,
                    outputs,
                    device,
                    dtype,
                    limits: input::InputLimits::default(),
                },
            )
        }
    })
}

/// Logits per image (1000, 1 or 2), 0 for a NULL handle.
///
/// # Safety
/// `m` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_model_num_outputs(m: *const MkImageModel) -> usize {
    // SAFETY: forwarded contract.
    unsafe { m.as_ref() }.map_or(0, |m| m.outputs)
}

impl MkImageModel {
    /// Logits of preprocessed images `[N, H, W, 3]`, flattened.
    fn logits(&self, x: &Tensor) -> Result<Vec<f32>> {
        let v = match &self.net {
            ImageNet::Sepsis(m) => m.forward(x)?.logits.to_host()?.as_slice::<f32>()?.to_vec(),
            ImageNet::Effnet(m) => m.logits(x)?.into_iter().flatten().collect(),
        };
        if let Some(bad) = v.iter().position(|z| !z.is_finite()) {
            return Err(corrupt(
                "weights",
                format!("logit {bad} is {} (non-finite weights or input?)", v[bad]),
            ));
        }
        Ok(v)
    }

    /// Centre square, resize and normalise (ImageNet evaluation), as `medkern classify`.
    fn prepare(&self, raw: RawImage) -> Result<Tensor> {
        let raw = raw.center_crop_square()?;
        let p = Preprocess {
            grey_to_rgb: raw.channels() == 1,
            ..self.prep
        };
        raw.preprocess(&self.device, &p, self.dtype)
    }
}

/// Classifies one image file (PNG, JPEG or uncompressed DICOM, chosen by content) into
/// `out[num_outputs]` logits.
///
/// # Safety
/// `m` is a live handle; `path` NUL-terminated; `out` valid for `out_len` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_classify_file(
    m: *const MkImageModel,
    path: *const c_char,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (m, path) = unsafe { (handle(m, "model")?, text(path, "path")?) };
        check_len("mk_image_classify_file", m.outputs, out, out_len)?;
        let raw = input::load_with(std::path::Path::new(path), &m.limits)?;
        let v = m.logits(&m.prepare(raw)?)?;
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_image_classify_file", &v, out, out_len) }
    })
}

/// The limits from the C arguments: 0 keeps the default of that limit.
fn limits_of(
    max_file_bytes: u64,
    max_pixels: u64,
    max_alloc_bytes: u64,
    max_dicom_depth: usize,
    max_batch: usize,
) -> input::InputLimits {
    let d = input::InputLimits::default();
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    let or_usize = |v: usize, default: usize| if v == 0 { default } else { v };
    input::InputLimits {
        max_file_bytes: or(max_file_bytes, d.max_file_bytes),
        max_pixels: or(max_pixels, d.max_pixels),
        max_alloc_bytes: or(max_alloc_bytes, d.max_alloc_bytes),
        max_dicom_depth: or_usize(max_dicom_depth, d.max_dicom_depth),
        max_batch: or_usize(max_batch, d.max_batch),
    }
}

/// Sets the limits of the files `m` reads in [`mk_image_classify_file`] and the most images
/// one [`mk_image_classify_u8`] takes (see [`input::InputLimits`]; 0 keeps a limit's default:
/// 1 GiB, 64 Mpixel, 256 MiB, depth 64, 4096 images).
///
/// # Safety
/// `m` is a live handle not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_model_set_input_limits(
    m: *mut MkImageModel,
    max_file_bytes: u64,
    max_pixels: u64,
    max_alloc_bytes: u64,
    max_dicom_depth: usize,
    max_batch: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: per the contract, a non-NULL `m` is a live handle of ours used only here.
        let m = unsafe { m.as_mut() }.ok_or_else(|| invalid("model", "NULL handle"))?;
        m.limits = limits_of(
            max_file_bytes,
            max_pixels,
            max_alloc_bytes,
            max_dicom_depth,
            max_batch,
        );
        Ok(())
    })
}

/// Classifies `n` decoded 8-bit images of one size, `pixels[n][h][w][channels]` (channels 1
/// grey, 3 RGB), into `out[n × num_outputs]` logits. Each image is centre-cropped to a
/// square and resized like [`mk_image_classify_file`].
///
/// # Safety
/// `m` is a live handle; `pixels` valid for `n·h·w·channels` reads; `out` for `out_len`
/// writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_classify_u8(
    m: *const MkImageModel,
    pixels: *const u8,
    n: usize,
    h: usize,
    w: usize,
    channels: usize,
    out: *mut f32,
    out_len: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let m = unsafe { handle(m, "model") }?;
        input::check_batch(OP, "n", n, m.limits.max_batch)?;
        if n == 0 || h == 0 || w == 0 || !(channels == 1 || channels == 3) {
            return Err(Error::Shape {
                op: OP,
                arg: "pixels",
                got: vec![n, h, w, channels],
                expected: "[n ≥ 1, h ≥ 1, w ≥ 1, channels 1 or 3]".into(),
            });
        }
        check_len(
            "mk_image_classify_u8",
            product("n", &[n, m.outputs])?,
            out,
            out_len,
        )?;
        let per = product("pixels", &[h, w, channels])?;
        product("pixels", &[n, per])?;
        if pixels.is_null() {
            return Err(invalid("pixels", "NULL array"));
        }
        // SAFETY: valid for n·per reads per the contract.
        let all = unsafe { std::slice::from_raw_parts(pixels, n * per) };
        let mut logits = Vec::with_capacity(n * m.outputs);
        for (i, img) in all.chunks_exact(per).enumerate() {
            let raw = RawImage {
                pixels: HostTensor::new(&[1, h, w, channels], img.to_vec())?,
                range: PixelRange::Scale(255.0),
                source: format!("pixels[{i}]"),
            };
            logits.extend(m.logits(&m.prepare(raw)?)?);
        }
        // SAFETY: forwarded contract.
        unsafe { write_out("mk_image_classify_u8", &logits, out, out_len) }
    })
}

/// Releases a model.
///
/// # Safety
/// `m` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_image_model_free(m: *mut MkImageModel) {
    if !m.is_null() {
        // SAFETY: a Box we made, freed once per the contract.
        drop(unsafe { Box::from_raw(m) });
    }
}

// ---------------------------------------------------------------------------------------------
// EXAM: chest X-ray + EMR → oxygen requirement

/// The EXAM model (`mk_exam`).
pub struct MkExam {
    model: ExamModel,
    device: Device,
    dtype: DType,
    /// Limits of the image files it reads ([`mk_exam_set_input_limits`]).
    limits: input::InputLimits,
}

/// One patient's EXAM prediction (`mk_exam_output`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MkExamOutput {
    /// P(more than low-flow oxygen) at 24 h and at 72 h.
    pub oxygen_24h: f32,
    pub oxygen_72h: f32,
    /// The ordinal score before the cut points.
    pub ordinal_score: f32,
    /// P(class k), in the order of [`crate::model::exam::ORDINAL_CLASSES`]: room_air,
    /// low_flow, high_flow_or_niv, mechanical_ventilation, death ([`mk_exam_class_name`]).
    pub ordinal_probs: [f32; 5],
    /// The most probable class (0-4).
    pub ordinal_class: u32,
}

/// As [`mk_image_model_set_input_limits`], for the image files of [`mk_exam_predict`] (one
/// patient per call: there is no batch to limit).
///
/// # Safety
/// `m` is a live handle not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_exam_set_input_limits(
    m: *mut MkExam,
    max_file_bytes: u64,
    max_pixels: u64,
    max_alloc_bytes: u64,
    max_dicom_depth: usize,
) -> MkStatus {
    guard(|| {
        // SAFETY: per the contract, a non-NULL `m` is a live handle of ours used only here.
        let m = unsafe { m.as_mut() }.ok_or_else(|| invalid("model", "NULL handle"))?;
        m.limits = limits_of(
            max_file_bytes,
            max_pixels,
            max_alloc_bytes,
            max_dicom_depth,
            0,
        );
        Ok(())
    })
}

/// [`crate::model::exam::ORDINAL_CLASSES`] as C strings (a test checks they agree).
static EXAM_CLASS_NAMES: [&CStr; 5] = [
    c"room_air",
    c"low_flow",
    c"high_flow_or_niv",
    c"mechanical_ventilation",
    c"death",
];

/// The name of ordinal class `k` of [`MkExamOutput::ordinal_probs`] (a static string), NULL
/// for `k >= 5`.
#[unsafe(no_mangle)]
pub extern "C" fn mk_exam_class_name(k: usize) -> *const c_char {
    EXAM_CLASS_NAMES
        .get(k)
        .map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Loads EXAM from a safetensors checkpoint `weights` (NULL: seeded random weights, for
/// smoke tests only).
///
/// # Safety
/// `dev` is a live handle; `weights` NULL or NUL-terminated; `out` valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_exam_load(
    dev: *const MkDevice,
    weights: *const c_char,
    dtype: i32,
    out: *mut *mut MkExam,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let d = unsafe { handle(dev, "dev") }?;
        let device = d.0.clone();
        let dtype = dtype_of(dtype, &device)?;
        let model = if weights.is_null() {
            ExamModel::random(&ExamConfig::default(), MK_RANDOM_SEED, &device, dtype)?
        } else {
            // SAFETY: forwarded contract.
            let p = unsafe { text(weights, "weights") }?;
            ExamModel::load(std::path::Path::new(p), &device, dtype)?
        };
        // SAFETY: forwarded contract.
        unsafe {
            put(
                out,
                MkExam {
                    model,
                    device,
                    dtype,
                    limits: input::InputLimits::default(),
                },
            )
        }
    })
}

/// Predicts for one patient: a chest X-ray file (PNG, JPEG or DICOM with its own window)
/// and the EMR as a JSON object text (the documented feature keys; missing keys are
/// flagged absent, as `medkern exam`).
///
/// # Safety
/// `m` is a live handle; `image_path` and `emr_json` NUL-terminated; `out` valid for one
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_exam_predict(
    m: *const MkExam,
    image_path: *const c_char,
    emr_json: *const c_char,
    out: *mut MkExamOutput,
) -> MkStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (m, path, emr) = unsafe {
            (
                handle(m, "model")?,
                text(image_path, "image_path")?,
                text(emr_json, "emr_json")?,
            )
        };
        if out.is_null() {
            return Err(invalid("out", "mk_exam_predict: NULL output"));
        }
        let cfg = &m.model.head.config.emr;
        let record: serde_json::Value = serde_json::from_str(emr)
            .map_err(|e| invalid("emr_json", format!("not valid JSON: {e}")))?;
        let emr = cfg.encode(&record)?;
        let raw = input::load_with(std::path::Path::new(path), &m.limits)?;
        let x = raw.to_model_input(&m.device, m.model.trunk.input_size(), m.dtype)?;
        let e = HostTensor::new(&[1, cfg.dim()], emr)?.into_device(&m.device)?;
        let o = m
            .model
            .forward(&x, &e)?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("output", "EXAM returned no prediction"))?;
        let r = MkExamOutput {
            oxygen_24h: o.oxygen_24h,
            oxygen_72h: o.oxygen_72h,
            ordinal_score: o.ordinal_score,
            ordinal_probs: o.ordinal_probs,
            ordinal_class: o.ordinal_class as u32,
        };
        let vals = [r.oxygen_24h, r.oxygen_72h, r.ordinal_score];
        if vals.iter().chain(&r.ordinal_probs).any(|v| !v.is_finite()) {
            return Err(corrupt("weights", format!("non-finite prediction {r:?}")));
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { *out = r };
        Ok(())
    })
}

/// Releases a model.
///
/// # Safety
/// `m` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mk_exam_free(m: *mut MkExam) {
    if !m.is_null() {
        // SAFETY: a Box we made, freed once per the contract.
        drop(unsafe { Box::from_raw(m) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: MK_ERR_BUFFER_TOO_SMALL was picked by matching the argument name "output
    /// buffer" of an Error::Invalid, so any invalid argument of that name (from any op) read as
    /// a short buffer. The Error::BufferTooSmall variant decides now.
    #[test]
    fn buffer_status_comes_from_the_variant_not_the_argument_name() {
        let named = Error::Invalid {
            op: "some_op",
            arg: "output buffer",
            detail: "not aligned".into(),
        };
        assert_eq!(status_of(&named), MkStatus::InvalidArgument);
        let short = too_small("mk_bert_embed", 768, 10);
        assert!(matches!(
            short,
            Error::BufferTooSmall {
                given: 10,
                needed: 768,
                ..
            }
        ));
        assert_eq!(status_of(&short), MkStatus::BufferTooSmall);
        let msg = short.to_string();
        assert!(
            msg.contains("mk_bert_embed") && msg.contains("holds 10") && msg.contains("768"),
            "{msg}"
        );
    }
}
