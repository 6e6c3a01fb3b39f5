//! Devices: what a device *is* to the rest of the gateway, whatever bus it is on. The [`Core`]
//! here — availability, freshness, the retained state, commands and their results — is written
//! once (README "Topics"); [`modbus`] and [`serial`] are the two transports that feed it: a Modbus
//! device polled on its period, a serial line device reporting on its own.
//!
//! - [`state`]: what to publish (deadband, heartbeat, the latest values), and availability. Pure.
//! - [`command`]: a command payload validated whole before anything is written. Pure.
//!
//! What the core decides, for both kinds:
//! - a device is `offline` after `offline_after` failed polls (a serial device: one silence
//!   period) and `online` with its next answer;
//! - values are never invented: a point that failed leaves the retained state until it reads
//!   again, and nothing is published for it;
//! - a command for an offline device is refused at once ("device offline"), except `refresh`,
//!   which tries the device once;
//! - a command whose `id` was executed in the last 24 hours is not executed again: its first
//!   result is published again. The id is on disk (`commands.db`) before the command's write
//!   goes out, so this holds across a crash too;
//! - every delivered command is acknowledged to the broker only once its result is out, so a
//!   command the gateway did not finish is delivered again after a restart;
//! - refusals are logged rate-limited per device and reason.

pub mod command;
pub mod modbus;
#[cfg(test)]
pub(crate) mod recorder;
pub mod serial;
pub mod state;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

pub use crate::output::Ack;
use tracing::{debug, info, warn};

use crate::config::{DeviceConfig, PointConfig};
use crate::model::Value;
use crate::output::{COMMAND_ID_WINDOW, CommandIds, DeviceOutput, Outputs, Seen};
use crate::rate_limit::RateLimits;
use command::{Command, CommandKind, Outcome};
use state::{Availability, Change, DeviceState, PublishRule};

/// Commands waiting for one device. The bridge validates commands before queuing them, so only
/// valid ones wait here; when full, the bridge answers the newest one `ok: false` ("busy").
pub const DEVICE_COMMANDS_CAP: usize = 16;

/// How often one refusal reason of one device is logged at most (the first always is).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Results of recent commands kept per device for a repeated `id` (beyond [`COMMAND_ID_WINDOW`]
/// or this many, the durable command log still has them).
const RECENT_RESULTS_CAP: usize = 256;

/// The error of a command refused because its device is offline (README "Sending commands").
pub const DEVICE_OFFLINE: &str = "device offline";

/// The error of a command cut off by a stop before it ran (README "Sending commands").
pub const STOPPING: &str = "stopping";

/// The error of a command cut off by a reload that changed or removed its device.
pub const RECONFIGURED: &str = "device reconfigured";

/// The error of a command that was running when the gateway stopped (a crash, a power cut) and
/// that the broker delivered again: it is not written a second time.
pub const INTERRUPTED: &str = "interrupted";

/// A validated command on its way to its device, with its delivery to acknowledge.
#[derive(Debug)]
pub struct Queued {
    pub command: Command,
    pub ack: Option<Ack>,
}

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
    /// Commands refused because their device was offline.
    pub offline: AtomicU64,
    /// Commands refused because the broker handed them over as retained messages.
    pub retained: AtomicU64,
    /// Commands whose `id` was executed within the last 24 hours: answered with the first result.
    pub repeated: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the device tasks share with the rest of the gateway, and the supervisor with what it
/// starts (buses, devices).
#[derive(Clone)]
pub struct Links {
    /// Where devices report (the output seam, README "Topics").
    pub outputs: Arc<dyn Outputs>,
    pub commands: Arc<CommandStats>,
    /// Executed command ids on disk (`commands.db`); `None` when it cannot be written (then in
    /// memory only).
    pub command_ids: Option<Arc<dyn CommandIds>>,
    /// Where a SunSpec device reports the points its model chain gave it (the supervisor then
    /// announces them to Home Assistant and validates commands against them).
    pub walked: mpsc::Sender<Walked>,
    /// Bumped at each reload: SunSpec devices read their model chain again.
    pub rewalk: watch::Receiver<u64>,
    /// The gateway is stopping: commands cut off are answered "stopping", not "device
    /// reconfigured".
    pub stopping: Arc<AtomicBool>,
    /// A task that panicked reports here; the supervisor then stops the process.
    pub fatal: mpsc::Sender<String>,
}

/// A device's points changed at run time: its model chain was read (`crate::sunspec`).
#[derive(Debug, Clone)]
pub struct Walked {
    pub device: String,
    /// The config the device ran with; the change applies only while that is still its config
    /// (a reload may have replaced it meanwhile).
    pub from: Arc<DeviceConfig>,
    pub config: Arc<DeviceConfig>,
}

