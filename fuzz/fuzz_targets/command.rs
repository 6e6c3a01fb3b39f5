#![no_main]
//! `cargo fuzz run command`: see `fieldbridge::fuzz::command` for what it drives and asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge::fuzz::command(data));
