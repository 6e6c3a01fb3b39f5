#![no_main]
//! `cargo fuzz run config`: see `fieldbridge::fuzz::config` for what it drives and asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge::fuzz::config(data));
