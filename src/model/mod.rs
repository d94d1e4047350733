//! Models assembled from medkern ops: BERT-family encoders ([`bert`]).

pub mod bert;
pub mod compress;
pub mod emr;
pub mod exam;
pub mod linear;
