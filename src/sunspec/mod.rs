//! SunSpec devices (`profile = "sunspec"`, README "SunSpec devices"): solar inverters, meters
//! and batteries that describe themselves as a chain of numbered models in their holding
//! registers. The gateway finds the "SunS" marker, walks the chain by each model's own length
//! (a 65-register common model, as Fronius sends, is no special case) and builds the device's
//! points from the models it knows, with their scale factors and "not implemented" values.
//!
//! - [`models`]: the model definitions, generated from SunSpec's published JSON (see
//!   `tests/sunspec_models.rs`), never typed by hand.
//! - [`walk`]: reading the chain from a device over its bus.
//! - [`build`]: the chain → the device's points, named as the `sunspec-*` profiles name the same
//!   quantities, so a device keeps its Home Assistant entities whichever models it offers.

#[rustfmt::skip]
mod models;
mod names;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{
    DataType, DeviceConfig, DeviceProfile, PointConfig, Register, SunSpecChain, Table, Unavailable,
    WordOrder, override_point,
};
pub use models::MODELS;
use names::{Family, Naming};

/// A SunSpec point type, as the model definitions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    U16,
    I16,
    U32,
    I32,
    Acc16,
    Acc32,
    Acc64,
    F32,
    Enum16,
    String,
    /// A scale factor ("sunssf"): an i16 exponent of ten for the points that name it.
    ScaleFactor,
    /// The number of a repeating block (model 160's `N`).
    Count,
}

impl Kind {
    /// The register type that holds it, and its length for strings.
    fn data_type(self) -> DataType {
        match self {
            Kind::U16 | Kind::Acc16 | Kind::Enum16 | Kind::Count => DataType::U16,
            Kind::I16 | Kind::ScaleFactor => DataType::I16,
            Kind::U32 | Kind::Acc32 => DataType::U32,
            Kind::I32 => DataType::I32,
            Kind::Acc64 => DataType::U64,
            Kind::F32 => DataType::F32,
            Kind::String => DataType::String,
        }
    }

    /// The raw value that means "not implemented" (SunSpec's rules per type).
    fn not_implemented(self) -> Option<Unavailable> {
        Some(match self {
            Kind::I16 | Kind::ScaleFactor => Unavailable::Int(0x8000),
            Kind::U16 | Kind::Enum16 | Kind::Count => Unavailable::Int(0xFFFF),
            Kind::U32 => Unavailable::Int(0xFFFF_FFFF),
            Kind::I32 => Unavailable::Int(0x8000_0000),
            // An accumulator that is not implemented reads 0.
            Kind::Acc16 | Kind::Acc32 | Kind::Acc64 => Unavailable::Int(0),
            Kind::F32 => Unavailable::NaN,
            Kind::String => return None,
        })
    }
}

/// A string of the generated tables: a slice of `models::TEXT`.
#[derive(Debug, Clone, Copy)]
pub struct Str(pub u16, pub u8);

impl Str {
    pub fn get(self) -> &'static str {
        let start = usize::from(self.0);
        models::TEXT
            .get(start..start + usize::from(self.1))
            .unwrap_or("")
    }
}

/// One point of a model definition.
#[derive(Debug)]
pub struct PointDef {
    /// SunSpec's name (`W`, `PhVphA`, `St`).
    pub name: Str,
    /// Registers from the model's ID register (its block's first register, in a repeating block).
    pub offset: u16,
    pub size: u16,
    pub kind: Kind,
    /// The offset of its scale factor in the model, if it has one.
    pub sf: Option<u16>,
    pub units: Option<Str>,
    /// Enum values and their names: a range of `models::SYMBOLS`.
    pub symbols: (u16, u16),
}

impl PointDef {
    pub fn name(&self) -> &'static str {
        self.name.get()
    }

    pub fn units(&self) -> Option<&'static str> {
        self.units.map(Str::get)
    }

    /// Its enum values and their names.
    pub fn symbols(&self) -> impl Iterator<Item = (i64, &'static str)> {
        let (start, count) = (usize::from(self.symbols.0), usize::from(self.symbols.1));
        models::SYMBOLS
            .get(start..start + count)
            .unwrap_or(&[])
            .iter()
            .map(|(v, n)| (*v, n.get()))
    }
}

fn points(range: (u16, u16)) -> &'static [PointDef] {
    let (start, count) = (usize::from(range.0), usize::from(range.1));
    models::POINTS.get(start..start + count).unwrap_or(&[])
}

/// A model's repeating block (model 160's one block per MPPT input).
#[derive(Debug)]
pub struct GroupDef {
    pub name: Str,
    pub length: u16,
    /// A range of `models::POINTS`.
    pub points: (u16, u16),
}

