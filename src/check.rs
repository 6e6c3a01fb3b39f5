//! `fieldbridge check`: what a config will do, for a person reading it before a restart.

use std::fmt::Write as _;

use crate::bus::{ReadSpec, plan};
use crate::config::{BusConfig, BusKind, Config, DeviceConfig, DiscoveryMode, Parity, Table};
use crate::topics::Topics;

/// The summary `check` prints for a valid config: buses, devices, points and the topics they use.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    match write_summary(&mut out, config) {
        Ok(()) | Err(_) => out,
    }
}

fn write_summary(out: &mut String, config: &Config) -> std::fmt::Result {
    let topics = Topics::new(config);
    let points: usize = config.devices.values().map(|d| d.points.len()).sum();
    writeln!(
        out,
        "{}: ok ({} buses, {} devices, {} points)",
        config.path.display(),
        config.buses.len(),
        config.devices.len(),
        points
    )?;
    writeln!(
        out,
        "gateway {}: status {}, health {} every {}",
        config.gateway.id,
        topics.gateway_status(),
        topics.gateway_health(),
        humantime::format_duration(config.gateway.health_interval)
    )?;
    let m = &config.mqtt;
    writeln!(
        out,
        "mqtt {} as {}{}, clean_session {}, queue {}",
        m.url,
        config.client_id(),
        m.username
            .as_ref()
            .map(|u| format!(" (user {u})"))
            .unwrap_or_default(),
        m.clean_session,
        m.queue
    )?;
    let h = &config.history;
    if h.enabled {
        writeln!(
            out,
            "history {} (retention {}, flush {})",
            h.path.display(),
            humantime::format_duration(h.retention),
            humantime::format_duration(h.flush)
        )?;
    } else {
        writeln!(
            out,
            "history off (history.enabled = false): nothing is recorded"
        )?;
    }
    if let Some(f) = &h.forward {
        writeln!(
            out,
            "  forwarded to {} (sslmode {}) as gateway {}",
            f.url,
            f.sslmode.name(),
            config.gateway.id
        )?;
    }
    if let Some(w) = &config.web {
        writeln!(
            out,
            "commissioning page http://{}/ ({}; commands and register writes {})",
            w.listen,
            if w.password_file.is_some() {
                "login with web.password_file"
            } else {
                "no login: loopback only"
            },
            if w.allow_writes { "allowed" } else { "off" }
        )?;
    }
    for w in &config.warnings {
        writeln!(out, "warning: {w}")?;
    }
    if config.homeassistant.discovery {
        let mode = match config.homeassistant.mode {
            DiscoveryMode::Device => "one config per device",
            DiscoveryMode::Entity => "one config per entity",
        };
        writeln!(
            out,
            "home assistant discovery under {}/ ({mode})",
            config.homeassistant.prefix
        )?;
    }
    writeln!(out, "\nbuses:")?;
    for (name, bus) in &config.buses {
        writeln!(out, "  {name}: {}", describe_bus(bus))?;
    }
    writeln!(out, "\ndevices:")?;
    for (name, dev) in &config.devices {
        let addr = match (dev.unit, &dev.r#match) {
            (Some(u), _) => format!(" unit {u}"),
            (None, Some(m)) => format!(" lines where {} = {}", m.field, m.equals),
            _ => String::new(),
        };
        writeln!(
            out,
            "  {name}: bus {}{addr}, poll {}, offline after {} failed polls",
            dev.bus,
            humantime::format_duration(dev.poll),
            dev.offline_after
        )?;
        if let Some(p) = &dev.profile {
            writeln!(out, "    profile      {} ({})", p.name, p.source)?;
        }
        if let Some(ss) = &dev.sunspec {
            let base = match ss.base {
                Some(b) => format!("at holding:{b}"),
                None => "at holding:40000, 0 or 50000".to_string(),
            };
            writeln!(
                out,
                "    points       from the device's SunSpec models, read at run time ({base}); \
                 `fieldbridge profiles --probe --bus {} --unit {}` shows them",
                dev.bus,
                dev.unit.unwrap_or(1)
            )?;
            for (pname, (p, keys)) in &ss.own {
                if p.register.is_none() {
                    writeln!(
                        out,
                        "    point {pname}: the device sets {}",
                        keys.join(", ")
                    )?;
                }
            }
        }
        let loc = &dev.location;
        writeln!(out, "    state        {}", topics.state(name, loc))?;
        writeln!(out, "    availability {}", topics.availability(name, loc))?;
        writeln!(out, "    command      {}", topics.command(name, loc))?;
        for (pname, p) in &dev.points {
            let source = match (&p.register, &p.field) {
                (Some(r), _) => r.to_string(),
                (None, Some(f)) => format!("field {f}"),
                (None, None) => format!("field {pname}"),
            };
            let ty = p.effective_type().map(|t| t.name()).unwrap_or("auto");
            let rw = if p.writable { " writable" } else { "" };
            writeln!(
                out,
                "    point {pname}: {source} {ty}{rw} -> {}{}",
                topics.sensor(name, loc, pname),
                point_origin(dev, pname)
            )?;
        }
        for aname in dev.actions.keys() {
            writeln!(out, "    action {aname}")?;
        }
        if let Some(bus) = config.buses.get(&dev.bus).filter(|b| b.kind.is_modbus()) {
            let reads = device_reads(dev, bus);
            let points = dev.points.len();
            let more = if dev.awaits_walk() {
                ", and those of its SunSpec models"
            } else {
                ""
            };
            writeln!(
                out,
                "    reads per poll: {} (for {points} points{more})",
                reads.len()
            )?;
            for r in &reads {
                let fc = match r.table {
                    Table::Coil => "FC01",
                    Table::Discrete => "FC02",
                    Table::Holding => "FC03",
                    Table::Input => "FC04",
                };
                writeln!(
                    out,
                    "      {fc} {} {}..{} ({} {})",
                    r.table.name(),
                    r.start,
                    u32::from(r.start) + u32::from(r.count) - 1,
                    r.count,
                    if r.table.is_bits() {
                        "bits"
                    } else {
                        "registers"
                    }
                )?;
            }
        }
    }
    writeln!(out, "\nbus load:")?;
    for (name, bus) in &config.buses {
        if !bus.kind.is_modbus() {
            writeln!(out, "  {name}: serial line, driven by the device")?;
            continue;
        }
        let devices: Vec<(Vec<ReadSpec>, std::time::Duration)> = config
            .devices
            .values()
            .filter(|d| &d.bus == name)
            .map(|d| (device_reads(d, bus), d.poll))
            .collect();
        let load = plan::bus_load(bus, &devices);
        match load.utilisation {
            Some(u) => {
                writeln!(
                    out,
                    "  {name}: {:.1} reads/s, {:.0}% of the wire at {} baud",
                    load.reads_per_second,
                    u * 100.0,
                    bus.baud
                )?;
                if u > LOAD_WARNING {
                    writeln!(
                        out,
                        "  warning: bus {name} is {:.0}% busy and cannot keep up with its poll periods \
                         (slow polls down, raise the baud rate or read fewer registers)",
                        u * 100.0
                    )?;
                }
            }
            None => writeln!(out, "  {name}: {:.1} reads/s", load.reads_per_second)?,
        }
    }
    Ok(())
}

