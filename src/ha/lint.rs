//! What Home Assistant accepts of a point's hints (`device_class`, `unit`, `state_class`), by
//! its own tables (`classes.rs`). One function decides both what discovery publishes and what
//! `check` warns about, so a combination Home Assistant would refuse, or accept with a warning
//! in its log (`state class 'measurement' … impossible considering device class ('energy')`), is
//! said once at load time, with its line, and never reaches Home Assistant.

use super::classes;
use super::component::{self, Component};
use crate::config::{Config, DataType, PointConfig};

/// The hints to publish for a point, and what was wrong with the configured ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hints {
    pub device_class: Option<String>,
    pub unit: Option<String>,
    pub state_class: Option<String>,
    /// `(key, message)`: the point key at fault and why it is not published.
    pub problems: Vec<(&'static str, String)>,
}

/// Units a sensor or number device class accepts; `None` when any unit goes.
fn units_of(component: Component, dc: &str) -> Option<classes::Units> {
    match component {
        Component::Sensor => classes::SENSOR
            .iter()
            .find(|(n, _, _)| *n == dc)
            .map(|(_, u, _)| *u),
        Component::Number => classes::NUMBER
            .iter()
            .find(|(n, _)| *n == dc)
            .map(|(_, u)| *u),
        _ => None,
    }
}

fn state_classes_of(dc: &str) -> &'static [&'static str] {
    classes::SENSOR
        .iter()
        .find(|(n, _, _)| *n == dc)
        .map(|(_, _, s)| *s)
        .unwrap_or(&[])
}

fn accepted(units: &[Option<&str>]) -> String {
    let names: Vec<String> = units
        .iter()
        .map(|u| match u {
            Some(u) => format!("\"{u}\""),
            None => "no unit".into(),
        })
        .collect();
    names.join(", ")
}

/// The device classes `component` accepts.
fn device_classes(component: Component) -> Vec<&'static str> {
    match component {
        Component::Sensor => classes::SENSOR.iter().map(|(n, _, _)| *n).collect(),
        Component::Number => classes::NUMBER.iter().map(|(n, _)| *n).collect(),
        Component::BinarySensor => classes::BINARY_SENSOR.to_vec(),
        Component::Switch => classes::SWITCH.to_vec(),
        Component::Button => classes::BUTTON.to_vec(),
        Component::Select | Component::Text => Vec::new(),
    }
}

/// Whether a point's value is a number in Home Assistant's eyes.
pub fn numeric(p: &PointConfig) -> bool {
    match p.effective_type() {
        Some(t) => t.is_numeric() && p.map.is_none(),
        // A serial field of no declared type: a number when it has a unit.
        None => p.unit.is_some() && p.map.is_none(),
    }
}

/// The state class a numeric sensor gets when none is configured: what its device class allows
/// (`total_increasing` for meters such as energy, gas and water; `measurement` otherwise; the
/// only one allowed, e.g. `total` for monetary; none for dates), `measurement` without a class.
fn default_state_class(dc: Option<&str>) -> Option<&'static str> {
    let Some(dc) = dc else {
        return Some("measurement");
    };
    let allowed = state_classes_of(dc);
    if allowed.contains(&"total_increasing") && !allowed.contains(&"measurement") {
        Some("total_increasing")
    } else if allowed.contains(&"measurement") {
        Some("measurement")
    } else if allowed.len() == 1 {
        allowed.first().copied()
    } else {
        None
    }
}

