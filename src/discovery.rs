//! Home Assistant MQTT discovery (CONTRACT §4): one retained config per point, the component
//! chosen from the point's type, map and writability. Pure: config in, (topic, payload) out.

use serde_json::{Map, Value as Json, json};

use crate::config::{Config, DataType, DeviceConfig, PointConfig};
use crate::payload::VERSION;
use crate::topics::Topics;

/// The Home Assistant entity kind of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Sensor,
    BinarySensor,
    Number,
    Switch,
    Select,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Number => "number",
            Component::Switch => "switch",
            Component::Select => "select",
        }
    }
}

/// sensor (numeric or string, read-only; a read-only map is an enum sensor), binary_sensor
/// (bool, read-only), number (writable numeric), switch (writable bool or two-label map),
/// select (writable map with more labels).
pub fn component(p: &PointConfig) -> Component {
    let ty = p.effective_type();
    match (&p.map, p.writable) {
        (Some(map), true) if map.len() == 2 => Component::Switch,
        (Some(_), true) => Component::Select,
        (Some(_), false) => Component::Sensor,
        (None, w) => match (ty, w) {
            (Some(DataType::Bool), true) => Component::Switch,
            (Some(DataType::Bool), false) => Component::BinarySensor,
            (Some(DataType::String), _) => Component::Sensor,
            (_, true) => Component::Number,
            (_, false) => Component::Sensor,
        },
    }
}

/// `{prefix}/{component}/{gateway}_{device}/{point}/config`
pub fn config_topic(config: &Config, component: Component, device: &str, point: &str) -> String {
    format!(
        "{}/{}/{}_{device}/{point}/config",
        config.homeassistant.prefix,
        component.name(),
        config.gateway.id
    )
}

