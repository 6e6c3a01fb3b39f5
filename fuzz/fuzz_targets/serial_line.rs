#![no_main]
//! `cargo fuzz run serial_line`: see `fieldbridge::fuzz::serial_line` for what it drives and asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge::fuzz::serial_line(data));
