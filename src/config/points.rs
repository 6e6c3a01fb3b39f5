//! Points and actions: `[devices.<d>.points.<p>]` and `[devices.<d>.actions.<a>]`.
//!
//! They are extracted from their own table with its own path, not from a device, so that the
//! same rules and messages apply wherever that table sits: under a device in the config, or at
//! the top of a device profile file (README "Device profiles").

use std::collections::{BTreeMap, HashMap};

use toml::de::DeValue;

use super::extract::{Extractor, Section, closest};
use super::*;

impl Extractor<'_> {
    /// A `points` table: each named point extracted under `t`'s path. `kind` is the bus kind
    /// the points are read over, when known; it decides between `register` and `field`.
    pub(super) fn points(
        &mut self,
        t: &Section,
        kind: Option<BusKind>,
    ) -> BTreeMap<String, PointConfig> {
        self.points_over(t, kind, &BTreeMap::new(), WordOrder::Abcd)
    }

    /// A `points` table over `base` (a profile's points): a point named like one of `base`
    /// starts from it and changes only the keys it gives; the others start empty. `order` is
    /// the word order of points that set none (a profile's default).
    pub(super) fn points_over(
        &mut self,
        t: &Section,
        kind: Option<BusKind>,
        base: &BTreeMap<String, PointConfig>,
        order: WordOrder,
    ) -> BTreeMap<String, PointConfig> {
        // Collected, not inserted one by one: a map built from a list has full nodes, where
        // inserts leave them a third empty (a point's config is ~350 bytes, and a gateway
        // keeps every point's for as long as it runs).
        let mut points = Vec::new();
        for (name, ps) in self.entries(t) {
            if RESERVED_POINTS.contains(&name.as_str()) {
                let key = ps.path.clone();
                self.error(
                    ps.at.clone(),
                    &key,
                    format!("\"{name}\" is a reserved name (it is a key of the state and command payloads); choose another point name"),
                );
                continue;
            }
            if let Some(p) = self.point(&ps, kind, base.get(&name), order) {
                points.push((name, p));
            }
        }
        points.into_iter().collect()
    }

    /// An `actions` table: each named action extracted under `t`'s path, checked against
    /// `points` (the points it may `set`).
    pub(super) fn actions(
        &mut self,
        t: &Section,
        kind: Option<BusKind>,
        points: &BTreeMap<String, PointConfig>,
    ) -> BTreeMap<String, ActionConfig> {
        let mut actions = BTreeMap::new();
        for (name, acs) in self.entries(t) {
            if RESERVED_ACTIONS.contains(&name.as_str()) {
                self.error(
                    acs.at.clone(),
                    &acs.path,
                    format!("\"{name}\" is a built-in action; choose another name"),
                );
                continue;
            }
            if let Some(a) = self.action(&acs, kind, points) {
                actions.insert(name, a);
            }
        }
        actions
    }

    /// One point. With `base`, every key it does not give is the base point's.
    fn point(
        &mut self,
        s: &Section,
        kind: Option<BusKind>,
        base: Option<&PointConfig>,
        default_order: WordOrder,
    ) -> Option<PointConfig> {
        self.keys(
            s,
            &[
                "register",
                "field",
                "type",
                "length",
                "order",
                "scale",
                "offset",
                "precision",
                "unit",
                "deadband",
                "heartbeat",
                "device_class",
                "state_class",
                "entity_category",
                "icon",
                "enabled_by_default",
                "writable",
                "min",
                "max",
                "map",
                "qos",
                "retain",
                "send",
                "expect",
                "scale_register",
                "unavailable",
            ],
        );
        let modbus = kind.map(BusKind::is_modbus);
        let register = match self.string(s, "register") {
            Some(r) => match parse_register(&r) {
                Ok(reg) => Some(reg),
                Err(msg) => {
                    self.error_at(&s.key("register"), msg);
                    None
                }
            },
            None => base.and_then(|b| b.register),
        };
        let field = self
            .text(s, "field")
            .or_else(|| base.and_then(|b| b.field.clone()));
        match modbus {
            Some(true) => {
                if !s.table.contains_key("register") && register.is_none() {
                    self.error(
                        s.at.clone(),
                        &s.key("register"),
                        "missing register (e.g. register = \"holding:10\")",
                    );
                }
                if field.is_some() {
                    self.error_at(
                        &s.key("field"),
                        "`field` applies to serial buses; Modbus points use `register`",
                    );
                }
            }
            Some(false) => {
                if s.table.contains_key("register") {
                    self.error_at(
                        &s.key("register"),
                        "`register` applies to Modbus buses; serial points use `field`",
                    );
                }
            }
            None => {}
        }
        let data_type = self
            .choice(s, "type", "type", DataType::NAMES)
            .map(|i| ALL_TYPES[i])
            .or_else(|| base.and_then(|b| b.data_type));
        let length = self
            .int(s, "length", 1, 125)
            .map(|l| l as u16)
            .or_else(|| base.and_then(|b| b.length));
        let order = match self.choice(s, "order", "order", WordOrder::NAMES) {
            Some(i) => WordOrder::ALL[i],
            None => base.map_or(default_order, |b| b.order),
        };
        let map = self.map(s).or_else(|| base.and_then(|b| b.map.clone()));
        let deadband = match self.float(s, "deadband") {
            Some(d) if d < 0.0 => {
                self.error_at(&s.key("deadband"), "must not be negative");
                0.0
            }
            Some(d) => d,
            None => base.map_or(0.0, |b| b.deadband),
        };
        let ha = self.point_ha(s);
        let scale_register = match self.string(s, "scale_register") {
            Some(r) => match parse_register(&r) {
                Ok(reg) => Some(reg),
                Err(msg) => {
                    self.error_at(&s.key("scale_register"), msg);
                    None
                }
            },
            None => base.and_then(|b| b.scale_register),
        };
        let unavailable = match self.unavailable(s) {
            Some(u) => u,
            None => base.map(|b| b.unavailable.clone()).unwrap_or_default(),
        };
        let point = PointConfig {
            register,
            field,
            data_type,
            length,
            order,
            scale: self
                .float(s, "scale")
                .or_else(|| base.and_then(|b| b.scale)),
            offset: self
                .float(s, "offset")
                .or_else(|| base.and_then(|b| b.offset)),
            precision: self
                .int(s, "precision", 0, 12)
                .map(|p| p as u8)
                .or_else(|| base.and_then(|b| b.precision)),
            unit: self
                .string(s, "unit")
                .or_else(|| base.and_then(|b| b.unit.clone())),
            deadband,
            heartbeat: self
                .duration(s, "heartbeat")
                .or_else(|| base.and_then(|b| b.heartbeat)),
            device_class: self
                .text(s, "device_class")
                .or_else(|| base.and_then(|b| b.device_class.clone())),
            state_class: self
                .text(s, "state_class")
                .or_else(|| base.and_then(|b| b.state_class.clone())),
            entity_category: ha
                .entity_category
                .or_else(|| base.and_then(|b| b.entity_category)),
            icon: ha.icon.or_else(|| base.and_then(|b| b.icon.clone())),
            enabled_by_default: ha
                .enabled_by_default
                .unwrap_or_else(|| base.is_none_or(|b| b.enabled_by_default)),
            writable: self
                .boolean(s, "writable")
                .unwrap_or_else(|| base.is_some_and(|b| b.writable)),
            min: self.float(s, "min").or_else(|| base.and_then(|b| b.min)),
            max: self.float(s, "max").or_else(|| base.and_then(|b| b.max)),
            map,
            qos: self
                .int(s, "qos", 0, 1)
                .map(|q| q as u8)
                .unwrap_or_else(|| base.map_or(0, |b| b.qos)),
            retain: self
                .boolean(s, "retain")
                .unwrap_or_else(|| base.is_some_and(|b| b.retain)),
            send: self
                .text(s, "send")
                .or_else(|| base.and_then(|b| b.send.clone())),
            expect: self
                .text(s, "expect")
                .or_else(|| base.and_then(|b| b.expect.clone())),
            scale_register,
            unavailable,
        };
        let mut point = point;
        if point.send.is_some() {
            point.writable = true;
        }
        self.check_point(s, &point, kind);
        Some(point)
    }

    /// `map = { 0 = "off", 1 = "on" }`: integer keys, unique labels.
    fn map(&mut self, s: &Section) -> Option<BTreeMap<i64, String>> {
        let m = self.table(s, "map")?;
        let mut out = BTreeMap::new();
        let mut labels: HashMap<String, String> = HashMap::new();
        for (k, v) in m.table.iter() {
            let raw = k.get_ref().as_ref();
            let key = m.key(raw);
            let Ok(n) = raw.trim().parse::<i64>() else {
                self.error(
                    k.span(),
                    &key,
                    format!("map keys are raw integer values; \"{raw}\" is not an integer"),
                );
                continue;
            };
            let DeValue::String(label) = v.get_ref() else {
                self.type_error(&m, raw, v, "a label string");
                continue;
            };
            if label.is_empty() {
                self.error(v.span(), &key, "a label must not be empty");
                continue;
            }
            if let Some(first) = labels.get(label.as_ref()) {
                self.error(
                    v.span(),
                    &key,
                    format!(
                        "label \"{label}\" is used twice (also for {first}); labels must be unique"
                    ),
                );
                continue;
            }
            labels.insert(label.to_string(), raw.to_string());
            out.insert(n, label.to_string());
        }
        if out.is_empty() && m.table.is_empty() {
            self.error(m.at.clone(), &m.path, "an empty map has no labels");
        }
        Some(out)
    }

    /// `unavailable = [0x8000, nan]`: integers (a raw value or its bit pattern) and `nan`.
    fn unavailable(&mut self, s: &Section) -> Option<Vec<Unavailable>> {
        let v = self.value(s, "unavailable")?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(s, "unavailable", v, "an array of raw values");
            return Some(Vec::new());
        };
        let key = s.key("unavailable");
        let mut out = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::Integer(i) => {
                    // Bit patterns up to 0xFFFF_FFFF_FFFF_FFFF are written as unsigned hex.
                    let n = i64::from_str_radix(i.as_str(), i.radix()).ok().or_else(|| {
                        u64::from_str_radix(i.as_str(), i.radix())
                            .ok()
                            .map(|u| u as i64)
                    });
                    match n {
                        Some(n) => out.push(Unavailable::Int(n)),
                        None => {
                            self.error(item.span(), &key, format!("{i} does not fit in 64 bits"))
                        }
                    }
                }
                DeValue::Float(f) if f.as_str().trim_start_matches(['+', '-']) == "nan" => {
                    out.push(Unavailable::NaN)
                }
                _ => self.error(
                    item.span(),
                    &key,
                    "expected a raw integer value (e.g. 0x8000) or nan",
                ),
            }
        }
        Some(out)
    }

    fn check_point(&mut self, s: &Section, p: &PointConfig, kind: Option<BusKind>) {
        self.check_point_ha(s, p);
        let ty = p.effective_type();
        if let (Some(reg), Some(ty)) = (p.register, ty) {
            if reg.table.is_bits() && ty != DataType::Bool {
                self.error_at(
                    &s.key("type"),
                    format!(
                        "a {} holds single bits; type must be bool, not {}",
                        reg.table.name(),
                        ty.name()
                    ),
                );
            }
            let len = ty.registers(p.length.unwrap_or(1));
            if reg.address as u32 + len as u32 > 65_536 {
                self.error_at(
                    &s.key("register"),
                    format!("{reg} with {len} registers runs past address 65535"),
                );
            }
            if p.writable && !reg.table.is_writable() {
                self.error_at(
                    &s.key("writable"),
                    format!("{} registers are read-only in Modbus; only coil and holding can be writable", reg.table.name()),
                );
            }
        }
        if kind == Some(BusKind::Serial) && p.writable && p.send.is_none() {
            self.error_at(
                &s.key("writable"),
                "a writable serial point needs `send`, the line that sets it (e.g. send = \"SET {value}\")",
            );
        }
        if matches!(kind, Some(k) if k.is_modbus()) {
            for key in ["send", "expect"] {
                if s.table.contains_key(key) {
                    self.error_at(&s.key(key), format!("`{key}` applies to serial points"));
                }
            }
        }
        if p.expect.is_some() && p.send.is_none() {
            self.error_at(&s.key("expect"), "`expect` needs `send`");
        }
        if let Some(re) = p.expect.as_deref() {
            if let Err(e) = regex::Regex::new(re) {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("invalid").trim().to_string();
                self.error_at(&s.key("expect"), format!("invalid regex: {last}"));
            }
        }
        match ty {
            Some(DataType::String) => {
                if p.length.is_none() && p.register.is_some() {
                    self.error(
                        s.at.clone(),
                        &s.key("length"),
                        "a string point needs `length` (registers)",
                    );
                }
            }
            _ => {
                if p.length.is_some() {
                    self.error_at(
                        &s.key("length"),
                        "`length` applies to type = \"string\" only",
                    );
                }
            }
        }
        if matches!(ty, Some(DataType::Bool) | Some(DataType::String)) {
            // Checked on the values, not the keys: an override may change a profile point's
            // type under keys the profile set.
            for (key, set) in [
                ("scale", p.scale.is_some()),
                ("offset", p.offset.is_some()),
                ("precision", p.precision.is_some()),
                ("min", p.min.is_some()),
                ("max", p.max.is_some()),
                (
                    "deadband",
                    p.deadband != 0.0 || s.table.contains_key("deadband"),
                ),
            ] {
                if set {
                    let t = ty.map(DataType::name).unwrap_or("");
                    self.error_at(
                        &s.key(key),
                        format!("`{key}` applies to numeric points, not {t}"),
                    );
                }
            }
        }
        if let (Some(min), Some(max)) = (p.min, p.max) {
            if min > max {
                self.error_at(&s.key("min"), format!("min {min} is above max {max}"));
            }
        }
        if let Some(sf) = p.scale_register {
            let key = s.key("scale_register");
            if sf.table.is_bits() {
                self.error_at(
                    &key,
                    format!(
                        "a scale factor is a register (input or holding), not a {}",
                        sf.table.name()
                    ),
                );
            }
            if !ty.is_some_and(DataType::is_numeric) {
                let t = ty.map(DataType::name).unwrap_or("");
                self.error_at(
                    &key,
                    format!("`scale_register` applies to numeric points, not {t}"),
                );
            } else if p.map.is_some() {
                self.error_at(&key, "`scale_register` cannot be combined with `map`");
            }
            if p.writable {
                self.error_at(
                    &key,
                    "a point with `scale_register` is read-only (a write would need the scale factor read first); use a fixed `scale` for a writable point",
                );
            }
        }
        if !p.unavailable.is_empty() {
            self.check_unavailable(s, p, ty);
        }
        if let Some(map) = &p.map {
            if matches!(
                ty,
                Some(DataType::F32) | Some(DataType::F64) | Some(DataType::String)
            ) {
                self.error_at(&s.key("map"), "`map` labels integer or bool values");
            } else if ty == Some(DataType::Bool) {
                if let Some(k) = map.keys().find(|k| **k != 0 && **k != 1) {
                    self.error_at(
                        &s.key("map"),
                        format!("a bool point maps only 0 and 1, not {k}"),
                    );
                }
            }
            if p.scale.is_some() || p.offset.is_some() {
                self.error_at(
                    &s.key("map"),
                    "`map` cannot be combined with `scale`/`offset`",
                );
            }
        }
    }

    /// Every `unavailable` entry must be a value the point's type can hold.
    fn check_unavailable(&mut self, s: &Section, p: &PointConfig, ty: Option<DataType>) {
        let key = s.key("unavailable");
        let Some(ty) = ty.filter(|t| t.is_numeric()) else {
            let t = ty.map(DataType::name).unwrap_or("");
            self.error_at(
                &key,
                format!("`unavailable` applies to numeric points, not {t}"),
            );
            return;
        };
        let float = matches!(ty, DataType::F32 | DataType::F64);
        for u in &p.unavailable {
            match (u, float) {
                (Unavailable::NaN, true) => {}
                (Unavailable::NaN, false) => self.error_at(
                    &key,
                    format!("nan applies to float points, not {}", ty.name()),
                ),
                (Unavailable::Int(_), true) => self.error_at(
                    &key,
                    format!(
                        "a {} point is unavailable as nan; integers apply to integer points",
                        ty.name()
                    ),
                ),
                (Unavailable::Int(n), false) => {
                    if !ty.holds_raw(*n) {
                        self.error_at(
                            &key,
                            format!("{n} (0x{n:X}) does not fit in a {}", ty.name()),
                        );
                    }
                }
            }
        }
    }

    fn action(
        &mut self,
        s: &Section,
        kind: Option<BusKind>,
        points: &BTreeMap<String, PointConfig>,
    ) -> Option<ActionConfig> {
        self.keys(s, &["set", "send", "expect"]);
        let mut set = BTreeMap::new();
        if let Some(t) = self.table(s, "set") {
            for (k, v) in t.table.iter() {
                let point = k.get_ref().to_string();
                let key = t.key(&point);
                let value = match v.get_ref() {
                    DeValue::Boolean(b) => SetValue::Bool(*b),
                    DeValue::String(x) => SetValue::String(x.to_string()),
                    DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n) => SetValue::Integer(n),
                        Err(_) => {
                            self.error(v.span(), &key, "integer out of range");
                            continue;
                        }
                    },
                    DeValue::Float(f) => match f.as_str().parse::<f64>() {
                        Ok(x) if x.is_finite() => SetValue::Float(x),
                        _ => {
                            self.error(v.span(), &key, "expected a finite number");
                            continue;
                        }
                    },
                    _ => {
                        self.type_error(&t, &point, v, "a value (number, string or boolean)");
                        continue;
                    }
                };
                match points.get(&point) {
                    None => {
                        let msg = match closest(
                            &point,
                            &points.keys().map(String::as_str).collect::<Vec<_>>(),
                        ) {
                            Some(near) => {
                                format!("unknown point \"{point}\" (did you mean \"{near}\"?)")
                            }
                            None => format!("unknown point \"{point}\""),
                        };
                        self.error(k.span(), &key, msg);
                        continue;
                    }
                    Some(p) if !p.writable => {
                        self.error(k.span(), &key, format!("point \"{point}\" is not writable"));
                        continue;
                    }
                    Some(p) => {
                        if let Err(msg) = check_set_value(p, &value) {
                            self.error(v.span(), &key, msg);
                            continue;
                        }
                    }
                }
                set.insert(point, value);
            }
        }
        let send = self.text(s, "send");
        let expect = self.text(s, "expect");
        if let Some(re) = expect.as_deref() {
            if let Err(e) = regex::Regex::new(re) {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("invalid").trim().to_string();
                self.error_at(&s.key("expect"), format!("invalid regex: {last}"));
            }
        }
        match kind {
            Some(k) if k.is_modbus() => {
                if send.is_some() || expect.is_some() {
                    self.error(
                        s.at.clone(),
                        &s.path,
                        "`send`/`expect` apply to serial buses; Modbus actions use `set`",
                    );
                } else if set.is_empty() && !s.table.contains_key("set") {
                    self.error(
                        s.at.clone(),
                        &s.key("set"),
                        "missing set (e.g. set = { state = \"on\" })",
                    );
                }
            }
            Some(_) => {
                if send.is_none() && !s.table.contains_key("send") {
                    self.error(
                        s.at.clone(),
                        &s.key("send"),
                        "missing send (e.g. send = \"LED {value}\")",
                    );
                }
                if s.table.contains_key("set") {
                    self.error_at(
                        &s.key("set"),
                        "serial actions write with `send`; `set` applies to Modbus devices",
                    );
                }
            }
            None => {}
        }
        Some(ActionConfig { set, send, expect })
    }
}

