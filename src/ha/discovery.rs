//! The discovery configs of a whole config (README "Home Assistant"): in `device` mode one
//! retained config per device at `{prefix}/device/{gateway}_{device}/config` with `dev`, `o`,
//! shared availability and one entry per entity in `cmps`; in `entity` mode one per entity at
//! `{prefix}/{component}/{gateway}_{device}/{object}/config`. The gateway is a device of its own
//! (node `{gateway}`), with its health as diagnostic entities; every field device is `via` it.
//! Pure: config in, messages out.

use serde_json::{Map, Value as Json, json};

use super::entity::{self, Component, Entity, ids, title};
use super::templates;
use crate::config::{BusKind, Config, DeviceConfig, DiscoveryMode};
use crate::payload::VERSION;
use crate::topics::Topics;

/// One retained discovery config.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Json,
}

impl Message {
    /// The unique ids of the entities it configures.
    pub fn unique_ids(&self) -> Vec<String> {
        unique_ids(&self.payload)
    }
}

/// The unique ids a discovery payload configures (one in entity mode, one per `cmps` entry in
/// device mode).
pub fn unique_ids(payload: &Json) -> Vec<String> {
    let uid = |v: &Json| {
        v.get("unique_id")
            .or_else(|| v.get("uniq_id"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    match payload.get("cmps").or_else(|| payload.get("components")) {
        Some(Json::Object(c)) => c.values().filter_map(uid).collect(),
        _ => uid(payload).into_iter().collect(),
    }
}

/// `origin`: who published the config (Home Assistant names it in its log lines).
fn origin() -> Json {
    json!({ "name": "fieldbridge", "sw_version": VERSION })
}

/// A field device's `device` block.
fn device_block(gateway: &str, name: &str, dev: &DeviceConfig) -> Json {
    let mut d = Map::new();
    d.insert("identifiers".into(), json!([ids::device(gateway, name)]));
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
    d.insert("via_device".into(), Json::String(ids::gateway(gateway)));
    Json::Object(d)
}

/// The gateway's `device` block.
fn gateway_block(gateway: &str) -> Json {
    json!({
        "identifiers": [ids::gateway(gateway)],
        "name": format!("fieldbridge {gateway}"),
        "manufacturer": "fieldbridge",
        "model": "Modbus/serial to MQTT gateway",
        "sw_version": VERSION,
    })
}

/// One availability topic with our JSON payload.
fn availability_entry(topic: String) -> Json {
    json!({
        "topic": topic,
        "value_template": templates::availability(),
        "payload_available": "online",
        "payload_not_available": "offline",
    })
}

/// A field device's availability: the device and the gateway both online.
fn device_availability(topics: &Topics, name: &str, dev: &DeviceConfig) -> Vec<(String, Json)> {
    vec![
        (
            "availability".into(),
            json!([
                availability_entry(topics.availability(name, &dev.location)),
                availability_entry(topics.gateway_status()),
            ]),
        ),
        ("availability_mode".into(), json!("all")),
    ]
}

/// The gateway's own entities: connectivity from its status, and its health counters as
/// diagnostic sensors (each available while the gateway is online).
fn gateway_entities(config: &Config, topics: &Topics) -> Vec<Entity> {
    let gw = config.gateway.id.as_str();
    let mut out = Vec::new();
    let mut connected =
        entity::gateway_entity(gw, Component::BinarySensor, "connected", "Connected");
    let m = &mut connected.options;
    m.insert("state_topic".into(), json!(topics.gateway_status()));
    m.insert("value_template".into(), json!(templates::availability()));
    m.insert("payload_on".into(), json!("online"));
    m.insert("payload_off".into(), json!("offline"));
    m.insert("device_class".into(), json!("connectivity"));
    m.insert("entity_category".into(), json!("diagnostic"));
    out.push(connected);

    let avail = json!([availability_entry(topics.gateway_status())]);
    let mut counter = |object: String, name: String, path: Vec<String>, kind: Counter| {
        let mut e = entity::gateway_entity(gw, Component::Sensor, &object, &name);
        let m = &mut e.options;
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let (template, state_class, unit) = match kind {
            Counter::Total => (templates::nested(&path, None), "total_increasing", None),
            Counter::Level => (templates::nested(&path, None), "measurement", None),
            Counter::Percent => (
                templates::nested(&path, Some(100.0)),
                "measurement",
                Some("%"),
            ),
        };
        m.insert("state_topic".into(), json!(topics.gateway_health()));
        m.insert("value_template".into(), json!(template));
        m.insert("state_class".into(), json!(state_class));
        if let Some(u) = unit {
            m.insert("unit_of_measurement".into(), json!(u));
        }
        m.insert("entity_category".into(), json!("diagnostic"));
        m.insert("availability".into(), avail.clone());
        out.push(e);
    };
    let s = |x: &str| x.to_string();
    counter(
        s("reconnects"),
        s("MQTT reconnects"),
        vec![s("mqtt"), s("reconnects")],
        Counter::Total,
    );
    counter(
        s("dropped"),
        s("MQTT dropped"),
        vec![s("mqtt"), s("dropped")],
        Counter::Total,
    );
    counter(
        s("history_pending"),
        s("History pending"),
        vec![s("history"), s("pending")],
        Counter::Level,
    );
    for (bus, b) in &config.buses {
        let field = |what: &str| vec![s("buses"), bus.clone(), s(what)];
        if b.kind == BusKind::Serial {
            counter(
                format!("bus_{bus}_garbage"),
                format!("Bus {bus} garbage lines"),
                field("garbage"),
                Counter::Total,
            );
            continue;
        }
        counter(
            format!("bus_{bus}_errors"),
            format!("Bus {bus} errors"),
            field("errors"),
            Counter::Total,
        );
        counter(
            format!("bus_{bus}_timeouts"),
            format!("Bus {bus} timeouts"),
            field("timeouts"),
            Counter::Total,
        );
        counter(
            format!("bus_{bus}_utilisation"),
            format!("Bus {bus} utilisation"),
            field("utilisation"),
            Counter::Percent,
        );
    }
    out
}

enum Counter {
    /// Only grows (resets at a restart, which `total_increasing` expects).
    Total,
    /// Goes up and down.
    Level,
    /// A 0..1 share shown as a percentage.
    Percent,
}

/// The node id of a field device's topics: `{gateway}_{device}` (README "Topics").
pub fn node(gateway: &str, device: &str) -> String {
    format!("{gateway}_{device}")
}

/// Whether a discovery topic is one of device `node`'s, in either mode
/// (`{prefix}/device/{node}/config`, `{prefix}/{component}/{node}/{point}/config`).
pub fn is_node_topic(topic: &str, node: &str) -> bool {
    topic.split('/').any(|segment| segment == node)
}

/// The nodes of the devices whose entities are not known yet (SunSpec devices before their
/// walk): their configs on the broker are kept as they are.
pub fn pending_nodes(config: &Config) -> Vec<String> {
    config
        .devices
        .iter()
        .filter(|(_, d)| d.awaits_walk())
        .map(|(name, _)| node(&config.gateway.id, name))
        .collect()
}

/// One device's messages in `mode`: `entities` under `device` (the block), with `shared`
/// options that every entity has (availability) — in one config, or one config each.
fn messages(
    prefix: &str,
    mode: DiscoveryMode,
    node: &str,
    device: Json,
    shared: Vec<(String, Json)>,
    entities: Vec<Entity>,
) -> Vec<Message> {
    match mode {
        DiscoveryMode::Device => {
            let mut cmps = Map::new();
            for e in entities {
                let mut c = Map::new();
                c.insert("p".into(), json!(e.component.name()));
                c.extend(e.options.clone());
                cmps.insert(e.key(), Json::Object(c));
            }
            let mut m = Map::new();
            m.insert("dev".into(), device);
            m.insert("o".into(), origin());
            m.extend(shared);
            m.insert("qos".into(), json!(1));
            m.insert("cmps".into(), Json::Object(cmps));
            vec![Message {
                topic: format!("{prefix}/device/{node}/config"),
                payload: Json::Object(m),
            }]
        }
        DiscoveryMode::Entity => entities
            .into_iter()
            .map(|e| {
                let mut m = e.options;
                m.extend(shared.iter().cloned());
                m.insert("qos".into(), json!(1));
                m.insert("device".into(), device.clone());
                m.insert("origin".into(), origin());
                Message {
                    topic: format!("{prefix}/{}/{node}/{}/config", e.component.name(), e.object),
                    payload: Json::Object(m),
                }
            })
            .collect(),
    }
}

fn modbus(config: &Config, dev: &DeviceConfig) -> bool {
    config
        .buses
        .get(&dev.bus)
        .is_some_and(|b| b.kind.is_modbus())
}

/// Every discovery config of `config`: the gateway's, then each device's.
pub fn all(config: &Config, topics: &Topics) -> Vec<Message> {
    let gw = config.gateway.id.as_str();
    let ha = &config.homeassistant;
    let mut out = messages(
        &ha.prefix,
        ha.mode,
        gw,
        gateway_block(gw),
        Vec::new(),
        gateway_entities(config, topics),
    );
    // A SunSpec device that has not been walked yet has no entities to announce; what was
    // published for it before stays (`Publisher` keeps it) until the walk says what it has.
    for (name, dev) in config.devices.iter().filter(|(_, d)| !d.awaits_walk()) {
        out.extend(messages(
            &ha.prefix,
            ha.mode,
            &node(gw, name),
            device_block(gw, name, dev),
            device_availability(topics, name, dev),
            entity::device(gw, topics, name, dev, modbus(config, dev)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example(mode: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("mode = \"device\"", &format!("mode = \"{mode}\""));
        crate::config::parse(&text, &path).unwrap()
    }

    fn find(config: &Config, topic: &str) -> Json {
        all(config, &Topics::new(config))
            .into_iter()
            .find(|m| m.topic == topic)
            .map(|m| m.payload)
            .unwrap_or_else(|| panic!("no discovery for {topic}"))
    }

    #[test]
    fn device_mode_publishes_one_config_per_device_with_shared_availability() {
        let c = example("device");
        let p = find(&c, "homeassistant/device/garage-pi_boiler/config");
        assert_eq!(p["dev"]["identifiers"][0], "fieldbridge:garage-pi:boiler");
        assert_eq!(p["dev"]["via_device"], "fieldbridge:garage-pi");
        assert_eq!(p["o"]["name"], "fieldbridge");
        assert_eq!(p["availability_mode"], "all");
        assert_eq!(
            p["availability"][0]["topic"],
            "home/basement/device/boiler/availability"
        );
        assert_eq!(
            p["availability"][1]["topic"],
            "home/gateway/garage-pi/status"
        );
        let t = &p["cmps"]["temperature-sensor"];
        assert_eq!(t["p"], "sensor");
        assert_eq!(t["unique_id"], "fieldbridge:garage-pi:boiler:temperature");
        assert_eq!(t["default_entity_id"], "sensor.boiler_temperature");
        assert_eq!(t["state_topic"], "home/basement/device/boiler/state");
        assert_eq!(t["state_class"], "measurement");
        assert_eq!(p["cmps"]["refresh-button"]["entity_category"], "config");
        let gw = find(&c, "homeassistant/device/garage-pi/config");
        assert_eq!(gw["dev"]["identifiers"][0], "fieldbridge:garage-pi");
        assert_eq!(
            gw["cmps"]["connected-binary_sensor"]["device_class"],
            "connectivity"
        );
        assert_eq!(
            gw["cmps"]["bus_rs485_timeouts-sensor"]["state_topic"],
            "home/gateway/garage-pi/health"
        );
    }

    #[test]
    fn entity_mode_publishes_one_config_per_entity_with_the_same_unique_ids() {
        let device = example("device");
        let entity = example("entity");
        let p = find(
            &entity,
            "homeassistant/sensor/garage-pi_boiler/temperature/config",
        );
        assert_eq!(
            p["device"]["identifiers"][0],
            "fieldbridge:garage-pi:boiler"
        );
        assert_eq!(p["origin"]["name"], "fieldbridge");
        assert_eq!(
            p["availability"][1]["topic"],
            "home/gateway/garage-pi/status"
        );
        let ids = |c: &Config| {
            let mut v: Vec<String> = all(c, &Topics::new(c))
                .iter()
                .flat_map(Message::unique_ids)
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&device), ids(&entity));
        assert!(ids(&device).len() > 10);
        let b = find(
            &entity,
            "homeassistant/button/garage-pi_lamp/turn_on/config",
        );
        assert_eq!(b["payload_press"], "{\"action\":\"turn_on\"}");
    }
}
