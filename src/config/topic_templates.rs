//! `[topics]`: the device topic templates (checked whole in `validate.rs`).

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn topics(&mut self, s: &Section) -> TopicsConfig {
        self.keys(s, &["sensor", "state", "command", "availability"]);
        TopicsConfig {
            sensor: self
                .text(s, "sensor")
                .unwrap_or_else(|| "{base}/{location}/sensor/{device}/{point}".into()),
            state: self
                .text(s, "state")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/state".into()),
            command: self
                .text(s, "command")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/command".into()),
            availability: self
                .text(s, "availability")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/availability".into()),
        }
    }
}