impl GroupDef {
    pub fn points(&self) -> &'static [PointDef] {
        points(self.points)
    }
}

/// One model definition.
#[derive(Debug)]
pub struct ModelDef {
    pub id: u16,
    pub name: Str,
    pub label: Str,
    /// The length of its fixed part (L without repeating blocks), without ID and L.
    pub length: u16,
    /// A range of `models::POINTS`.
    pub points: (u16, u16),
    pub repeating: Option<GroupDef>,
}

impl ModelDef {
    pub fn points(&self) -> &'static [PointDef] {
        points(self.points)
    }

    pub fn label(&self) -> &'static str {
        self.label.get()
    }
}

/// The definition of model `id`, if fieldbridge knows it.
pub fn model(id: u16) -> Option<&'static ModelDef> {
    MODELS.iter().find(|m| m.id == id)
}

/// Where the "SunS" marker is looked for when `sunspec_base` is not given, in this order.
pub const BASES: [u16; 3] = [40000, 0, 50000];

/// The marker at the base: "SunS".
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];

/// The name of the profile-like source in `check` and the history of a point.
const SOURCE: &str = "built in (the device's SunSpec models, read at run time)";

/// What the walk built for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub points: BTreeMap<String, PointConfig>,
    /// Models in the chain that fieldbridge has no points for (named once in the log).
    pub unknown: Vec<u16>,
    /// Overrides of the config that name no point the models gave.
    pub unmatched: Vec<String>,
}

/// The device's points from its chain, then its own points over them.
pub fn build(chain: &SunSpecChain, own: &BTreeMap<String, (PointConfig, Vec<String>)>) -> Built {
    let mut naming = Naming::default();
    let mut points = BTreeMap::new();
    let mut unknown = Vec::new();
    for found in &chain.models {
        let Some(def) = model(found.id) else {
            unknown.push(found.id);
            continue;
        };
        let Some(family) = Family::of(def.id) else {
            unknown.push(found.id);
            continue;
        };
        // The registers the device says the model has (L); points past them are not there.
        let end = u32::from(found.length) + 2;
        let mut instance: Vec<(String, PointConfig)> = Vec::new();
        for p in def.points() {
            if u32::from(p.offset) + u32::from(p.size) > end {
                continue;
            }
            if let Some((name, point)) = point(family, None, found.address, 0, p) {
                instance.push((name, point));
            }
        }
        if let Some(group) = &def.repeating {
            // As many blocks as the model's length holds (model 160's N says the same).
            let fixed = def.length + 2;
            let blocks = (end.saturating_sub(u32::from(fixed))) / u32::from(group.length.max(1));
            for b in 0..blocks {
                let start = u32::from(fixed) + b * u32::from(group.length);
                for p in group.points() {
                    let at = start + u32::from(p.offset);
                    if at + u32::from(p.size) > end || at > u32::from(u16::MAX) {
                        continue;
                    }
                    if let Some((name, point)) =
                        point(family, Some(b + 1), found.address, at as u16, p)
                    {
                        instance.push((name, point));
                    }
                }
            }
        }
        for (name, point) in naming.place(family, instance) {
            points.insert(name, point);
        }
    }
    let mut unmatched = Vec::new();
    for (name, (p, keys)) in own {
        match points.get(name) {
            Some(base) if p.register.is_none() => {
                let merged = override_point(base, p, keys);
                points.insert(name.clone(), merged);
            }
            None if p.register.is_none() => unmatched.push(name.clone()),
            // A point of the device's own with a register: added, or replacing the model's.
            _ => {
                points.insert(name.clone(), p.clone());
            }
        }
    }
    unknown.sort_unstable();
    unknown.dedup();
    Built {
        points,
        unknown,
        unmatched,
    }
}

/// One published point from a model point (`block` numbers a repeating block from 1, and
/// `at` is its offset then). `None` for points that are not published.
fn point(
    family: Family,
    block: Option<u32>,
    model_address: u16,
    at: u16,
    p: &PointDef,
) -> Option<(String, PointConfig)> {
    let quantity = names::quantity(family, p.name())?;
    let offset = if block.is_some() { at } else { p.offset };
    let address = u32::from(model_address) + u32::from(offset);
    let address = u16::try_from(address).ok()?;
    let ty = p.kind.data_type();
    let mut point = PointConfig::register(Table::Holding, address, ty);
    point.order = WordOrder::Abcd;
    if ty == DataType::String {
        point.length = Some(p.size);
    }
    if let Some(sf) = p.sf {
        let sf_address = u16::try_from(u32::from(model_address) + u32::from(sf)).ok()?;
        point.scale_register = Some(Register {
            table: Table::Holding,
            address: sf_address,
        });
    }
    point.unavailable = p.kind.not_implemented().into_iter().collect();
    if p.symbols.1 > 0 {
        point.map = Some(
            p.symbols()
                .map(|(v, n)| (v, n.to_ascii_lowercase().replace(' ', "_")))
                .collect(),
        );
    } else {
        point.unit = quantity.unit.map(str::to_string);
        point.device_class = quantity.device_class.map(str::to_string);
        point.state_class = quantity.state_class.map(str::to_string);
        if p.kind == Kind::F32 {
            point.precision = quantity.precision;
        }
    }
    point.entity_category = quantity.category;
    let name = match block {
        Some(b) => quantity.name.replace('#', &b.to_string()),
        None => quantity.name.to_string(),
    };
    Some((name, point))
}

