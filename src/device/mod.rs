//! Devices: what a device *is* to the rest of the gateway, whatever bus it is on. The core
//! here — availability, freshness, the retained state, commands and their results — is written
//! once; [`modbus`] and [`line`] are the two transports that feed it (a Modbus device polled on
//! its period, a serial line device reporting on its own).
//!
//! - [`state`]: what to publish (deadband, heartbeat, the latest values), and availability. Pure.
//! - [`command`]: a command payload validated whole before anything is written. Pure.

pub mod command;
pub mod line;
pub mod modbus;
pub mod state;

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::config::DeviceConfig;
use crate::history::HistoryHandle;
use crate::model::Value;
use crate::payload;
use crate::topics::Topics;
use command::Command;
use state::{DeviceState, PublishRule};

/// Commands waiting for one device. The bridge validates commands before queuing them, so only
/// valid ones wait here; when full, the bridge answers the newest one `ok: false` ("busy").
pub const DEVICE_COMMANDS_CAP: usize = 16;

/// Counters of the command path, for the health topic.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Valid commands handed to their device.
    pub accepted: AtomicU64,
    /// Commands refused by validation (malformed, unknown point, out of range, …).
    pub rejected: AtomicU64,
    /// Valid commands refused because their device already had `DEVICE_COMMANDS_CAP` waiting.
    pub busy: AtomicU64,
    /// Commands executed and confirmed.
    pub ok: AtomicU64,
    /// Commands that failed at the device (exception, timeout, port down).
    pub failed: AtomicU64,
}

/// Where the device task sends what it publishes. The MQTT handle implements it; so can a test.
pub trait Sink: Send + Sync + 'static {
    /// A reading on a sensor topic: never blocks; when the broker is away the link queues it
    /// with drop-oldest.
    fn publish(&self, topic: String, payload: String, qos: u8, retain: bool);
    /// Retained state or availability: never blocks; newest per topic wins while queued.
    fn publish_retained(&self, topic: String, payload: String);
    /// Deletes a retained message (empty retained payload).
    fn clear_retained(&self, topic: String) {
        self.publish_retained(topic, String::new());
    }
}

/// Where a device task's results go: MQTT through the sink, and the history. A borrowed view,
/// built from the task's fields where needed, shared by Modbus and serial devices.
pub(crate) struct Out<'a> {
    pub name: &'a str,
    pub config: &'a DeviceConfig,
    pub sink: &'a dyn Sink,
    pub topics: &'a Topics,
    pub history: Option<&'a HistoryHandle>,
}

impl Out<'_> {
    /// Applies one read's values to `state` and publishes what that calls for: sensor topics
    /// (recorded in the history too) and the retained device state.
    pub fn values(
        &self,
        state: &mut DeviceState,
        values: Vec<(String, Value, PublishRule)>,
        at: SystemTime,
    ) {
        let decision = state.apply(values, std::time::Instant::now());
        let loc = &self.config.location;
        for (point, value) in &decision.sensors {
            let Some(p) = self.config.points.get(point) else {
                continue;
            };
            let topic = self.topics.sensor(self.name, loc, point);
            let body = payload::sensor(value, p.unit.as_deref(), at, self.name, loc);
            self.sink.publish(topic, body, p.qos, p.retain);
            if let Some(h) = self.history {
                h.record_reading(self.name, point, at, value);
            }
        }
        if decision.state {
            let topic = self.topics.state(self.name, loc);
            let body = payload::state(state.latest().iter().map(|(k, v)| (k.as_str(), v)), at);
            self.sink.publish_retained(topic, body);
        }
    }

    /// Publishes (retained) and records an availability change.
    pub fn availability(&self, online: bool) {
        let topic = self.topics.availability(self.name, &self.config.location);
        self.sink
            .publish_retained(topic, payload::availability(self.name, online));
        if let Some(h) = self.history {
            h.record_availability(self.name, online, SystemTime::now());
        }
    }

    /// Publishes a command's result and records the command.
    pub fn result(&self, cmd: &Command, body: String) {
        if let Some(h) = self.history {
            h.record_command(self.name, &cmd.raw, &body, SystemTime::now());
        }
        let topic = self.topics.command_result(self.name, &self.config.location);
        self.sink.publish(topic, body, 1, false);
    }
}

/// The next command, or never when the task takes none.
pub(crate) async fn next_command(rx: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
