// Writing to a String cannot fail; `let _ = writeln!(…)` is how this module formats.
#![allow(clippy::let_underscore_must_use)]
//! Commissioning without MQTT (README "Commands"): `read` shows raw words and every decoding of them,
//! `write` writes one typed value and reads it back, `scan` finds the unit ids that answer.
//! They open the bus with the config's settings through the same bus task the daemon uses; a
//! serial port the daemon holds is refused with a message that says so.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_modbus::prelude::ExceptionCode;
use tokio_util::sync::CancellationToken;

use crate::bus::codec::{self, Raw};
use crate::bus::modbus::ModbusBus;
use crate::bus::{BusError, BusHandle, IdentifySpec, Identity, RawData, ReadSpec, WriteSpec};
use crate::config::{BusConfig, BusKind, Config, DataType, Profiles, Register, Table, WordOrder};

/// Why a commissioning command failed: the command line was wrong (exit 2), or the bus or the
/// device was (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

const ORDERS: [(WordOrder, &str); 4] = [
    (WordOrder::Abcd, "ABCD"),
    (WordOrder::Cdab, "CDAB"),
    (WordOrder::Badc, "BADC"),
    (WordOrder::Dcba, "DCBA"),
];

/// The bus named `name`, if it is a Modbus bus of the config.
pub fn modbus_bus<'a>(config: &'a Config, name: &str) -> Result<&'a BusConfig, Error> {
    match config.buses.get(name) {
        Some(b) if b.kind.is_modbus() => Ok(b),
        Some(_) => Err(Error::Usage(format!(
            "bus \"{name}\" is a serial line bus, not Modbus"
        ))),
        None => {
            let names: Vec<&str> = config.buses.keys().map(String::as_str).collect();
            Err(Error::Usage(format!(
                "no bus \"{name}\" in the config; buses: {}",
                names.join(", ")
            )))
        }
    }
}

/// `--count`: at least one, at most what one Modbus read carries (125 registers, 2,000 bits).
pub fn check_count(register: Register, count: u16) -> Result<(), Error> {
    let max = if register.table.is_bits() { 2000 } else { 125 };
    if (1..=max).contains(&count) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--count {count}: one read takes 1 to {max} {}",
            if register.table.is_bits() {
                "bits"
            } else {
                "registers"
            }
        )))
    }
}

fn start(name: &str, bus: &BusConfig) -> (BusHandle, CancellationToken) {
    let (task, handle) = ModbusBus::new(name, bus);
    let stop = CancellationToken::new();
    tokio::spawn(task.run(stop.clone()));
    (handle, stop)
}

/// Every decoding of `words` starting at `register`, as text for people.
pub fn decodings(register: Register, words: &[u16]) -> String {
    let mut out = String::new();
    let a = register.address;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "raw: {}", hex(words));
    let _ = writeln!(
        out,
        "{:<14} {:>6} {:>7} {:>6}",
        "register", "hex", "u16", "i16"
    );
    for (i, w) in words.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<14} 0x{w:04x} {w:>7} {:>6}",
            format!("{}:{}", register.table.name(), a as usize + i),
            *w as i16
        );
    }
    for (ty, n) in [
        (DataType::U32, 2),
        (DataType::I32, 2),
        (DataType::F32, 2),
        (DataType::U64, 4),
        (DataType::I64, 4),
        (DataType::F64, 4),
    ] {
        if words.len() < n {
            continue;
        }
        let _ = writeln!(out, "{} from {}:{}:", ty.name(), register.table.name(), a);
        for (order, oname) in ORDERS {
            let shown = match codec::decode(&words[..n], ty, order) {
                Ok(Raw::Unsigned(u)) => u.to_string(),
                Ok(Raw::Signed(i)) => i.to_string(),
                Ok(Raw::Float(f)) => format!("{f}"),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("({e})"),
            };
            let _ = writeln!(out, "  {oname}: {shown}");
        }
    }
    let text: String = words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let _ = writeln!(out, "string (ABCD): \"{text}\"");
    out
}

