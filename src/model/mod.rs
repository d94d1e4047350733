//! Models assembled from medkern ops: BERT-family encoders ([`bert`]), EfficientNet B0–B7 and
//! Lite0–Lite4 ([`efficientnet`]).

pub mod bert;
pub mod compress;
pub mod efficientnet;
pub mod linear;
