//! What each point and action of a device becomes in Home Assistant: the component and its
//! options, the same in both discovery modes (the mode adds device, origin and availability).

use serde_json::{Map, Value as Json, json};

pub use super::component::{Component, component};
use super::{lint, templates};
use crate::config::{ActionConfig, DataType, DeviceConfig, PointConfig};
use crate::topics::Topics;

/// One entity of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: Component,
    /// Its name among the device's entities: the point or action name, or `refresh`. The object
    /// id of its entity-mode topic.
    pub object: String,
    /// The component options: unique id, name, topics, templates, hints.
    pub options: Map<String, Json>,
}

impl Entity {
    /// Its key in a device config's `cmps`. Not `object`: Home Assistant identifies an entity by
    /// component and `{node} {key}` in device mode, `{node} {object}` in entity mode, and an
    /// identical id in both would make it take the removal of the old mode's config for the
    /// new entity's (a "conflicting discovery message" warning).
    pub fn key(&self) -> String {
        format!("{}-{}", self.object, self.component.name())
    }

    pub fn unique_id(&self) -> Option<&str> {
        self.options.get("unique_id").and_then(Json::as_str)
    }
}

/// Identifiers in Home Assistant. Names match `[a-z0-9_-]+`, so `:` separates them without
/// ambiguity: `garage` + device `2_x` and `garage_2` + device `x` stay apart.
pub mod ids {
    /// The gateway device.
    pub fn gateway(gateway: &str) -> String {
        format!("fieldbridge:{gateway}")
    }
    /// A field device.
    pub fn device(gateway: &str, device: &str) -> String {
        format!("fieldbridge:{gateway}:{device}")
    }
    /// A point: four segments.
    pub fn point(gateway: &str, device: &str, point: &str) -> String {
        format!("fieldbridge:{gateway}:{device}:{point}")
    }
    /// An action or `refresh`: five segments (`action` is a reserved point name).
    pub fn action(gateway: &str, device: &str, action: &str) -> String {
        format!("fieldbridge:{gateway}:{device}:action:{action}")
    }
    /// An entity of the gateway itself: an empty device segment, which no device name is.
    pub fn gateway_entity(gateway: &str, name: &str) -> String {
        format!("fieldbridge:{gateway}::{name}")
    }
    /// The gateway a device identifier or `via_device` names, if it is one of ours.
    pub fn owner(identifier: &str) -> Option<&str> {
        let rest = identifier.strip_prefix("fieldbridge:")?;
        Some(rest.split(':').next().unwrap_or(rest))
    }
}

/// `boiler_temp` → `Boiler temp`.
pub fn title(name: &str) -> String {
    let spaced = name.replace(['_', '-'], " ");
    let mut c = spaced.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// `{a}_{b}` as an entity id part: Home Assistant's ids take `[a-z0-9_]`.
pub fn slug(parts: &[&str]) -> String {
    parts.join("_").replace('-', "_")
}

/// Name, unique id and the suggested entity id (`object_id` for Home Assistant before 2025.10,
/// `default_entity_id` from then on; each ignores the other).
fn identity(
    component: Component,
    name: String,
    unique_id: String,
    object_id: String,
) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("name".into(), Json::String(name));
    m.insert("unique_id".into(), Json::String(unique_id));
    m.insert(
        "default_entity_id".into(),
        Json::String(format!("{}.{object_id}", component.name())),
    );
    m.insert("object_id".into(), Json::String(object_id));
    m
}

/// The range of a point's type after `scale` and `offset`.
pub fn type_range(p: &PointConfig) -> (f64, f64) {
    let (lo, hi) = match p.effective_type() {
        Some(DataType::U16) => (0.0, f64::from(u16::MAX)),
        Some(DataType::I16) => (f64::from(i16::MIN), f64::from(i16::MAX)),
        Some(DataType::U32) => (0.0, f64::from(u32::MAX)),
        Some(DataType::I32) => (f64::from(i32::MIN), f64::from(i32::MAX)),
        Some(DataType::U64) => (0.0, u64::MAX as f64),
        Some(DataType::I64) => (i64::MIN as f64, i64::MAX as f64),
        Some(DataType::F32) => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        // f64, and serial fields of no declared type.
        _ => (f64::MIN, f64::MAX),
    };
    let scale = p.scale.unwrap_or(1.0);
    let offset = p.offset.unwrap_or(0.0);
    let finite = |x: f64| x.clamp(f64::MIN, f64::MAX);
    let (a, b) = (finite(lo * scale + offset), finite(hi * scale + offset));
    if a <= b { (a, b) } else { (b, a) }
}

/// The smallest step Home Assistant's `number` accepts.
pub const MIN_STEP: f64 = 0.001;

