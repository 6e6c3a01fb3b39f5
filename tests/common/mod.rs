//! Shared test harness: a real mosquitto per test on a free loopback port, a subscriber with
//! bounded waits, the gateway as a subprocess, an sd_notify listener, certificates, Home
//! Assistant.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]

pub mod gateway;
pub mod home_assistant;
pub mod modbus;
pub mod mosquitto;
pub mod notify;
pub mod pty;
