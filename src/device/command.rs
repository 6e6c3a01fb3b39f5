//! Commands (README "Sending commands"): a payload on a device's command topic, validated whole
//! before anything is written. Pure: parse and validate here; the device task executes.

use serde_json::{Map, Value as Json};

use crate::bus::WriteSpec;
use crate::bus::codec::{self, Raw};
use crate::config::{DataType, DeviceConfig, PointConfig, SetValue, Table};
use crate::model::Value;

/// Largest command payload accepted; larger ones are refused unparsed.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// A validated command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The payload as received, for the history.
    pub raw: String,
    /// Echoed in the result when given.
    pub id: Option<Json>,
    /// `set`, `refresh` or a named action.
    pub action: String,
    pub kind: CommandKind,
    /// The register writes of the point values it sets, in their order, encoded once when it
    /// was validated (README "Sending commands"); empty for a serial device's points.
    pub writes: Vec<PlannedWrite>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    /// Points and the values to write, in order.
    Set(Vec<(String, Value)>),
    /// Read every point now and publish the state.
    Refresh,
    /// Write a line to a serial device (a named action's rendered `send` template), and with
    /// `expect`, wait for a matching reply; then set the point values given beside the action.
    Send {
        text: String,
        expect: Option<String>,
        values: Vec<(String, Value)>,
    },
}

/// Why a command was refused. The message names the point and the limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The command's `id`, when it could be read, for the result.
    pub id: Option<Json>,
    pub action: Option<String>,
    pub message: String,
}

impl Refused {
    fn new(id: Option<Json>, action: Option<String>, message: String) -> Self {
        Refused {
            id,
            action,
            message,
        }
    }
}

/// Parses and validates a command for `device`. Nothing is written when this fails.
pub fn parse(device: &DeviceConfig, payload: &[u8]) -> Result<Command, Refused> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(Refused::new(
            None,
            None,
            format!(
                "command is {} bytes; at most {MAX_COMMAND_BYTES} are accepted",
                payload.len()
            ),
        ));
    }
    let json: Json = serde_json::from_slice(payload)
        .map_err(|e| Refused::new(None, None, format!("malformed JSON: {e}")))?;
    let Json::Object(mut obj) = json else {
        return Err(Refused::new(
            None,
            None,
            "a command is a JSON object, e.g. {\"action\": \"set\", \"state\": \"on\"}".into(),
        ));
    };
    let id = obj.remove("id");
    let action = match obj.remove("action") {
        None => "set".to_string(),
        Some(Json::String(a)) => a,
        Some(other) => {
            return Err(Refused::new(
                id,
                None,
                format!("action must be a string, not {other}"),
            ));
        }
    };
    let fail = |msg: String| Refused::new(id.clone(), Some(action.clone()), msg);
    if action == "refresh" {
        if let Some(k) = obj.keys().next() {
            return Err(fail(format!("refresh takes no point values (got \"{k}\")")));
        }
        return Ok(Command {
            raw: String::from_utf8_lossy(payload).into_owned(),
            id,
            action,
            kind: CommandKind::Refresh,
            writes: Vec::new(),
        });
    }
    let mut values: Vec<(String, Value)> = Vec::new();
    if action != "set" {
        let Some(a) = device.actions.get(&action) else {
            let mut names: Vec<&str> = vec!["set", "refresh"];
            names.extend(device.actions.keys().map(String::as_str));
            return Err(fail(format!(
                "unknown action \"{action}\"; expected {}",
                crate::config::one_of(&names)
            )));
        };
        if let Some(template) = &a.send {
            let text = render(template, &mut obj).map_err(|m| fail(format!("{action}: {m}")))?;
            // The keys the template did not take are point values, as beside a `set` action.
            let (values, writes) = point_values(device, obj, Vec::new()).map_err(fail)?;
            return Ok(Command {
                raw: String::from_utf8_lossy(payload).into_owned(),
                id,
                action,
                kind: CommandKind::Send {
                    text,
                    expect: a.expect.clone(),
                    values,
                },
                writes,
            });
        }
        for (point, v) in &a.set {
            if !obj.contains_key(point) {
                values.push((point.clone(), set_value(v)));
            }
        }
    }
    // The payload's own values, after the action's (the payload wins).
    let (values, writes) = point_values(device, obj, values).map_err(fail)?;
    if values.is_empty() {
        return Err(fail(
            "nothing to set: give writable points and their values, e.g. {\"state\": \"on\"}"
                .into(),
        ));
    }
    Ok(Command {
        raw: String::from_utf8_lossy(payload).into_owned(),
        id,
        action,
        kind: CommandKind::Set(values),
        writes,
    })
}

