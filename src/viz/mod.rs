//! Pictures of results, drawn on the CPU (no GPU needed): an autoencoder's reconstructions and
//! class activation maps for people reading a model's output (`picture`, with the `image`
//! feature), t-SNE maps of model features ([`tsne`], [`plot`]) and benchmark charts
//! ([`chart`]), as PNG or SVG written atomically (PNG only with the `image` feature, which
//! encodes it).

pub mod chart;
#[cfg(feature = "image")]
pub mod picture;
pub mod plot;
pub mod tsne;

pub use chart::{BenchReport, write_charts};
#[cfg(feature = "image")]
pub use picture::*;
pub use plot::{Format, Scatter, save, write_atomic};
pub use tsne::{TsneOptions, tsne, tsne_with};
