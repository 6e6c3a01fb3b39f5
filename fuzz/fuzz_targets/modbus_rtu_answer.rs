#![no_main]
//! `cargo fuzz run modbus_rtu_answer`: see `fieldbridge::fuzz::modbus_rtu_answer` for what it drives and asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge::fuzz::modbus_rtu_answer(data));
