//! Pictures of results: t-SNE maps of model features and benchmark charts, drawn on the CPU
//! (no GPU needed) to PNG or SVG.

pub mod chart;
pub mod plot;
pub mod tsne;

pub use chart::{BenchReport, write_charts};
pub use plot::{Format, Scatter, save, write_atomic};
pub use tsne::{TsneOptions, tsne, tsne_with};
