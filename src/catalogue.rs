// Writing to a String cannot fail; `let _ = writeln!(…)` is how this module formats.
#![allow(clippy::let_underscore_must_use)]
//! `fieldbridge profiles [NAME]` (README "Commands"): the device profiles as people read them, and the
//! README's "Supported devices" table, generated from the same profiles.

use std::fmt::Write as _;

use std::collections::BTreeMap;
use std::path::Path;

use crate::bus::RawData;
use crate::bus::ReadSpec;
use crate::bus::decode::{Decoded, PollDecoder};
use crate::bus::plan::{self, PlannedRead, ScaleFactors};
use crate::config::{
    ConfigErrors, PointConfig, Profile, ProfileSource, Profiles, Register, SetValue, WordOrder,
    parse_profile,
};

/// One line per profile: name, manufacturer, model, bus kinds, where it comes from.
pub fn list(profiles: &Profiles) -> String {
    let rows: Vec<[String; 5]> = profiles
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.manufacturer.clone(),
                p.model.clone(),
                bus_names(p),
                match &p.source {
                    ProfileSource::BuiltIn(_) => "built in".to_string(),
                    ProfileSource::File(f) => f.display().to_string(),
                },
            ]
        })
        .collect();
    let mut rows = rows;
    rows.push([
        crate::config::SUNSPEC_PROFILE.to_string(),
        SUNSPEC_MANUFACTURER.to_string(),
        SUNSPEC_MODEL.to_string(),
        "modbus-tcp, modbus-rtu".to_string(),
        "built in".to_string(),
    ]);
    let header = ["NAME", "MANUFACTURER", "MODEL", "BUSES", "SOURCE"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header.map(String::from)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

const SUNSPEC_MANUFACTURER: &str = "any SunSpec device";
const SUNSPEC_MODEL: &str =
    "models 1, 101-103, 111-113, 124, 160, 201-204, 211-214, 802, read from the device";

/// `fieldbridge profiles sunspec`: what the walk reads and publishes, model by model.
pub fn show_sunspec() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sunspec: {SUNSPEC_MANUFACTURER} (inverters, meters, batteries)"
    );
    let _ = writeln!(
        out,
        "  the points come from the device's SunSpec model chain, read at start, when the device comes back online and at a reload"
    );
    let _ = writeln!(out, "source:   built in");
    let _ = writeln!(
        out,
        "document: \"SunSpec Information Model Specification: model definitions\" (sunspec/models, json/model_N.json), 2026-04-22"
    );
    let _ = writeln!(out, "          https://github.com/sunspec/models");
    let _ = writeln!(out, "buses:    modbus-tcp, modbus-rtu");
    let _ = writeln!(
        out,
        "base:     \"SunS\" at holding:40000, 0 or 50000 (or the device's `sunspec_base`)"
    );
    let _ = writeln!(out, "models:");
    for m in crate::sunspec::MODELS.iter() {
        let names = crate::sunspec::published_names(m);
        let _ = writeln!(out, "  {:<4} {}: {}", m.id, m.label(), names.join(", "));
    }
    let _ = writeln!(
        out,
        "A second instance of a model (or a meter behind an inverter) takes the suffix _2, _3, ...; `fieldbridge profiles --probe --bus B --unit N` shows a device's."
    );
    out
}

fn bus_names(p: &Profile) -> String {
    p.buses
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn order_name(o: WordOrder) -> &'static str {
    match o {
        WordOrder::Abcd => "ABCD",
        WordOrder::Cdab => "CDAB",
        WordOrder::Badc => "BADC",
        WordOrder::Dcba => "DCBA",
    }
}

/// A point's register, type and decoding, in config terms.
fn describe_point(p: &PointConfig) -> String {
    let mut parts = Vec::new();
    if let Some(r) = p.register {
        parts.push(r.to_string());
    }
    if let Some(f) = &p.field {
        parts.push(format!("field {f}"));
    }
    if let Some(t) = p.effective_type() {
        parts.push(t.name().to_string());
        if t.registers(p.length.unwrap_or(1)) > 1 {
            parts.push(order_name(p.order).to_string());
        }
    }
    if let Some(s) = p.scale {
        parts.push(format!("×{s}"));
    }
    if let Some(o) = p.offset {
        parts.push(format!("{o:+}"));
    }
    if let Some(sf) = p.scale_register {
        parts.push(format!("×10^({sf})"));
    }
    if !p.unavailable.is_empty() {
        let raw: Vec<String> = p
            .unavailable
            .iter()
            .map(|u| match u {
                crate::config::Unavailable::Int(n) => format!("0x{n:X}"),
                crate::config::Unavailable::NaN => "nan".to_string(),
            })
            .collect();
        parts.push(format!("unavailable {}", raw.join("/")));
    }
    if let Some(u) = &p.unit {
        parts.push(u.clone());
    }
    if let Some(c) = &p.device_class {
        parts.push(c.clone());
    }
    if let Some(c) = &p.state_class {
        parts.push(c.clone());
    }
    if let Some(map) = &p.map {
        let labels: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("{{{}}}", labels.join(", ")));
    }
    if p.writable {
        let range = match (p.min, p.max) {
            (Some(a), Some(b)) => format!(" {a}..{b}"),
            _ => String::new(),
        };
        parts.push(format!("writable{range}"));
    }
    parts.join(" ")
}

