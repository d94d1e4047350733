#![no_main]
//! Fuzz target `image`: see `medkern_fuzz::targets::image`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("image"), |data: &[u8]| {
    medkern_fuzz::targets::image(data)
});