/// Points and the values to write, in order.
type PointValues = Vec<(String, Value)>;

/// `values` (an action's `set` table), then the payload's own point values after them, each
/// validated: writable, its type, its limits, and anything its write could refuse. A point
/// with a register is planned as its write here, once: the planned writes come back beside
/// the values.
fn point_values(
    device: &DeviceConfig,
    given: Map<String, Json>,
    mut values: Vec<(String, Value)>,
) -> Result<(PointValues, Vec<PlannedWrite>), String> {
    let mut given: Vec<(String, Json)> = given.into_iter().collect();
    given.sort_by(|a, b| a.0.cmp(&b.0));
    for (point, v) in given {
        let p = check_point(device, &point)?;
        let value = json_value(&point, p, &v)?;
        values.push((point, value));
    }
    let mut writes = Vec::new();
    for (point, value) in &values {
        let p = check_point(device, point)?;
        check_limits(point, p, value)?;
        // Everything the write itself could refuse (a string too long for its registers, a
        // value the type can't hold) is refused here, before the command is queued.
        if p.register.is_some() {
            writes.push(plan_write(point, p, value, device.write_multiple)?);
        } else {
            check_encodes(point, p, value)?;
        }
    }
    Ok((values, writes))
}

/// Fills a `send` template's `{value}` and `{name}` placeholders from the command's keys, and
/// takes those keys out of `args` (what is left are point values). Strings go in as they are,
/// numbers and booleans as JSON writes them. Line breaks in a value are refused: they would
/// start a second command on the line.
pub fn render(template: &str, args: &mut Map<String, Json>) -> Result<String, String> {
    let mut out = template.to_string();
    for key in ["value", "name"] {
        let ph = format!("{{{key}}}");
        if !out.contains(&ph) {
            continue;
        }
        let text = match args.remove(key) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            Some(Json::Bool(b)) => b.to_string(),
            Some(other) => {
                return Err(format!(
                    "\"{key}\" must be a string, number or boolean, not {other}"
                ));
            }
            None => {
                return Err(format!(
                    "needs \"{key}\" for the {{{key}}} in its send template"
                ));
            }
        };
        if text.contains(['\n', '\r']) {
            return Err(format!("\"{key}\" must not contain line breaks"));
        }
        out = out.replace(&ph, &text);
    }
    Ok(out)
}

fn check_point<'a>(device: &'a DeviceConfig, point: &str) -> Result<&'a PointConfig, String> {
    match device.points.get(point) {
        None => Err(format!("{point}: unknown point")),
        Some(p) if !p.writable => Err(format!("{point}: not writable")),
        Some(p) => Ok(p),
    }
}

fn set_value(v: &SetValue) -> Value {
    match v {
        SetValue::Bool(b) => Value::Bool(*b),
        SetValue::Integer(i) => Value::Int(i128::from(*i)),
        SetValue::Float(f) => Value::Float(*f),
        SetValue::String(s) => Value::Text(s.clone()),
    }
}

/// A JSON value for a point, by the point's type.
fn json_value(point: &str, p: &PointConfig, v: &Json) -> Result<Value, String> {
    let ty = p.effective_type().unwrap_or(DataType::U16);
    if let Some(map) = &p.map {
        return match v {
            Json::String(s) if map.values().any(|l| l == s) => Ok(Value::Text(s.clone())),
            Json::String(s) => Err(format!(
                "{point}: unknown label \"{s}\"; expected {}",
                crate::config::one_of(&map.values().map(String::as_str).collect::<Vec<_>>())
            )),
            other => Err(format!(
                "{point}: expected one of the labels {}, got {other}",
                crate::config::one_of(&map.values().map(String::as_str).collect::<Vec<_>>())
            )),
        };
    }
    match (ty, v) {
        (DataType::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (DataType::Bool, other) => Err(format!("{point}: expected true or false, got {other}")),
        (DataType::String, Json::String(s)) => Ok(Value::Text(s.clone())),
        (DataType::String, other) => Err(format!("{point}: expected a string, got {other}")),
        (_, Json::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::Int(i128::from(i)))
            } else if let Some(u) = n.as_u64() {
                Ok(Value::Int(i128::from(u)))
            } else {
                n.as_f64()
                    .map(Value::Float)
                    .ok_or_else(|| format!("{point}: {n} is not a usable number"))
            }
        }
        (_, other) => Err(format!("{point}: expected a number, got {other}")),
    }
}