/// The step of a writable number: the register's resolution (`scale`), or `precision`, or 1 for
/// integers and 0.001 for floats; never below [`MIN_STEP`].
pub fn step(p: &PointConfig) -> f64 {
    let float = matches!(
        p.effective_type(),
        Some(DataType::F32 | DataType::F64) | None
    );
    let s = match (p.scale, p.precision) {
        (Some(s), _) if s != 0.0 => s.abs(),
        (_, Some(prec)) => 10f64.powi(-i32::from(prec)),
        _ if float => MIN_STEP,
        _ => 1.0,
    };
    s.max(MIN_STEP)
}

/// A point's entity.
pub fn point(
    gateway: &str,
    topics: &Topics,
    device: &str,
    dev: &DeviceConfig,
    name: &str,
    p: &PointConfig,
) -> Entity {
    let component = component(p);
    let mut m = identity(
        component,
        title(name),
        ids::point(gateway, device, name),
        slug(&[device, name]),
    );
    m.insert(
        "state_topic".into(),
        Json::String(topics.state(device, &dev.location)),
    );
    let labels: Vec<&String> = p.map.iter().flat_map(|m| m.values()).collect();
    let value_template = match (component, &p.map) {
        (Component::Switch | Component::BinarySensor, None) => templates::on_off(name),
        (_, Some(_)) => templates::label(name, &labels),
        _ => templates::value(name),
    };
    m.insert("value_template".into(), Json::String(value_template));
    if p.writable {
        m.insert(
            "command_topic".into(),
            Json::String(topics.command(device, &dev.location)),
        );
    }
    let hints = lint::hints(p, component);
    match component {
        Component::Switch => {
            let (on, off, state_on, state_off) = match labels.as_slice() {
                // The label of the higher raw value is "on".
                [off, on] => (json!(on), json!(off), (*on).clone(), (*off).clone()),
                _ => (json!(true), json!(false), "ON".into(), "OFF".into()),
            };
            m.insert(
                "payload_on".into(),
                Json::String(json!({ name: on }).to_string()),
            );
            m.insert(
                "payload_off".into(),
                Json::String(json!({ name: off }).to_string()),
            );
            m.insert("state_on".into(), Json::String(state_on));
            m.insert("state_off".into(), Json::String(state_off));
        }
        Component::BinarySensor => {
            m.insert("payload_on".into(), json!("ON"));
            m.insert("payload_off".into(), json!("OFF"));
        }
        Component::Number => {
            m.insert(
                "command_template".into(),
                Json::String(templates::command(name)),
            );
            let (lo, hi) = type_range(p);
            m.insert("min".into(), json!(p.min.unwrap_or(lo)));
            m.insert("max".into(), json!(p.max.unwrap_or(hi)));
            m.insert("step".into(), json!(step(p)));
            m.insert("mode".into(), json!("box"));
        }
        Component::Select => {
            m.insert(
                "command_template".into(),
                Json::String(templates::command(name)),
            );
            m.insert("options".into(), json!(labels));
        }
        Component::Sensor => {
            if p.map.is_some() {
                m.insert("options".into(), json!(labels));
            } else if lint::numeric(p) {
                if let Some(prec) = p.precision {
                    m.insert("suggested_display_precision".into(), json!(prec));
                }
            }
        }
        Component::Button | Component::Text => {}
    }
    if let Some(dc) = hints.device_class {
        m.insert("device_class".into(), Json::String(dc));
    }
    if let Some(u) = hints.unit {
        m.insert("unit_of_measurement".into(), Json::String(u));
    }
    if let Some(sc) = hints.state_class {
        m.insert("state_class".into(), Json::String(sc));
    }
    if let Some(c) = p.entity_category {
        m.insert("entity_category".into(), json!(c.name()));
    }
    if let Some(i) = &p.icon {
        m.insert("icon".into(), json!(i));
    }
    if !p.enabled_by_default {
        m.insert("enabled_by_default".into(), json!(false));
    }
    Entity {
        component,
        object: name.to_string(),
        options: m,
    }
}

