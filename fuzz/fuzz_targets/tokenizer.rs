#![no_main]
//! Fuzz target `tokenizer`: see `medkern_fuzz::targets::tokenizer`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("tokenizer"), |data: &[u8]| {
    medkern_fuzz::targets::tokenizer(data)
});
