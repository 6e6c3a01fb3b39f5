//! Which Home Assistant platform a point becomes: shared by what discovery publishes
//! (`entity.rs`) and what `check` warns about (`lint.rs`).

use crate::config::{DataType, PointConfig};

/// The Home Assistant platform of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Sensor,
    BinarySensor,
    Number,
    Switch,
    Select,
    Button,
    Text,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Number => "number",
            Component::Switch => "switch",
            Component::Select => "select",
            Component::Button => "button",
            Component::Text => "text",
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