fn hex(words: &[u16]) -> String {
    words
        .iter()
        .map(|w| format!("{w:04x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `fieldbridge read`.
pub async fn read(
    config: &Config,
    bus_name: &str,
    unit: u8,
    register: Register,
    count: u16,
) -> Result<String, Error> {
    let bus = modbus_bus(config, bus_name)?;
    check_count(register, count)?;
    let (handle, stop) = start(bus_name, bus);
    let out = read_on(&handle, bus_name, unit, register, count).await;
    stop.cancel();
    out
}

/// [`read`] over a bus that runs (ahead of polls): the words and every decoding, as text.
pub async fn read_on(
    handle: &BusHandle,
    bus_name: &str,
    unit: u8,
    register: Register,
    count: u16,
) -> Result<String, Error> {
    check_count(register, count)?;
    let spec = ReadSpec {
        table: register.table,
        start: register.address,
        count,
    };
    let result = handle.read(unit, spec).await;
    match result.map_err(|e| Error::Failed(describe(bus_name, unit, &e)))? {
        RawData::Words(w) => Ok(decodings(register, &w)),
        RawData::Bits(b) => {
            let mut out = String::new();
            for (i, bit) in b.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}:{} = {}",
                    register.table.name(),
                    register.address as usize + i,
                    u8::from(*bit)
                );
            }
            Ok(out)
        }
    }
}

/// `fieldbridge write`: one value of `ty` in `order`, then read back.
pub async fn write(
    config: &Config,
    bus_name: &str,
    unit: u8,
    register: Register,
    ty: DataType,
    order: WordOrder,
    value: &str,
) -> Result<String, Error> {
    let bus = modbus_bus(config, bus_name)?;
    let spec = plan_write(register, ty, order, value)?;
    let (handle, stop) = start(bus_name, bus);
    let out = write_on(&handle, bus_name, unit, register, ty, order, value, spec).await;
    stop.cancel();
    out
}

/// What `write` would write: the value parsed for `ty` and encoded in `order`, for the
/// register's table (coils take booleans; input and discrete are read-only). A usage error
/// names what is wrong with the value.
pub fn plan_write(
    register: Register,
    ty: DataType,
    order: WordOrder,
    value: &str,
) -> Result<WriteSpec, Error> {
    let raw = parse_value(ty, value).map_err(Error::Usage)?;
    Ok(match register.table {
        Table::Coil => match raw {
            Raw::Bool(b) => WriteSpec::Coil {
                address: register.address,
                value: b,
            },
            _ => return Err(Error::Usage("a coil takes true/false (or 1/0)".into())),
        },
        Table::Holding => {
            let length = (value.len().div_ceil(2)).max(1) as u16;
            let words = codec::encode(&raw, ty, order, length)
                .map_err(|e| Error::Usage(format!("--value {value}: {e}")))?;
            if words.len() == 1 {
                WriteSpec::Register {
                    address: register.address,
                    value: words[0],
                }
            } else {
                WriteSpec::Registers {
                    address: register.address,
                    values: words,
                }
            }
        }
        t => {
            return Err(Error::Usage(format!(
                "{} registers are read-only",
                t.name()
            )));
        }
    })
}