fn title(name: &str) -> String {
    let spaced = name.replace(['_', '-'], " ");
    let mut c = spaced.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn origin() -> Json {
    json!({
        "name": "fieldbridge",
        "sw_version": VERSION,
    })
}

fn gateway_identifier(config: &Config) -> String {
    format!("fieldbridge_{}", config.gateway.id)
}

fn device_block(config: &Config, name: &str, dev: &DeviceConfig) -> Json {
    let mut d = Map::new();
    d.insert(
        "identifiers".into(),
        json!([format!("fieldbridge_{}_{name}", config.gateway.id)]),
    );
    d.insert(
        "name".into(),
        Json::String(dev.name.clone().unwrap_or_else(|| title(name))),
    );
    if let Some(m) = &dev.manufacturer {
        d.insert("manufacturer".into(), Json::String(m.clone()));
    }
    if let Some(m) = &dev.model {
        d.insert("model".into(), Json::String(m.clone()));
    }
    d.insert("suggested_area".into(), Json::String(title(&dev.location)));
    d.insert(
        "via_device".into(),
        Json::String(gateway_identifier(config)),
    );
    Json::Object(d)
}

/// The step of a writable number: the register's resolution.
fn step(p: &PointConfig) -> f64 {
    match (p.scale, p.precision) {
        (Some(s), _) => s.abs(),
        (None, Some(prec)) => 10f64.powi(-i32::from(prec)),
        (None, None) => 1.0,
    }
}

/// The discovery config of one point.
pub fn point_config(
    config: &Config,
    topics: &Topics,
    name: &str,
    dev: &DeviceConfig,
    point: &str,
    p: &PointConfig,
) -> (String, Json) {
    let comp = component(p);
    let topic = config_topic(config, comp, name, point);
    let mut m = Map::new();
    m.insert("name".into(), Json::String(title(point)));
    m.insert(
        "unique_id".into(),
        Json::String(format!("{}_{name}_{point}", config.gateway.id)),
    );
    m.insert("object_id".into(), Json::String(format!("{name}_{point}")));
    m.insert(
        "state_topic".into(),
        Json::String(topics.state(name, &dev.location)),
    );
    let field = format!("value_json.{point}");
    let bool_like = matches!(comp, Component::Switch | Component::BinarySensor);
    match (&p.map, bool_like) {
        (None, true) => {
            m.insert(
                "value_template".into(),
                Json::String(format!("{{{{ 'ON' if {field} else 'OFF' }}}}")),
            );
        }
        _ => {
            m.insert(
                "value_template".into(),
                Json::String(format!("{{{{ {field} }}}}")),
            );
        }
    }
    if p.writable {
        let command_topic = topics.command(name, &dev.location);
        m.insert("command_topic".into(), Json::String(command_topic));
    }
    match comp {
        Component::Switch => {
            let (on, off): (Json, Json) = match &p.map {
                Some(map) => {
                    // The label of the higher raw value is "on".
                    let mut labels = map.values();
                    let off = labels.next().cloned().unwrap_or_default();
                    let on = labels.next().cloned().unwrap_or_default();
                    (Json::String(on), Json::String(off))
                }
                None => (Json::Bool(true), Json::Bool(false)),
            };
            m.insert(
                "payload_on".into(),
                Json::String(json!({ point: on.clone() }).to_string()),
            );
            m.insert(
                "payload_off".into(),
                Json::String(json!({ point: off.clone() }).to_string()),
            );
            match (on, off) {
                (Json::String(on), Json::String(off)) => {
                    m.insert("state_on".into(), Json::String(on));
                    m.insert("state_off".into(), Json::String(off));
                }
                _ => {
                    m.insert("state_on".into(), Json::String("ON".into()));
                    m.insert("state_off".into(), Json::String("OFF".into()));
                }
            }
        }
        Component::BinarySensor => {
            m.insert("payload_on".into(), Json::String("ON".into()));
            m.insert("payload_off".into(), Json::String("OFF".into()));
        }
        Component::Number => {
            m.insert(
                "command_template".into(),
                Json::String(format!("{{\"{point}\": {{{{ value }}}}}}")),
            );
            if let Some(min) = p.min {
                m.insert("min".into(), json!(min));
            }
            if let Some(max) = p.max {
                m.insert("max".into(), json!(max));
            }
            m.insert("step".into(), json!(step(p)));
            m.insert("mode".into(), Json::String("box".into()));
        }
        Component::Select => {
            m.insert(
                "command_template".into(),
                Json::String(format!("{{\"{point}\": \"{{{{ value }}}}\"}}")),
            );
            let labels: Vec<&String> = p.map.iter().flat_map(|m| m.values()).collect();
            m.insert("options".into(), json!(labels));
        }
        Component::Sensor => {
            if let Some(map) = &p.map {
                m.insert("device_class".into(), Json::String("enum".into()));
                let labels: Vec<&String> = map.values().collect();
                m.insert("options".into(), json!(labels));
            }
        }
    }
    if p.map.is_none() {
        if let Some(dc) = &p.device_class {
            m.insert("device_class".into(), Json::String(dc.clone()));
        }
        if let Some(u) = &p.unit {
            m.insert("unit_of_measurement".into(), Json::String(u.clone()));
        }
        if comp == Component::Sensor && p.effective_type().is_some_and(DataType::is_numeric)
            || comp == Component::Sensor && p.register.is_none() && p.unit.is_some()
        {
            m.insert(
                "state_class".into(),
                Json::String(
                    p.state_class
                        .clone()
                        .unwrap_or_else(|| "measurement".into()),
                ),
            );
        } else if let Some(sc) = &p.state_class {
            m.insert("state_class".into(), Json::String(sc.clone()));
        }
        if comp == Component::Sensor {
            if let Some(prec) = p.precision {
                m.insert("suggested_display_precision".into(), json!(prec));
            }
        }
    }
    m.insert(
        "availability".into(),
        json!([
            {"topic": topics.availability(name, &dev.location), "value_template": "{{ value_json.status }}"},
            {"topic": topics.gateway_status(), "value_template": "{{ value_json.status }}"},
        ]),
    );
    m.insert("availability_mode".into(), Json::String("all".into()));
    m.insert("payload_available".into(), Json::String("online".into()));
    m.insert(
        "payload_not_available".into(),
        Json::String("offline".into()),
    );
    m.insert("qos".into(), json!(1));
    m.insert("device".into(), device_block(config, name, dev));
    m.insert("origin".into(), origin());
    (topic, Json::Object(m))
}

/// The gateway itself, as a connectivity binary_sensor, so `via_device` points at a device.
pub fn gateway_config(config: &Config, topics: &Topics) -> (String, Json) {
    let id = &config.gateway.id;
    let topic = format!(
        "{}/binary_sensor/{id}/status/config",
        config.homeassistant.prefix
    );
    let payload = json!({
        "name": "Status",
        "unique_id": format!("{id}_gateway_status"),
        "object_id": format!("fieldbridge_{id}_status"),
        "state_topic": topics.gateway_status(),
        "value_template": "{{ value_json.status }}",
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": {
            "identifiers": [gateway_identifier(config)],
            "name": format!("fieldbridge {id}"),
            "manufacturer": "fieldbridge",
            "model": "Modbus/serial to MQTT gateway",
            "sw_version": VERSION,
        },
        "origin": origin(),
    });
    (topic, payload)
}

