//! The running part of discovery: owned by the supervisor loop, which hands it the link's
//! connection changes and the messages on Home Assistant's topics.
//!
//! At start it scans the broker for the configs retained there: QoS 0 subscriptions to the
//! discovery filters (so the broker queues none of other integrations' configs in our
//! persistent session while we are away), ended by a probe of our own that comes back after the
//! retained ones, then unsubscribed. Of what it found it keeps the configs that name this
//! gateway; `owner::plan` takes them to the configured set, migrating between modes. Until the
//! scan is over nothing is published, so a migration starts from what is really there.
//!
//! Afterwards it re-publishes when Home Assistant says `online`, and applies reloads against
//! what it published: discovery turned off removes every config, a new prefix moves them.

use std::time::Duration;

use serde_json::Value as Json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::discovery::{self, Message};
use super::owner;
use crate::config::Config;
use crate::mqtt::MqttHandle;
use crate::topics::{Topic, Topics};

/// How long a scan waits for its probe before it goes on with what it saw.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

enum Phase {
    /// The link has not connected yet.
    Waiting,
    /// Subscribed to the discovery filters; collecting ours until `nonce` comes back.
    Scanning {
        nonce: String,
        found: Vec<Message>,
        deadline: Instant,
    },
    /// Scanned; publishing as things change.
    Live,
}

/// Home Assistant discovery for one gateway.
pub struct Publisher {
    link: MqttHandle,
    gateway: String,
    prefix: String,
    topics: Topics,
    enabled: bool,
    /// The configs that should be on the broker (none when discovery is off).
    target: Vec<Message>,
    /// Ours on the broker as far as we know: what the scan found, then what we published.
    published: Vec<Message>,
    /// Devices whose entities are not known yet (`discovery::pending_nodes`): what is on the
    /// broker for them stays.
    pending: Vec<String>,
    phase: Phase,
    scans: u64,
}

fn target(config: &Config, topics: &Topics) -> Vec<Message> {
    if config.homeassistant.discovery {
        discovery::all(config, topics)
    } else {
        Vec::new()
    }
}

impl Publisher {
    /// Prepares discovery for `config`; nothing is published before the link connects and the
    /// scan is over.
    pub fn new(config: &Config, topics: &Topics, link: MqttHandle) -> Publisher {
        if config.homeassistant.discovery {
            link.subscribe(&topics.homeassistant_status());
        }
        Publisher {
            link,
            gateway: config.gateway.id.clone(),
            prefix: config.homeassistant.prefix.clone(),
            topics: topics.clone(),
            enabled: config.homeassistant.discovery,
            target: target(config, topics),
            published: Vec::new(),
            pending: discovery::pending_nodes(config),
            phase: Phase::Waiting,
            scans: 0,
        }
    }

    /// The link connected (or lost its connection). A scan starts at the first connection, and
    /// again after a reconnect that interrupted it.
    pub fn on_link(&mut self, up: bool) {
        if up && !matches!(self.phase, Phase::Live) {
            self.start_scan();
        }
    }

    fn start_scan(&mut self) {
        self.scans += 1;
        let nonce = format!("{}-{}", std::process::id(), self.scans);
        for f in self.topics.discovery_scan() {
            self.link.subscribe_qos0(&f);
        }
        let probe = self.topics.discovery_probe();
        self.link.subscribe_qos0(&probe);
        self.link.publish(probe, nonce.clone(), 0, false);
        debug!("home assistant: scanning the broker for our discovery configs");
        self.phase = Phase::Scanning {
            nonce,
            found: Vec::new(),
            deadline: Instant::now() + SCAN_TIMEOUT,
        };
    }

    /// When the scan gives up waiting for its probe, if one is running.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Scanning { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The scan's probe did not come back in time: go on with what was seen.
    pub fn on_deadline(&mut self) {
        if matches!(self.phase, Phase::Scanning { .. }) {
            warn!(
                timeout = ?SCAN_TIMEOUT,
                "home assistant: the broker did not finish handing over retained discovery configs; going on with those seen"
            );
            self.finish_scan();
        }
    }

