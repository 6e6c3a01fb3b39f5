//! Commands from the broker (or the commissioning page) → device tasks. Commands are validated
//! here, before they queue, so a flood of garbage is answered and counted without ever standing
//! in front of a valid command. A command the broker hands over flagged retained is refused: it
//! would run again at every reconnect. What this refuses is answered through the device's
//! output, like every other command result (`crate::output`), and acknowledged here; a device
//! acknowledges the commands it takes once their result is out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::DeviceConfig;
use crate::device::command;
use crate::device::{CommandStats, DEVICE_COMMANDS_CAP, Queued, REFUSAL_LOG_EVERY};
use crate::mqtt::Incoming;
use crate::output::{DeviceOutput, Outputs};
use crate::rate_limit::RateLimits;

struct Target {
    config: Arc<DeviceConfig>,
    queue: mpsc::Sender<Queued>,
    /// Where the commands refused here are answered.
    out: Box<dyn DeviceOutput>,
}

/// Routes commands to device tasks.
pub struct Router {
    outputs: Arc<dyn Outputs>,
    devices: HashMap<String, Target>,
    pub stats: Arc<CommandStats>,
    /// Refusal log lines, rate-limited per device and reason.
    refusals: RateLimits,
}

impl Router {
    pub fn new(outputs: Arc<dyn Outputs>) -> Self {
        Router {
            outputs,
            devices: HashMap::new(),
            stats: Arc::new(CommandStats::default()),
            refusals: RateLimits::new(REFUSAL_LOG_EVERY),
        }
    }

    /// Forgets a device (it left the config, or its task restarts).
    pub fn remove_device(&mut self, name: &str) {
        self.devices.remove(name);
    }

    /// The outputs of a new config (a reload), for the devices registered from now on.
    pub fn set_outputs(&mut self, outputs: Arc<dyn Outputs>) {
        self.outputs = outputs;
    }

    /// Registers a device's command queue.
    pub fn add_device(
        &mut self,
        name: &str,
        config: &Arc<DeviceConfig>,
        queue: mpsc::Sender<Queued>,
    ) {
        let out = self.outputs.device(name, config);
        self.devices.insert(
            name.to_string(),
            Target {
                config: config.clone(),
                queue,
                out,
            },
        );
    }

    /// A device's points changed while it runs (a SunSpec walk): commands are validated against
    /// its new config from now on.
    pub fn update_device(&mut self, name: &str, config: &Arc<DeviceConfig>) {
        if let Some(t) = self.devices.get_mut(name) {
            t.config = config.clone();
            t.out.reconfigure(config);
        }
    }

    /// Handles one message on the command topic of `device`. Never blocks.
    pub fn command(&mut self, device: &str, msg: &Incoming) {
        let Some(target) = self.devices.get_mut(device) else {
            // A device of the config whose bus kind does not take commands yet.
            debug!(device = %device, "command for a device without a command queue");
            if let Some(a) = msg.ack {
                self.outputs.ack(a);
            }
            return;
        };
        let parsed = command::parse(&target.config, &msg.payload);
        if msg.retained {
            // Handed over at a (re)subscription: it would run at every reconnect.
            self.stats.retained.fetch_add(1, Ordering::Relaxed);
            let (id, action) = match &parsed {
                Ok(c) => (c.id.clone(), Some(c.action.clone())),
                Err(r) => (r.id.clone(), r.action.clone()),
            };
            let error = format!(
                "retained command not executed (it would run again at every reconnect); clear it with an empty retained message on {}",
                msg.topic
            );
            let body = command::refusal_payload(id.as_ref(), action.as_deref(), &error);
            self.refused(device, msg, "retained", &error, body);
            return;
        }
        let refused = match parsed {
            Ok(cmd) => match target.queue.try_send(Queued {
                command: cmd,
                ack: msg.ack,
            }) {
                Ok(()) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(q)) => {
                    self.stats.busy.fetch_add(1, Ordering::Relaxed);
                    let error =
                        format!("{device}: busy: {DEVICE_COMMANDS_CAP} commands already waiting");
                    (q.command.id, Some(q.command.action), error)
                }
                Err(mpsc::error::TrySendError::Closed(q)) => {
                    // Its task is being restarted (a reload): said so, not dropped silently.
                    let error = format!("{device}: restarting; send it again");
                    (q.command.id, Some(q.command.action), error)
                }
            },
            Err(r) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                (r.id, r.action, r.message)
            }
        };
        let (id, action, error) = refused;
        let body = command::refusal_payload(id.as_ref(), action.as_deref(), &error);
        self.refused(device, msg, &error, &error, body);
    }

    /// Answers a refused command through the device's output, logs it — every distinct reason
    /// of every device at least once, a repeat at most every `REFUSAL_LOG_EVERY` (the reason is
    /// the message without its numbers and quoted values, see [`crate::rate_limit::reason`]) —
    /// and acknowledges its delivery, after the answer.
    fn refused(&mut self, device: &str, msg: &Incoming, reason: &str, error: &str, body: String) {
        if let Some(suppressed) = self.refusals.check(
            &format!("{device}\0{}", crate::rate_limit::reason(reason)),
            Instant::now(),
        ) {
            warn!(device = %device, topic = %msg.topic, error = %error, suppressed, "command refused");
        }
        let Some(target) = self.devices.get_mut(device) else {
            return;
        };
        target
            .out
            .result(&String::from_utf8_lossy(&msg.payload), body);
        if let Some(a) = msg.ack {
            target.out.ack(a);
        }
    }
}