/// How many `Walked` reports wait for the supervisor at most; a device awaits its turn (one
/// report per walk that changed something, so this never fills in practice).
pub const WALKED_CAP: usize = 16;

/// The next queued command, or never when the task takes none.
pub(crate) async fn next_command(rx: &mut Option<mpsc::Receiver<Queued>>) -> Option<Queued> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A command the core let through to its transport.
#[derive(Debug)]
pub struct Admitted {
    pub command: Command,
    ack: Option<Ack>,
    /// The `id`, as its JSON text (`"abc"` and `1` differ).
    key: Option<String>,
    /// The command log had it as running with no result: the gateway stopped while executing
    /// it. The transport must not write it again, only find out what the device holds.
    pub interrupted: bool,
}

/// The results of this device's recent commands by `id`, newest last.
#[derive(Debug, Default)]
struct RecentResults {
    entries: VecDeque<(Instant, String, String)>,
}

impl RecentResults {
    fn get(&mut self, key: &str, now: Instant) -> Option<String> {
        while self
            .entries
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= COMMAND_ID_WINDOW)
        {
            self.entries.pop_front();
        }
        self.entries
            .iter()
            .rev()
            .find(|(_, k, _)| k == key)
            .map(|(_, _, body)| body.clone())
    }

    fn insert(&mut self, key: String, body: String, now: Instant) {
        if self.entries.len() >= RECENT_RESULTS_CAP {
            self.entries.pop_front();
        }
        self.entries.push_back((now, key, body));
    }
}

/// The device core: one per device task, whatever its transport.
pub struct Core {
    name: String,
    config: Arc<DeviceConfig>,
    links: Links,
    /// Where this device reports.
    out: Box<dyn DeviceOutput>,
    state: DeviceState,
    availability: Availability,
    /// The device's points in the order of `config.points` (by name): a point's index here is
    /// the index transports hand values over with, so nothing per reading looks a name up.
    points: Vec<PointSlot>,
    /// Points a command wrote (or a refresh read) during the current poll: what that poll read
    /// of them may be older, and is not published. Their slots say so too.
    superseded: Vec<usize>,
    recent: RecentResults,
    refusals: RateLimits,
    /// The next publish sends the state even if nothing changed (`refresh`).
    forced: bool,
}

/// What the core keeps per point.
struct PointSlot {
    name: String,
    rule: PublishRule,
    /// Written (or read by a refresh) during the current poll.
    superseded: bool,
    /// Last error logged, so a failing point warns once, not every poll.
    error: Option<String>,
}

impl Core {
    /// The core of device `name`; offline after `offline_after` failed polls in a row.
    pub fn new(name: &str, config: &Arc<DeviceConfig>, offline_after: u32, links: Links) -> Core {
        Core {
            name: name.to_string(),
            config: config.clone(),
            out: links.outputs.device(name, config),
            links,
            state: DeviceState::new(config.points.len()),
            availability: Availability::new(offline_after),
            points: slots(config),
            superseded: Vec::new(),
            recent: RecentResults::default(),
            refusals: RateLimits::new(REFUSAL_LOG_EVERY),
            forced: false,
        }
    }

    /// The device's points changed while it runs (a SunSpec device's model chain was read):
    /// the state starts over with the new points. Availability, recent command results and the
    /// log's rate limits stay.
    pub fn reconfigure(&mut self, config: &Arc<DeviceConfig>) {
        self.config = config.clone();
        self.out.reconfigure(config);
        self.state = DeviceState::new(config.points.len());
        self.points = slots(config);
        self.superseded.clear();
    }