/// `min` and `max`.
fn check_limits(point: &str, p: &PointConfig, v: &Value) -> Result<(), String> {
    let Some(x) = v.as_f64() else { return Ok(()) };
    if let Some(min) = p.min {
        if x < min {
            return Err(format!("{point}: {} is below min {min}", fmt_num(v)));
        }
    }
    if let Some(max) = p.max {
        if x > max {
            return Err(format!("{point}: {} is above max {max}", fmt_num(v)));
        }
    }
    Ok(())
}

/// The type's own range, after scale and offset, for a point with no register (a register's
/// write is planned whole instead).
fn check_encodes(point: &str, p: &PointConfig, v: &Value) -> Result<(), String> {
    if v.as_f64().is_none() {
        return Ok(());
    }
    codec::from_value(v, p)
        .and_then(|e| {
            codec::encode(
                &e.raw,
                p.effective_type().unwrap_or(DataType::U16),
                p.order,
                p.length.unwrap_or(1),
            )
        })
        .map(|_| ())
        .map_err(|e| cannot_write(point, v, e))
}

fn cannot_write(point: &str, v: &Value, e: impl std::fmt::Display) -> String {
    format!("{point}: {} cannot be written: {e}", fmt_num(v))
}

fn fmt_num(v: &Value) -> String {
    v.to_json().to_string()
}

/// One write to perform, and what the register will hold.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWrite {
    pub point: String,
    /// The point as it was when planned (a SunSpec walk may change it before the write runs).
    pub config: PointConfig,
    pub spec: WriteSpec,
    /// The value after rounding to the register's resolution.
    pub effective: Value,
    /// Whether the requested value had to be rounded.
    pub rounded: bool,
}

/// Encodes a validated value for a Modbus point: FC05 for a coil, FC06 for one register
/// (FC16 when `force_multiple`), FC16 for multi-register types.
pub fn plan_write(
    point: &str,
    p: &PointConfig,
    value: &Value,
    force_multiple: bool,
) -> Result<PlannedWrite, String> {
    let reg = p
        .register
        .ok_or_else(|| format!("{point}: has no register"))?;
    let ty = p.effective_type().unwrap_or(DataType::U16);
    let numeric = value.as_f64().is_some();
    // A value the type cannot hold is said as `check_encodes` says it.
    let failed = |e: String| {
        if numeric {
            cannot_write(point, value, e)
        } else {
            format!("{point}: {e}")
        }
    };
    let enc = codec::from_value(value, p).map_err(|e| failed(e.to_string()))?;
    let spec = match reg.table {
        Table::Coil => {
            let on = match &enc.raw {
                Raw::Bool(b) => *b,
                Raw::Unsigned(u) => *u != 0,
                Raw::Signed(i) => *i != 0,
                _ => return Err(format!("{point}: a coil takes true or false")),
            };
            WriteSpec::Coil {
                address: reg.address,
                value: on,
            }
        }
        Table::Holding => {
            let raw = match (&enc.raw, ty) {
                (Raw::Bool(b), t) if t != DataType::Bool => Raw::Unsigned(u64::from(*b)),
                (r, _) => r.clone(),
            };
            let words = codec::encode(&raw, ty, p.order, p.length.unwrap_or(1))
                .map_err(|e| failed(e.to_string()))?;
            if words.len() == 1 && !force_multiple {
                WriteSpec::Register {
                    address: reg.address,
                    value: words[0],
                }
            } else {
                WriteSpec::Registers {
                    address: reg.address,
                    values: words,
                }
            }
        }
        t => return Err(format!("{point}: {} registers are read-only", t.name())),
    };
    Ok(PlannedWrite {
        point: point.to_string(),
        config: p.clone(),
        spec,
        effective: enc.effective,
        rounded: enc.rounded,
    })
}

/// What executing a command did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Points written, with the values the device kept (read back, where it can be).
    pub written: Vec<(String, Value)>,
    /// Values rounded to the register's resolution, as sentences.
    pub rounded: Vec<String>,
    /// Why it failed, when it did.
    pub failure: Option<Failure>,
}

