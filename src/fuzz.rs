//! Harnesses for hostile input, shared by the cargo-fuzz targets (`fuzz/`) and the tests that
//! replay their corpora and run short property tests in CI (`tests/fuzz_corpus.rs`).
//!
//! Each takes arbitrary bytes and drives one parser the daemon exposes to the outside world.
//! Returning is success; a panic is a bug — either in the parser, or a broken property that
//! the harness asserts (stated on each).

use std::path::Path;
use std::sync::OnceLock;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::bus::codec;
use crate::bus::line_codec::{self as line, Frame, LineCodec};
use crate::config::{self, Config, DataType, LineFormat, PointConfig, Table, WordOrder};
use crate::device::command::{self, CommandKind};

/// `config.toml` text. Property: parsing never panics, and a config that parses has names that
/// are safe in topics (no `/`, `+`, `#`).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = config::parse(text, Path::new("fuzz.toml")) {
        for (name, d) in &c.devices {
            assert!(config::is_valid_name(name), "device {name:?}");
            for point in d.points.keys() {
                assert!(config::is_valid_name(point), "point {point:?}");
            }
        }
    }
}

/// A device with one point of each kind a command can write, and two named actions.
const DEVICE: &str = r#"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"

[devices.lamp]
bus = "plc"
unit = 1
[devices.lamp.actions.turn_on]
set = { state = "on", level = 100 }
[devices.lamp.actions.turn_off]
set = { state = "off" }

[devices.lamp.points.state]
register = "coil:0"
writable = true
map = { 0 = "off", 1 = "on" }

[devices.lamp.points.level]
register = "holding:0"
writable = true
min = 0
max = 100

[devices.lamp.points.setpoint]
register = "holding:1"
type = "f32"
writable = true
scale = 0.1
min = -20
max = 40

[devices.lamp.points.mode]
register = "holding:3"
writable = true
map = { 0 = "auto", 1 = "heat", 2 = "cool" }

[devices.lamp.points.big]
register = "holding:4"
type = "i64"
writable = true

[devices.lamp.points.name]
register = "holding:8"
type = "string"
length = 4
writable = true

[devices.lamp.points.temperature]
register = "input:0"
type = "i16"
scale = 0.1
"#;

fn device_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(
        || match config::parse(DEVICE, Path::new("fuzz-device.toml")) {
            Ok(c) => c,
            Err(e) => panic!("the fuzz device config is invalid: {e}"),
        },
    )
}

/// A command payload. Properties: never panics; a command that validates can be planned as
/// register writes for every value it carries (validation comes before anything is written, so
/// nothing may fail after it); every result payload is valid JSON.
pub fn command(data: &[u8]) {
    let Some(device) = device_config().devices.get("lamp") else {
        return;
    };
    match command::parse(device, data) {
        Ok(cmd) => {
            if let CommandKind::Set(values) = &cmd.kind {
                for (point, value) in values {
                    let p = device.points.get(point);
                    assert!(p.is_some_and(|p| p.writable), "{point} is not writable");
                    // Planned once, at validation: every value carries its write.
                    assert!(
                        cmd.writes.iter().any(|w| w.point == *point),
                        "{point} = {value:?} validated without its write: {:?}",
                        cmd.writes
                    );
                }
                assert_eq!(cmd.writes.len(), values.len());
            }
            let body = command::result_payload(
                cmd.id.as_ref(),
                Some(&cmd.action),
                &command::Outcome::default(),
            );
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
        }
        Err(refused) => {
            let body = command::refusal_payload(
                refused.id.as_ref(),
                refused.action.as_deref(),
                &refused.message,
            );
            assert!(
                serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "{body}"
            );
        }
    }
}

fn kv_point() -> PointConfig {
    PointConfig::register(Table::Holding, 0, DataType::F32)
}

