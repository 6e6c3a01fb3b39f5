//! One task per Modbus device: polls it on its period without drift, decodes what came back,
//! decides what to publish, and tracks its availability.
//!
//! - A poll asks the bus for all of the device's planned reads at once; the bus runs them back
//!   to back, so the values are a consistent snapshot.
//! - A tick that comes due while the previous poll still waits is skipped and counted as an
//!   overrun; polls never queue up.
//! - After `offline_after` failed polls the device is `offline`; it is then probed with its first
//!   read only, every `offline_retry`, so a dead device costs its bus one timeout per retry period.
//! - A read refused with "illegal data address" is split (into gap-free runs, then point by
//!   point), the split is kept, and the parts are read at once.
//! - A failed read publishes nothing: values are never invented.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::command::{self, Command, CommandKind};
use super::state::{Availability, Change, DeviceState, PublishRule};
use super::{CommandStats, Out, Sink, next_command};
use crate::bus::codec;
use crate::bus::plan::{self, PlannedRead};
use crate::bus::{BusError, BusHandle, BusStats, RawData, ReadSpec};
use crate::config::{DataType, DeviceConfig, PointConfig};
use crate::model::Value;
use crate::topics::Topics;

/// A Modbus device's task: its poll loop and its commands, one at a time in arrival order.
/// A command that arrives while the device's poll waits in the bus queue is executed at once
/// (commands go ahead of polls on the bus), not after that poll.
pub struct DevicePoller {
    commands: Option<mpsc::Receiver<Command>>,
    /// A command is being executed: commands arriving meanwhile wait their turn.
    executing: bool,
    /// Points a command wrote (or a refresh read) during the current poll: what that poll read
    /// of them may be older, and is not published.
    superseded: Vec<String>,
    command_stats: Arc<CommandStats>,
    history: Option<crate::history::HistoryHandle>,
    /// Write single registers with FC16 too, for devices that refuse FC06.
    force_multiple: bool,
    name: String,
    config: Arc<DeviceConfig>,
    max_gap: u16,
    /// Point names in the order the plan's indices refer to.
    names: Vec<String>,
    reads: Vec<PlannedRead>,
    bus: BusHandle,
    sink: Arc<dyn Sink>,
    topics: Arc<Topics>,
    state: DeviceState,
    availability: Availability,
    /// Last error logged per point, so a failing point warns once, not every poll.
    point_errors: HashMap<String, String>,
}

impl DevicePoller {
    pub fn new(
        name: &str,
        config: &Arc<DeviceConfig>,
        max_gap: u16,
        bus: BusHandle,
        sink: Arc<dyn Sink>,
        topics: Arc<Topics>,
    ) -> Self {
        let names: Vec<String> = config.points.keys().cloned().collect();
        let refs: Vec<&PointConfig> = config.points.values().collect();
        let reads = plan::plan(&refs, max_gap);
        DevicePoller {
            commands: None,
            executing: false,
            superseded: Vec::new(),
            command_stats: Arc::default(),
            history: None,
            force_multiple: config.write_multiple,
            name: name.to_string(),
            availability: Availability::new(config.offline_after),
            config: config.clone(),
            max_gap,
            names,
            reads,
            bus,
            sink,
            topics,
            state: DeviceState::default(),
            point_errors: HashMap::new(),
        }
    }

    /// Takes commands from `rx` (ahead of polls).
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

