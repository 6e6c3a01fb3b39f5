//! A device output that records what a device reports, with when: for the unit tests of the
//! device tasks' timing, run on tokio's paused clock (`#[tokio::test(start_paused = true)]`).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Links;
use crate::config::DeviceConfig;
use crate::model::Value;
use crate::output::{Ack, DeviceOutput, Outputs};

/// What the device reported, with when, in milliseconds of the clock since it was made.
#[derive(Clone)]
pub(crate) struct Recorder {
    t0: Instant,
    events: Arc<Mutex<Vec<(u128, String)>>>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            t0: Instant::now(),
            events: Arc::default(),
        }
    }

    /// When it was made.
    pub(crate) fn t0(&self) -> Instant {
        self.t0
    }

    /// Links for a device task that reports here, with no command log.
    pub(crate) fn links(&self) -> Links {
        let (walked, _) = mpsc::channel(1);
        let (fatal, _) = mpsc::channel(1);
        Links {
            outputs: Arc::new(self.clone()),
            commands: Arc::default(),
            command_ids: None,
            walked,
            rewalk: tokio::sync::watch::channel(0).1,
            stopping: Arc::default(),
            fatal,
        }
    }

    fn push(&self, what: String) {
        let at = self.t0.elapsed().as_millis();
        if let Ok(mut e) = self.events.lock() {
            e.push((at, what));
        }
    }

    /// Everything reported so far: `online`, `offline`, `reading <value>`, `result <payload>`.
    pub(crate) fn events(&self) -> Vec<(u128, String)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Outputs for Recorder {
    fn device(&self, _: &str, _: &Arc<DeviceConfig>) -> Box<dyn DeviceOutput> {
        Box::new(self.clone())
    }
    fn ack(&self, _: Ack) {}
    fn replaced(&self, _: &str, _: &DeviceConfig, _: Option<&DeviceConfig>) {}
}

impl DeviceOutput for Recorder {
    fn availability(&mut self, online: bool) {
        self.push(if online { "online" } else { "offline" }.into());
    }
    fn reading(&mut self, _: usize, value: &Value, _: SystemTime) {
        self.push(format!("reading {}", value.to_json()));
    }
    fn state(&mut self, _: &[Option<Value>], _: SystemTime) {}
    fn result(&mut self, _: &str, body: String) {
        self.push(format!("result {body}"));
    }
    fn ack(&mut self, _: Ack) {}
    fn reconfigure(&mut self, _: &Arc<DeviceConfig>) {}
}
