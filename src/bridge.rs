//! Incoming MQTT messages → device tasks. Commands are validated here, before they queue, so a
//! flood of garbage is answered and counted without ever standing in front of a valid command.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::command::{self, Command};
use crate::config::DeviceConfig;
use crate::poller::Sink;
use crate::topics::{Topic, Topics};

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

/// At most one warning per `every`; the rest are counted and reported with the next one.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when a line may be logged now.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

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

    /// Handles a message on a command topic. Never blocks.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) {
        let device = match self.topics.parse(topic) {
            Some(Topic::Command { device }) => device,
            _ => {
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
                            crate::poller::DEVICE_COMMANDS_CAP
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(11)), Some(2));
    }
}
