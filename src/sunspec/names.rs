//! What fieldbridge publishes of each SunSpec model: the point names, units and Home Assistant
//! classes, per family of models. The names are the `sunspec-*` profiles' for the same
//! quantity, so the integer models (101–103, 201–204) and the float ones (111–113, 211–214)
//! of one device give the same entities.

use std::collections::BTreeSet;

use crate::config::{EntityCategory, PointConfig};

/// Models that publish the same quantities under the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 1: who made the device.
    Common,
    /// 101–103, 111–113.
    Inverter,
    /// 160: one block per MPPT input.
    Mppt,
    /// 201–204, 211–214.
    Meter,
    /// 124.
    Storage,
    /// 802.
    Battery,
}

impl Family {
    pub fn of(id: u16) -> Option<Family> {
        Some(match id {
            1 => Family::Common,
            101..=103 | 111..=113 => Family::Inverter,
            160 => Family::Mppt,
            201..=204 | 211..=214 => Family::Meter,
            124 => Family::Storage,
            802 => Family::Battery,
            _ => return None,
        })
    }
}

/// How one SunSpec point is published.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    /// The point name; `#` is the block number in a repeating block.
    pub name: &'static str,
    pub unit: Option<&'static str>,
    pub device_class: Option<&'static str>,
    pub state_class: Option<&'static str>,
    /// Decimals of a float model's value (integer models' come from their scale factors).
    pub precision: Option<u8>,
    pub category: Option<EntityCategory>,
}

const fn q(
    name: &'static str,
    unit: &'static str,
    device_class: &'static str,
    state_class: &'static str,
    precision: u8,
) -> Quantity {
    Quantity {
        name,
        unit: Some(unit),
        device_class: Some(device_class),
        state_class: Some(state_class),
        precision: Some(precision),
        category: None,
    }
}

/// A point without unit or class: a label, a count, a state.
const fn plain(name: &'static str) -> Quantity {
    Quantity {
        name,
        unit: None,
        device_class: None,
        state_class: None,
        precision: None,
        category: None,
    }
}

const fn diagnostic(name: &'static str) -> Quantity {
    Quantity {
        category: Some(EntityCategory::Diagnostic),
        ..plain(name)
    }
}

const M: &str = "measurement";
const TOTAL: &str = "total_increasing";

const COMMON: &[(&str, Quantity)] = &[
    ("Mn", diagnostic("manufacturer")),
    ("Md", diagnostic("model")),
    ("Vr", diagnostic("version")),
    ("SN", diagnostic("serial_number")),
];

const INVERTER: &[(&str, Quantity)] = &[
    ("A", q("current", "A", "current", M, 2)),
    ("AphA", q("current_a", "A", "current", M, 2)),
    ("AphB", q("current_b", "A", "current", M, 2)),
    ("AphC", q("current_c", "A", "current", M, 2)),
    ("PPVphAB", q("voltage_ab", "V", "voltage", M, 1)),
    ("PPVphBC", q("voltage_bc", "V", "voltage", M, 1)),
    ("PPVphCA", q("voltage_ca", "V", "voltage", M, 1)),
    ("PhVphA", q("voltage_a", "V", "voltage", M, 1)),
    ("PhVphB", q("voltage_b", "V", "voltage", M, 1)),
    ("PhVphC", q("voltage_c", "V", "voltage", M, 1)),
    ("W", q("power", "W", "power", M, 1)),
    ("Hz", q("frequency", "Hz", "frequency", M, 2)),
    ("VA", q("apparent_power", "VA", "apparent_power", M, 1)),
    ("VAr", q("reactive_power", "var", "reactive_power", M, 1)),
    ("PF", q("power_factor", "%", "power_factor", M, 1)),
    ("WH", q("energy", "Wh", "energy", TOTAL, 0)),
    ("DCA", q("dc_current", "A", "current", M, 2)),
    ("DCV", q("dc_voltage", "V", "voltage", M, 1)),
    ("DCW", q("dc_power", "W", "power", M, 1)),
    (
        "TmpCab",
        q("cabinet_temperature", "°C", "temperature", M, 1),
    ),
    (
        "TmpSnk",
        q("heat_sink_temperature", "°C", "temperature", M, 1),
    ),
    (
        "TmpTrns",
        q("transformer_temperature", "°C", "temperature", M, 1),
    ),
    ("TmpOt", q("other_temperature", "°C", "temperature", M, 1)),
    ("St", plain("state")),
    ("StVnd", diagnostic("vendor_state")),
];

const MPPT: &[(&str, Quantity)] = &[
    ("DCA", q("pv#_current", "A", "current", M, 2)),
    ("DCV", q("pv#_voltage", "V", "voltage", M, 1)),
    ("DCW", q("pv#_power", "W", "power", M, 1)),
    ("DCWH", q("pv#_energy", "Wh", "energy", TOTAL, 0)),
    ("Tmp", q("pv#_temperature", "°C", "temperature", M, 1)),
    ("DCSt", plain("pv#_state")),
];

