//! medkern: hand-written CUDA kernels for compressed transformers and clinical CNNs, compiled
//! through NVRTC at build time, launched through checked safe Rust, and mirrored by an f64
//! CPU reference that is both the test oracle and the no-GPU backend.
//!
//! Layers, bottom up: [`device`] (GPUs, the kernel table, embedded CUBIN/PTX), [`tensor`]
//! (host and device tensors, [`Device`]), [`ops`] (one checked launcher per op),
//! [`reference`] (the CPU oracle).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented
)]

pub mod capi;
pub mod device;
pub mod dtype;
pub mod error;
pub mod input;
pub mod model;
pub mod ops;
pub mod quant;
pub mod reference;
#[cfg(feature = "server")]
pub mod server;
pub mod sparse;
pub mod tensor;
pub mod viz;

pub use device::{Arch, Gpu, Timing};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use model::hub::resolve_model;
pub use ops::Activation;
pub use tensor::{Device, DeviceTensor, HostData, HostTensor, Tensor};

/// The README's example runs as a doctest, so the front page cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