/// One profile: what it is, where its register map comes from, its points and actions.
pub fn show(p: &Profile) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} {}", p.name, p.manufacturer, p.model);
    if let Some(d) = &p.description {
        let _ = writeln!(out, "  {d}");
    }
    let _ = writeln!(out, "source:   {}", p.source);
    let _ = writeln!(out, "document: {}", p.document);
    if let Some(u) = &p.document.url {
        let _ = writeln!(out, "          {u}");
    }
    let _ = writeln!(out, "buses:    {}", bus_names(p));
    if let Some(poll) = p.poll {
        let _ = writeln!(out, "poll:     {}", humantime::format_duration(poll));
    }
    let _ = writeln!(out, "order:    {}", order_name(p.order));
    let _ = writeln!(
        out,
        "identify: vendor \"{}\", product \"{}\"",
        p.identify.vendor, p.identify.product
    );
    let _ = writeln!(out, "points:");
    let width = p.points.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, point) in &p.points {
        let _ = writeln!(out, "  {name:<width$}  {}", describe_point(point));
    }
    if !p.actions.is_empty() {
        let _ = writeln!(out, "actions:");
        for (name, a) in &p.actions {
            let set: Vec<String> = a
                .set
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        SetValue::Bool(b) => b.to_string(),
                        SetValue::Integer(i) => i.to_string(),
                        SetValue::Float(f) => f.to_string(),
                        SetValue::String(s) => format!("\"{s}\""),
                    };
                    format!("{k} = {v}")
                })
                .collect();
            let _ = writeln!(out, "  {name}: set {}", set.join(", "));
        }
    }
    out
}

/// The README's "Supported devices" table: one row per built-in profile.
pub fn readme_table(profiles: &Profiles) -> String {
    let mut out = String::from(
        "| profile | manufacturer | model | buses | points | register map from |\n|---|---|---|---|---|---|\n",
    );
    for p in profiles
        .iter()
        .filter(|p| matches!(p.source, ProfileSource::BuiltIn(_)))
    {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            p.name,
            p.manufacturer,
            p.model,
            bus_names(p),
            p.points.len(),
            p.document.to_string().replace('|', "\\|")
        );
    }
    let _ = writeln!(
        out,
        "| `{}` | {SUNSPEC_MANUFACTURER} | {SUNSPEC_MODEL} | modbus-tcp, modbus-rtu | from the device's models | \"SunSpec Information Model Specification: model definitions\", 2026-04-22 |",
        crate::config::SUNSPEC_PROFILE
    );
    out
}

/// Why `profiles --check` failed: the profile file (exit 78), or the dump (exit 2).
#[derive(Debug)]
pub enum CheckError {
    Profile(ConfigErrors),
    Dump(String),
}

/// `fieldbridge profiles --check FILE [--dump DUMP]`: the profile as `profiles NAME` shows it,
/// and with a dump, each point decoded from the registers it holds.
pub fn check_file(file: &Path, dump: Option<&Path>) -> Result<String, CheckError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        CheckError::Profile(ConfigErrors(vec![crate::config::ConfigError {
            file: file.display().to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read profile: {e}"),
        }]))
    })?;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let profile = parse_profile(&text, file, &name, ProfileSource::File(file.to_path_buf()))
        .map_err(CheckError::Profile)?;
    let mut out = show(&profile);
    let _ = writeln!(
        out,
        "{}: ok ({} points)",
        file.display(),
        profile.points.len()
    );
    let Some(dump) = dump else {
        return Ok(out);
    };
    let text = std::fs::read_to_string(dump)
        .map_err(|e| CheckError::Dump(format!("--dump {}: {e}", dump.display())))?;
    let registers = parse_dump(&text);
    if registers.is_empty() {
        return Err(CheckError::Dump(format!(
            "--dump {}: no registers in it; a dump is what `fieldbridge read` prints (lines such as `holding:40000  0x5375 …`)",
            dump.display()
        )));
    }
    let _ = writeln!(
        out,
        "\ndecoded from {} ({} registers):",
        dump.display(),
        registers.len()
    );
    let points: Vec<&PointConfig> = profile.points.values().collect();
    let names: Vec<&String> = profile.points.keys().collect();
    for (i, line) in decode_dump(&points, &registers).into_iter().enumerate() {
        let Some(name) = names.get(i) else { continue };
        let unit = points[i]
            .unit
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        let shown = match line {
            Ok(v) => format!("{}{unit}", v),
            Err(e) => format!("({e})"),
        };
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
        let _ = writeln!(out, "  {name:<width$}  {shown}");
    }
    Ok(out)
}

