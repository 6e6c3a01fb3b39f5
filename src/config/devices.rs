//! `[devices.<name>]`: what is on a bus, how often it is polled, and its points and actions
//! (extracted by `points.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use toml::de::DeValue;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn device(
        &mut self,
        s: &Section,
        default_location: &str,
        buses: &BTreeMap<String, BusConfig>,
        profiles: &Profiles,
    ) -> Option<DeviceConfig> {
        self.keys(
            s,
            &[
                "bus",
                "unit",
                "location",
                "poll",
                "offline_after",
                "offline_retry",
                "name",
                "manufacturer",
                "model",
                "match",
                "silence",
                "write_multiple",
                "profile",
                "sunspec_base",
                "points",
                "actions",
            ],
        );
        let bus_name = self.text(s, "bus");
        let bus_name = self.required(s, "bus", bus_name, "bus");
        let bus = bus_name.as_ref().and_then(|b| buses.get(b));
        if let Some(b) = &bus_name {
            if bus.is_none() {
                let defined: Vec<&str> = buses.keys().map(String::as_str).collect();
                let msg = if defined.is_empty() {
                    format!("unknown bus \"{b}\"; no buses are defined")
                } else {
                    format!("unknown bus \"{b}\"; defined buses: {}", defined.join(", "))
                };
                self.error_at(&s.key("bus"), msg);
            }
        }
        let kind = bus.map(|b| b.kind);
        let unit = self.int(s, "unit", 0, 255).map(|u| u as u8);
        match kind {
            Some(k) if k.is_modbus() => {
                self.required(s, "unit", unit, "Modbus unit id (unit = 1..247)");
            }
            Some(_) if unit.is_some() => {
                self.error_at(
                    &s.key("unit"),
                    "`unit` applies to Modbus buses only; this device is on a serial bus",
                );
            }
            _ => {}
        }
        let location = match self.string(s, "location") {
            Some(l) => {
                let key = s.key("location");
                let span = self.span_of(&key);
                self.name(span, &key, &l);
                l
            }
            None => default_location.to_string(),
        };
        let m = match self.table(s, "match") {
            Some(m) => {
                self.keys(&m, &["field", "equals"]);
                let field = self.text(&m, "field");
                let field = self.required(&m, "field", field, "field");
                let v = self.value(&m, "equals");
                let equals = match v.map(|v| (v, v.get_ref())) {
                    Some((_, DeValue::String(x))) => Some(x.to_string()),
                    Some((_, DeValue::Integer(i))) => Some(i.as_str().to_string()),
                    Some((_, DeValue::Boolean(b))) => Some(b.to_string()),
                    Some((v, _)) => {
                        self.type_error(&m, "equals", v, "a string, integer or boolean");
                        None
                    }
                    None => None,
                };
                let equals = self.required(&m, "equals", equals, "equals");
                if matches!(kind, Some(k) if k.is_modbus()) {
                    self.error_at(&s.key("match"), "`match` applies to serial buses only");
                }
                field
                    .zip(equals)
                    .map(|(field, equals)| MatchConfig { field, equals })
            }
            None => None,
        };
        let sunspec = matches!(
            s.table.get("profile").map(|v| v.get_ref()),
            Some(DeValue::String(p)) if p.as_ref() == SUNSPEC_PROFILE
        );
        let profile = if sunspec {
            if matches!(kind, Some(k) if !k.is_modbus()) {
                self.error_at(
                    &s.key("profile"),
                    "profile \"sunspec\" is for Modbus devices; this device's bus is serial",
                );
            }
            None
        } else {
            if s.table.contains_key("sunspec_base") {
                self.error_at(
                    &s.key("sunspec_base"),
                    "`sunspec_base` applies to devices with profile = \"sunspec\"",
                );
            }
            self.device_profile(s, kind, profiles)
        };
        let poll = self
            .duration(s, "poll")
            .or(profile.and_then(|p| p.poll))
            .unwrap_or(Duration::from_secs(10));
        let silence = self
            .duration(s, "silence")
            .unwrap_or(Duration::from_secs(60));
        let write_multiple = self.boolean(s, "write_multiple").unwrap_or(false);
        match kind {
            Some(BusKind::Serial) => {
                for key in ["poll", "offline_after", "offline_retry", "write_multiple"] {
                    if s.table.contains_key(key) {
                        self.error_at(
                            &s.key(key),
                            format!("`{key}` applies to Modbus devices; serial devices talk when they want (see `silence`)"),
                        );
                    }
                }
            }
            Some(_) if s.table.contains_key("silence") => {
                self.error_at(
                    &s.key("silence"),
                    "`silence` applies to serial devices; Modbus devices use `offline_after`",
                );
            }
            _ => {}
        }
        let offline_retry = self
            .duration(s, "offline_retry")
            .unwrap_or(Duration::from_secs(30))
            .max(poll);
        let (points, from_profile, sunspec) = if sunspec {
            let (own, additions) = self.sunspec_points(s);
            let base = self.int(s, "sunspec_base", 0, 65_534).map(|b| b as u16);
            let dp = DeviceProfile {
                name: SUNSPEC_PROFILE.to_string(),
                source: "built in (the device's SunSpec models, read at run time)".to_string(),
                points: BTreeMap::new(),
            };
            let ss = SunSpecDevice {
                base,
                own,
                chain: None,
            };
            (additions, Some(dp), Some(ss))
        } else {
            let (points, from_profile) = self.device_points(s, kind, profile);
            (points, from_profile, None)
        };
        if points.is_empty() && !s.table.contains_key("points") && !s.table.contains_key("profile")
        {
            self.error(
                s.at.clone(),
                &s.key("points"),
                "a device needs at least one point (or a `profile`)",
            );
        }
        let actions = self.device_actions(s, kind, profile, &points);
        Some(DeviceConfig {
            bus: bus_name?,
            unit,
            location,
            poll,
            offline_after: self.int(s, "offline_after", 1, 1000).unwrap_or(3) as u32,
            offline_retry,
            name: self.text(s, "name"),
            manufacturer: self
                .text(s, "manufacturer")
                .or_else(|| profile.map(|p| p.manufacturer.clone())),
            model: self
                .text(s, "model")
                .or_else(|| profile.map(|p| p.model.clone())),
            silence,
            write_multiple,
            r#match: m,
            points,
            actions,
            profile: from_profile,
            sunspec,
        })
    }

    /// A SunSpec device's own points: each either adds a point (it has a `register`) or changes
    /// keys of a point the walk will build, so `register` is not required here. Returns them
    /// with the keys each sets, and the additions alone.
    #[allow(clippy::type_complexity)]
    fn sunspec_points(
        &mut self,
        s: &Section,
    ) -> (
        BTreeMap<String, (PointConfig, Vec<String>)>,
        BTreeMap<String, PointConfig>,
    ) {
        let Some(t) = self.table(s, "points") else {
            return (BTreeMap::new(), BTreeMap::new());
        };
        // No bus kind: a point without `register` is an override, not a mistake.
        let points = self.points(&t, None);
        let mut own = BTreeMap::new();
        let mut additions = BTreeMap::new();
        for (name, p) in points {
            let keys: Vec<String> = match t.table.get(name.as_str()).map(|v| v.get_ref()) {
                Some(DeValue::Table(pt)) => {
                    pt.iter().map(|(k, _)| k.get_ref().to_string()).collect()
                }
                _ => Vec::new(),
            };
            if p.field.is_some() {
                self.error_at(
                    &t.key(&name),
                    "`field` applies to serial buses; Modbus points use `register`",
                );
                continue;
            }
            if p.register.is_some() {
                additions.insert(name.clone(), p.clone());
            }
            own.insert(name, (p, keys));
        }
        (own, additions)
    }
}

/// `profile = "sunspec"`: any SunSpec device, its points built from its model chain.
pub const SUNSPEC_PROFILE: &str = "sunspec";
