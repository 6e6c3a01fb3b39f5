//! `[gateway]`: who this gateway is and where its topics start.

use std::time::Duration;

use super::load::{Cx, Sec};
use super::*;

impl Cx<'_> {
    pub(super) fn gateway(&mut self, s: &Sec) -> GatewayConfig {
        self.keys(s, &["id", "base_topic", "location", "health_interval"]);
        let id = match self.string(s, "id") {
            Some(id) => {
                let span = self.span_of("gateway.id");
                self.name(span, "gateway.id", &id);
                id
            }
            None => default_gateway_id(),
        };
        let base_topic = self
            .text(s, "base_topic")
            .unwrap_or_else(|| "fieldbridge".into());
        let location = match self.string(s, "location") {
            Some(l) => {
                let span = self.span_of("gateway.location");
                self.name(span, "gateway.location", &l);
                l
            }
            None => "home".into(),
        };
        GatewayConfig {
            id,
            base_topic,
            location,
            health_interval: self
                .duration(s, "health_interval")
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

fn default_gateway_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "fieldbridge".into()
    } else {
        id
    }
}
