//! fieldbridge bridges field devices — Modbus RTU on RS-485, Modbus TCP and line-based serial
//! devices — to an MQTT broker for home automation.
//!
//! Module map (data flows top to bottom):
//!
//! - [`config`]: the TOML model, extracted key by key so every mistake is reported at once;
//!   device profiles (`config::Profiles`) are read by the same extraction. [`catalogue`]
//!   shows them (`fieldbridge profiles`).
//! - [`app`]: build everything fallible, spawn the tasks under one cancellation tree, supervise,
//!   reload on SIGHUP, stop in order.
//! - [`bus`]: one task owns each bus (`bus::modbus`, `bus::serial_line`); pure codecs
//!   (`bus::codec`, `bus::line`) and the poll plan (`bus::plan`).
//! - [`device`]: one task per device. The core (availability, freshness, the retained state,
//!   commands and results) is written once; `device::modbus` and `device::line` feed it. It
//!   reports through the [`output`] seam, which [`report`] carries to MQTT and the history.
//! - [`router`]: incoming MQTT commands, validated, to device tasks.
//! - [`mqtt`]: the broker link and its bounded outbox; [`topics`] and [`payload`] are the only
//!   places that shape topics and payloads.
//! - [`ha`]: Home Assistant: discovery in device or entity mode, the configs this gateway owns.
//! - [`telemetry`], [`systemd`]: logs and sd_notify.

pub mod app;
pub mod bus;
pub mod catalogue;
pub mod check;
pub mod cli;
pub mod commission;
pub mod config;
pub mod demo;
pub mod device;
pub mod fleet;
/// The fuzz harnesses (`fuzz/`, `tests/fuzz_corpus.rs`): test scaffolding, so behind the
/// `fuzzing` feature and out of every build that ships.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod ha;
pub mod health;
pub mod history;
pub mod installation;
pub mod model;
pub mod mqtt;
pub mod output;
pub mod payload;
pub mod rate_limit;
pub mod report;
pub mod router;
pub mod sunspec;
pub mod systemd;
pub mod telemetry;
pub mod topics;
pub mod web;

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage error (a wrong command line; clap exits with it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for an invalid, missing or unreadable config (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