/// A named action's entity: a `button` that sends `{"action": name}`, or, when its `send`
/// template takes `{value}`, a `text` whose value is sent with it. `None` when the template
/// also takes `{name}`, which Home Assistant has no way to fill.
pub fn action(
    gateway: &str,
    topics: &Topics,
    device: &str,
    dev: &DeviceConfig,
    name: &str,
    a: &ActionConfig,
) -> Option<Entity> {
    let send = a.send.as_deref().unwrap_or_default();
    if send.contains("{name}") {
        return None;
    }
    let component = if send.contains("{value}") {
        Component::Text
    } else {
        Component::Button
    };
    let mut m = identity(
        component,
        title(name),
        ids::action(gateway, device, name),
        slug(&[device, name]),
    );
    m.insert(
        "command_topic".into(),
        Json::String(topics.command(device, &dev.location)),
    );
    match component {
        Component::Text => {
            m.insert(
                "command_template".into(),
                Json::String(templates::action_command(name)),
            );
        }
        _ => {
            m.insert(
                "payload_press".into(),
                Json::String(json!({ "action": name }).to_string()),
            );
        }
    }
    Some(Entity {
        component,
        object: name.to_string(),
        options: m,
    })
}

/// The `refresh` button: reads every point now (configuration category).
pub fn refresh(gateway: &str, topics: &Topics, device: &str, dev: &DeviceConfig) -> Entity {
    let mut m = identity(
        Component::Button,
        "Refresh".into(),
        ids::action(gateway, device, "refresh"),
        slug(&[device, "refresh"]),
    );
    m.insert(
        "command_topic".into(),
        Json::String(topics.command(device, &dev.location)),
    );
    m.insert(
        "payload_press".into(),
        Json::String(json!({ "action": "refresh" }).to_string()),
    );
    m.insert("entity_category".into(), json!("config"));
    Entity {
        component: Component::Button,
        object: "refresh".into(),
        options: m,
    }
}

/// Every entity of a device: its points, its actions, and `refresh` where it reads something
/// (Modbus devices; a serial device reports on its own and refuses `refresh`).
pub fn device(
    gateway: &str,
    topics: &Topics,
    device: &str,
    dev: &DeviceConfig,
    modbus: bool,
) -> Vec<Entity> {
    let mut out: Vec<Entity> = dev
        .points
        .iter()
        .map(|(n, p)| point(gateway, topics, device, dev, n, p))
        .collect();
    out.extend(
        dev.actions
            .iter()
            .filter_map(|(n, a)| action(gateway, topics, device, dev, n, a)),
    );
    if modbus {
        out.push(refresh(gateway, topics, device, dev));
    }
    out
}

/// Gateway-level entity with a fixed set of options (the gateway's own device).
pub(super) fn gateway_entity(
    gateway: &str,
    component: Component,
    object: &str,
    name: &str,
) -> Entity {
    Entity {
        component,
        object: object.to_string(),
        options: identity(
            component,
            name.to_string(),
            ids::gateway_entity(gateway, object),
            slug(&["fieldbridge", gateway, object]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Table;

    #[test]
    fn a_number_without_limits_spans_its_type_after_scale_and_offset() {
        let mut p = PointConfig::register(Table::Holding, 0, DataType::I16);
        p.scale = Some(0.1);
        let (lo, hi) = type_range(&p);
        assert!(
            (lo + 3276.8).abs() < 1e-9 && (hi - 3276.7).abs() < 1e-9,
            "{lo} {hi}"
        );
        p.scale = Some(-2.0);
        p.offset = Some(10.0);
        assert_eq!(type_range(&p), (-65534.0 + 10.0, 65536.0 + 10.0));
        let p = PointConfig::register(Table::Holding, 0, DataType::U16);
        assert_eq!(type_range(&p), (0.0, 65535.0));
    }

    #[test]
    fn steps_never_go_below_home_assistants_minimum() {
        let mut p = PointConfig::register(Table::Holding, 0, DataType::U32);
        p.scale = Some(0.0001);
        assert_eq!(step(&p), MIN_STEP);
        p.scale = Some(0.5);
        assert_eq!(step(&p), 0.5);
        let p = PointConfig::register(Table::Holding, 0, DataType::U16);
        assert_eq!(step(&p), 1.0);
        let p = PointConfig::register(Table::Holding, 0, DataType::F32);
        assert_eq!(step(&p), MIN_STEP);
    }

    #[test]
    fn unique_ids_of_two_gateways_cannot_meet() {
        assert_ne!(
            ids::point("garage", "2_x", "p"),
            ids::point("garage_2", "x", "p")
        );
        assert_ne!(ids::device("garage", "2_x"), ids::device("garage_2", "x"));
        assert_eq!(ids::owner(&ids::device("garage_2", "x")), Some("garage_2"));
        assert_eq!(ids::owner(&ids::gateway("garage")), Some("garage"));
        assert_eq!(ids::owner("zigbee2mqtt_0x1234"), None);
        // A point, an action and a gateway entity never share an id.
        assert_ne!(
            ids::point("g", "bus", "x"),
            ids::gateway_entity("g", "bus:x")
        );
        assert_ne!(ids::action("g", "d", "x"), ids::point("g", "d", "action"));
    }
}
