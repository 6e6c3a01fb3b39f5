//! What the devices report, carried out: the outputs of the output seam (`crate::output`) over
//! the MQTT link and the history. This is the one place that turns a device's news into topics,
//! payloads and history rows (README "Topics", "History").
//!
//! The one history rule for command results: every result published on a device's result
//! topic is an event in the history, whoever answered it — the device, validation, a full
//! queue ("busy"), a restarting task, or a repeated id.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::DeviceConfig;
use crate::history::HistoryHandle;
use crate::model::Value;
use crate::mqtt::Outgoing;
use crate::output::{Ack, DeviceOutput, Outputs};
use crate::payload;
use crate::topics::Topics;

/// The outputs of every device: over `out` (the MQTT link, or the page's tap in front of it),
/// with the topics of the running config, recorded in `history`.
#[derive(Clone)]
pub struct Reports {
    out: Arc<dyn Outgoing>,
    topics: Arc<Topics>,
    history: HistoryHandle,
}

impl Reports {
    pub fn new(out: Arc<dyn Outgoing>, topics: Arc<Topics>, history: HistoryHandle) -> Reports {
        Reports {
            out,
            topics,
            history,
        }
    }

    /// The same outputs with the topics of a new config (a reload). Devices already running
    /// keep the topics they were started with: a device whose topics change is restarted.
    pub fn with_topics(&self, topics: Arc<Topics>) -> Reports {
        Reports {
            topics,
            ..self.clone()
        }
    }
}

impl Outputs for Reports {
    fn device(&self, name: &str, config: &Arc<DeviceConfig>) -> Box<dyn DeviceOutput> {
        Box::new(DeviceReport {
            name: name.to_string(),
            location: config.location.clone(),
            availability: self.topics.availability(name, &config.location),
            state: self.topics.state(name, &config.location),
            result: self.topics.command_result(name, &config.location),
            points: points(config),
            reports: self.clone(),
        })
    }

    fn ack(&self, ack: Ack) {
        self.out.ack(ack);
    }

    fn replaced(&self, name: &str, old: &DeviceConfig, new: Option<&DeviceConfig>) {
        let (t, loc) = (&self.topics, &old.location);
        let moved = new.is_some_and(|n| t.state(name, &n.location) != t.state(name, loc));
        if new.is_some() && !moved {
            return;
        }
        self.out.clear_retained(t.state(name, loc));
        self.out.clear_retained(t.availability(name, loc));
        for (point, _) in old.points.iter().filter(|(_, p)| p.retain) {
            self.out.clear_retained(t.sensor(name, loc, point));
        }
        if new.is_none() {
            self.history
                .record_availability(name, false, SystemTime::now());
        }
    }
}

/// One device's output: its topics, made once.
struct DeviceReport {
    name: String,
    location: String,
    availability: String,
    state: String,
    result: String,
    /// By point index (the order of `config.points`).
    points: Vec<PointReport>,
    reports: Reports,
}

/// What is fixed per point.
struct PointReport {
    name: String,
    unit: Option<String>,
    qos: u8,
    retain: bool,
    /// Its sensor topic and the fixed part of its payload, made at its first publish.
    sensor: Option<(String, payload::SensorPayload)>,
}

fn points(config: &DeviceConfig) -> Vec<PointReport> {
    config
        .points
        .iter()
        .map(|(name, p)| PointReport {
            name: name.clone(),
            unit: p.unit.clone(),
            qos: p.qos,
            retain: p.retain,
            sensor: None,
        })
        .collect()
}

impl DeviceOutput for DeviceReport {
    fn availability(&mut self, online: bool) {
        let r = &self.reports;
        r.out.publish_retained(
            self.availability.clone(),
            payload::availability(&self.name, online),
        );
        r.history
            .record_availability(&self.name, online, SystemTime::now());
    }

    fn reading(&mut self, point: usize, value: &Value, at: SystemTime) {
        let Some(p) = self.points.get_mut(point) else {
            return;
        };
        let r = &self.reports;
        let (topic, body) = p.sensor.get_or_insert_with(|| {
            (
                r.topics.sensor(&self.name, &self.location, &p.name),
                payload::SensorPayload::new(p.unit.as_deref(), &self.name, &self.location),
            )
        });
        r.out
            .publish(topic.clone(), body.render(value, at), p.qos, p.retain);
        r.history.record_reading(&self.name, &p.name, at, value);
    }

    fn state(&mut self, latest: &[Option<Value>], at: SystemTime) {
        let names = self.points.iter().map(|p| p.name.as_str());
        let latest = names
            .zip(latest)
            .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)));
        let body = payload::state(latest, at);
        self.reports.out.publish_retained(self.state.clone(), body);
    }

    fn result(&mut self, raw: &str, body: String) {
        let r = &self.reports;
        r.history
            .record_command(&self.name, raw, &body, SystemTime::now());
        r.out.publish(self.result.clone(), body, 1, false);
    }

    fn ack(&mut self, ack: Ack) {
        self.reports.out.ack(ack);
    }

    fn reconfigure(&mut self, config: &Arc<DeviceConfig>) {
        self.points = points(config);
    }
}
