#![no_main]
//! Fuzz target `checkpoint`: see `medkern_fuzz::targets::checkpoint`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("checkpoint"), |data: &[u8]| {
    medkern_fuzz::targets::checkpoint(data)
});
