//! Models assembled from medkern ops: BERT-family encoders ([`bert`]), ResNet-18/34
//! ([`resnet`]), the sepsis classifier, autoencoder and k-means ([`sepsis`]), EfficientNet
//! B0–B7 and Lite0–Lite4 ([`efficientnet`]), the EXAM chest X-ray + EMR model ([`exam`], EMR
//! inputs in [`emr`]).

pub mod bert;
pub mod compress;
pub mod efficientnet;
pub mod emr;
pub mod exam;
pub mod linear;
pub mod resnet;
pub mod sepsis;
