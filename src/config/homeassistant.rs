//! `[homeassistant]`: MQTT discovery for Home Assistant.

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn homeassistant(&mut self, s: &Section) -> HomeAssistantConfig {
        self.keys(s, &["discovery", "prefix", "mode"]);
        let prefix = match self.text(s, "prefix") {
            Some(p) if p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') => {
                self.error_at(
                    &s.key("prefix"),
                    "a discovery prefix is a topic without wildcards and without a leading or trailing /",
                );
                p
            }
            Some(p) => p,
            None => "homeassistant".into(),
        };
        HomeAssistantConfig {
            discovery: self.boolean(s, "discovery").unwrap_or(true),
            prefix,
            mode: match self.choice(s, "mode", "mode", DiscoveryMode::NAMES) {
                Some(1) => DiscoveryMode::Entity,
                _ => DiscoveryMode::Device,
            },
        }
    }

    /// A point's Home Assistant keys, each `None` when not given (a profile's point may give
    /// it); `check_point_ha` checks them against the whole point.
    pub(super) fn point_ha(&mut self, s: &Section) -> PointHa {
        let entity_category = self
            .choice(
                s,
                "entity_category",
                "entity_category",
                EntityCategory::NAMES,
            )
            .and_then(|i| EntityCategory::ALL.get(i).copied());
        let icon = match self.text(s, "icon") {
            Some(i) if !i.contains(':') => {
                self.error_at(
                    &s.key("icon"),
                    format!("icon \"{i}\" needs a prefix, as in \"mdi:{i}\""),
                );
                None
            }
            other => other,
        };
        PointHa {
            entity_category,
            icon,
            enabled_by_default: self.boolean(s, "enabled_by_default"),
        }
    }

    /// Home Assistant refuses the `config` category on sensors.
    pub(super) fn check_point_ha(&mut self, s: &Section, p: &PointConfig) {
        if p.entity_category == Some(EntityCategory::Config) && !p.writable {
            self.error_at(
                &s.key("entity_category"),
                "Home Assistant refuses entity_category \"config\" on a read-only point (a sensor); use \"diagnostic\", or make the point writable",
            );
        }
    }
}

/// `entity_category`, `icon` and `enabled_by_default` of a point, as given.
pub(super) struct PointHa {
    pub(super) entity_category: Option<EntityCategory>,
    pub(super) icon: Option<String>,
    pub(super) enabled_by_default: Option<bool>,
}
