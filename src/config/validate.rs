//! Cross-checks that need the whole config: resources shared between buses, topic templates,
//! MQTT option combinations, devices sharing a serial line. Per-key checks happen during
//! extraction, in the file of each section; this runs only when extraction found no errors, so it can rely on
//! every name being valid and every device's bus existing.

use std::collections::BTreeMap;

use super::extract::Extractor;
use super::{BusKind, Config};

/// Placeholders a topic template may use.
const PLACEHOLDERS: &[&str] = &["{base}", "{location}", "{device}", "{point}", "{gateway}"];

pub(super) fn validate(config: &Config, cx: &mut Extractor) {
    // One owner per serial port: two buses on one port would interleave frames on the wire.
    let mut ports: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, bus) in &config.buses {
        if let Some(port) = bus.port.as_deref().filter(|_| bus.kind.uses_serial_port()) {
            if let Some(first) = ports.get(port) {
                cx.error_at(
                    &format!("buses.{name}.port"),
                    format!(
                        "port \"{port}\" is already used by bus \"{first}\"; one bus owns each serial port"
                    ),
                );
            } else {
                ports.insert(port, name);
            }
        }
    }

    // Devices sharing a serial line must say which lines are theirs.
    for (bus_name, bus) in &config.buses {
        if bus.kind != BusKind::Serial {
            continue;
        }
        let on_bus: Vec<&String> = config
            .devices
            .iter()
            .filter(|(_, d)| &d.bus == bus_name)
            .map(|(n, _)| n)
            .collect();
        if on_bus.len() > 1 {
            for dev in &on_bus {
                if config.devices[*dev].r#match.is_none() {
                    cx.error_at(
                        &format!("devices.{dev}.bus"),
                        format!(
                            "{} devices share serial bus \"{bus_name}\"; each needs `match` to say which lines are its own",
                            on_bus.len()
                        ),
                    );
                }
            }
        }
    }

    topic_template(cx, "topics.sensor", &config.topics.sensor, true);
    topic_template(cx, "topics.state", &config.topics.state, false);
    topic_template(cx, "topics.command", &config.topics.command, false);
    topic_template(
        cx,
        "topics.availability",
        &config.topics.availability,
        false,
    );
    topic_level(cx, "gateway.base_topic", &config.gateway.base_topic);
    topic_level(cx, "homeassistant.prefix", &config.homeassistant.prefix);
    if let Some(id) = &config.mqtt.client_id {
        if id.len() > 65_535 {
            cx.error_at("mqtt.client_id", "too long");
        }
    }

    let m = &config.mqtt;
    if m.reconnect_min > m.reconnect_max {
        cx.error_at(
            "mqtt.reconnect_min",
            format!(
                "reconnect_min {} is above reconnect_max {}",
                humantime::format_duration(m.reconnect_min),
                humantime::format_duration(m.reconnect_max)
            ),
        );
    }
    if m.keep_alive.subsec_nanos() != 0 || m.keep_alive.as_secs() > u64::from(u16::MAX) {
        cx.error_at(
            "mqtt.keep_alive",
            "keep_alive is whole seconds between 1s and 65535s",
        );
    }
    match (&m.cert_file, &m.key_file) {
        (Some(_), None) => cx.error_at("mqtt.cert_file", "cert_file needs key_file"),
        (None, Some(_)) => cx.error_at("mqtt.key_file", "key_file needs cert_file"),
        _ => {}
    }
    if !m.url.tls {
        for (key, set) in [
            ("ca_file", m.ca_file.is_some()),
            ("cert_file", m.cert_file.is_some()),
            ("key_file", m.key_file.is_some()),
            ("tls_insecure", m.tls_insecure),
        ] {
            if set {
                cx.error_at(
                    &format!("mqtt.{key}"),
                    format!("{key} is for TLS; use an mqtts:// url"),
                );
            }
        }
    }
    if m.password_file.is_some() && m.username.is_none() {
        cx.error_at("mqtt.password_file", "password_file needs username");
    }
    let h = &config.history;
    if h.flush > h.retention {
        cx.error_at("history.flush", "flush is longer than retention");
    }
    if !h.enabled && h.forward.is_some() {
        cx.error_at(
            "history.forward",
            "forwarding sends the local history, which history.enabled = false turns off",
        );
    }
}

/// A topic template keeps `{device}` (and the sensor one `{point}`), uses only known
/// placeholders, and has no wildcards or empty levels.
fn topic_template(cx: &mut Extractor, key: &str, t: &str, sensor: bool) {
    if t.contains('+') || t.contains('#') {
        cx.error_at(key, format!("\"{t}\" contains an MQTT wildcard (+ or #)"));
        return;
    }
    if !t.contains("{device}") {
        cx.error_at(key, format!("\"{t}\" must contain {{device}}"));
    }
    if sensor && !t.contains("{point}") {
        cx.error_at(key, format!("\"{t}\" must contain {{point}}"));
    }
    if !sensor && t.contains("{point}") {
        cx.error_at(
            key,
            format!("\"{t}\" is per device and cannot contain {{point}}"),
        );
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            cx.error_at(key, format!("\"{t}\" has an unclosed '{{'"));
            return;
        };
        let ph = &after[..=close];
        if !PLACEHOLDERS.contains(&ph) {
            cx.error_at(
                key,
                format!(
                    "unknown placeholder {ph}; expected {}",
                    super::extract::one_of(PLACEHOLDERS)
                ),
            );
        }
        rest = &after[close + 1..];
    }
    if t.starts_with('/') || t.ends_with('/') || t.contains("//") {
        cx.error_at(key, format!("\"{t}\" has an empty topic level"));
    }
}

/// A fixed topic prefix: no wildcards, no empty levels.
fn topic_level(cx: &mut Extractor, key: &str, t: &str) {
    if t.contains('+') || t.contains('#') {
        cx.error_at(key, format!("\"{t}\" contains an MQTT wildcard (+ or #)"));
    } else if t.starts_with('/') || t.ends_with('/') || t.contains("//") {
        cx.error_at(key, format!("\"{t}\" has an empty topic level"));
    } else if t.contains('{') || t.contains('\0') {
        cx.error_at(
            key,
            format!("\"{t}\" contains a character not allowed here"),
        );
    }
}