/// Point names that would collide with keys of the contract's payloads.
pub const RESERVED_POINTS: &[&str] = &["timestamp", "action", "id"];
/// Action names the command handler gives a meaning of its own.
pub const RESERVED_ACTIONS: &[&str] = &["set", "refresh"];

/// Every data type, in the order of `DataType::NAMES`.
pub const ALL_TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::String,
];

/// Checks a value from an action's `set` table against the point it writes.
pub(super) fn check_set_value(p: &PointConfig, v: &SetValue) -> Result<(), String> {
    if let Some(map) = &p.map {
        return match v {
            SetValue::String(label) if map.values().any(|l| l == label) => Ok(()),
            SetValue::String(label) => Err(format!(
                "unknown label \"{label}\"; expected {}",
                one_of(&map.values().map(String::as_str).collect::<Vec<_>>())
            )),
            SetValue::Integer(n) if map.contains_key(n) => Ok(()),
            _ => Err("expected one of the point's map labels".into()),
        };
    }
    let number = match (p.effective_type(), v) {
        (Some(DataType::Bool), SetValue::Bool(_)) => return Ok(()),
        (Some(DataType::Bool), _) => return Err("expected true or false".into()),
        (Some(DataType::String), SetValue::String(_)) => return Ok(()),
        (Some(DataType::String), _) => return Err("expected a string".into()),
        (_, SetValue::Integer(n)) => *n as f64,
        (_, SetValue::Float(f)) => *f,
        _ => return Err("expected a number".into()),
    };
    if let Some(min) = p.min {
        if number < min {
            return Err(format!("{number} is below min {min}"));
        }
    }
    if let Some(max) = p.max {
        if number > max {
            return Err(format!("{number} is above max {max}"));
        }
    }
    Ok(())
}