/// The names `profile = "sunspec"` publishes for model `def` (`pv#_…` for each MPPT block,
/// numbered from 1), for people reading `fieldbridge profiles sunspec`.
pub fn published_names(def: &ModelDef) -> Vec<&'static str> {
    let Some(family) = Family::of(def.id) else {
        return Vec::new();
    };
    def.points()
        .iter()
        .chain(def.repeating.iter().flat_map(|g| g.points()))
        .filter_map(|p| names::quantity(family, p.name()).map(|q| q.name))
        .collect()
}

/// The device `declared` (as the config gives it) with the points of `chain`: what the walk
/// makes of it. The common model's manufacturer and model name the device in Home Assistant
/// unless the config does.
pub fn resolve(
    declared: &DeviceConfig,
    chain: SunSpecChain,
    identity: Option<(String, String)>,
) -> (DeviceConfig, Built) {
    let own = declared
        .sunspec
        .as_ref()
        .map(|s| s.own.clone())
        .unwrap_or_default();
    let built = build(&chain, &own);
    let mut dev = declared.clone();
    dev.points = built.points.clone();
    if let Some((manufacturer, model)) = identity {
        if dev.manufacturer.is_none() && !manufacturer.is_empty() {
            dev.manufacturer = Some(manufacturer);
        }
        if dev.model.is_none() && !model.is_empty() {
            dev.model = Some(model);
        }
    }
    let overridden: BTreeSet<&String> = own
        .iter()
        .filter(|(_, (p, _))| p.register.is_none())
        .map(|(n, _)| n)
        .collect();
    dev.profile = Some(DeviceProfile {
        name: crate::config::SUNSPEC_PROFILE.to_string(),
        source: SOURCE.to_string(),
        points: dev
            .points
            .keys()
            .filter(|n| !own.contains_key(*n) || overridden.contains(n))
            .map(|n| {
                let keys = own.get(n).map(|(_, k)| k.clone()).unwrap_or_default();
                (n.clone(), keys)
            })
            .collect(),
    });
    if let Some(s) = dev.sunspec.as_mut() {
        s.chain = Some(chain);
    }
    (dev, built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SunSpecModel;

    fn chain(models: &[(u16, u16, u16)]) -> SunSpecChain {
        SunSpecChain {
            base: 40000,
            models: models
                .iter()
                .map(|(id, address, length)| SunSpecModel {
                    id: *id,
                    address: *address,
                    length: *length,
                })
                .collect(),
        }
    }

    #[test]
    fn every_model_the_contract_names_is_defined() {
        for id in [
            1, 101, 102, 103, 111, 112, 113, 124, 160, 201, 202, 203, 204, 211, 212, 213, 214, 802,
        ] {
            let m = model(id).unwrap_or_else(|| panic!("model {id}"));
            assert!(Family::of(id).is_some(), "model {id} has no family");
            // Every scale factor a point names is a scale factor of the same model.
            for p in m
                .points()
                .iter()
                .chain(m.repeating.iter().flat_map(|g| g.points()))
            {
                if let Some(sf) = p.sf {
                    assert!(
                        m.points()
                            .iter()
                            .any(|q| q.offset == sf && q.kind == Kind::ScaleFactor),
                        "model {id}: {} names a scale factor at {sf}",
                        p.name()
                    );
                }
            }
        }
        assert_eq!(model(1).map(|m| m.length), Some(66));
        assert_eq!(model(103).map(|m| m.length), Some(50));
    }

    #[test]
    fn a_65_register_common_model_moves_the_next_model_and_nothing_else() {
        // Fronius: model 1 is 65 registers long, so 103 starts at 40069, not 40070.
        let fronius = build(
            &chain(&[(1, 40002, 65), (103, 40069, 50)]),
            &BTreeMap::new(),
        );
        let other = build(
            &chain(&[(1, 40002, 66), (103, 40070, 50)]),
            &BTreeMap::new(),
        );
        let w = |b: &Built| b.points["power"].register.map(|r| r.address);
        assert_eq!(w(&fronius), Some(40069 + 14));
        assert_eq!(w(&other), Some(40070 + 14));
        assert_eq!(
            fronius.points["power"].scale_register.map(|r| r.address),
            Some(40069 + 15)
        );
        assert_eq!(
            fronius.points.keys().collect::<Vec<_>>(),
            other.points.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn integer_and_float_models_give_the_same_names() {
        let int = build(
            &chain(&[(1, 40002, 66), (103, 40070, 50), (203, 40122, 105)]),
            &BTreeMap::new(),
        );
        let float = build(
            &chain(&[(1, 40002, 66), (113, 40070, 60), (213, 40132, 124)]),
            &BTreeMap::new(),
        );
        assert_eq!(
            int.points.keys().collect::<Vec<_>>(),
            float.points.keys().collect::<Vec<_>>()
        );
        assert_eq!(int.points["energy"].data_type, Some(DataType::U32));
        assert_eq!(float.points["energy"].data_type, Some(DataType::F32));
        for b in [&int, &float] {
            let e = &b.points["energy"];
            assert_eq!(e.device_class.as_deref(), Some("energy"));
            assert_eq!(e.state_class.as_deref(), Some("total_increasing"));
        }
        // The meter behind the inverter takes a suffix for what the inverter already names.
        assert!(
            int.points.contains_key("power_2"),
            "{:?}",
            int.points.keys()
        );
        assert!(int.points.contains_key("energy_import_2"));
    }

    #[test]
    fn a_meter_alone_has_the_sunspec_meter_names_and_a_second_meter_a_suffix() {
        let one = build(
            &chain(&[(1, 40002, 66), (203, 40070, 105)]),
            &BTreeMap::new(),
        );
        for name in [
            "power",
            "power_a",
            "voltage_a",
            "frequency",
            "energy_import",
            "energy_export",
        ] {
            assert!(
                one.points.contains_key(name),
                "{name}: {:?}",
                one.points.keys()
            );
        }
        let two = build(
            &chain(&[(1, 40002, 66), (203, 40070, 105), (203, 40177, 105)]),
            &BTreeMap::new(),
        );
        assert_eq!(
            two.points["power_2"].register.map(|r| r.address),
            Some(40177 + 18)
        );
    }

    #[test]
    fn mppt_blocks_are_counted_from_the_model_length() {
        // Model 160 with two modules of 20 registers after its 8-register fixed part.
        let b = build(
            &chain(&[(1, 40002, 66), (160, 40070, 8 + 2 * 20)]),
            &BTreeMap::new(),
        );
        assert_eq!(
            b.points["pv1_power"].register.map(|r| r.address),
            Some(40070 + 10 + 11)
        );
        assert_eq!(
            b.points["pv2_power"].register.map(|r| r.address),
            Some(40070 + 30 + 11)
        );
        assert!(!b.points.contains_key("pv3_power"));
        // The block's scale factor is the model's.
        assert_eq!(
            b.points["pv2_power"].scale_register.map(|r| r.address),
            Some(40070 + 4)
        );
    }

    #[test]
    fn every_point_of_every_model_is_one_home_assistant_accepts() {
        // One chain holding every known model (MPPT with two blocks), one after the other.
        let mut models = Vec::new();
        let mut address = 40002u16;
        for m in MODELS.iter() {
            let length = m.length + m.repeating.as_ref().map_or(0, |g| 2 * g.length);
            models.push((m.id, address, length));
            address += length + 2;
        }
        let built = build(&chain(&models), &BTreeMap::new());
        assert!(built.unknown.is_empty(), "{:?}", built.unknown);
        assert!(built.points.len() > 100, "{}", built.points.len());
        let mut problems = Vec::new();
        for (name, p) in &built.points {
            let component = crate::ha::entity::component(p);
            for (key, message) in crate::ha::lint::hints(p, component).problems {
                problems.push(format!("{name}.{key}: {message}"));
            }
            assert!(crate::config::is_valid_name(name), "{name}");
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn unknown_models_are_listed_and_the_device_overrides_points() {
        let mut own = BTreeMap::new();
        let mut p = PointConfig::register(Table::Holding, 0, DataType::U16);
        p.register = None;
        p.deadband = 10.0;
        own.insert(
            "power".to_string(),
            (p.clone(), vec!["deadband".to_string()]),
        );
        own.insert("nonexistent".to_string(), (p, vec!["deadband".to_string()]));
        let b = build(
            &chain(&[(1, 40002, 66), (103, 40070, 50), (64_900, 40122, 10)]),
            &own,
        );
        assert_eq!(b.unknown, vec![64_900]);
        assert_eq!(b.points["power"].deadband, 10.0);
        assert!(b.points["power"].scale_register.is_some());
        assert_eq!(b.unmatched, vec!["nonexistent".to_string()]);
    }
}
