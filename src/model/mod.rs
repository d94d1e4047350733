//! Models assembled from medkern ops: BERT-family encoders ([`bert`]).

pub mod bert;
