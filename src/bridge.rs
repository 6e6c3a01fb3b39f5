//! Incoming MQTT messages → device tasks. Commands are validated here, before they queue, so a
//! flood of garbage is answered and counted without ever standing in front of a valid command.
//! A command the broker hands over flagged retained is refused: it would run again at every
//! reconnect. Every message this does not pass on to a device is acknowledged here; a device
//! acknowledges its commands once their result is out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::DeviceConfig;
use crate::device::command;
use crate::device::{CommandStats, DEVICE_COMMANDS_CAP, Queued, REFUSAL_LOG_EVERY, Sink};
use crate::mqtt::Incoming;
use crate::telemetry::RateLimits;
use crate::topics::{Topic, Topics};

struct Target {
    config: Arc<DeviceConfig>,
    queue: mpsc::Sender<Queued>,
}

/// Routes command topics to device tasks.
pub struct Bridge {
    topics: Arc<Topics>,
    devices: HashMap<String, Target>,
    sink: Arc<dyn Sink>,
    pub stats: Arc<CommandStats>,
    /// Refusal log lines, rate-limited per device and reason.
    refusals: RateLimits,
    history: Option<crate::history::HistoryHandle>,
}

impl Bridge {
    pub fn new(topics: Arc<Topics>, sink: Arc<dyn Sink>) -> Self {
        Bridge {
            topics,
            devices: HashMap::new(),
            sink,
            stats: Arc::new(CommandStats::default()),
            refusals: RateLimits::new(REFUSAL_LOG_EVERY),
            history: None,
        }
    }

    /// Records refused commands in the history too.
    pub fn set_history(&mut self, h: crate::history::HistoryHandle) {
        self.history = Some(h);
    }

    /// Forgets a device (it left the config, or its task restarts).
    pub fn remove_device(&mut self, name: &str) {
        self.devices.remove(name);
    }

    /// New topics after a reload (devices added or moved).
    pub fn set_topics(&mut self, topics: Arc<Topics>) {
        self.topics = topics;
    }

    /// Registers a device's command queue.
    pub fn add_device(
        &mut self,
        name: &str,
        config: &Arc<DeviceConfig>,
        queue: mpsc::Sender<Queued>,
    ) {
        self.devices.insert(
            name.to_string(),
            Target {
                config: config.clone(),
                queue,
            },
        );
    }

    /// A device's points changed while it runs (a SunSpec walk): commands are validated against
    /// its new config from now on.
    pub fn update_device(&mut self, name: &str, config: &Arc<DeviceConfig>) {
        if let Some(t) = self.devices.get_mut(name) {
            t.config = config.clone();
        }
    }

    /// Handles one incoming message. Never blocks.
    pub fn handle(&mut self, msg: &Incoming) {
        let (topic, payload) = (msg.topic.as_str(), msg.payload.as_slice());
        let device = match self.topics.parse(topic) {
            Some(Topic::Command { device }) => device,
            other => {
                self.ack(msg);
                self.handle_other(other, topic, payload);
                return;
            }
        };
        let Some(target) = self.devices.get(&device) else {
            // A device of the config whose bus kind does not take commands yet.
            debug!(device = %device, "command for a device without a command queue");
            self.ack(msg);
            return;
        };
        let location = target.config.location.clone();
        let result_topic = self.topics.command_result(&device, &location);
        let parsed = command::parse(&target.config, payload);
        if msg.retained {
            // Handed over at a (re)subscription: it would run at every reconnect.
            self.stats.retained.fetch_add(1, Ordering::Relaxed);
            let (id, action) = match &parsed {
                Ok(c) => (c.id.clone(), Some(c.action.clone())),
                Err(r) => (r.id.clone(), r.action.clone()),
            };
            let error = format!(
                "retained command not executed (it would run again at every reconnect); clear it with an empty retained message on {topic}"
            );
            self.refused(
                &device,
                msg,
                id.as_ref(),
                action.as_deref(),
                "retained",
                &error,
            );
            return;
        }
        match parsed {
            Ok(cmd) => {
                let queued = Queued {
                    command: cmd,
                    ack: msg.ack,
                };
                match target.queue.try_send(queued) {
                    Ok(()) => {
                        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(q)) => {
                        self.stats.busy.fetch_add(1, Ordering::Relaxed);
                        let body = command::refusal_payload(
                            q.command.id.as_ref(),
                            Some(&q.command.action),
                            &format!(
                                "{device}: busy: {DEVICE_COMMANDS_CAP} commands already waiting"
                            ),
                        );
                        self.sink.publish(result_topic, body, 1, false);
                        self.ack(msg);
                    }
                    Err(mpsc::error::TrySendError::Closed(q)) => {
                        // Its task is being restarted (a reload): said so, not dropped silently.
                        let body = command::refusal_payload(
                            q.command.id.as_ref(),
                            Some(&q.command.action),
                            &format!("{device}: restarting; send it again"),
                        );
                        self.sink.publish(result_topic, body, 1, false);
                        self.ack(msg);
                    }
                }
            }
            Err(refused) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                self.refused(
                    &device,
                    msg,
                    refused.id.as_ref(),
                    refused.action.as_deref(),
                    &refused.message,
                    &refused.message,
                );
            }
        }
    }

    /// Answers a refused command, records it, logs it — every distinct reason of every device
    /// at least once, a repeat at most every `REFUSAL_LOG_EVERY` (the reason is the message
    /// without its numbers and quoted values, see [`crate::telemetry::reason`]) — and
    /// acknowledges its delivery.
    fn refused(
        &mut self,
        device: &str,
        msg: &Incoming,
        id: Option<&serde_json::Value>,
        action: Option<&str>,
        reason: &str,
        error: &str,
    ) {
        self.ack(msg);
        let topic = msg.topic.as_str();
        if let Some(suppressed) = self.refusals.check(
            &format!("{device}\0{}", crate::telemetry::reason(reason)),
            Instant::now(),
        ) {
            warn!(device = %device, topic = %topic, error = %error, suppressed, "command refused");
        }
        let body = command::refusal_payload(id, action, error);
        if let Some(h) = &self.history {
            let raw = String::from_utf8_lossy(&msg.payload);
            h.record_command(device, &raw, &body, std::time::SystemTime::now());
        }
        let Some(target) = self.devices.get(device) else {
            return;
        };
        let result_topic = self.topics.command_result(device, &target.config.location);
        self.sink.publish(result_topic, body, 1, false);
    }

    fn ack(&self, msg: &Incoming) {
        if let Some(a) = msg.ack {
            self.sink.ack(a);
        }
    }

    /// Messages on the other topics we subscribe to are Home Assistant's (`ha::Publisher`);
    /// one that reaches the bridge is acknowledged and ignored.
    fn handle_other(&mut self, _parsed: Option<Topic>, topic: &str, _payload: &[u8]) {
        debug!(topic = %topic, "message on an unhandled topic");
    }
}