    /// A message on one of Home Assistant's topics.
    pub fn handle(&mut self, topic: &Topic, name: &str, payload: &[u8]) {
        match topic {
            Topic::DiscoveryProbe => {
                if let Phase::Scanning { nonce, .. } = &self.phase {
                    if payload == nonce.as_bytes() {
                        self.finish_scan();
                    }
                }
            }
            Topic::Discovery => {
                let Phase::Scanning { found, .. } = &mut self.phase else {
                    return;
                };
                found.retain(|m| m.topic != name);
                // Most configs on a broker are other integrations': skip the JSON of any whose
                // node cannot be ours.
                if payload.is_empty() || !name.contains(&format!("/{}", self.gateway)) {
                    return;
                }
                let Ok(json) = serde_json::from_slice::<Json>(payload) else {
                    return;
                };
                if owner::owner(&json) == Some(self.gateway.as_str()) {
                    found.push(Message {
                        topic: name.to_string(),
                        payload: json,
                    });
                } else if self.target.iter().any(|m| m.topic == name) {
                    warn!(
                        topic = %name,
                        owner = owner::owner(&json).unwrap_or("another program"),
                        "home assistant: a discovery topic of ours holds another gateway's config (device names joined with _ meet); ours replaces it"
                    );
                }
            }
            Topic::HomeAssistantStatus => {
                if payload.eq_ignore_ascii_case(b"online") && matches!(self.phase, Phase::Live) {
                    debug!("home assistant is online; publishing discovery again");
                    for m in &self.target {
                        self.link
                            .publish_retained(m.topic.clone(), m.payload.to_string());
                    }
                }
            }
            Topic::Command { .. } => {}
        }
    }

    fn finish_scan(&mut self) {
        let found = match std::mem::replace(&mut self.phase, Phase::Live) {
            Phase::Scanning { found, .. } => found,
            _ => Vec::new(),
        };
        for f in self.topics.discovery_scan() {
            self.link.unsubscribe(&f);
        }
        self.link.unsubscribe(&self.topics.discovery_probe());
        debug!(ours = found.len(), "home assistant: scan done");
        self.published = found;
        let target = self.target.clone();
        self.apply(target);
    }

    /// Publishes what takes the broker from `published` to `target` (and what it holds for
    /// pending devices, unchanged).
    fn apply(&mut self, mut target: Vec<Message>) {
        if self.enabled {
            let kept = self.published.iter().filter(|m| {
                self.pending
                    .iter()
                    .any(|n| discovery::is_node_topic(&m.topic, n))
                    && !target.iter().any(|t| t.topic == m.topic)
            });
            target.extend(kept.cloned().collect::<Vec<_>>());
        }
        let steps = owner::plan(&self.prefix, &self.published, &target);
        let removed = steps.iter().filter(|(_, p)| p.is_empty()).count();
        let migrated = steps
            .iter()
            .filter(|(_, p)| p.contains("\"migrate_discovery\""))
            .count();
        if migrated > 0 {
            info!(
                configs = migrated,
                "home assistant: moving entities to the configured discovery mode"
            );
        }
        if removed > migrated {
            info!(
                configs = removed - migrated,
                "home assistant: removing discovery configs of ours that are no longer configured"
            );
        }
        self.link.publish_sequence(steps);
        self.target = target.clone();
        self.published = target;
    }

    /// A reloaded config: its configs replace ours (a new prefix subscribes its `status`).
    pub fn reload(&mut self, config: &Config, topics: &Topics) {
        let status = self.topics.homeassistant_status();
        let new_status = topics.homeassistant_status();
        if self.enabled && (!config.homeassistant.discovery || status != new_status) {
            self.link.unsubscribe(&status);
        }
        if config.homeassistant.discovery && (!self.enabled || status != new_status) {
            self.link.subscribe(&new_status);
        }
        let scanning = !matches!(self.phase, Phase::Live);
        if scanning && self.prefix != config.homeassistant.prefix {
            // The scan under way looks under the old prefix; let it finish there first.
            warn!(
                "home assistant: the discovery prefix changed during the start-up scan; configs under the old prefix stay until the next start"
            );
        }
        self.enabled = config.homeassistant.discovery;
        self.topics = topics.clone();
        self.pending = discovery::pending_nodes(config);
        let new = target(config, topics);
        if scanning {
            self.prefix = config.homeassistant.prefix.clone();
            self.target = new;
        } else {
            // `plan` tells modes apart by the new prefix; configs under the old one are ours
            // to remove whatever their mode.
            self.prefix = config.homeassistant.prefix.clone();
            self.apply(new);
        }
    }

    /// Removes every config of ours (the demo, at its end).
    pub fn remove_all(&mut self) {
        self.pending.clear();
        if matches!(self.phase, Phase::Live) {
            self.apply(Vec::new());
        }
    }
}
