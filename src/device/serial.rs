//! The serial line transport of the device core: one task per serial line device turns the
//! lines routed to it into point values for the [`Core`] (deadband, heartbeat, state and
//! sensor topics exactly as for Modbus points), reports silence as failed polls, and executes
//! its commands as lines written to the device.
//!
//! - A device is `offline` when no line for it arrived within `silence`, and `online` with its
//!   next line.
//! - A point whose field came with a value that can't be read (`null`, text where its type or
//!   scale needs a number), or that no line carried for `silence`, leaves the retained state
//!   until it reads again.
//! - `refresh` publishes the state now; on an offline device it waits one bus `timeout` for a
//!   line.
//! - A named action's `send` line, then the point values given beside it, each point's own
//!   `send` line; a reply awaited with `expect` is asked for again up to `retries` times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{CommandKind, Failure, Outcome};
use super::{Core, Links, Queued, next_command};
use crate::bus::BusError;
use crate::bus::codec::{self, Raw};
use crate::bus::line_codec as line;
use crate::bus::serial_line::LineHandle;
use crate::config::{DataType, DeviceConfig, PointConfig};
use crate::model::Value;

/// Whether a point's value must be a number: a numeric type, labels for numbers, or arithmetic.
fn needs_number(p: &PointConfig) -> bool {
    p.data_type
        .is_some_and(|t| !matches!(t, DataType::String | DataType::Bool))
        || p.map.is_some()
        || p.scale.is_some()
        || p.offset.is_some()
        || p.precision.is_some()
}

/// A line field → the point's value: `Ok(None)` when the line does not carry the field, an
/// error when it carries one that can't be the point's value. Text that reads as a number is a
/// number.
pub fn point_value(doc: &Json, point: &str, p: &PointConfig) -> Result<Option<Value>, String> {
    let name = p.field.as_deref().unwrap_or(point);
    let Some(field) = line::field(doc, name) else {
        return Ok(None);
    };
    let v = line::typed(field);
    let raw = match (&v, p.data_type) {
        (Json::Null, _) => return Err(format!("field \"{name}\" has no value (null)")),
        (Json::Array(_) | Json::Object(_), _) => {
            return Err(format!("field \"{name}\" is not a single value: {v}"));
        }
        (_, Some(DataType::String)) => Raw::Text(match &v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        }),
        (Json::Bool(b), _) => Raw::Bool(*b),
        (Json::Number(n), Some(DataType::Bool)) => Raw::Bool(n.as_f64().is_some_and(|x| x != 0.0)),
        (Json::Number(n), _) => {
            if let Some(i) = n.as_i64() {
                Raw::Signed(i)
            } else if let Some(u) = n.as_u64() {
                Raw::Unsigned(u)
            } else {
                match n.as_f64() {
                    Some(f) => Raw::Float(f),
                    None => return Err(format!("field \"{name}\": {n} is not a usable number")),
                }
            }
        }
        (Json::String(s), _) if needs_number(p) => {
            return Err(format!("field \"{name}\": \"{s}\" is not a number"));
        }
        (Json::String(s), _) => Raw::Text(s.clone()),
    };
    Ok(Some(codec::to_value(raw, p)))
}

/// A serial line device's task.
pub struct LineDevice {
    core: Core,
    lines: mpsc::Receiver<Json>,
    commands: Option<mpsc::Receiver<Queued>>,
    bus: LineHandle,
    /// The bus `timeout`: how long an `expect` reply (and an offline device's refresh) waits.
    timeout: Duration,
    /// The bus `retries`: how often a line whose `expect` reply did not come is sent again.
    retries: u32,
    /// When each point last came with a value.
    seen: HashMap<String, Instant>,
}

impl LineDevice {
    pub fn new(
        name: &str,
        config: &Arc<DeviceConfig>,
        lines: mpsc::Receiver<Json>,
        bus: LineHandle,
        links: Links,
    ) -> Self {
        LineDevice {
            // Silence is already a long window: one is a failed poll enough.
            core: Core::new(name, config, 1, links),
            lines,
            commands: None,
            bus,
            timeout: Duration::from_millis(500),
            retries: 0,
            seen: HashMap::new(),
        }
    }

    /// Takes commands from `rx`.
    pub fn with_commands(mut self, rx: mpsc::Receiver<Queued>) -> Self {
        self.commands = Some(rx);
        self
    }

    /// The bus's `timeout` and `retries`, for command replies.
    pub fn with_timing(mut self, timeout: Duration, retries: u32) -> Self {
        self.timeout = timeout;
        self.retries = retries;
        self
    }

