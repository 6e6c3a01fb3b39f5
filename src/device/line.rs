//! One task per serial line device: turns the lines routed to it into point values, publishes
//! them exactly like Modbus points (deadband, heartbeat, state, sensor topics), tracks
//! availability by silence, and executes its `send` actions.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::command::{self, Command, CommandKind};
use super::state::{DeviceState, PublishRule};
use super::{CommandStats, Out, Sink, next_command};
use crate::bus::codec::{self, Raw};
use crate::bus::line;
use crate::bus::serial_line::LineHandle;
use crate::config::{DataType, DeviceConfig, PointConfig};
use crate::model::Value;
use crate::topics::Topics;

/// A line field → the point's value. Text that reads as a number is a number.
pub fn point_value(doc: &Json, point: &str, p: &PointConfig) -> Option<Value> {
    let name = p.field.as_deref().unwrap_or(point);
    let v = line::typed(line::field(doc, name)?);
    let raw = match (&v, p.data_type) {
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
                Raw::Float(n.as_f64()?)
            }
        }
        (Json::String(s), _) => Raw::Text(s.clone()),
        _ => return None,
    };
    Some(codec::to_value(raw, p))
}

/// A serial line device's task.
pub struct LineDevice {
    name: String,
    config: Arc<DeviceConfig>,
    lines: mpsc::Receiver<Json>,
    commands: Option<mpsc::Receiver<Command>>,
    command_stats: Arc<CommandStats>,
    history: Option<crate::history::HistoryHandle>,
    bus: LineHandle,
    sink: Arc<dyn Sink>,
    topics: Arc<Topics>,
    state: DeviceState,
    online: Option<bool>,
}

impl LineDevice {
    pub fn new(
        name: &str,
        config: &Arc<DeviceConfig>,
        lines: mpsc::Receiver<Json>,
        bus: LineHandle,
        sink: Arc<dyn Sink>,
        topics: Arc<Topics>,
    ) -> Self {
        LineDevice {
            name: name.to_string(),
            config: config.clone(),
            lines,
            commands: None,
            command_stats: Arc::default(),
            history: None,
            bus,
            sink,
            topics,
            state: DeviceState::default(),
            online: None,
        }
    }

    /// Records what it publishes in the history.
    pub fn with_history(mut self, h: crate::history::HistoryHandle) -> Self {
        self.history = Some(h);
        self
    }

    pub fn with_commands(mut self, rx: mpsc::Receiver<Command>, stats: Arc<CommandStats>) -> Self {
        self.commands = Some(rx);
        self.command_stats = stats;
        self
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut commands = self.commands.take();
        // Silence is counted from start-up too: a device that never talks goes offline.
        let mut last_line = Instant::now();
        loop {
            let silent_at = last_line + self.config.silence;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(cmd) = next_command(&mut commands) => self.execute(cmd).await,
                doc = self.lines.recv() => match doc {
                    Some(doc) => {
                        last_line = Instant::now();
                        self.line(&doc);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(silent_at), if self.online != Some(false) => {
                    self.set_online(false);
                }
            }
        }
    }

    fn line(&mut self, doc: &Json) {
        let values: Vec<(String, Value, PublishRule)> = self
            .config
            .points
            .iter()
            .filter_map(|(name, p)| {
                point_value(doc, name, p).map(|v| {
                    (
                        name.clone(),
                        v,
                        PublishRule {
                            deadband: p.deadband,
                            heartbeat: p.heartbeat,
                        },
                    )
                })
            })
            .collect();
        self.set_online(true);
        if values.is_empty() {
            return;
        }
        let out = Out {
            name: &self.name,
            config: &self.config,
            sink: self.sink.as_ref(),
            topics: &self.topics,
            history: self.history.as_ref(),
        };
        out.values(&mut self.state, values, SystemTime::now());
    }

    fn out(&self) -> Out<'_> {
        Out {
            name: &self.name,
            config: &self.config,
            sink: self.sink.as_ref(),
            topics: &self.topics,
            history: self.history.as_ref(),
        }
    }

    fn set_online(&mut self, online: bool) {
        if self.online == Some(online) {
            return;
        }
        self.online = Some(online);
        if online {
            info!(device = %self.name, "device online");
        } else {
            warn!(
                device = %self.name,
                silence = %humantime::format_duration(self.config.silence),
                "device offline: no line within the silence period"
            );
        }
        self.out().availability(online);
    }

    async fn execute(&mut self, cmd: Command) {
        let outcome = match &cmd.kind {
            CommandKind::Send { text, expect } => {
                let re = expect.as_deref().and_then(|e| regex::Regex::new(e).ok());
                self.bus
                    .send(text.clone(), re)
                    .await
                    .map(|_| Vec::new())
                    .map_err(|e| format!("{}: {e}", cmd.action))
            }
            CommandKind::Refresh => {
                Err("refresh: a serial device reports on its own; nothing to read".into())
            }
            CommandKind::Set(values) => self.set(values).await.map(|()| values.clone()),
        };
        let counter = if outcome.is_ok() {
            &self.command_stats.ok
        } else {
            &self.command_stats.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = match &outcome {
            Ok(written) => {
                info!(device = %self.name, action = %cmd.action, "command sent");
                command::result_payload(cmd.id.as_ref(), Some(&cmd.action), Ok(written), &[])
            }
            Err(e) => {
                warn!(device = %self.name, action = %cmd.action, error = %e, "command failed");
                command::result_payload(cmd.id.as_ref(), Some(&cmd.action), Err(e), &[])
            }
        };
        self.out().result(&cmd, body);
    }
}

impl LineDevice {
    /// Writable serial points: each point's `send` line with `{value}` filled in, one after
    /// another, each waiting for its `expect` reply when it has one.
    async fn set(&mut self, values: &[(String, Value)]) -> Result<(), String> {
        for (point, value) in values {
            let Some(p) = self.config.points.get(point) else {
                return Err(format!("{point}: unknown point"));
            };
            let Some(template) = p.send.as_deref() else {
                return Err(format!("{point}: not writable"));
            };
            let text = match value {
                Value::Text(t) => t.clone(),
                other => other.to_json().to_string(),
            };
            if text.contains(['\n', '\r']) {
                return Err(format!("{point}: the value must not contain line breaks"));
            }
            let line = template.replace("{value}", &text);
            let re = p.expect.as_deref().and_then(|e| regex::Regex::new(e).ok());
            self.bus
                .send(line, re)
                .await
                .map_err(|e| format!("{point}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
        assert_eq!(
            point_value(&doc, "temperature", &d.points["temperature"]),
            Some(Value::Float(21.5))
        );
        assert_eq!(
            point_value(&doc, "humidity", &d.points["humidity"]),
            Some(Value::Float(40.5))
        );
        assert_eq!(
            point_value(&doc, "mode", &d.points["mode"]),
            Some(Value::Text("run".into()))
        );
        assert_eq!(
            point_value(&doc, "name", &d.points["name"]),
            Some(Value::Text("7".into()))
        );
        let empty = line::parse_json("{}").unwrap();
        assert_eq!(
            point_value(&empty, "temperature", &d.points["temperature"]),
            None
        );
    }
}
