//! The output seam: everything a device has to tell the world goes through one handle, and the
//! device layer does not know what carries it (docs/design.md, "The house").
//!
//! A device task reports its availability, its readings, its latest state, its command results
//! and the acknowledgements of their deliveries through a [`DeviceOutput`] of its own. The
//! gateway (`app`) makes them with an [`Outputs`]: `report.rs` implements both over the MQTT
//! link and the history, and the commissioning page's tap sits in front of the link. The
//! command router answers the commands it refuses through the same outputs, so every command
//! result follows one path and one history rule.
//!
//! What a device remembers of executed command ids ([`CommandIds`]) is here too, so that the
//! device layer can use the durable log without knowing it is a SQLite file.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::config::DeviceConfig;
use crate::model::Value;

/// The delivery of a QoS 1 message, to acknowledge once it is handled: the MQTT packet id, and
/// the broker session it came in (an id means nothing in a later session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub session: u64,
}

/// What one device reports. Owned by its device task (the command router holds one more per
/// device for the commands it answers itself); the per-point topics and payload prefixes are
/// made once and cached inside.
///
/// Points are named by their index in the order of the device's `config.points` (sorted by
/// name), so that nothing per reading looks a name up.
pub trait DeviceOutput: Send {
    /// The device went online or offline (a state change, not every poll).
    fn availability(&mut self, online: bool);
    /// A point's value to publish on its sensor topic, and to record.
    fn reading(&mut self, point: usize, value: &Value, at: SystemTime);
    /// The device's latest value of every point, by point index (`None`: not read yet).
    fn state(&mut self, latest: &[Option<Value>], at: SystemTime);
    /// A command's result (`body`, the result payload) for the command as received (`raw`):
    /// published and recorded, whoever answers it.
    fn result(&mut self, raw: &str, body: String);
    /// Acknowledges a delivery, after everything reported before it.
    fn ack(&mut self, ack: Ack);
    /// The device's points changed while it runs (a SunSpec model chain was read).
    fn reconfigure(&mut self, config: &Arc<DeviceConfig>);
}

/// Makes the devices' outputs, and reports what concerns no running device task.
pub trait Outputs: Send + Sync + 'static {
    /// The output of device `name` as configured by `config`.
    fn device(&self, name: &str, config: &Arc<DeviceConfig>) -> Box<dyn DeviceOutput>;
    /// Acknowledges a delivery that is nobody's command (after what was reported before it).
    fn ack(&self, ack: Ack);
    /// Device `name`, configured as `old`, was stopped by a reload that changed it to `new`
    /// (`None`: it left the config). What it left retained at topics it no longer uses is
    /// removed; a device that left is recorded offline. Called once its task has stopped.
    fn replaced(&self, name: &str, old: &DeviceConfig, new: Option<&DeviceConfig>);
}

/// How long an executed command's id is remembered (README "Sending commands").
pub const COMMAND_ID_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the command id log knew of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not executed within the window: now recorded (on disk) as running.
    New,
    /// Executed; its result payload.
    Done(String),
    /// Recorded as running, with no result: the gateway stopped (a crash, power loss) while
    /// executing it. It may have been written.
    Interrupted,
}

/// The durable log of executed command ids (`commands.db`). Errors are strings: the device
/// layer only logs them.
pub trait CommandIds: Send + Sync + 'static {
    /// Looks `id` of `device` up; when it was not executed within [`COMMAND_ID_WINDOW`],
    /// records it as running, on disk before the future completes.
    fn begin<'a>(&'a self, device: &'a str, id: &'a str) -> BoxFuture<'a, Result<Seen, String>>;
    /// Records the result published for `id`.
    fn finish<'a>(
        &'a self,
        device: &'a str,
        id: &'a str,
        result: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Forgets `id`: the command was not executed after all, so a later delivery of it runs.
    fn forget<'a>(&'a self, device: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), String>>;
}