/// A planned write over a bus that runs (ahead of polls), then read back and shown.
#[allow(clippy::too_many_arguments)]
pub async fn write_on(
    handle: &BusHandle,
    bus_name: &str,
    unit: u8,
    register: Register,
    ty: DataType,
    order: WordOrder,
    value: &str,
    spec: WriteSpec,
) -> Result<String, Error> {
    let count = match &spec {
        WriteSpec::Registers { values, .. } => values.len() as u16,
        _ => 1,
    };
    let written = handle.write(unit, spec).await;
    let back = match written {
        Ok(()) => {
            handle
                .read(
                    unit,
                    ReadSpec {
                        table: register.table,
                        start: register.address,
                        count,
                    },
                )
                .await
        }
        Err(e) => Err(e),
    };
    let back = back.map_err(|e| Error::Failed(describe(bus_name, unit, &e)))?;
    let shown = match back {
        RawData::Bits(b) => format!("{}", u8::from(b.first().copied().unwrap_or(false))),
        RawData::Words(w) => {
            let decoded = match codec::decode(&w, ty, order) {
                Ok(Raw::Unsigned(u)) => u.to_string(),
                Ok(Raw::Signed(i)) => i.to_string(),
                Ok(Raw::Float(f)) => format!("{f}"),
                Ok(Raw::Text(t)) => format!("\"{t}\""),
                Ok(Raw::Bool(b)) => b.to_string(),
                Err(e) => format!("({e})"),
            };
            format!("{decoded} (raw {})", hex(&w))
        }
    };
    Ok(format!(
        "wrote {value} as {} {} to unit {unit} {register}; read back: {shown}\n",
        ty.name(),
        ORDERS
            .iter()
            .find(|(o, _)| *o == order)
            .map(|(_, n)| *n)
            .unwrap_or("ABCD"),
    ))
}

fn parse_value(ty: DataType, v: &str) -> Result<Raw, String> {
    let bad = || format!("\"{v}\" is not a {}", ty.name());
    Ok(match ty {
        DataType::Bool => match v {
            "1" | "true" | "on" => Raw::Bool(true),
            "0" | "false" | "off" => Raw::Bool(false),
            _ => return Err(bad()),
        },
        DataType::U16 | DataType::U32 | DataType::U64 => {
            Raw::Unsigned(v.parse().map_err(|_| bad())?)
        }
        DataType::I16 | DataType::I32 | DataType::I64 => Raw::Signed(v.parse().map_err(|_| bad())?),
        DataType::F32 | DataType::F64 => Raw::Float(v.parse().map_err(|_| bad())?),
        DataType::String => Raw::Text(v.to_string()),
    })
}

/// `fieldbridge scan`: which unit ids answer a one-register read (with data or an exception),
/// each given at most the bus timeout and no retries. With `identify`, each answering unit is
/// also asked who it is (FC 43/14, then FC 17) and the profiles that match are named.
pub async fn scan(
    config: &Config,
    bus_name: &str,
    units: std::ops::RangeInclusive<u8>,
    identify: Option<&Profiles>,
    mut progress: impl FnMut(u8),
) -> Result<Vec<(u8, String)>, Error> {
    let mut bus = modbus_bus(config, bus_name)?.clone();
    bus.retries = 0;
    let (handle, stop) = start(bus_name, &bus);
    let serial_line = bus.kind != BusKind::ModbusTcp;
    let found = scan_on(&handle, serial_line, units, identify, |u, _| progress(u)).await;
    stop.cancel();
    found
}

