//! Incoming MQTT messages → device tasks. Commands are validated here, before they queue, so a
//! flood of garbage is answered and counted without ever standing in front of a valid command.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::DeviceConfig;
use crate::device::command::{self, Command};
use crate::device::{CommandStats, DEVICE_COMMANDS_CAP, Sink};
use crate::telemetry::RateLimit;
use crate::topics::{Topic, Topics};

struct Target {
    config: Arc<DeviceConfig>,
    queue: mpsc::Sender<Command>,
}

/// Routes command topics to device tasks.
pub struct Bridge {
    topics: Arc<Topics>,
    devices: HashMap<String, Target>,
    sink: Arc<dyn Sink>,
    pub stats: Arc<CommandStats>,
    warn_limit: RateLimit,
    /// Home Assistant discovery configs, re-published when Home Assistant says it is online.
    discovery: Vec<(String, String)>,
    history: Option<crate::history::HistoryHandle>,
}

impl Bridge {
    pub fn new(topics: Arc<Topics>, sink: Arc<dyn Sink>) -> Self {
        Bridge {
            topics,
            devices: HashMap::new(),
            sink,
            stats: Arc::new(CommandStats::default()),
            warn_limit: RateLimit::new(Duration::from_secs(10)),
            discovery: Vec::new(),
            history: None,
        }
    }

    /// Records refused commands in the history too.
    pub fn set_history(&mut self, h: crate::history::HistoryHandle) {
        self.history = Some(h);
    }

    /// Publishes the discovery configs now and whenever `{prefix}/status` says `online`.
    pub fn set_discovery(&mut self, configs: Vec<(String, String)>) {
        self.discovery = configs;
        self.publish_discovery();
    }

    fn publish_discovery(&self) {
        for (topic, payload) in &self.discovery {
            self.sink.publish_retained(topic.clone(), payload.clone());
        }
    }

    /// Registers a device's command queue.
    /// Forgets a device (it left the config, or its task restarts).
    pub fn remove_device(&mut self, name: &str) {
        self.devices.remove(name);
    }

    /// New topics after a reload (devices added or moved).
    pub fn set_topics(&mut self, topics: Arc<Topics>) {
        self.topics = topics;
    }

    /// The discovery configs published now.
    pub fn discovery(&self) -> &[(String, String)] {
        &self.discovery
    }

    pub fn add_device(
        &mut self,
        name: &str,
        config: &Arc<DeviceConfig>,
        queue: mpsc::Sender<Command>,
    ) {
        self.devices.insert(
            name.to_string(),
            Target {
                config: config.clone(),
                queue,
            },
        );
    }

    /// Handles one incoming message. Never blocks.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) {
        let device = match self.topics.parse(topic) {
            Some(Topic::Command { device }) => device,
            Some(Topic::HomeAssistantStatus) => {
                if payload.eq_ignore_ascii_case(b"online") {
                    debug!("Home Assistant is online; publishing discovery again");
                    self.publish_discovery();
                }
                return;
            }
            Some(Topic::Discovery) => {
                // Ours, retained from an earlier config: delete it if the point is gone.
                if !payload.is_empty() && !self.discovery.iter().any(|(t, _)| t == topic) {
                    tracing::info!(topic = %topic, "removing discovery of a point no longer configured");
                    self.sink.clear_retained(topic.to_string());
                }
                return;
            }
            None => {
                debug!(topic = %topic, "message on an unhandled topic");
                return;
            }
        };
        let Some(target) = self.devices.get(&device) else {
            // A device of the config whose bus kind does not take commands yet.
            debug!(device = %device, "command for a device without a command queue");
            return;
        };
        let location = target.config.location.clone();
        let result_topic = self.topics.command_result(&device, &location);
        match command::parse(&target.config, payload) {
            Ok(cmd) => match target.queue.try_send(cmd) {
                Ok(()) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    self.stats.busy.fetch_add(1, Ordering::Relaxed);
                    let body = command::result_payload(
                        cmd.id.as_ref(),
                        Some(&cmd.action),
                        Err(&format!(
                            "{device}: busy: {} commands already waiting",
                            DEVICE_COMMANDS_CAP
                        )),
                        &[],
                    );
                    self.sink.publish(result_topic, body, 1, false);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!(device = %device, "device task stopped; command dropped");
                }
            },
            Err(refused) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.warn_limit.check(Instant::now()) {
                    warn!(
                        device = %device,
                        topic = %topic,
                        error = %refused.message,
                        suppressed,
                        "command refused"
                    );
                }
                let body = command::result_payload(
                    refused.id.as_ref(),
                    refused.action.as_deref(),
                    Err(&refused.message),
                    &[],
                );
                if let Some(h) = &self.history {
                    let raw = String::from_utf8_lossy(payload);
                    h.record_command(&device, &raw, &body, std::time::SystemTime::now());
                }
                self.sink.publish(result_topic, body, 1, false);
            }
        }
    }
}
