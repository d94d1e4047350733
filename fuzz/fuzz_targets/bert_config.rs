#![no_main]
//! Fuzz target `bert_config`: see `medkern_fuzz::targets::bert_config`.
libfuzzer_sys::fuzz_target!(init: medkern_fuzz::init("bert_config"), |data: &[u8]| {
    medkern_fuzz::targets::bert_config(data)
});