/// Where a point of a device with a profile came from: the profile as it is, the profile with
/// keys the device overrides, or the device alone. Nothing for devices without a profile.
fn point_origin(dev: &DeviceConfig, point: &str) -> String {
    let Some(p) = &dev.profile else {
        return String::new();
    };
    match p.points.get(point) {
        Some(keys) if keys.is_empty() => format!(" (profile {})", p.name),
        Some(keys) => format!(" (profile {}; device sets {})", p.name, keys.join(", ")),
        None => " (device)".to_string(),
    }
}

/// Above this share of wire time an RTU bus has no slack for commands, retries and timeouts.
pub const LOAD_WARNING: f64 = 0.8;

fn device_reads(dev: &DeviceConfig, bus: &BusConfig) -> Vec<ReadSpec> {
    let points: Vec<&crate::config::PointConfig> = dev.points.values().collect();
    plan::plan(&points, bus.max_gap)
        .into_iter()
        .map(|r| r.spec)
        .collect()
}

fn describe_bus(bus: &BusConfig) -> String {
    let link = match bus.kind {
        BusKind::ModbusRtu | BusKind::Serial => {
            let parity = match bus.parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            };
            format!(
                "{} {} {}{parity}{}",
                bus.port.as_deref().unwrap_or("?"),
                bus.baud,
                bus.data_bits,
                bus.stop_bits
            )
        }
        BusKind::ModbusTcp | BusKind::ModbusRtuOverTcp => bus.address.clone().unwrap_or_default(),
    };
    format!(
        "{} {link}, timeout {}, retries {}",
        bus.kind.name(),
        humantime::format_duration(bus.timeout),
        bus.retries
    )
}