/// Bytes off a serial line, in the chunks the first byte chooses. Properties: framing never
/// panics or stops, every line handed on is within the limit, and each line goes through all
/// three formats and the point conversion without a panic.
pub fn serial_line(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 16) + 1;
    let max = 64;
    let mut codec = if first & 0x80 == 0 {
        LineCodec::new(max)
    } else {
        LineCodec::with_terminator(max, b'\r')
    };
    let re = regex_for_lines();
    let point = kv_point();
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => panic!("the line codec gave up: {e}"),
            };
            let (Frame::Line(l) | Frame::Invalid(l)) = frame else {
                continue;
            };
            // Replacement characters may make a lossily decoded line longer in bytes.
            assert!(
                l.chars().count() <= max,
                "a line over the limit: {}",
                l.len()
            );
            for format in [LineFormat::Json, LineFormat::Kv, LineFormat::Regex] {
                if let Ok(doc) = line::parse(&l, format, Some(re)) {
                    for name in ["t", "h", "state", "a/b"] {
                        if let Some(v) = line::field(&doc, name) {
                            let _ = line::typed(v);
                        }
                        // A value or a reason, never a panic.
                        if let Err(e) = crate::device::serial::point_value(&doc, name, &point) {
                            assert!(!e.is_empty());
                        }
                        let _ = line::matches(&doc, name, "x");
                    }
                }
            }
        }
    }
}

fn regex_for_lines() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(
        || match regex::Regex::new(r"^T(?P<t>[-\d.]+) H(?P<h>\d+)") {
            Ok(r) => r,
            Err(e) => panic!("fuzz regex: {e}"),
        },
    )
}

const TYPES: [DataType; 10] = config::ALL_TYPES;
const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

/// Registers as a device answered them. The first bytes choose the type, word order, scale and
/// precision; the rest are the words. Properties: decoding never panics, a wrong number of words
/// is an error (never a value), and what is published is valid JSON.
pub fn modbus_registers(data: &[u8]) {
    let [sel, order, scale, precision, rest @ ..] = data else {
        return;
    };
    let ty = TYPES[usize::from(*sel) % TYPES.len()];
    let order = ORDERS[usize::from(*order) % ORDERS.len()];
    let words: Vec<u16> = rest
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let need = match ty {
        DataType::String => words.len().max(1),
        t => usize::from(t.registers(1)),
    };
    let decoded = codec::decode(&words, ty, order);
    if words.len() != need {
        assert!(decoded.is_err(), "{} words decoded as {ty:?}", words.len());
        return;
    }
    let Ok(raw) = decoded else { return };
    let mut p = PointConfig::register(Table::Holding, 0, ty);
    p.order = order;
    if *scale != 0 {
        p.scale = Some(f64::from(*scale as i8) / 10.0);
        p.offset = Some(f64::from(*scale) - 100.0);
    }
    if *precision < 8 {
        p.precision = Some(*precision);
    }
    let v = codec::to_value(raw, &p);
    let json = v.to_json();
    assert!(serde_json::to_string(&json).is_ok());
}

/// A whole Modbus RTU answer as it comes off the wire, read by tokio-modbus's client for a
/// request for `count` holding registers. Property: no panic, and no frame is taken as an
/// answer to a different request (a wrong count or function is an error, never data).
pub fn modbus_rtu_answer(data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    use tokio_modbus::client::Client;
    use tokio_modbus::prelude::{Request, Slave};

    let Some((&count, answer)) = data.split_first() else {
        return;
    };
    let count = u16::from(count % 16) + 1;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    rt.block_on(async {
        let (ours, mut device) = tokio::io::duplex(1024);
        let mut ctx = tokio_modbus::client::rtu::attach_slave(ours, Slave(1));
        let answer = answer.to_vec();
        let feeder = tokio::spawn(async move {
            // Whatever the request was, this is the answer; then the line goes quiet.
            // (A failure here means the client went away: nothing to answer.)
            let mut req = [0u8; 8];
            if tokio::io::AsyncReadExt::read_exact(&mut device, &mut req)
                .await
                .is_ok()
                && device.write_all(&answer).await.is_ok()
            {
                device.shutdown().await.ok();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        });
        let call = ctx.call(Request::ReadHoldingRegisters(0, count));
        let got = tokio::time::timeout(std::time::Duration::from_millis(50), call).await;
        if let Ok(Ok(Ok(resp))) = got {
            let spec = crate::bus::ReadSpec {
                table: Table::Holding,
                start: 0,
                count,
            };
            // What the bus does with every answer (bus::modbus::exec).
            if let Ok(data) = crate::bus::modbus::read_answer(&spec, resp) {
                match data {
                    crate::bus::RawData::Words(w) => assert_eq!(w.len(), usize::from(count)),
                    crate::bus::RawData::Bits(_) => panic!("bits for a register read"),
                }
            }
        }
        feeder.abort();
    });
}
