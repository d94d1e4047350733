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
    /// An arch-specific kernel (sm_90a: wgmma, setmaxnreg) on a GPU of another arch.
    #[error(
        "kernel {kernel} is built for sm_90a and runs on compute capability {needed} only, but the GPU is {actual}"
    )]
    ArchMismatch {
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
    /// A file was read but its content cannot be used: corrupt or non-finite weights, tensors
    /// that do not match the model, a config inside a checkpoint or model folder that does not
    /// parse or validate, a malformed or over-limit image, a path that is not a regular file;
    /// or a non-finite result computed from such a file. Apart from [`Error::Invalid`] (the
    /// caller's own arguments) so that callers, such as the C ABI's MK_ERR_CORRUPT_INPUT, tell
    /// them apart without reading messages. The message reads as [`Error::Invalid`]'s.
    #[error("{op}: invalid {arg}: {detail}")]
    Corrupt {
        op: &'static str,
        arg: &'static str,
        detail: String,
    },
    /// A caller's output buffer cannot hold the result; nothing was written to it. A variant
    /// of its own so that callers (the C ABI's MK_ERR_BUFFER_TOO_SMALL) tell it from other
    /// invalid arguments without reading messages.
    #[error("{op}: {what}: output buffer holds {given} {unit}, needs {needed}")]
    BufferTooSmall {
        op: &'static str,
        /// The function whose output it is.
        what: String,
        given: usize,
        needed: usize,
        /// What `given` and `needed` count ("elements", "bytes").
        unit: &'static str,
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

impl Error {
    /// This error as found in a file's content: [`Error::Invalid`] becomes [`Error::Corrupt`]
    /// (a config read from a file fails the same checks as one the caller built); any other
    /// error is returned as it is.
    pub fn into_corrupt(self) -> Error {
        match self {
            Error::Invalid { op, arg, detail } => Error::Corrupt { op, arg, detail },
            e => e,
        }
    }
}

/// The error of an entry point whose work needs a Cargo feature this build of medkern was
/// compiled without (`what`: the work, e.g. "decoding a PNG/JPEG"). An [`Error::Invalid`] of
/// `op` with `arg` "build", so the C ABI reports it as an invalid argument.
#[allow(dead_code)] // Used only where some feature is off.
pub(crate) fn feature_missing(op: &'static str, what: &str, feature: &str) -> Error {
    Error::Invalid {
        op,
        arg: "build",
        detail: format!(
            "{what} needs the `{feature}` Cargo feature; this medkern was built without the \
             `{feature}` feature (enable it: features = [\"{feature}\"])"
        ),
    }
}