/// Every discovery message of a config: the gateway and each point.
pub fn all(config: &Config, topics: &Topics) -> Vec<(String, Json)> {
    let mut out = vec![gateway_config(config, topics)];
    for (name, dev) in &config.devices {
        for (point, p) in &dev.points {
            out.push(point_config(config, topics, name, dev, point, p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example() -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        crate::config::Config::load(&path).unwrap()
    }

    fn find(config: &Config, topic: &str) -> Json {
        let topics = Topics::new(config);
        all(config, &topics)
            .into_iter()
            .find(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no discovery for {topic}"))
    }

    #[test]
    fn a_read_only_numeric_point_is_a_measurement_sensor() {
        let c = example();
        let p = find(
            &c,
            "homeassistant/sensor/garage-pi_boiler/temperature/config",
        );
        assert_eq!(p["unique_id"], "garage-pi_boiler_temperature");
        assert_eq!(p["state_topic"], "home/basement/device/boiler/state");
        assert_eq!(p["value_template"], "{{ value_json.temperature }}");
        assert_eq!(p["unit_of_measurement"], "°C");
        assert_eq!(p["device_class"], "temperature");
        assert_eq!(p["state_class"], "measurement");
        assert!(p.get("command_topic").is_none());
        assert_eq!(p["availability_mode"], "all");
        assert_eq!(
            p["availability"][0]["topic"],
            "home/basement/device/boiler/availability"
        );
        assert_eq!(
            p["availability"][1]["topic"],
            "home/gateway/garage-pi/status"
        );
        assert_eq!(
            p["device"]["identifiers"][0],
            "fieldbridge_garage-pi_boiler"
        );
        assert_eq!(p["device"]["name"], "Boiler");
        assert_eq!(p["device"]["manufacturer"], "Acme");
        assert_eq!(p["device"]["model"], "B-200");
        assert_eq!(p["device"]["via_device"], "fieldbridge_garage-pi");
        assert_eq!(p["origin"]["name"], "fieldbridge");
    }

    #[test]
    fn a_writable_numeric_point_is_a_number_with_limits_and_step() {
        let c = example();
        let p = find(&c, "homeassistant/number/garage-pi_boiler/setpoint/config");
        assert_eq!(p["command_topic"], "home/basement/device/boiler/command");
        assert_eq!(p["command_template"], "{\"setpoint\": {{ value }}}");
        assert_eq!(p["min"], 5.0);
        assert_eq!(p["max"], 80.0);
        assert_eq!(p["step"], 0.1);
    }

    #[test]
    fn a_writable_two_label_map_is_a_switch() {
        let c = example();
        let p = find(&c, "homeassistant/switch/garage-pi_lamp/state/config");
        assert_eq!(p["payload_on"], "{\"state\":\"on\"}");
        assert_eq!(p["payload_off"], "{\"state\":\"off\"}");
        assert_eq!(p["state_on"], "on");
        assert_eq!(p["state_off"], "off");
        assert_eq!(p["value_template"], "{{ value_json.state }}");
    }

    fn one_point(point: &str) -> Config {
        let text = format!(
            "[gateway]\nid = \"gw\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.p]\n{point}\n"
        );
        crate::config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn bools_become_binary_sensors_or_switches() {
        let c = one_point("register = \"discrete:0\"");
        let p = find(&c, "homeassistant/binary_sensor/gw_d/p/config");
        assert_eq!(p["value_template"], "{{ 'ON' if value_json.p else 'OFF' }}");
        assert_eq!(p["payload_on"], "ON");
        let c = one_point("register = \"coil:0\"\nwritable = true");
        let p = find(&c, "homeassistant/switch/gw_d/p/config");
        assert_eq!(p["payload_on"], "{\"p\":true}");
        assert_eq!(p["payload_off"], "{\"p\":false}");
        assert_eq!(p["state_on"], "ON");
    }

    #[test]
    fn maps_become_selects_or_enum_sensors() {
        let c = one_point(
            "register = \"holding:0\"\nwritable = true\nmap = { 0 = \"auto\", 1 = \"heat\", 2 = \"cool\" }",
        );
        let p = find(&c, "homeassistant/select/gw_d/p/config");
        assert_eq!(p["options"], json!(["auto", "heat", "cool"]));
        assert_eq!(p["command_template"], "{\"p\": \"{{ value }}\"}");
        let c = one_point("register = \"input:0\"\nmap = { 0 = \"idle\", 1 = \"run\" }");
        let p = find(&c, "homeassistant/sensor/gw_d/p/config");
        assert_eq!(p["device_class"], "enum");
        assert_eq!(p["options"], json!(["idle", "run"]));
        assert!(p.get("state_class").is_none());
    }
}
