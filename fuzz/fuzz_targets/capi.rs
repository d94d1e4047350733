#![no_main]
//! Fuzz target `capi`: see `medkern_fuzz::targets::capi`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("capi"), |data: &[u8]| {
    medkern_fuzz::targets::capi(data)
});