/// The hints of point `p` as `component`, checked.
pub fn hints(p: &PointConfig, component: Component) -> Hints {
    let mut h = Hints::default();
    let enum_sensor = component == Component::Sensor && p.map.is_some();
    let text = p.effective_type() == Some(DataType::String);
    // Keys the component has no use for are simply not published: Home Assistant drops them.
    let takes_unit = matches!(component, Component::Sensor | Component::Number) && !enum_sensor;
    let takes_state_class = component == Component::Sensor && !enum_sensor;
    if enum_sensor {
        h.device_class = Some("enum".into());
        if let Some(dc) = p.device_class.as_deref().filter(|dc| *dc != "enum") {
            h.problems.push((
                "device_class",
                format!(
                    "a read-only point with `map` is an enum sensor in Home Assistant; device_class \"{dc}\" is not published"
                ),
            ));
        }
        for (key, set) in [("unit", &p.unit), ("state_class", &p.state_class)] {
            if set.is_some() {
                h.problems.push((
                    key,
                    format!("Home Assistant refuses `{key}` on an enum sensor (a read-only point with `map`); not published"),
                ));
            }
        }
        return h;
    }
    if text {
        for (key, set) in [
            ("unit", &p.unit),
            ("state_class", &p.state_class),
            ("device_class", &p.device_class),
        ] {
            if set.is_some() {
                h.problems.push((
                    key,
                    format!("a string point has no `{key}` in Home Assistant (it would expect a number); not published"),
                ));
            }
        }
        return h;
    }
    if takes_unit {
        h.unit = p.unit.clone();
    }
    if let Some(dc) = p.device_class.as_deref() {
        let known = device_classes(component);
        if !known.contains(&dc) {
            let expected = if known.is_empty() {
                format!("a {} takes no device class", component.name())
            } else {
                format!("expected one of {}", known.join(", "))
            };
            h.problems.push((
                "device_class",
                format!(
                    "Home Assistant {} has no device_class \"{dc}\" ({expected}); not published",
                    component.name()
                ),
            ));
        } else if dc == "enum" {
            h.problems.push((
                "device_class",
                "device_class \"enum\" needs the point's labels: give it a `map`; not published"
                    .into(),
            ));
        } else if component == Component::Sensor
            && classes::SENSOR_NON_NUMERIC.contains(&dc)
            && numeric(p)
        {
            h.problems.push((
                "device_class",
                format!("device_class \"{dc}\" is for dates and times, and this point is a number; not published"),
            ));
        } else if let Some(Some(units)) = units_of(component, dc) {
            if !units.contains(&p.unit.as_deref()) {
                let unit = match &p.unit {
                    Some(u) => format!("unit \"{u}\""),
                    None => "no unit".into(),
                };
                h.problems.push((
                    if p.unit.is_some() { "unit" } else { "device_class" },
                    format!(
                        "Home Assistant does not accept {unit} with device_class \"{dc}\" (it takes {}); device_class not published",
                        accepted(units)
                    ),
                ));
            } else {
                h.device_class = Some(dc.to_string());
            }
        } else {
            h.device_class = Some(dc.to_string());
        }
    }
    if !takes_state_class {
        return h;
    }
    let dc = h.device_class.as_deref();
    if let Some(sc) = p.state_class.as_deref() {
        if !classes::STATE_CLASSES.contains(&sc) {
            h.problems.push((
                "state_class",
                format!(
                    "unknown state_class \"{sc}\"; expected one of {}",
                    classes::STATE_CLASSES.join(", ")
                ),
            ));
        } else if !numeric(p) {
            h.problems.push((
                "state_class",
                "a state class is for numbers; this point is not one, so it is not published"
                    .into(),
            ));
        } else if let Some(dc) = dc.filter(|dc| !state_classes_of(dc).contains(&sc)) {
            let allowed = state_classes_of(dc);
            h.problems.push((
                "state_class",
                format!(
                    "Home Assistant rejects state_class \"{sc}\" with device_class \"{dc}\" (expected {}); using the default",
                    if allowed.is_empty() { "none".into() } else { allowed.join(" or ") }
                ),
            ));
        } else if let Some((_, units)) = classes::STATE_CLASS_UNITS
            .iter()
            .find(|(n, _)| *n == sc)
            .filter(|(_, units)| !units.contains(&p.unit.as_deref()))
        {
            h.problems.push((
                "state_class",
                format!(
                    "state_class \"{sc}\" takes {} as its unit; using the default",
                    accepted(units)
                ),
            ));
        } else {
            h.state_class = Some(sc.to_string());
        }
    }
    if h.state_class.is_none() && numeric(p) {
        h.state_class = default_state_class(dc).map(str::to_string);
    }
    h
}

/// Every problem of a config's points, as `(key path, message)` for the loader to place.
pub fn config(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (dev, d) in &config.devices {
        for (name, p) in &d.points {
            let component = component::component(p);
            for (key, message) in hints(p, component).problems {
                out.push((format!("devices.{dev}.points.{name}.{key}"), message));
            }
        }
        for (name, a) in &d.actions {
            if let Some(send) = &a.send {
                if send.contains("{name}") {
                    out.push((
                        format!("devices.{dev}.actions.{name}.send"),
                        "Home Assistant cannot fill `{name}`: this action gets no entity there (send it with MQTT)".into(),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Table;

    fn point(ty: DataType) -> PointConfig {
        PointConfig::register(Table::Input, 0, ty)
    }

    #[test]
    fn energy_meters_default_to_total_increasing_and_refuse_measurement() {
        let mut p = point(DataType::F32);
        p.device_class = Some("energy".into());
        p.unit = Some("kWh".into());
        let h = hints(&p, Component::Sensor);
        assert_eq!(h.state_class.as_deref(), Some("total_increasing"));
        assert!(h.problems.is_empty());
        p.state_class = Some("measurement".into());
        let h = hints(&p, Component::Sensor);
        assert_eq!(h.state_class.as_deref(), Some("total_increasing"));
        assert_eq!(h.problems.len(), 1);
        assert!(
            h.problems[0].1.contains("total or total_increasing"),
            "{:?}",
            h.problems
        );
        for dc in ["gas", "water"] {
            p.device_class = Some(dc.into());
            p.unit = Some("m³".into());
            p.state_class = None;
            assert_eq!(
                hints(&p, Component::Sensor).state_class.as_deref(),
                Some("total_increasing")
            );
        }
    }

    #[test]
    fn a_unit_the_device_class_does_not_take_drops_the_class_not_the_unit() {
        let mut p = point(DataType::I16);
        p.device_class = Some("temperature".into());
        p.unit = Some("C".into());
        let h = hints(&p, Component::Sensor);
        assert_eq!(h.device_class, None);
        assert_eq!(h.unit.as_deref(), Some("C"));
        assert_eq!(h.state_class.as_deref(), Some("measurement"));
        assert_eq!(h.problems[0].0, "unit");
        assert!(h.problems[0].1.contains("\"°C\""), "{:?}", h.problems);
    }

    #[test]
    fn classes_must_belong_to_the_component() {
        let mut p = point(DataType::Bool);
        p.device_class = Some("temperature".into());
        let h = hints(&p, Component::BinarySensor);
        assert_eq!(h.device_class, None);
        assert!(
            h.problems[0].1.contains("binary_sensor"),
            "{:?}",
            h.problems
        );
        p.device_class = Some("door".into());
        let h = hints(&p, Component::BinarySensor);
        assert_eq!(h.device_class.as_deref(), Some("door"));
        assert!(h.problems.is_empty());
    }

    #[test]
    fn enum_sensors_take_no_unit_or_state_class() {
        let mut p = point(DataType::U16);
        p.map = Some([(0, "idle".to_string())].into());
        p.unit = Some("x".into());
        let h = hints(&p, Component::Sensor);
        assert_eq!(h.device_class.as_deref(), Some("enum"));
        assert_eq!((h.unit, h.state_class), (None, None));
        assert_eq!(h.problems.len(), 1);
    }
}
