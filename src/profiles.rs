// Writing to a String cannot fail; `let _ = writeln!(…)` is how this module formats.
#![allow(clippy::let_underscore_must_use)]
//! `fieldbridge profiles [NAME]` (CONTRACT §2): the device profiles as people read them, and the
//! README's "Supported devices" table, generated from the same profiles.

use std::fmt::Write as _;

use crate::config::{PointConfig, Profile, ProfileSource, Profiles, SetValue, WordOrder};

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
    out
}
