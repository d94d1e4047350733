//! Pictures of results, drawn on the CPU (no GPU needed): an autoencoder's reconstructions and
//! class activation maps for people reading a model's output ([`picture`]), t-SNE maps of model
//! features ([`tsne`], [`plot`]) and benchmark charts ([`chart`]), as PNG or SVG written
//! atomically.

pub mod chart;
pub mod picture;
pub mod plot;
pub mod tsne;

pub use chart::{BenchReport, write_charts};
pub use picture::*;
pub use plot::{Format, Scatter, save, write_atomic};
pub use tsne::{TsneOptions, tsne, tsne_with};
