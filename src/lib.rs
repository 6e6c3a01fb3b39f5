//! fieldbridge: bridges Modbus RTU/TCP and line-based serial devices to MQTT.
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod telemetry;
pub mod topics;

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for an invalid, missing or unreadable config (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
pub mod bridge;
pub mod bus;
pub mod command;
pub mod discovery;
pub mod line_device;
pub mod model;
pub mod payload;
pub mod poller;
pub mod state;
