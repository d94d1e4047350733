#![no_main]
//! Fuzz target `dicom`: see `medkern_fuzz::targets::dicom`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("dicom"), |data: &[u8]| {
    medkern_fuzz::targets::dicom(data)
});
