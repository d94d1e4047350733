//! The one public error type. Every message names the op (or kernel), what was given and
//! what was expected, so a failing call in a server log is diagnosable without a debugger.

use crate::device::Arch;
use crate::dtype::DType;

/// Everything that can go wrong in medkern.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda) is not installed or could not be loaded.
    #[error("{op}: no NVIDIA driver: {detail}")]
    NoDriver { op: &'static str, detail: String },
    /// The requested GPU ordinal does not exist.
    #[error("{op}: no GPU with ordinal {ordinal} ({count} GPU(s) present)")]
    NoDevice {
        op: &'static str,
        ordinal: usize,
        count: usize,
    },
    /// A kernel needs a newer compute capability than the GPU has.
    #[error("kernel {kernel} needs compute capability {needed} or newer, but the GPU is {actual}")]
    ArchTooLow {
        kernel: &'static str,
        needed: Arch,
        actual: Arch,
    },
    /// A kernel name that is not in the kernel table.
    #[error("unknown kernel {kernel:?}: not in the medkern kernel table")]
    UnknownKernel { kernel: String },
    /// An operand has the wrong shape.
    #[error("{op}: {arg} has shape {got:?}, expected {expected}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        got: Vec<usize>,
        expected: String,
    },
    /// An operand has the wrong dtype.
    #[error("{op}: {arg} has dtype {got}, expected {expected}")]
    DType {
        op: &'static str,
        arg: &'static str,
        got: DType,
        expected: String,
    },
    /// Operands live on different devices (or on the CPU where a GPU buffer is needed).
    #[error("{op}: {arg} is on {got}, expected {expected}")]
    Device {
        op: &'static str,
        arg: &'static str,
        got: String,
        expected: String,
    },
    /// Any other invalid argument (a length, a scale, an epsilon).
    #[error("{op}: invalid {arg}: {detail}")]
    Invalid {
        op: &'static str,
        arg: &'static str,
        detail: String,
    },
    /// A CUDA driver call failed.
    #[error("{op}: CUDA driver error: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A launch the driver (or the emulated GPU) refuses, or a fault inside the kernel: the
    /// message says which limit or which access (block, thread, address).
    #[error("kernel {kernel}: {detail}")]
    Launch {
        kernel: &'static str,
        detail: String,
    },
    /// NVRTC is missing or a runtime compilation failed (the message carries the log).
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A file could not be read or written.
    #[error("{op}: {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a driver error with the op that hit it: `.map_err(driver("softmax"))`.
pub fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |source| Error::Driver { op, source }
}
