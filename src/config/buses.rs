//! `[buses.<name>]`: serial ports and Modbus TCP sockets, each with the keys of its kind.

use std::time::Duration;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn bus(&mut self, s: &Section) -> Option<BusConfig> {
        let kind_i = self.choice(s, "kind", "bus kind", BusKind::NAMES);
        let kind = kind_i.map(|i| match i {
            0 => BusKind::ModbusRtu,
            1 => BusKind::ModbusTcp,
            2 => BusKind::ModbusRtuOverTcp,
            _ => BusKind::Serial,
        });
        let kind = self.required(
            s,
            "kind",
            kind,
            "bus kind (modbus-rtu, modbus-tcp, modbus-rtu-over-tcp or serial)",
        );
        const COMMON: &[&str] = &["kind", "timeout", "retries"];
        const PORT: &[&str] = &["port", "baud", "parity", "data_bits", "stop_bits"];
        const MODBUS: &[&str] = &["turnaround", "max_gap", "share"];
        let allowed: Vec<&str> = match kind {
            Some(BusKind::ModbusRtu) => [COMMON, PORT, MODBUS].concat(),
            Some(BusKind::ModbusTcp) | Some(BusKind::ModbusRtuOverTcp) => {
                [COMMON, &["address"], MODBUS].concat()
            }
            Some(BusKind::Serial) => [
                COMMON,
                PORT,
                &["format", "pattern", "line_ending", "max_line"],
            ]
            .concat(),
            None => [
                COMMON,
                PORT,
                MODBUS,
                &["address", "format", "pattern", "line_ending", "max_line"],
            ]
            .concat(),
        };
        // Keys that exist for another kind get a clearer message than "unknown key".
        let all: Vec<&str> = [
            COMMON,
            PORT,
            MODBUS,
            &["address", "format", "pattern", "line_ending", "max_line"],
        ]
        .concat();
        for (k, _) in s.table.iter() {
            let name = k.get_ref().as_ref();
            if all.contains(&name) && !allowed.contains(&name) {
                if let Some(kind) = kind {
                    self.error(
                        k.span(),
                        &s.key(name),
                        format!("\"{name}\" does not apply to a {} bus", kind.name()),
                    );
                }
            }
        }
        let unknown: Vec<&str> = all;
        self.keys(s, &unknown);
        let port = self.text(s, "port");
        let address = self.text(s, "address");
        if let Some(kind) = kind {
            if kind.uses_serial_port() {
                self.required(
                    s,
                    "port",
                    port.as_ref(),
                    "serial port (e.g. port = \"/dev/ttyUSB0\")",
                );
            } else {
                self.required(s, "address", address.as_ref(), "address (host:port)");
                if let Some(a) = &address {
                    if let Err(msg) = check_socket_address(a) {
                        self.error_at(&s.key("address"), msg);
                    }
                }
            }
        }
        let parity = match self.choice(s, "parity", "parity", &["none", "even", "odd"]) {
            Some(1) => Parity::Even,
            Some(2) => Parity::Odd,
            _ => Parity::None,
        };
        let format = match self.choice(s, "format", "line format", &["json", "kv", "regex"]) {
            Some(1) => LineFormat::Kv,
            Some(2) => LineFormat::Regex,
            _ => LineFormat::Json,
        };
        let pattern = self.text(s, "pattern");
        if let Some(p) = &pattern {
            match regex::Regex::new(p) {
                Ok(re) if re.capture_names().flatten().next().is_none() => self.error_at(
                    &s.key("pattern"),
                    "the pattern has no named groups, e.g. (?P<temperature>[-\\d.]+)",
                ),
                Ok(_) => {}
                Err(e) => {
                    let msg = e.to_string();
                    let first = msg.lines().last().unwrap_or("invalid");
                    self.error_at(
                        &s.key("pattern"),
                        format!("invalid regex: {}", first.trim()),
                    )
                }
            }
        }
        if kind == Some(BusKind::Serial) {
            if format == LineFormat::Regex && pattern.is_none() && !s.table.contains_key("pattern")
            {
                self.error_at(
                    &s.key("format"),
                    "format \"regex\" needs a `pattern` with named groups",
                );
            }
            if format != LineFormat::Regex && pattern.is_some() {
                self.error_at(
                    &s.key("pattern"),
                    "`pattern` is only used with format = \"regex\"",
                );
            }
        }
        let baud = self
            .int(s, "baud", 50, 4_000_000)
            .map(|b| b as u32)
            .unwrap_or(9600);
        let data_bits = self.int(s, "data_bits", 5, 8).map(|b| b as u8).unwrap_or(8);
        let stop_bits = self.int(s, "stop_bits", 1, 2).map(|b| b as u8).unwrap_or(1);
        Some(BusConfig {
            kind: kind?,
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
            address,
            timeout: self
                .duration(s, "timeout")
                .unwrap_or(Duration::from_millis(500)),
            retries: self.int(s, "retries", 0, 10).unwrap_or(1) as u32,
            turnaround: self.duration(s, "turnaround"),
            max_gap: self.int(s, "max_gap", 0, 124).unwrap_or(4) as u16,
            format,
            pattern,
            line_ending: match self.string(s, "line_ending").as_deref() {
                None | Some("\n") => LineEnding::Lf,
                Some("\r\n") => LineEnding::CrLf,
                Some("\r") => LineEnding::Cr,
                Some(other) => {
                    self.error_at(
                        &s.key("line_ending"),
                        format!(
                            "unknown line ending {:?}; expected \"\\n\", \"\\r\\n\" or \"\\r\"",
                            other
                        ),
                    );
                    LineEnding::Lf
                }
            },
            max_line: self.int(s, "max_line", 16, 65_536).unwrap_or(1024) as usize,
            share: match self.string(s, "share") {
                Some(a) => {
                    match a.parse::<std::net::SocketAddr>() {
                        Ok(addr) => Some(addr),
                        Err(_) => {
                            self.error_at(
                            &s.key("share"),
                            format!("invalid address \"{a}\"; expected ip:port, e.g. \"127.0.0.1:5020\""),
                        );
                            None
                        }
                    }
                }
                None => None,
            },
        })
    }
}

/// `host:port` for Modbus TCP; the host may be a name, resolved when the bus opens.
fn check_socket_address(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!(
            "invalid address \"{a}\"; expected host:port, e.g. \"192.168.1.50:502\""
        ));
    };
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!(
            "invalid address \"{a}\"; expected host:port, e.g. \"192.168.1.50:502\""
        ));
    }
    Ok(())
}