/// A command that failed at the device: the message, and for a write that failed part-way,
/// which point failed and which were not written (README "Sending commands").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure {
    pub error: String,
    /// The point (or serial action) that failed.
    pub failed: Option<String>,
    /// Points of the command after it, not written.
    pub not_written: Vec<String>,
}

impl Outcome {
    /// A failure with nothing written.
    pub fn error(error: impl Into<String>) -> Self {
        Outcome {
            failure: Some(Failure {
                error: error.into(),
                ..Failure::default()
            }),
            ..Outcome::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// The result payload: `{"id", "action", "ok": true, "written": {...}}` (plus `"rounded"` when a
/// value had to be rounded to the register's resolution), or `{"id", "action", "ok": false,
/// "error"}`; a write that failed part-way also names what was written, the point that failed
/// and the points not written.
pub fn result_payload(id: Option<&Json>, action: Option<&str>, outcome: &Outcome) -> String {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    if let Some(a) = action {
        m.insert("action".into(), Json::String(a.to_string()));
    }
    let written = || {
        Json::Object(
            outcome
                .written
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    };
    match &outcome.failure {
        None => {
            m.insert("ok".into(), Json::Bool(true));
            m.insert("written".into(), written());
            if !outcome.rounded.is_empty() {
                m.insert("rounded".into(), json_strings(&outcome.rounded));
            }
        }
        Some(f) => {
            m.insert("ok".into(), Json::Bool(false));
            m.insert("error".into(), Json::String(f.error.clone()));
            let part_way = !outcome.written.is_empty() || !f.not_written.is_empty();
            if part_way {
                m.insert("written".into(), written());
                if let Some(p) = &f.failed {
                    m.insert("failed".into(), Json::String(p.clone()));
                }
                // A write that failed part-way names what it did not write; an interrupted
                // command (no point failed) only what the device holds.
                if f.failed.is_some() || !f.not_written.is_empty() {
                    m.insert("not_written".into(), json_strings(&f.not_written));
                }
            }
        }
    }
    Json::Object(m).to_string()
}

/// `{"ok": false, "error"}` for a command refused before anything was written.
pub fn refusal_payload(id: Option<&Json>, action: Option<&str>, error: &str) -> String {
    result_payload(id, action, &Outcome::error(error))
}

fn json_strings(items: &[String]) -> Json {
    Json::Array(items.iter().map(|s| Json::String(s.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lamp() -> DeviceConfig {
        let text = r#"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[devices.lamp]
bus = "plc"
unit = 3
[devices.lamp.points.state]
register = "coil:0"
writable = true
map = { 0 = "off", 1 = "on" }
[devices.lamp.points.brightness]
register = "holding:1"
writable = true
min = 0
max = 100
[devices.lamp.points.power]
register = "input:0"
[devices.lamp.points.setpoint]
register = "holding:10"
type = "f32"
order = "CDAB"
writable = true
[devices.lamp.actions.turn_on]
set = { state = "on", brightness = 100 }
"#;
        crate::config::parse(text, Path::new("t.toml"))
            .unwrap()
            .devices["lamp"]
            .as_ref()
            .clone()
    }

    fn err(payload: &str) -> String {
        parse(&lamp(), payload.as_bytes()).unwrap_err().message
    }

    #[test]
    fn every_validation_failure_names_the_point_and_limit() {
        assert_eq!(
            err(r#"{"brightness": 120}"#),
            "brightness: 120 is above max 100"
        );
        assert_eq!(
            err(r#"{"brightness": -1}"#),
            "brightness: -1 is below min 0"
        );
        assert_eq!(err(r#"{"volume": 1}"#), "volume: unknown point");
        assert_eq!(err(r#"{"power": 1}"#), "power: not writable");
        assert_eq!(
            err(r#"{"state": "dim"}"#),
            "state: unknown label \"dim\"; expected off or on"
        );
        assert_eq!(
            err(r#"{"brightness": "high"}"#),
            "brightness: expected a number, got \"high\""
        );
        assert_eq!(
            err(r#"{"action": "dance"}"#),
            "unknown action \"dance\"; expected set, refresh or turn_on"
        );
        // Beyond what an f32 holds: refused like a value above max, never an infinity.
        assert_eq!(
            err(r#"{"setpoint": 1e39}"#),
            "setpoint: 1e+39 cannot be written: 1000000000000000000000000000000000000000 does not fit in f32"
        );
        assert!(err("{not json").starts_with("malformed JSON: "));
        assert!(err("[1,2]").starts_with("a command is a JSON object"));
        assert!(err("{}").starts_with("nothing to set"));
    }

    #[test]
    fn a_named_action_takes_its_set_table_and_the_payload_wins() {
        let c = parse(
            &lamp(),
            br#"{"action": "turn_on", "brightness": 80, "id": "abc"}"#,
        )
        .unwrap();
        assert_eq!(c.id, Some(Json::String("abc".into())));
        assert_eq!(
            c.kind,
            CommandKind::Set(vec![
                ("state".into(), Value::Text("on".into())),
                ("brightness".into(), Value::Int(80)),
            ])
        );
    }

    #[test]
    fn writes_use_the_function_the_point_needs() {
        let d = lamp();
        let w = plan_write(
            "state",
            &d.points["state"],
            &Value::Text("on".into()),
            false,
        )
        .unwrap();
        assert_eq!(
            w.spec,
            WriteSpec::Coil {
                address: 0,
                value: true
            }
        );
        let w = plan_write(
            "brightness",
            &d.points["brightness"],
            &Value::Int(80),
            false,
        )
        .unwrap();
        assert_eq!(
            w.spec,
            WriteSpec::Register {
                address: 1,
                value: 80
            }
        );
        let w = plan_write("brightness", &d.points["brightness"], &Value::Int(80), true).unwrap();
        assert_eq!(
            w.spec,
            WriteSpec::Registers {
                address: 1,
                values: vec![80]
            }
        );
        let w = plan_write(
            "setpoint",
            &d.points["setpoint"],
            &Value::Float(21.5),
            false,
        )
        .unwrap();
        assert_eq!(
            w.spec,
            WriteSpec::Registers {
                address: 10,
                values: vec![0x0000, 0x41AC]
            }
        );
    }

    #[test]
    fn serial_actions_render_their_send_template() {
        let text = r#"
[buses.ard]
kind = "serial"
port = "/dev/ttyACM0"
[devices.w]
bus = "ard"
[devices.w.points.t]
field = "temp"
[devices.w.actions.led]
send = "LED {value}"
expect = "^OK"
"#;
        let d = crate::config::parse(text, Path::new("t.toml"))
            .unwrap()
            .devices["w"]
            .clone();
        let c = parse(&d, br#"{"action": "led", "value": 3}"#).unwrap();
        assert_eq!(
            c.kind,
            CommandKind::Send {
                text: "LED 3".into(),
                expect: Some("^OK".into()),
                values: Vec::new(),
            }
        );
        // Point values beside the action are validated like any: `t` is not writable.
        let e = parse(&d, br#"{"action": "led", "value": 3, "t": 1}"#).unwrap_err();
        assert_eq!(e.message, "t: not writable");
        let e = parse(&d, br#"{"action": "led"}"#).unwrap_err();
        assert_eq!(
            e.message,
            "led: needs \"value\" for the {value} in its send template"
        );
        let e = parse(&d, br#"{"action": "led", "value": "1\nRESET"}"#).unwrap_err();
        assert_eq!(e.message, "led: \"value\" must not contain line breaks");
    }

    #[test]
    fn results_echo_id_and_action() {
        let ok = result_payload(
            Some(&Json::String("abc".into())),
            Some("turn_on"),
            &Outcome {
                written: vec![("state".into(), Value::Text("on".into()))],
                ..Outcome::default()
            },
        );
        let v: Json = serde_json::from_str(&ok).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "abc", "action": "turn_on", "ok": true, "written": {"state": "on"}})
        );
        let bad = refusal_payload(None, Some("set"), "brightness: 120 is above max 100");
        let v: Json = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action": "set", "ok": false, "error": "brightness: 120 is above max 100"})
        );
        // Part-way: what was written, what failed, what was not written.
        let part = result_payload(
            None,
            Some("turn_on"),
            &Outcome {
                written: vec![("state".into(), Value::Text("on".into()))],
                rounded: Vec::new(),
                failure: Some(Failure {
                    error: "brightness: timeout".into(),
                    failed: Some("brightness".into()),
                    not_written: vec!["speed".into()],
                }),
            },
        );
        let v: Json = serde_json::from_str(&part).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action": "turn_on", "ok": false, "error": "brightness: timeout",
                "written": {"state": "on"}, "failed": "brightness", "not_written": ["speed"]})
        );
    }
}