    /// The index of point `name` (see [`Core::values`]).
    pub fn point_index(&self, name: &str) -> Option<usize> {
        // In the order of `config.points`: sorted by name.
        self.points
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &Arc<DeviceConfig> {
        &self.config
    }

    pub fn is_offline(&self) -> bool {
        self.availability.is_offline()
    }

    /// The device answered (a poll, a line, a command's read-back).
    pub fn answered(&mut self) {
        if let Some(change) = self.availability.success() {
            self.announce(change, "");
        }
    }

    /// A poll in which the device did not answer (`why`, for the log when it goes offline).
    pub fn silent(&mut self, why: &str) {
        if let Some(change) = self.availability.failure() {
            self.announce(change, why);
        }
    }

    fn announce(&mut self, change: Change, why: &str) {
        let online = change == Change::Online;
        if online {
            info!(device = %self.name, "device online");
        } else {
            warn!(device = %self.name, reason = %why, "device offline");
        }
        self.out.availability(online);
    }

    /// A poll starts: what commands write during it is newer than what it reads.
    pub fn poll_started(&mut self) {
        for i in self.superseded.drain(..) {
            if let Some(p) = self.points.get_mut(i) {
                p.superseded = false;
            }
        }
    }

    /// Everything the current poll read is older than what comes next (a refresh read it all).
    pub fn supersede_all(&mut self) {
        for i in 0..self.points.len() {
            self.supersede(i);
        }
    }

    fn supersede(&mut self, i: usize) {
        if let Some(p) = self.points.get_mut(i) {
            if !p.superseded {
                p.superseded = true;
                self.superseded.push(i);
            }
        }
    }

    /// Makes the next [`Core::values`] publish the state even if nothing changed (`refresh`).
    pub fn force_state(&mut self) {
        self.forced = true;
        self.state.force_state();
    }

    /// One poll's (or line's) values, and the points it failed to read, by point index (see
    /// [`Core::point_index`]): those that failed leave the retained state until they read
    /// again, and nothing is published for them. What a command wrote meanwhile is newer and
    /// wins.
    pub fn values(&mut self, read: Vec<(usize, Value)>, failed: &[usize], at: SystemTime) {
        let fresh = |p: &PointSlot| !p.superseded;
        let failed: Vec<usize> = failed
            .iter()
            .copied()
            .filter(|i| self.points.get(*i).is_some_and(fresh))
            .collect();
        let mut values = Vec::with_capacity(read.len());
        for (i, value) in read {
            let Some(p) = self.points.get_mut(i) else {
                continue;
            };
            if !fresh(p) {
                continue;
            }
            if p.error.take().is_some() {
                info!(device = %self.name, point = %p.name, "point reads again");
            }
            values.push((i, value, p.rule));
        }
        self.publish(values, &failed, at);
    }

    /// Values a command wrote and read back: published at once (no deadband), and newer than
    /// anything the current poll read of them.
    pub fn written(&mut self, read_back: &[(String, Value)]) {
        let mut values = Vec::with_capacity(read_back.len());
        for (name, v) in read_back {
            let Some(i) = self.point_index(name) else {
                continue;
            };
            self.supersede(i);
            let mut r = self.points[i].rule;
            r.deadband = 0.0;
            values.push((i, v.clone(), r));
        }
        self.publish(values, &[], SystemTime::now());
    }

    /// A point the device answered for but that could not be read (an exception, a value that
    /// does not decode): warned about once per distinct error, with its register or field.
    pub fn point_error(&mut self, i: usize, error: &str) {
        let Some(slot) = self.points.get_mut(i) else {
            return;
        };
        if slot.error.as_deref() == Some(error) {
            return;
        }
        slot.error = Some(error.to_string());
        let point = slot.name.as_str();
        let p = self.config.points.get(point);
        let register = p
            .and_then(|p| p.register)
            .map(|r| r.to_string())
            .unwrap_or_default();
        let field = p.and_then(|p| p.field.clone()).unwrap_or_default();
        warn!(device = %self.name, point = %point, register = %register, field = %field, error = %error, "cannot read point");
    }

    fn publish(
        &mut self,
        values: Vec<(usize, Value, PublishRule)>,
        failed: &[usize],
        at: SystemTime,
    ) {
        if values.is_empty() && failed.is_empty() && !std::mem::take(&mut self.forced) {
            return;
        }
        self.forced = false;
        let decision = self.state.apply(values, failed, std::time::Instant::now());
        for (i, value) in &decision.sensors {
            self.out.reading(*i, value, at);
        }
        if decision.state {
            self.out.state(self.state.latest(), at);
        }
    }

    /// Decides what happens to a command before its transport sees it: a repeated `id` is
    /// answered with its first result; an offline device refuses everything but `refresh`;
    /// otherwise the `id` is put on disk and the command is the transport's to execute.
    pub async fn admit(&mut self, queued: Queued) -> Option<Admitted> {
        let Queued { command, ack } = queued;
        let key = command.id.as_ref().map(|id| id.to_string());
        let now = Instant::now();
        if let Some(k) = &key {
            if let Some(body) = self.recent.get(k, now) {
                self.repeat(&command, ack, body);
                return None;
            }
        }
        if self.is_offline() && command.kind != CommandKind::Refresh {
            count(&self.links.commands.offline);
            self.refuse(&command, ack, DEVICE_OFFLINE);
            return None;
        }
        let mut interrupted = false;
        if let (Some(k), Some(log)) = (&key, &self.links.command_ids) {
            match log.begin(&self.name, k).await {
                Ok(Seen::New) => {}
                Ok(Seen::Done(body)) => {
                    self.recent.insert(k.clone(), body.clone(), now);
                    self.repeat(&command, ack, body);
                    return None;
                }
                Ok(Seen::Interrupted) => interrupted = true,
                Err(e) => {
                    if let Some(suppressed) = self.refusals.check("command log", now) {
                        warn!(device = %self.name, error = %e, suppressed, "cannot record the command id; a delivery of it again after a crash could execute it twice");
                    }
                }
            }
        }
        Some(Admitted {
            command,
            ack,
            key,
            interrupted,
        })
    }

    /// Publishes a command's result, records it (history, command log, recent ids) and
    /// acknowledges its delivery.
    pub async fn finish(&mut self, admitted: Admitted, outcome: Outcome) {
        let Admitted {
            command, ack, key, ..
        } = admitted;
        if outcome.is_ok() {
            count(&self.links.commands.ok);
            info!(device = %self.name, action = %command.action, "command executed");
        } else {
            count(&self.links.commands.failed);
            let error = outcome
                .failure
                .as_ref()
                .map(|f| f.error.as_str())
                .unwrap_or_default();
            warn!(device = %self.name, action = %command.action, error = %error, "command failed");
        }
        let body = command::result_payload(command.id.as_ref(), Some(&command.action), &outcome);
        if let Some(k) = key {
            if let Some(log) = &self.links.command_ids {
                if let Err(e) = log.finish(&self.name, &k, &body).await {
                    debug!(device = %self.name, error = %e, "command result not recorded in the command log");
                }
            }
            self.recent.insert(k, body.clone(), Instant::now());
        }
        self.out.result(&command.raw, body);
        self.ack(ack);
    }

    /// The gateway is stopping and the command was not executed: it is neither answered nor
    /// acknowledged, so the broker delivers it again after the restart, and it runs then.
    pub async fn abandon(&mut self, admitted: Admitted) {
        if let (Some(k), Some(log)) = (&admitted.key, &self.links.command_ids) {
            if let Err(e) = log.forget(&self.name, k).await {
                debug!(device = %self.name, error = %e, "command id not forgotten");
            }
        }
        let why = self.cut_off_reason();
        self.refuse(&admitted.command, admitted.ack, why);
    }

    /// The commands still queued for this device when it stops (a reload changes or removes
    /// it, or the gateway stops): each answered `ok: false` and acknowledged, so the broker
    /// never delivers one again to run at some later reconnect.
    pub fn cut_off(&mut self, queue: &mut mpsc::Receiver<Queued>) {
        queue.close();
        let why = self.cut_off_reason();
        while let Ok(q) = queue.try_recv() {
            self.refuse(&q.command, q.ack, why);
        }
    }

    fn cut_off_reason(&self) -> &'static str {
        if self.links.stopping.load(Ordering::Relaxed) {
            STOPPING
        } else {
            RECONFIGURED
        }
    }

