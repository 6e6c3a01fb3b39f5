//! Every MQTT topic the gateway uses, rendered from the `[topics]` templates (README "Topics"), and
//! the reverse: which device an incoming command topic belongs to. No other module formats a
//! topic.

use std::collections::HashMap;

use crate::config::{Config, TopicsConfig};

/// What an incoming topic means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `…/command` of a configured device.
    Command { device: String },
    /// `{prefix}/status`: Home Assistant's birth and will.
    HomeAssistantStatus,
    /// A discovery config under `{prefix}` (`{prefix}/{component}/[{node}/]{object}/config`),
    /// anyone's: whose it is, its payload says (see `ha::owner`).
    Discovery,
    /// Our own probe, which ends the scan of the retained discovery configs.
    DiscoveryProbe,
}

/// Renders and parses the topics of one config.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
    gateway: String,
    templates: TopicsConfig,
    ha_prefix: String,
    /// Command topic → device, for parsing.
    commands: HashMap<String, String>,
}

impl Topics {
    pub fn new(config: &Config) -> Self {
        let mut t = Topics {
            base: config.gateway.base_topic.clone(),
            gateway: config.gateway.id.clone(),
            templates: config.topics.clone(),
            ha_prefix: config.homeassistant.prefix.clone(),
            commands: HashMap::new(),
        };
        for (name, dev) in &config.devices {
            let topic = t.command(name, &dev.location);
            t.commands.insert(topic, name.clone());
        }
        t
    }

    fn render(&self, template: &str, location: &str, device: &str, point: &str) -> String {
        template
            .replace("{base}", &self.base)
            .replace("{gateway}", &self.gateway)
            .replace("{location}", location)
            .replace("{device}", device)
            .replace("{point}", point)
    }

    /// `{base}/{location}/sensor/{device}/{point}`
    pub fn sensor(&self, device: &str, location: &str, point: &str) -> String {
        self.render(&self.templates.sensor, location, device, point)
    }

    /// `{base}/{location}/device/{device}/state` (retained)
    pub fn state(&self, device: &str, location: &str) -> String {
        self.render(&self.templates.state, location, device, "")
    }

    /// `{base}/{location}/device/{device}/command` (subscribed)
    pub fn command(&self, device: &str, location: &str) -> String {
        self.render(&self.templates.command, location, device, "")
    }

    /// The command topic plus `/result`.
    pub fn command_result(&self, device: &str, location: &str) -> String {
        format!("{}/result", self.command(device, location))
    }

    /// `{base}/{location}/device/{device}/availability` (retained)
    pub fn availability(&self, device: &str, location: &str) -> String {
        self.render(&self.templates.availability, location, device, "")
    }

    /// `{base}/gateway/{gateway}/status` (retained, carries the last will)
    pub fn gateway_status(&self) -> String {
        format!("{}/gateway/{}/status", self.base, self.gateway)
    }

    /// `{base}/gateway/{gateway}/health`
    pub fn gateway_health(&self) -> String {
        format!("{}/gateway/{}/health", self.base, self.gateway)
    }

    /// `{prefix}/status`
    pub fn homeassistant_status(&self) -> String {
        format!("{}/status", self.ha_prefix)
    }

    /// The filters that bring back the discovery configs retained on the broker, in both modes:
    /// `{prefix}/{component}/{node}/{object}/config` and `{prefix}/device/{node}/config`.
    pub fn discovery_scan(&self) -> [String; 2] {
        [
            format!("{}/+/+/+/config", self.ha_prefix),
            format!("{}/device/+/config", self.ha_prefix),
        ]
    }

    /// `{base}/gateway/{gateway}/discovery-scan`: published after subscribing to
    /// `discovery_scan`; when it comes back, the broker has handed over every retained config.
    pub fn discovery_probe(&self) -> String {
        format!("{}/gateway/{}/discovery-scan", self.base, self.gateway)
    }

    /// Every command topic with its device.
    pub fn command_topics(&self) -> impl Iterator<Item = (&str, &str)> {
        self.commands.iter().map(|(t, d)| (t.as_str(), d.as_str()))
    }

    /// What an incoming topic is, if it is one of ours.
    pub fn parse(&self, topic: &str) -> Option<Topic> {
        if let Some(device) = self.commands.get(topic) {
            return Some(Topic::Command {
                device: device.clone(),
            });
        }
        if topic == self.homeassistant_status() {
            return Some(Topic::HomeAssistantStatus);
        }
        if topic == self.discovery_probe() {
            return Some(Topic::DiscoveryProbe);
        }
        let rest = topic.strip_prefix(&self.ha_prefix)?.strip_prefix('/')?;
        let levels = rest.split('/').count();
        (rest.ends_with("/config") && (levels == 3 || levels == 4)).then_some(Topic::Discovery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[gateway]
id = "gw"
base_topic = "home"
location = "garage"
{extra}
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[devices.lamp]
bus = "plc"
unit = 3
[devices.lamp.points.state]
register = "coil:0"
[devices.boiler]
bus = "plc"
unit = 1
location = "basement"
[devices.boiler.points.temp]
register = "input:0"
"#
        );
        match crate::config::parse(&text, Path::new("t.toml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn default_templates_render_the_contract_topics() {
        let t = Topics::new(&config(""));
        assert_eq!(
            t.sensor("boiler", "basement", "temp"),
            "home/basement/sensor/boiler/temp"
        );
        assert_eq!(t.state("lamp", "garage"), "home/garage/device/lamp/state");
        assert_eq!(
            t.command("lamp", "garage"),
            "home/garage/device/lamp/command"
        );
        assert_eq!(
            t.command_result("lamp", "garage"),
            "home/garage/device/lamp/command/result"
        );
        assert_eq!(
            t.availability("lamp", "garage"),
            "home/garage/device/lamp/availability"
        );
        assert_eq!(t.gateway_status(), "home/gateway/gw/status");
        assert_eq!(t.gateway_health(), "home/gateway/gw/health");
    }

    #[test]
    fn command_topics_parse_back_to_their_device() {
        let t = Topics::new(&config(""));
        assert_eq!(
            t.parse("home/basement/device/boiler/command"),
            Some(Topic::Command {
                device: "boiler".into()
            })
        );
        assert_eq!(t.parse("home/garage/device/boiler/command"), None);
        assert_eq!(
            t.parse("homeassistant/status"),
            Some(Topic::HomeAssistantStatus)
        );
        for other in [
            "homeassistant/sensor/x/config",
            "homeassistant/device/gw_d/config",
        ] {
            assert_eq!(t.parse(other), Some(Topic::Discovery), "{other}");
        }
        assert_eq!(t.parse("homeassistant/sensor/a/b/c/config"), None);
        assert_eq!(
            t.parse("home/gateway/gw/discovery-scan"),
            Some(Topic::DiscoveryProbe)
        );
    }

    #[test]
    fn custom_templates_are_used_for_every_device_topic() {
        let t = Topics::new(&config(
            "[topics]\nsensor = \"{base}/{device}/{point}\"\ncommand = \"{base}/{device}/set\"\n",
        ));
        assert_eq!(t.sensor("boiler", "basement", "temp"), "home/boiler/temp");
        assert_eq!(
            t.parse("home/lamp/set"),
            Some(Topic::Command {
                device: "lamp".into()
            })
        );
        assert_eq!(t.command_result("lamp", "garage"), "home/lamp/set/result");
    }
}