/// The registers of a dump: `fieldbridge read` output, one or more reads appended. Word lines
/// are `holding:40000  0x5375 …`; bit lines `coil:3 = 1`. Everything else is ignored.
pub fn parse_dump(text: &str) -> BTreeMap<Register, u16> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else { continue };
        let Ok(register) = crate::config::parse_register(first) else {
            continue;
        };
        let value = match parts.next() {
            Some("=") => parts
                .next()
                .and_then(|b| b.parse::<u16>().ok())
                .filter(|b| *b <= 1),
            Some(hex) => hex
                .strip_prefix("0x")
                .and_then(|h| u16::from_str_radix(h, 16).ok()),
            None => None,
        };
        if let Some(v) = value {
            out.insert(register, v);
        }
    }
    out
}

/// Each point's value from a dump, by point index: its value and unit as the gateway would
/// publish it, or why not (registers missing from the dump, "no value", a decoding error).
pub fn decode_dump(
    points: &[&PointConfig],
    registers: &BTreeMap<Register, u16>,
) -> Vec<Result<String, String>> {
    let scale = ScaleFactors::of(points);
    let all = scale.with_points(points);
    let mut decoder = PollDecoder::new(&all, &scale);
    let mut decoded = Decoded::default();
    let mut missing: BTreeMap<usize, String> = BTreeMap::new();
    // One read per point and per scale factor: a dump need not hold what lies between them.
    for (i, p) in all.iter().enumerate() {
        let Some(slot) = plan::slot(p) else { continue };
        let words: Option<Vec<u16>> = (0..slot.len)
            .map(|k| {
                registers
                    .get(&Register {
                        table: slot.table,
                        address: slot.address.wrapping_add(k),
                    })
                    .copied()
            })
            .collect();
        let Some(words) = words else {
            missing.insert(
                i,
                format!(
                    "not in the dump: {}:{}{}",
                    slot.table.name(),
                    slot.address,
                    if slot.len > 1 {
                        format!("..{}", u32::from(slot.address) + u32::from(slot.len) - 1)
                    } else {
                        String::new()
                    }
                ),
            );
            continue;
        };
        let data = if slot.table.is_bits() {
            RawData::Bits(words.iter().map(|w| *w != 0).collect())
        } else {
            RawData::Words(words)
        };
        let read = PlannedRead {
            spec: ReadSpec {
                table: slot.table,
                start: slot.address,
                count: slot.len,
            },
            points: vec![i],
        };
        decoder.read(&read, &data, &mut decoded);
    }
    decoder.finish(&mut decoded);
    let mut out: Vec<Result<String, String>> = (0..points.len())
        .map(|_| Err("not decoded".to_string()))
        .collect();
    for (i, v) in decoded.values {
        if let Some(o) = out.get_mut(i) {
            *o = Ok(v.to_json().to_string());
        }
    }
    for i in decoded.no_value {
        let why = match points[i].scale_register.and_then(|r| {
            let k = scale.of_point.get(i).copied().flatten()?;
            missing.get(&(points.len() + k)).map(|m| (r, m.clone()))
        }) {
            Some((_, m)) => format!("its scale factor is {m}"),
            None => "no value: the device says it has none (`unavailable`, or a scale factor not implemented)".to_string(),
        };
        if let Some(o) = out.get_mut(i) {
            *o = Err(why);
        }
    }
    for (i, e) in decoded.errors {
        if let Some(o) = out.get_mut(i) {
            *o = Err(e);
        }
    }
    for (i, m) in missing {
        if let Some(o) = out.get_mut(i) {
            *o = Err(m);
        }
    }
    out
}