    /// Answers a command with the result its `id` got the first time.
    fn repeat(&mut self, command: &Command, ack: Option<Ack>, body: String) {
        count(&self.links.commands.repeated);
        info!(device = %self.name, id = %command.id.as_ref().map(|i| i.to_string()).unwrap_or_default(), "command id executed within the last 24 hours; its first result is published again");
        self.out.result(&command.raw, body);
        self.ack(ack);
    }

    /// Refuses a command before anything is written: a result, a history row, a log line
    /// (rate-limited per reason) and the acknowledgement.
    fn refuse(&mut self, command: &Command, ack: Option<Ack>, error: &str) {
        if let Some(suppressed) = self.refusals.check(error, Instant::now()) {
            warn!(device = %self.name, action = %command.action, error = %error, suppressed, "command refused");
        }
        let body = command::refusal_payload(command.id.as_ref(), Some(&command.action), error);
        self.out.result(&command.raw, body);
        self.ack(ack);
    }

    fn ack(&mut self, ack: Option<Ack>) {
        if let Some(a) = ack {
            self.out.ack(a);
        }
    }
}

/// What the core keeps per point, in the order of `config.points`.
fn slots(config: &DeviceConfig) -> Vec<PointSlot> {
    config
        .points
        .iter()
        .map(|(name, p)| PointSlot {
            name: name.clone(),
            rule: rule(p),
            superseded: false,
            error: None,
        })
        .collect()
}

fn rule(p: &PointConfig) -> PublishRule {
    PublishRule {
        deadband: p.deadband,
        heartbeat: p.heartbeat,
    }
}