    /// The reads one poll costs now (after any splits).
    pub fn reads(&self) -> usize {
        self.reads.len()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(unit) = self.config.unit else {
            return;
        };
        debug!(device = %self.name, reads = self.reads.len(), max_gap = self.max_gap, "poller started");
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(cmd) = next_command(&mut self.commands) => {
                    self.execute(unit, cmd).await;
                    continue;
                }
                _ = tokio::time::sleep_until(next) => {}
                // The bus was down and is back (an adapter replugged, a PLC rebooted): an
                // offline device is tried now, not at its next `offline_retry`.
                _ = self.bus.stats.reconnected.notified(), if self.availability.is_offline() => {
                    // A new grid from now; the old one pointed at the far retry.
                    next = Instant::now();
                }
            }
            if self.availability.is_offline() {
                if self.probe(unit).await {
                    self.poll(unit).await;
                }
            } else {
                self.poll(unit).await;
            }
            let period = if self.availability.is_offline() {
                self.config.offline_retry
            } else {
                self.config.poll
            };
            next = next_tick(next, period, Instant::now(), &self.bus.stats);
        }
    }

    /// Executes a validated command and publishes its result.
    async fn execute(&mut self, unit: u8, cmd: Command) {
        self.executing = true;
        let outcome = match &cmd.kind {
            CommandKind::Refresh => {
                self.state.force_state();
                let answered = self.poll(unit).await;
                // Everything is fresher than what a poll this refresh interrupted read.
                self.superseded.extend(self.names.iter().cloned());
                match answered {
                    true => Ok((Vec::new(), Vec::new())),
                    false => Err(format!("{}: the device did not answer", self.name)),
                }
            }
            CommandKind::Set(values) => self.write(unit, values).await,
            // Validation only makes Send for serial devices.
            CommandKind::Send { .. } => Err(format!("{}: not a serial device", self.name)),
        };
        self.executing = false;
        let counter = if outcome.is_ok() {
            &self.command_stats.ok
        } else {
            &self.command_stats.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = match &outcome {
            Ok((written, rounded)) => {
                info!(device = %self.name, action = %cmd.action, "command executed");
                command::result_payload(cmd.id.as_ref(), Some(&cmd.action), Ok(written), rounded)
            }
            Err(e) => {
                warn!(device = %self.name, action = %cmd.action, error = %e, "command failed");
                command::result_payload(cmd.id.as_ref(), Some(&cmd.action), Err(e), &[])
            }
        };
        self.out().result(&cmd, body);
    }

    /// Writes each value, then reads the written points back; the read-back values are what
    /// the result and the state carry.
    async fn write(
        &mut self,
        unit: u8,
        values: &[(String, Value)],
    ) -> Result<(Vec<(String, Value)>, Vec<String>), String> {
        let mut planned = Vec::new();
        for (point, value) in values {
            let Some(p) = self.config.points.get(point) else {
                return Err(format!("{point}: unknown point"));
            };
            planned.push(command::plan_write(point, p, value, self.force_multiple)?);
        }
        let mut rounded = Vec::new();
        for w in &planned {
            if let Err(e) = self.bus.write(unit, w.spec.clone()).await {
                return Err(format!("{}: {e}", w.point));
            }
            if w.rounded {
                rounded.push(format!(
                    "{}: rounded to {} (the register's resolution)",
                    w.point,
                    w.effective.to_json()
                ));
            }
        }
        let mut read_back = Vec::new();
        for w in &planned {
            let Some(p) = self.config.points.get(&w.point) else {
                continue;
            };
            let Some(slot) = plan::slot(p) else { continue };
            let spec = ReadSpec {
                table: slot.table,
                start: slot.address,
                count: slot.len,
            };
            let data =
                self.bus.read(unit, spec).await.map_err(|e| {
                    format!("{}: written, but reading it back failed: {e}", w.point)
                })?;
            let words: Vec<u16> = match data {
                RawData::Bits(b) => b.first().map(|x| vec![u16::from(*x)]).unwrap_or_default(),
                RawData::Words(w) => w,
            };
            let ty = p.effective_type().unwrap_or(DataType::U16);
            let raw = codec::decode(&words, ty, p.order)
                .map_err(|e| format!("{}: written, but the read-back is unusable: {e}", w.point))?;
            read_back.push((w.point.clone(), codec::to_value(raw, p)));
        }
        if let Some(change) = self.availability.success() {
            self.announce(change);
        }
        self.superseded
            .extend(read_back.iter().map(|(n, _)| n.clone()));
        let rules = read_back
            .iter()
            .filter_map(|(n, v)| {
                self.config.points.get(n).map(|p| {
                    (
                        n.clone(),
                        v.clone(),
                        PublishRule {
                            deadband: 0.0,
                            heartbeat: p.heartbeat,
                        },
                    )
                })
            })
            .collect();
        self.publish(rules, SystemTime::now());
        Ok((read_back, rounded))
    }

    /// One read to see whether an offline device is back.
    async fn probe(&mut self, unit: u8) -> bool {
        let Some(first) = self.reads.first() else {
            return false;
        };
        let result = self.bus.read(unit, first.spec).await;
        match result {
            Ok(_) | Err(BusError::Exception(_)) => true,
            Err(_) => false,
        }
    }

    /// A full poll: all reads, decode, publish, availability. Returns whether the device answered.
    async fn poll(&mut self, unit: u8) -> bool {
        let now_wall = SystemTime::now();
        self.superseded.clear();
        let mut values: Vec<(String, Value, PublishRule)> = Vec::new();
        let mut answered = false;
        let mut pending: Vec<usize> = (0..self.reads.len()).collect();
        // Splits re-read their parts at once; each split makes reads smaller, so this ends.
        for _ in 0..=self.names.len() {
            if pending.is_empty() {
                break;
            }
            let specs = pending.iter().map(|i| self.reads[*i].spec).collect();
            let results = self.bus_poll(unit, specs).await;
            let mut splits: Vec<(usize, Vec<PlannedRead>)> = Vec::new();
            for (i, result) in pending.iter().copied().zip(results) {
                match result {
                    Ok(data) => {
                        answered = true;
                        self.decode_read(i, &data, &mut values);
                    }
                    Err(e) if e.is_illegal_address() => {
                        answered = true;
                        let refs: Vec<&PointConfig> = self.config.points.values().collect();
                        match plan::split(&self.reads[i], &refs) {
                            Some(parts) => splits.push((i, parts)),
                            None => self.point_failed(i, &e),
                        }
                    }
                    Err(e @ BusError::Exception(_)) => {
                        // The device answered, only not with data: it is alive.
                        answered = true;
                        self.point_failed(i, &e);
                    }
                    Err(BusError::Stopped) => return false,
                    Err(e) => self.point_failed(i, &e),
                }
            }
            pending.clear();
            // Replace split reads (from the back, so indices stay valid) and read the parts.
            splits.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, parts) in splits {
                let spec = self.reads[i].spec;
                info!(
                    device = %self.name,
                    register = %format!("{}:{}", spec.table.name(), spec.start),
                    count = spec.count,
                    parts = parts.len(),
                    "device refused a coalesced read (illegal data address); reading it in parts from now on"
                );
                let n = parts.len();
                self.reads.splice(i..=i, parts);
                for p in pending.iter_mut() {
                    *p += n - 1;
                }
                pending.extend(i..i + n);
            }
        }
        let change = if answered {
            self.availability.success()
        } else {
            self.availability.failure()
        };
        values.retain(|(name, _, _)| !self.superseded.contains(name));
        if !values.is_empty() {
            self.publish(values, now_wall);
        }
        if let Some(change) = change {
            self.announce(change);
        }
        answered
    }

    /// The device's reads through the bus's poll queue. While they wait there behind other
    /// devices' polls, this device's commands are executed: they go to the bus ahead of polls.
    async fn bus_poll(&mut self, unit: u8, specs: Vec<ReadSpec>) -> Vec<Result<RawData, BusError>> {
        let bus = self.bus.clone();
        let reads = bus.poll(unit, specs);
        tokio::pin!(reads);
        loop {
            tokio::select! {
                biased;
                results = &mut reads => return results,
                Some(cmd) = next_command(&mut self.commands), if !self.executing => {
                    // Boxed: a refresh polls, and that poll could take a command (it doesn't:
                    // `executing`), which the compiler can't know.
                    Box::pin(self.execute(unit, cmd)).await;
                }
            }
        }
    }

    fn decode_read(
        &mut self,
        i: usize,
        data: &RawData,
        out: &mut Vec<(String, Value, PublishRule)>,
    ) {
        let read = self.reads[i].clone();
        for pi in read.points {
            let name = &self.names[pi];
            let Some(p) = self.config.points.get(name) else {
                continue;
            };
            let Some(slot) = plan::slot(p) else { continue };
            let offset = usize::from(slot.address - read.spec.start);
            let len = usize::from(slot.len);
            let words: Option<Vec<u16>> = match data {
                RawData::Bits(bits) => bits.get(offset).map(|b| vec![u16::from(*b)]),
                RawData::Words(w) => w.get(offset..offset + len).map(<[u16]>::to_vec),
            };
            let ty = p.effective_type().unwrap_or(DataType::U16);
            let decoded = match words {
                Some(w) => codec::decode(&w, ty, p.order).map_err(|e| e.to_string()),
                None => Err("the device returned fewer registers than asked".to_string()),
            };
            match decoded {
                Ok(raw) => {
                    let value = codec::to_value(raw, p);
                    if self.point_errors.remove(name).is_some() {
                        info!(device = %self.name, point = %name, "point reads again");
                    }
                    out.push((
                        name.clone(),
                        value,
                        PublishRule {
                            deadband: p.deadband,
                            heartbeat: p.heartbeat,
                        },
                    ));
                }
                Err(e) => {
                    let name = name.clone();
                    self.warn_point(&name, &e);
                }
            }
        }
    }

    fn point_failed(&mut self, i: usize, e: &BusError) {
        // Timeouts and transport errors are the device's (availability says it); a point is
        // warned about only when the device answers but that point can't be read.
        if matches!(e, BusError::Exception(_)) {
            let names: Vec<String> = self.reads[i]
                .points
                .iter()
                .map(|pi| self.names[*pi].clone())
                .collect();
            for n in names {
                self.warn_point(&n, &e.to_string());
            }
        }
    }

    fn warn_point(&mut self, point: &str, error: &str) {
        if self.point_errors.get(point).map(String::as_str) != Some(error) {
            let register = self
                .config
                .points
                .get(point)
                .and_then(|p| p.register)
                .map(|r| r.to_string())
                .unwrap_or_default();
            warn!(device = %self.name, point = %point, register = %register, error = %error, "cannot read point");
            self.point_errors
                .insert(point.to_string(), error.to_string());
        }
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

    fn publish(&mut self, values: Vec<(String, Value, PublishRule)>, at: SystemTime) {
        let out = Out {
            name: &self.name,
            config: &self.config,
            sink: self.sink.as_ref(),
            topics: &self.topics,
            history: self.history.as_ref(),
        };
        out.values(&mut self.state, values, at);
    }

    fn announce(&mut self, change: Change) {
        let online = change == Change::Online;
        if online {
            info!(device = %self.name, "device online");
        } else {
            warn!(
                device = %self.name,
                failed_polls = self.config.offline_after,
                retry = %humantime::format_duration(self.config.offline_retry),
                "device offline"
            );
        }
        self.out().availability(online);
    }
}

/// The next poll time on the grid `previous + k × period`, skipping (and counting) ticks that
/// passed while the last poll was still waiting. Staying on the grid means no drift.
pub fn next_tick(previous: Instant, period: Duration, now: Instant, stats: &BusStats) -> Instant {
    let next = previous + period;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next);
    let missed = (behind.as_nanos() / period.as_nanos().max(1)) as u32 + 1;
    BusStats::add(&stats.overruns, u64::from(missed));
    next + period * missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_on_the_grid_and_skipped_ones_are_counted() {
        let stats = BusStats::default();
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        // On time: the next grid point.
        assert_eq!(
            next_tick(t0, p, t0 + Duration::from_millis(300), &stats),
            t0 + p
        );
        assert_eq!(BusStats::get(&stats.overruns), 0);
        // The poll took 2.5 periods: ticks at 1 s and 2 s were missed, next is 3 s.
        assert_eq!(
            next_tick(t0, p, t0 + Duration::from_millis(2500), &stats),
            t0 + 3 * p
        );
        assert_eq!(BusStats::get(&stats.overruns), 2);
    }
}
