#![no_main]
//! Fuzz target `emr`: see `medkern_fuzz::targets::emr`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("emr"), |data: &[u8]| {
    medkern_fuzz::targets::emr(data)
});