    fn silence(&self) -> Duration {
        self.core.config().silence
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut commands = self.commands.take();
        // Silence is counted from start-up too: a device that never talks goes offline.
        let mut last_line = Instant::now();
        loop {
            let silent_at = last_line + self.silence();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(q) = next_command(&mut commands) => self.command(q).await,
                doc = self.lines.recv() => match doc {
                    Some(doc) => {
                        last_line = Instant::now();
                        self.line(&doc);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(silent_at), if !self.core.is_offline() => {
                    let why = format!(
                        "no line within the silence period ({})",
                        humantime::format_duration(self.silence())
                    );
                    self.core.silent(&why);
                }
            }
        }
        if let Some(queue) = commands.as_mut() {
            self.core.cut_off(queue);
        }
    }

    /// One line routed to this device: its points' values, and the points it could not give.
    fn line(&mut self, doc: &Json) {
        let now = Instant::now();
        let silence = self.silence();
        let config = self.core.config().clone();
        let mut values = Vec::new();
        let mut failed = Vec::new();
        // Point `i` of `config.points` is the core's point `i`.
        for (i, (name, p)) in config.points.iter().enumerate() {
            match point_value(doc, name, p) {
                Ok(Some(v)) => {
                    self.seen.insert(name.clone(), now);
                    values.push((i, v));
                }
                Ok(None) => {
                    // Not on this line. Gone from the device's lines for a whole silence
                    // period: stale, so it leaves the state.
                    if self
                        .seen
                        .get(name)
                        .is_some_and(|t| now.duration_since(*t) >= silence)
                    {
                        self.seen.remove(name);
                        let why =
                            format!("not reported for {}", humantime::format_duration(silence));
                        self.core.point_error(i, &why);
                        failed.push(i);
                    }
                }
                Err(e) => {
                    self.seen.remove(name);
                    self.core.point_error(i, &e);
                    failed.push(i);
                }
            }
        }
        self.core.values(values, &failed, SystemTime::now());
        self.core.answered();
    }

    async fn command(&mut self, queued: Queued) {
        let Some(admitted) = self.core.admit(queued).await else {
            return;
        };
        let outcome = match &admitted.command.kind {
            CommandKind::Refresh => Some(self.refresh().await),
            // Lines may have gone out before the crash; sending them again is what the id
            // forbids, and a line device has nothing to read back.
            _ if admitted.interrupted => Some(Outcome::error(super::INTERRUPTED)),
            CommandKind::Send {
                text,
                expect,
                values,
            } => {
                let action = (
                    admitted.command.action.as_str(),
                    text.as_str(),
                    expect.as_deref(),
                );
                self.send(Some(action), values).await
            }
            CommandKind::Set(values) => self.send(None, values).await,
        };
        match outcome {
            Some(o) => self.core.finish(admitted, o).await,
            None => self.core.abandon(admitted).await,
        }
    }

    /// `refresh`: the state now. A line device reports on its own, so an online one has its
    /// latest values already; an offline one is given one bus `timeout` to send a line.
    async fn refresh(&mut self) -> Outcome {
        if self.core.is_offline() {
            match tokio::time::timeout(self.timeout, self.lines.recv()).await {
                Ok(Some(doc)) => {
                    self.core.force_state();
                    self.line(&doc);
                    Outcome::default()
                }
                _ => Outcome::error(format!(
                    "{}: no line within {}",
                    super::DEVICE_OFFLINE,
                    humantime::format_duration(self.timeout)
                )),
            }
        } else {
            self.core.force_state();
            self.core.values(Vec::new(), &[], SystemTime::now());
            Outcome::default()
        }
    }

    /// Writes a named action's line (`action`: its name, the rendered line and the reply it
    /// expects), then each point's `send` line with its value, in order, stopping at the first
    /// failure. `None` when the bus stopped before anything was sent.
    async fn send(
        &mut self,
        action: Option<(&str, &str, Option<&str>)>,
        values: &[(String, Value)],
    ) -> Option<Outcome> {
        let mut steps: Vec<(String, String, Option<String>)> = Vec::new();
        if let Some((name, text, expect)) = action {
            steps.push((
                name.to_string(),
                text.to_string(),
                expect.map(str::to_string),
            ));
        }
        for (point, value) in values {
            let Some(p) = self.core.config().points.get(point) else {
                return Some(Outcome::error(format!("{point}: unknown point")));
            };
            let Some(template) = p.send.as_deref() else {
                return Some(Outcome::error(format!("{point}: not writable")));
            };
            let text = match value {
                Value::Text(t) => t.clone(),
                other => other.to_json().to_string(),
            };
            if text.contains(['\n', '\r']) {
                return Some(Outcome::error(format!(
                    "{point}: the value must not contain line breaks"
                )));
            }
            steps.push((
                point.clone(),
                template.replace("{value}", &text),
                p.expect.clone(),
            ));
        }
        let mut outcome = Outcome::default();
        for (i, (what, text, expect)) in steps.iter().enumerate() {
            match self.send_line(text, expect.as_deref()).await {
                Ok(()) => {
                    if let Some((_, v)) = values.iter().find(|(p, _)| p == what) {
                        outcome.written.push((what.clone(), v.clone()));
                    }
                }
                Err(BusError::Stopped) if i == 0 => return None,
                Err(e) => {
                    outcome.failure = Some(Failure {
                        error: format!("{what}: {e}"),
                        failed: Some(what.clone()),
                        not_written: steps[i + 1..].iter().map(|s| s.0.clone()).collect(),
                    });
                    break;
                }
            }
        }
        if !outcome.written.is_empty() {
            self.core.written(&outcome.written.clone());
        }
        Some(outcome)
    }

    /// One line; with `expect`, sent again up to `retries` times while the reply times out.
    async fn send_line(&mut self, text: &str, expect: Option<&str>) -> Result<(), BusError> {
        // The config was validated: an `expect` compiles.
        let re = expect.and_then(|e| regex::Regex::new(e).ok());
        let mut attempt = 0;
        loop {
            match self.bus.send(text.to_string(), re.clone()).await {
                Err(BusError::Timeout(_)) if re.is_some() && attempt < self.retries => {
                    attempt += 1;
                }
                other => return other.map(|_| ()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::serial_line::SerialLineBus;
    use crate::device::recorder::Recorder;
    use std::path::Path;

    /// Silence on tokio's paused clock: a device is offline one `silence` after its last line
    /// (counted from start-up too), once, and online with its next line; the instants are
    /// exact, and no wall time passes.
    #[tokio::test(start_paused = true)]
    async fn a_device_is_offline_one_silence_after_its_last_line_and_online_with_the_next() {
        let text = r#"
[buses.ard]
kind = "serial"
port = "/dev/ttyACM0"
[devices.w]
bus = "ard"
silence = "5s"
[devices.w.points.t]
field = "t"
"#;
        let c = crate::config::parse(text, Path::new("t.toml")).unwrap();
        let (_bus, handle) = SerialLineBus::new("ard", &c.buses["ard"]);
        let recorder = Recorder::new();
        let t0 = recorder.t0();
        let (lines, rx) = mpsc::channel(4);
        let token = CancellationToken::new();
        let device = LineDevice::new("w", &c.devices["w"], rx, handle, recorder.links());
        let task = tokio::spawn(device.run(token.clone()));
        for (at, t) in [(1_000, 1), (3_000, 2), (20_000, 3)] {
            tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
            lines.send(serde_json::json!({ "t": t })).await.unwrap();
        }
        // Past the last line's silence (offline at 25 s), then stop.
        tokio::time::sleep_until(t0 + Duration::from_secs(30)).await;
        token.cancel();
        task.await.unwrap();
        let expected: Vec<(u128, String)> = [
            (1_000, "reading 1"),
            (1_000, "online"),
            (3_000, "reading 2"),
            (8_000, "offline"),
            (20_000, "reading 3"),
            (20_000, "online"),
            (25_000, "offline"),
        ]
        .iter()
        .map(|(t, e)| (*t, e.to_string()))
        .collect();
        assert_eq!(recorder.events(), expected);
    }

    #[test]
    fn line_fields_become_point_values_with_scale_and_labels() {
        let text = r#"
[buses.ard]
kind = "serial"
port = "/dev/ttyACM0"
[devices.w]
bus = "ard"
[devices.w.points.temperature]
field = "temp"
precision = 1
[devices.w.points.humidity]
field = "/env/h"
scale = 0.1
[devices.w.points.mode]
map = { 0 = "idle", 1 = "run" }
[devices.w.points.name]
type = "string"
"#;
        let c = crate::config::parse(text, Path::new("t.toml")).unwrap();
        let d = &c.devices["w"];
        let doc = line::parse_json(r#"{"temp": "21.54", "env": {"h": 405}, "mode": 1, "name": 7}"#)
            .unwrap();
        let value = |doc: &Json, p: &str| point_value(doc, p, &d.points[p]);
        assert_eq!(value(&doc, "temperature"), Ok(Some(Value::Float(21.5))));
        assert_eq!(value(&doc, "humidity"), Ok(Some(Value::Float(40.5))));
        assert_eq!(value(&doc, "mode"), Ok(Some(Value::Text("run".into()))));
        assert_eq!(value(&doc, "name"), Ok(Some(Value::Text("7".into()))));
        let empty = line::parse_json("{}").unwrap();
        assert_eq!(value(&empty, "temperature"), Ok(None));
        // Carried, but no value for the point: a failed read, never a value made up.
        let bad = line::parse_json(r#"{"temp": "ERR", "env": {"h": null}, "mode": [1]}"#).unwrap();
        assert_eq!(
            value(&bad, "temperature"),
            Err("field \"temp\": \"ERR\" is not a number".into())
        );
        assert!(value(&bad, "humidity").is_err());
        assert!(value(&bad, "mode").is_err());
    }
}
