#![no_main]
//! `cargo fuzz run modbus_registers`: see `fieldbridge::fuzz::modbus_registers` for what it drives and asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge::fuzz::modbus_registers(data));
