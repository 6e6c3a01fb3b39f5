//! `[homeassistant]`: MQTT discovery for Home Assistant.

use super::load::{Cx, Sec};
use super::*;

impl Cx<'_> {
    pub(super) fn homeassistant(&mut self, s: &Sec) -> HomeAssistantConfig {
        self.keys(s, &["discovery", "prefix"]);
        HomeAssistantConfig {
            discovery: self.boolean(s, "discovery").unwrap_or(true),
            prefix: self
                .text(s, "prefix")
                .unwrap_or_else(|| "homeassistant".into()),
        }
    }
}
