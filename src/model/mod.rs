//! Models assembled from medkern ops: BERT-family encoders ([`bert`]), ResNet-18/34
//! ([`resnet`]), the sepsis classifier, autoencoder and k-means ([`sepsis`]).

pub mod bert;
pub mod compress;
pub mod emr;
pub mod exam;
pub mod linear;
pub mod resnet;
pub mod sepsis;
