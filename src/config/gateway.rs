//! `[gateway]`: who this gateway is and where its topics start.

use std::time::Duration;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn gateway(&mut self, s: &Section) -> GatewayConfig {
        self.keys(s, &["id", "base_topic", "location", "health_interval"]);
        let given = self.string(s, "id");
        let id = match &given {
            Some(id) => {
                let span = self.span_of("gateway.id");
                self.name(span, "gateway.id", id);
                id.clone()
            }
            None => default_gateway_id(),
        };
        let generic_id =
            given.is_none() && crate::installation::GENERIC_HOST_NAMES.contains(&id.as_str());
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
            generic_id,
        }
    }
}

/// The host name from gethostname(2), as a valid name (README "Configuration"). Not from
/// `/proc/sys/kernel/hostname`, which the unit's `ProcSubset=pid` hides: every gateway would be
/// `fieldbridge`, with one MQTT client id and one set of Home Assistant ids among them.
fn default_gateway_id() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    gateway_id_from_host(&host)
}

/// `host` lower-cased, with characters a name cannot hold as `-`; `fieldbridge` when empty.
fn gateway_id_from_host(host: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_id_is_the_host_name_made_a_valid_name() {
        assert_eq!(gateway_id_from_host("Garage-Pi\n"), "garage-pi");
        assert_eq!(gateway_id_from_host("pi.lan"), "pi-lan");
        assert_eq!(gateway_id_from_host(""), "fieldbridge");
        let host = nix::unistd::gethostname().unwrap();
        let host = host.to_string_lossy();
        if !host.is_empty() {
            assert_eq!(default_gateway_id(), gateway_id_from_host(&host));
        }
    }
}