/// `base` with the keys `keys` taken from `own`: a device's override of a point that is built
/// at run time (a SunSpec model's), as a profile point is overridden at load time.
pub fn override_point(base: &PointConfig, own: &PointConfig, keys: &[String]) -> PointConfig {
    let mut p = base.clone();
    for key in keys {
        match key.as_str() {
            "register" => p.register = own.register,
            "field" => p.field = own.field.clone(),
            "type" => p.data_type = own.data_type,
            "length" => p.length = own.length,
            "order" => p.order = own.order,
            "scale" => p.scale = own.scale,
            "offset" => p.offset = own.offset,
            "precision" => p.precision = own.precision,
            "unit" => p.unit = own.unit.clone(),
            "deadband" => p.deadband = own.deadband,
            "heartbeat" => p.heartbeat = own.heartbeat,
            "device_class" => p.device_class = own.device_class.clone(),
            "state_class" => p.state_class = own.state_class.clone(),
            "entity_category" => p.entity_category = own.entity_category,
            "icon" => p.icon = own.icon.clone(),
            "enabled_by_default" => p.enabled_by_default = own.enabled_by_default,
            "writable" => p.writable = own.writable,
            "min" => p.min = own.min,
            "max" => p.max = own.max,
            "map" => p.map = own.map.clone(),
            "qos" => p.qos = own.qos,
            "retain" => p.retain = own.retain,
            "send" => p.send = own.send.clone(),
            "expect" => p.expect = own.expect.clone(),
            "scale_register" => p.scale_register = own.scale_register,
            "unavailable" => p.unavailable = own.unavailable.clone(),
            _ => {}
        }
    }
    p
}