/// [`scan`] over a bus that runs already (the daemon's, for the commissioning page): each read
/// waits its turn in that bus's queue. `progress` hears of each unit before it is asked and of
/// each that answered. `serial_line`: RTU framing (FC 17 is asked there only).
pub async fn scan_on(
    handle: &BusHandle,
    serial_line: bool,
    units: std::ops::RangeInclusive<u8>,
    identify: Option<&Profiles>,
    mut progress: impl FnMut(u8, Option<&str>),
) -> Result<Vec<(u8, String)>, Error> {
    let mut found = Vec::new();
    for unit in units {
        progress(unit, None);
        let r = handle
            .read(
                unit,
                ReadSpec {
                    table: Table::Holding,
                    start: 0,
                    count: 1,
                },
            )
            .await;
        let mut what = match r {
            Ok(_) => "answers with data".to_string(),
            Err(e @ BusError::Exception(_)) => format!("answers: {e}"),
            Err(BusError::Unavailable(e)) => return Err(Error::Failed(e)),
            Err(BusError::Stopped) => return Err(Error::Failed("the bus stopped".into())),
            Err(_) => {
                // A timed-out unit may answer late; give the line a moment.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if let Some(profiles) = identify {
            what += &identify_unit(handle, unit, serial_line, profiles).await;
        }
        progress(unit, Some(&what));
        found.push((unit, what));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(found)
}

/// Asks a unit for its identity and names the profiles that match: lines to append to its scan
/// line. A unit that supports neither request says so; it still answered. FC 17 is a serial
/// line function in the Modbus specification, asked only where the frames are RTU (tokio-modbus
/// 0.17's TCP server also drops the connection on it).
async fn identify_unit(
    handle: &BusHandle,
    unit: u8,
    serial_line: bool,
    profiles: &Profiles,
) -> String {
    let mut out = String::new();
    let mut reported: Vec<(String, String)> = Vec::new();
    match handle
        .identify(unit, IdentifySpec::DeviceIdentification)
        .await
    {
        Ok(Identity::Objects(objects)) => {
            let get = |id: u8| {
                objects
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let (vendor, product, revision) = (get(0), get(1), get(2));
            let _ = write!(
                out,
                "\n  device identification (FC 43/14): vendor \"{vendor}\", product \"{product}\", revision \"{revision}\""
            );
            reported.push((vendor, product));
        }
        Ok(Identity::ServerId { .. }) => {}
        Err(e) => {
            let _ = write!(out, "\n  device identification (FC 43/14): {}", why_not(&e));
        }
    }
    let server_id = if serial_line {
        Some(handle.identify(unit, IdentifySpec::ServerId).await)
    } else {
        None
    };
    match server_id {
        None => out += "\n  server id (FC 17): serial line only; not asked over Modbus TCP",
        Some(Ok(Identity::ServerId { id, running, data })) => {
            let text: String = String::from_utf8_lossy(&data)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            let _ = write!(
                out,
                "\n  server id (FC 17): id {id}, {}, data {} \"{}\"",
                if running { "running" } else { "stopped" },
                data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                text.trim()
            );
            reported.push((String::new(), text));
        }
        Some(Ok(Identity::Objects(_))) => {}
        Some(Err(e)) => {
            let _ = write!(out, "\n  server id (FC 17): {}", why_not(&e));
        }
    }
    let matching: Vec<&str> = profiles
        .iter()
        .filter(|p| reported.iter().any(|(v, d)| p.matches(v, d)))
        .map(|p| p.name.as_str())
        .collect();
    if !reported.is_empty() {
        if matching.is_empty() {
            out += "\n  matching profiles: none";
        } else {
            let _ = write!(out, "\n  matching profiles: {}", matching.join(", "));
        }
    }
    out
}

fn why_not(e: &BusError) -> String {
    match e {
        BusError::Exception(ExceptionCode::IllegalFunction) => "not supported".to_string(),
        BusError::Timeout(_) => "no answer".to_string(),
        other => other.to_string(),
    }
}

fn describe(bus: &str, unit: u8, e: &BusError) -> String {
    format!("bus {bus}, unit {unit}: {e}")
}

/// `1-247` or `5`.
pub fn parse_units(s: &str) -> Result<std::ops::RangeInclusive<u8>, String> {
    let bad = || format!("invalid units \"{s}\"; expected e.g. 1-247 or 5");
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b): (u8, u8) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a > b {
                return Err(bad());
            }
            Ok(a..=b)
        }
        None => {
            let u: u8 = s.trim().parse().map_err(|_| bad())?;
            Ok(u..=u)
        }
    }
}