const METER: &[(&str, Quantity)] = &[
    ("A", q("current", "A", "current", M, 2)),
    ("AphA", q("current_a", "A", "current", M, 2)),
    ("AphB", q("current_b", "A", "current", M, 2)),
    ("AphC", q("current_c", "A", "current", M, 2)),
    ("PhV", q("voltage", "V", "voltage", M, 1)),
    ("PhVphA", q("voltage_a", "V", "voltage", M, 1)),
    ("PhVphB", q("voltage_b", "V", "voltage", M, 1)),
    ("PhVphC", q("voltage_c", "V", "voltage", M, 1)),
    // The integer models name line-to-line voltages PhVphAB…, the float ones PPVphAB….
    ("PhVphAB", q("voltage_ab", "V", "voltage", M, 1)),
    ("PhVphBC", q("voltage_bc", "V", "voltage", M, 1)),
    ("PhVphCA", q("voltage_ca", "V", "voltage", M, 1)),
    ("PPVphAB", q("voltage_ab", "V", "voltage", M, 1)),
    ("PPVphBC", q("voltage_bc", "V", "voltage", M, 1)),
    ("PPVphCA", q("voltage_ca", "V", "voltage", M, 1)),
    ("Hz", q("frequency", "Hz", "frequency", M, 2)),
    ("W", q("power", "W", "power", M, 1)),
    ("WphA", q("power_a", "W", "power", M, 1)),
    ("WphB", q("power_b", "W", "power", M, 1)),
    ("WphC", q("power_c", "W", "power", M, 1)),
    ("VA", q("apparent_power", "VA", "apparent_power", M, 1)),
    ("VAR", q("reactive_power", "var", "reactive_power", M, 1)),
    ("TotWhExp", q("energy_export", "Wh", "energy", TOTAL, 0)),
    ("TotWhImp", q("energy_import", "Wh", "energy", TOTAL, 0)),
];

const STORAGE: &[(&str, Quantity)] = &[
    ("WChaMax", q("max_charge_power", "W", "power", M, 0)),
    ("ChaState", q("battery_soc", "%", "battery", M, 1)),
    ("InBatV", q("battery_voltage", "V", "voltage", M, 1)),
    ("ChaSt", plain("charge_status")),
];

const BATTERY: &[(&str, Quantity)] = &[
    ("WHRtg", q("capacity", "Wh", "energy_storage", M, 0)),
    ("SoC", q("battery_soc", "%", "battery", M, 1)),
    (
        "SoH",
        Quantity {
            category: Some(EntityCategory::Diagnostic),
            ..q("battery_soh", "%", "battery", M, 1)
        },
    ),
    ("NCyc", diagnostic("cycles")),
    ("ChaSt", plain("charge_status")),
    ("State", plain("battery_state")),
    ("V", q("battery_voltage", "V", "voltage", M, 1)),
    ("A", q("battery_current", "A", "current", M, 2)),
    ("W", q("battery_power", "W", "power", M, 1)),
    ("CellVMax", q("cell_voltage_max", "V", "voltage", M, 3)),
    ("CellVMin", q("cell_voltage_min", "V", "voltage", M, 3)),
];

/// How `point` of a model of `family` is published; `None` for points that are not.
pub fn quantity(family: Family, point: &str) -> Option<Quantity> {
    let table = match family {
        Family::Common => COMMON,
        Family::Inverter => INVERTER,
        Family::Mppt => MPPT,
        Family::Meter => METER,
        Family::Storage => STORAGE,
        Family::Battery => BATTERY,
    };
    table.iter().find(|(n, _)| *n == point).map(|(_, q)| *q)
}

/// Names given so far on one device. A model whose names are taken (a second meter, or a meter
/// behind an inverter that names `power` already) takes the first suffix `_2`, `_3`, … that
/// frees all of them, so one model's points keep one suffix. A second common model (a meter's,
/// in SolarEdge's chains) adds nothing: the device is named by its first.
#[derive(Default)]
pub struct Naming {
    taken: BTreeSet<String>,
    common: bool,
}

impl Naming {
    pub fn place(
        &mut self,
        family: Family,
        instance: Vec<(String, PointConfig)>,
    ) -> Vec<(String, PointConfig)> {
        if family == Family::Common {
            if self.common {
                return Vec::new();
            }
            self.common = true;
        }
        let free = |suffix: &str, taken: &BTreeSet<String>| {
            instance
                .iter()
                .all(|(n, _)| !taken.contains(&format!("{n}{suffix}")))
        };
        let suffix = (1..)
            .map(|n: u32| {
                if n == 1 {
                    String::new()
                } else {
                    format!("_{n}")
                }
            })
            .find(|s| free(s, &self.taken))
            .unwrap_or_default();
        instance
            .into_iter()
            .map(|(n, p)| {
                let name = format!("{n}{suffix}");
                self.taken.insert(name.clone());
                (name, p)
            })
            .collect()
    }
}