/// `holding:10` → table and 0-based address.
pub fn parse_register(s: &str) -> Result<Register, String> {
    let Some((table, addr)) = s.split_once(':') else {
        return Err(format!(
            "invalid register \"{s}\"; expected table:address, e.g. \"holding:10\""
        ));
    };
    let table = match table.trim() {
        "coil" => Table::Coil,
        "discrete" => Table::Discrete,
        "input" => Table::Input,
        "holding" => Table::Holding,
        other => {
            return Err(format!(
                "unknown register table \"{other}\"; expected coil, discrete, input or holding"
            ));
        }
    };
    let address = addr.trim();
    let address = if let Some(hex) = address.strip_prefix("0x") {
        u16::from_str_radix(hex, 16).ok()
    } else {
        address.parse::<u16>().ok()
    };
    match address {
        Some(address) => Ok(Register { table, address }),
        None => Err(format!(
            "invalid register address \"{}\"; expected 0 to 65535",
            addr.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::extract::parse_document;
    use super::*;

    type Extracted = (
        BTreeMap<String, PointConfig>,
        BTreeMap<String, ActionConfig>,
    );

    /// Extracts `points` and `actions` from the top of a document, as a profile file has them.
    fn top_level(text: &str) -> Result<Extracted, ConfigErrors> {
        let kind = Some(BusKind::ModbusRtu);
        parse_document(text, Path::new("profiles/meter.toml"), |cx, root| {
            let points = match cx.table(root, "points") {
                Some(t) => cx.points(&t, kind),
                None => BTreeMap::new(),
            };
            let actions = match cx.table(root, "actions") {
                Some(t) => cx.actions(&t, kind, &points),
                None => BTreeMap::new(),
            };
            (points, actions)
        })
    }

    #[test]
    fn points_and_actions_extract_from_the_top_of_a_document() {
        let text = r#"manufacturer = "Eastron"

[points.voltage]
register = "input:0"
type = "f32"
unit = "V"

[points.relay]
register = "coil:0"
writable = true

[actions.on]
set = { relay = true }
"#;
        let (points, actions) = top_level(text).unwrap();
        let voltage = &points["voltage"];
        assert_eq!(
            voltage.register,
            Some(Register {
                table: Table::Input,
                address: 0
            })
        );
        assert_eq!(voltage.data_type, Some(DataType::F32));
        assert_eq!(voltage.unit.as_deref(), Some("V"));
        assert!(points["relay"].writable);
        assert_eq!(actions["on"].set["relay"], SetValue::Bool(true));
    }

    #[test]
    fn errors_in_a_top_level_points_table_name_their_file_path_and_position() {
        let text = r#"[points.voltage]
register = "input:0"
type = "f33"

[points.id]
register = "input:2"

[points.relay]
register = "input:4"

[actions.on]
set = { relay = true, lamp = 1 }
"#;
        let errors = top_level(text).unwrap_err().to_string();
        let expected = [
            "profiles/meter.toml:3:8: points.voltage.type: unknown type \"f33\"; expected bool, u16, i16, u32, i32, u64, i64, f32, f64 or string",
            "profiles/meter.toml:5:9: points.id: \"id\" is a reserved name (it is a key of the state and command payloads); choose another point name",
            "profiles/meter.toml:12:9: actions.on.set.relay: point \"relay\" is not writable",
            "profiles/meter.toml:12:23: actions.on.set.lamp: unknown point \"lamp\"",
        ];
        assert_eq!(errors, expected.join("\n"));
    }

    #[test]
    fn scale_registers_and_unavailable_values_are_checked_against_the_point() {
        let ok = r#"[points.power]
register = "holding:14"
type = "i16"
scale_register = "holding:15"
unavailable = [0x8000]

[points.energy]
register = "holding:24"
type = "u32"
unavailable = [0, 0xFFFFFFFF]

[points.temperature]
register = "holding:40"
type = "f32"
unavailable = [nan]
"#;
        let (points, _) = top_level(ok).unwrap();
        assert_eq!(
            points["power"].scale_register,
            Some(Register {
                table: Table::Holding,
                address: 15
            })
        );
        assert_eq!(points["power"].unavailable, vec![Unavailable::Int(0x8000)]);
        assert_eq!(points["temperature"].unavailable, vec![Unavailable::NaN]);
        let bad = r#"[points.a]
register = "holding:0"
type = "i16"
scale_register = "coil:1"
unavailable = [0x18000]

[points.b]
register = "holding:2"
scale_register = "holding:3"
writable = true
unavailable = [nan]

[points.c]
register = "holding:4"
type = "f32"
unavailable = [1, "x"]
"#;
        let errors = top_level(bad).unwrap_err().to_string();
        let expected = [
            "profiles/meter.toml:4:18: points.a.scale_register: a scale factor is a register (input or holding), not a coil",
            "profiles/meter.toml:5:15: points.a.unavailable: 98304 (0x18000) does not fit in a i16",
            "profiles/meter.toml:9:18: points.b.scale_register: a point with `scale_register` is read-only (a write would need the scale factor read first); use a fixed `scale` for a writable point",
            "profiles/meter.toml:11:15: points.b.unavailable: nan applies to float points, not u16",
            "profiles/meter.toml:16:15: points.c.unavailable: a f32 point is unavailable as nan; integers apply to integer points",
            "profiles/meter.toml:16:19: points.c.unavailable: expected a raw integer value (e.g. 0x8000) or nan",
        ];
        assert_eq!(errors, expected.join("\n"));
    }

    #[test]
    fn registers_parse_tables_and_addresses() {
        assert_eq!(
            parse_register("holding:10"),
            Ok(Register {
                table: Table::Holding,
                address: 10
            })
        );
        assert_eq!(
            parse_register("coil:0x10"),
            Ok(Register {
                table: Table::Coil,
                address: 16
            })
        );
        assert!(parse_register("holdng:1").is_err());
        assert!(parse_register("input:70000").is_err());
        assert!(parse_register("input").is_err());
    }
}