/// `fieldbridge profiles --probe --bus B --unit N`: a SunSpec device's model chain, and every
/// point `profile = "sunspec"` builds from it with its value now — read through the same walk,
/// plan and decoding as the daemon's. A config device on that bus and unit with a
/// `sunspec_base` gives the base; its own points are not applied (this shows the device).
pub async fn probe_sunspec(config: &Config, bus_name: &str, unit: u8) -> Result<String, Error> {
    use crate::bus::decode::{Decoded, PollDecoder};
    use crate::bus::plan::{self, ScaleFactors};
    use crate::sunspec;

    let bus = modbus_bus(config, bus_name)?;
    let base = config
        .devices
        .values()
        .find(|d| d.bus == bus_name && d.unit == Some(unit))
        .and_then(|d| d.sunspec.as_ref())
        .and_then(|s| s.base);
    let (handle, stop) = start(bus_name, bus);
    let walked = sunspec::walk::walk(&handle, unit, base).await;
    let walked = match walked {
        Ok(w) => w,
        Err(e) => {
            stop.cancel();
            return Err(Error::Failed(format!("bus {bus_name}, unit {unit}: {e}")));
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "SunSpec marker \"SunS\" at holding:{}",
        walked.chain.base
    );
    for m in &walked.chain.models {
        match sunspec::model(m.id) {
            Some(def) => {
                let note = if m.length == def.length || def.repeating.is_some() {
                    String::new()
                } else {
                    format!(" (the definition has {})", def.length)
                };
                let _ = writeln!(
                    out,
                    "model {:<4} {} at holding:{}, {} registers{note}",
                    m.id,
                    def.label(),
                    m.address,
                    m.length
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "model {:<4} at holding:{}, {} registers: not known to fieldbridge, skipped",
                    m.id, m.address, m.length
                );
            }
        }
    }
    if let Some(why) = &walked.ended_by {
        let _ = writeln!(out, "end of the chain: {why}");
    }
    if let Some((mf, md)) = &walked.identity {
        let _ = writeln!(out, "device: {mf} {md}");
    }
    let built = sunspec::build(&walked.chain, &std::collections::BTreeMap::new());
    let points: Vec<&crate::config::PointConfig> = built.points.values().collect();
    let names: Vec<&String> = built.points.keys().collect();
    let scale = ScaleFactors::of(&points);
    let all = scale.with_points(&points);
    let reads = plan::plan(&points, bus.max_gap);
    let mut decoder = PollDecoder::new(&all, &scale);
    let mut decoded = Decoded::default();
    let mut failed: Vec<(usize, String)> = Vec::new();
    for r in &reads {
        match handle.read(unit, r.spec).await {
            Ok(data) => decoder.read(r, &data, &mut decoded),
            Err(e) => {
                for &i in r.points.iter().filter(|i| **i < points.len()) {
                    failed.push((i, format!("read failed: {e}")));
                }
            }
        }
    }
    stop.cancel();
    decoder.finish(&mut decoded);
    let mut shown: Vec<String> = vec![String::new(); points.len()];
    for (i, v) in decoded.values {
        let unit = points[i]
            .unit
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        shown[i] = format!("{}{unit}", v.to_json());
    }
    for i in decoded.no_value {
        shown[i] = "(not implemented)".to_string();
    }
    for (i, e) in decoded.errors.into_iter().chain(failed) {
        shown[i] = format!("({e})");
    }
    let _ = writeln!(
        out,
        "points ({}, as profile = \"sunspec\" publishes them; {} reads per poll):",
        points.len(),
        reads.len()
    );
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    for (i, name) in names.iter().enumerate() {
        let register = points[i]
            .register
            .map(|r| r.to_string())
            .unwrap_or_default();
        let _ = writeln!(out, "  {name:<width$}  {:<22} {register}", shown[i]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodings_show_every_type_and_order() {
        let r = Register {
            table: Table::Holding,
            address: 10,
        };
        let text = decodings(r, &[0x0000, 0x41AC]);
        assert!(text.contains("raw: 0000 41ac"), "{text}");
        assert!(
            text.contains("holding:11     0x41ac   16812  16812"),
            "{text}"
        );
        assert!(text.contains("f32 from holding:10:\n  ABCD: "), "{text}");
        assert!(text.contains("  CDAB: 21.5\n"), "{text}");
        assert!(!text.contains("f64"), "{text}");
    }

    #[test]
    fn unit_ranges_parse() {
        assert_eq!(parse_units("1-247"), Ok(1..=247));
        assert_eq!(parse_units("5"), Ok(5..=5));
        assert!(parse_units("9-3").is_err());
        assert!(parse_units("x").is_err());
    }
}
