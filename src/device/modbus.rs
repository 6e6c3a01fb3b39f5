//! The Modbus transport of the device core: one task per Modbus device polls it on its period
//! without drift, decodes what came back and hands it to the [`Core`], and executes its
//! commands as register writes confirmed by read-back.
//!
//! - A poll asks the bus for all of the device's planned reads at once; the bus runs them one by
//!   one and lets commands in between.
//! - A tick that comes due while the previous poll still waits is skipped and counted as an
//!   overrun; polls never queue up.
//! - After `offline_after` failed polls the device is `offline`; it is then probed with its first
//!   read only, every `offline_retry`, so a dead device costs its bus one timeout per retry period.
//! - A read refused with "illegal data address" is split (into gap-free runs, then point by
//!   point), the split is kept, and the parts are read at once.
//! - While its poll waits on the bus the task still takes its commands: a command for an offline
//!   device is refused at once, and a write goes to the bus ahead of polls.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::command::{self, CommandKind, Failure, Outcome, PlannedWrite};
use super::{Core, Links, Queued, Walked, next_command};
use crate::bus::codec;
use crate::bus::decode::{Decoded, PollDecoder};
use crate::bus::plan::{self, PlannedRead, ScaleFactors};
use crate::bus::{BusError, BusHandle, BusStats, RawData, ReadSpec, Written};
use crate::config::{DeviceConfig, PointConfig};
use crate::model::Value;
use crate::sunspec::{self, walk::WalkError};

/// How one poll went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    Answered,
    Silent,
    /// The bus is stopping: nothing is concluded from this poll.
    Stopped,
}

/// A Modbus device's task: its poll loop and its commands, one at a time in arrival order.
/// A command that arrives while the device's poll waits in the bus queue is executed at once
/// (commands go ahead of polls on the bus), not after that poll.
pub struct DevicePoller {
    core: Core,
    commands: Option<mpsc::Receiver<Queued>>,
    /// A command is being executed: commands arriving meanwhile wait their turn.
    executing: bool,
    /// Write single registers with FC16 too, for devices that refuse FC06.
    force_multiple: bool,
    max_gap: u16,
    /// Points on the device: the plan's indices, which are the core's point indices, run
    /// over `0..points` in the order of `config.points`; the scale factors follow them.
    points: usize,
    /// The scale-factor registers the points name (`scale_register`).
    scale: Arc<ScaleFactors>,
    reads: Vec<PlannedRead>,
    bus: BusHandle,
    /// A SunSpec device (`profile = "sunspec"`): its points come from its model chain.
    sunspec: Option<SunSpecWalk>,
}

/// What a SunSpec device's task keeps of its walks.
struct SunSpecWalk {
    /// The chain must be read before the next poll: at start, after a reload.
    due: bool,
    /// The last walk's error, so a device that keeps failing the same way warns once.
    error: Option<WalkError>,
    walked: mpsc::Sender<Walked>,
    rewalk: tokio::sync::watch::Receiver<u64>,
}

impl DevicePoller {
    pub fn new(
        name: &str,
        config: &Arc<DeviceConfig>,
        max_gap: u16,
        bus: BusHandle,
        links: Links,
    ) -> Self {
        let refs: Vec<&PointConfig> = config.points.values().collect();
        let reads = plan::plan(&refs, max_gap);
        let scale = Arc::new(ScaleFactors::of(&refs));
        let sunspec = config.sunspec.as_ref().map(|_| SunSpecWalk {
            due: true,
            error: None,
            walked: links.walked.clone(),
            rewalk: links.rewalk.clone(),
        });
        DevicePoller {
            core: Core::new(name, config, config.offline_after, links),
            commands: None,
            executing: false,
            force_multiple: config.write_multiple,
            max_gap,
            points: config.points.len(),
            scale,
            reads,
            bus,
            sunspec,
        }
    }

    /// Takes commands from `rx` (ahead of polls).
    pub fn with_commands(mut self, rx: mpsc::Receiver<Queued>) -> Self {
        self.commands = Some(rx);
        self
    }

    /// The reads one poll costs now (after any splits).
    pub fn reads(&self) -> usize {
        self.reads.len()
    }

    fn config(&self) -> &Arc<DeviceConfig> {
        self.core.config()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(unit) = self.config().unit else {
            return;
        };
        debug!(device = %self.core.name(), reads = self.reads.len(), max_gap = self.max_gap, "poller started");
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(q) = next_command(&mut self.commands) => {
                    self.command(unit, q).await;
                    continue;
                }
                _ = tokio::time::sleep_until(next) => {}
                // The bus was down and is back (an adapter replugged, a PLC rebooted): an
                // offline device is tried now, not at its next `offline_retry`.
                _ = self.bus.stats.reconnected.notified(), if self.core.is_offline() => {
                    // A new grid from now; the old one pointed at the far retry.
                    next = Instant::now();
                }
                // A reload: a SunSpec device reads its chain again (a firmware update may
                // have changed it), at once.
                true = rewalk(&mut self.sunspec) => {
                    if let Some(s) = self.sunspec.as_mut() {
                        s.due = true;
                    }
                    next = Instant::now();
                }
            }
            // A stopping bus answers everything at once, so this ends promptly at shutdown.
            // A SunSpec device reads its chain at start, after a reload, and whenever it comes
            // back from offline (the walk is then its probe).
            let walk = self
                .sunspec
                .as_ref()
                .is_some_and(|s| s.due || self.core.is_offline());
            let polled = if walk {
                match self.walk(unit).await {
                    Polled::Answered => self.poll(unit, false).await,
                    other => other,
                }
            } else if self.core.is_offline() {
                match self.probe(unit).await {
                    Polled::Answered => self.poll(unit, false).await,
                    other => other,
                }
            } else {
                self.poll(unit, false).await
            };
            if polled == Polled::Stopped {
                break;
            }
            let period = if self.core.is_offline() {
                self.config().offline_retry
            } else {
                self.config().poll
            };
            next = next_tick(next, period, Instant::now(), &self.bus.stats);
        }
        if let Some(queue) = self.commands.as_mut() {
            self.core.cut_off(queue);
        }
    }

    /// Executes a command the core admits, and hands its outcome back.
    async fn command(&mut self, unit: u8, queued: Queued) {
        let Some(admitted) = self.core.admit(queued).await else {
            return;
        };
        self.executing = true;
        let outcome = match &admitted.command.kind {
            CommandKind::Refresh => self.refresh(unit).await,
            CommandKind::Set(values) => {
                let writes = &admitted.command.writes;
                self.write(unit, values, writes, !admitted.interrupted)
                    .await
            }
            // Validation makes Send only for serial devices.
            CommandKind::Send { .. } => Some(Outcome::error("not a serial device")),
        };
        self.executing = false;
        match outcome {
            Some(o) => self.core.finish(admitted, o).await,
            None => self.core.abandon(admitted).await,
        }
    }

    /// `refresh`: every point read now, ahead of polls, and the state published.
    async fn refresh(&mut self, unit: u8) -> Option<Outcome> {
        let was_offline = self.core.is_offline();
        self.core.force_state();
        // A SunSpec device whose chain is due (or was never read) has no points to read yet.
        let walk = self
            .sunspec
            .as_ref()
            .is_some_and(|s| s.due || self.config().awaits_walk());
        let polled = if walk {
            match self.walk(unit).await {
                Polled::Answered => self.poll(unit, true).await,
                other => other,
            }
        } else {
            self.poll(unit, true).await
        };
        // Everything is fresher than what a poll this refresh interrupted read.
        self.core.supersede_all();
        match polled {
            Polled::Answered => Some(Outcome::default()),
            Polled::Silent if was_offline => Some(Outcome::error(format!(
                "{}: no answer",
                super::DEVICE_OFFLINE
            ))),
            Polled::Silent => Some(Outcome::error(format!(
                "{}: the device did not answer",
                self.core.name()
            ))),
            Polled::Stopped => None,
        }
    }

    /// Writes each value and reads the written points back, in one bus request (no poll read
    /// comes between them); the read-back values are what the result and the state carry.
    /// With `send` false (a command interrupted by a crash) nothing is written: the points
    /// are read back, and the command is confirmed only if the device holds what it asked.
    /// `None` when the bus stopped before anything was written.
    async fn write(
        &mut self,
        unit: u8,
        values: &[(String, Value)],
        writes: &[PlannedWrite],
        send: bool,
    ) -> Option<Outcome> {
        let mut planned: Vec<(PlannedWrite, ReadSpec)> = Vec::new();
        for (i, (point, value)) in values.iter().enumerate() {
            let Some(p) = self.config().points.get(point) else {
                return Some(Outcome::error(format!("{point}: unknown point")));
            };
            // Planned when the command was validated; again only if the point changed since
            // (a SunSpec walk read a new model chain meanwhile).
            let w = match writes
                .get(i)
                .filter(|w| w.point == *point && w.config == *p)
            {
                Some(w) => w.clone(),
                None => match command::plan_write(point, p, value, self.force_multiple) {
                    Ok(w) => w,
                    Err(e) => return Some(Outcome::error(e)),
                },
            };
            let Some(slot) = plan::slot(p) else {
                return Some(Outcome::error(format!("{point}: has no register")));
            };
            let read = ReadSpec {
                table: slot.table,
                start: slot.address,
                count: slot.len,
            };
            planned.push((w, read));
        }
        let results: Vec<Written> = if send {
            let pairs = planned.iter().map(|(w, r)| (w.spec.clone(), *r)).collect();
            self.bus.command(unit, pairs).await
        } else {
            let mut out = Vec::with_capacity(planned.len());
            for (_, r) in &planned {
                out.push(Written {
                    write: Some(Ok(())),
                    read_back: Some(self.bus.read(unit, *r).await),
                });
            }
            out
        };
        if matches!(
            results.first().map(|r| &r.write),
            Some(Some(Err(BusError::Stopped)))
        ) {
            return None;
        }
        let mut outcome = Outcome::default();
        for (i, ((w, _), r)) in planned.iter().zip(results).enumerate() {
            match r.write {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    outcome.failure = Some(Failure {
                        error: format!("{}: {e}", w.point),
                        failed: Some(w.point.clone()),
                        not_written: planned[i + 1..].iter().map(|x| x.0.point.clone()).collect(),
                    });
                    continue;
                }
                None => continue,
            }
            if w.rounded && send {
                outcome.rounded.push(format!(
                    "{}: rounded to {} (the register's resolution)",
                    w.point,
                    w.effective.to_json()
                ));
            }
            let back = match r.read_back {
                Some(Ok(data)) => decode_point(&w.config, &data)
                    .map_err(|e| format!("the read-back is unusable: {e}")),
                Some(Err(e)) => Err(format!("reading it back failed: {e}")),
                None => Err("not read back".to_string()),
            };
            match back {
                Ok(v) => outcome.written.push((w.point.clone(), v)),
                Err(e) => {
                    outcome.failure.get_or_insert(Failure {
                        error: format!("{}: written, but {e}", w.point),
                        failed: Some(w.point.clone()),
                        not_written: Vec::new(),
                    });
                }
            }
        }
        if !outcome.written.is_empty() {
            self.core.answered();
            self.core.written(&outcome.written);
        }
        if !send {
            // Interrupted by a crash (a power cut, kill -9) while it ran: never written again by
            // itself, and answered so, with what of it the device holds now (it may have been
            // written before the crash).
            outcome.written.retain(|(point, v)| {
                planned
                    .iter()
                    .any(|(w, _)| w.point == *point && w.effective == *v)
            });
            outcome.failure = Some(Failure {
                error: super::INTERRUPTED.to_string(),
                ..Failure::default()
            });
        }
        Some(outcome)
    }

    /// Reads a SunSpec device's model chain. A new or changed chain gives the device its
    /// points (and the supervisor hears of it); a device that does not answer, or whose chain
    /// cannot be used, counts a failed poll: it goes offline, and is tried again at its
    /// `offline_retry` — never polled with points from a broken chain.
    async fn walk(&mut self, unit: u8) -> Polled {
        let base = self.config().sunspec.as_ref().and_then(|s| s.base);
        let bus = self.bus.clone();
        let walked = self.wait(unit, sunspec::walk::walk(&bus, unit, base)).await;
        let Some(state) = self.sunspec.as_mut() else {
            return Polled::Silent;
        };
        match walked {
            Ok(w) => {
                state.due = false;
                state.error = None;
                if let Some(why) = &w.ended_by {
                    debug!(device = %self.core.name(), "SunSpec chain without an end marker: {why}");
                }
                let current = self
                    .config()
                    .sunspec
                    .as_ref()
                    .and_then(|s| s.chain.as_ref());
                if current != Some(&w.chain) {
                    self.adopt(w).await;
                }
                Polled::Answered
            }
            Err(WalkError::Stopped) => Polled::Stopped,
            Err(WalkError::Silent(e)) => {
                let why = format!("no answer to the SunSpec model chain read ({e})");
                self.core.silent(&why);
                Polled::Silent
            }
            Err(e) => {
                if state.error.as_ref() != Some(&e) {
                    warn!(device = %self.core.name(), error = %e, "SunSpec: the model chain cannot be used; no points are read from it");
                    state.error = Some(e.clone());
                }
                self.core.silent(&format!("SunSpec: {e}"));
                Polled::Silent
            }
        }
    }

    /// The points of a newly read chain: the device polls them from now on, and the
    /// supervisor announces them.
    async fn adopt(&mut self, w: sunspec::walk::Walked) {
        let from = self.config().clone();
        let models: Vec<String> = w
            .chain
            .models
            .iter()
            .map(|m| format!("{} at {} ({} registers)", m.id, m.address, m.length))
            .collect();
        let (dev, built) = sunspec::resolve(&from, w.chain, w.identity);
        let name = self.core.name().to_string();
        info!(
            device = %name,
            models = %models.join(", "),
            points = dev.points.len(),
            "SunSpec model chain read"
        );
        if !built.unknown.is_empty() {
            let ids: Vec<String> = built.unknown.iter().map(u16::to_string).collect();
            info!(device = %name, models = %ids.join(", "), "SunSpec models without points in fieldbridge are skipped");
        }
        if !built.unmatched.is_empty() {
            warn!(device = %name, points = %built.unmatched.join(", "), "points of the config change keys of points the device's SunSpec models do not have; they are ignored");
        }
        let dev = Arc::new(dev);
        let refs: Vec<&PointConfig> = dev.points.values().collect();
        self.reads = plan::plan(&refs, self.max_gap);
        self.scale = Arc::new(ScaleFactors::of(&refs));
        self.points = dev.points.len();
        self.core.reconfigure(&dev);
        let report = Walked {
            device: name,
            from,
            config: dev,
        };
        if let Some(tx) = self.sunspec.as_ref().map(|s| s.walked.clone()) {
            // The supervisor drains these at once; a stopping one no longer does, and the
            // device's own stop cancels this task.
            if tx.send(report).await.is_err() {
                debug!("the supervisor is gone; the walk's points stay with the device");
            }
        }
    }

    /// One read to see whether an offline device is back.
    async fn probe(&mut self, unit: u8) -> Polled {
        let Some(first) = self.reads.first() else {
            return Polled::Silent;
        };
        let bus = self.bus.clone();
        match self.wait(unit, bus.read(unit, first.spec)).await {
            Ok(_) => Polled::Answered,
            Err(BusError::Stopped) => Polled::Stopped,
            Err(e) if e.is_silence() => Polled::Silent,
            // An exception: the device answered.
            Err(_) => Polled::Answered,
        }
    }

    /// A full poll: all reads, decode, hand the values and failures to the core. With `now`
    /// (refresh) the reads go ahead of polls.
    async fn poll(&mut self, unit: u8, now: bool) -> Polled {
        let at = SystemTime::now();
        self.core.poll_started();
        let mut decoded = Decoded {
            values: Vec::with_capacity(self.points),
            ..Decoded::default()
        };
        let mut failed: Vec<usize> = Vec::new();
        let mut answered = false;
        let mut pending: Vec<usize> = (0..self.reads.len()).collect();
        // The points by index, for decoding without a lookup by name per value, then the
        // scale factors (the plan's indices).
        let config = self.config().clone();
        let scale = self.scale.clone();
        let own: Vec<&PointConfig> = config.points.values().collect();
        let points = scale.with_points(&own);
        let mut decoder = PollDecoder::new(&points, &scale);
        // Splits re-read their parts at once; each split makes reads smaller, so this ends.
        for _ in 0..=points.len() {
            if pending.is_empty() {
                break;
            }
            let specs: Vec<ReadSpec> = pending.iter().map(|i| self.reads[*i].spec).collect();
            let bus = self.bus.clone();
            let results = if now {
                self.wait(unit, bus.poll_now(unit, specs)).await
            } else {
                self.wait(unit, bus.poll(unit, specs)).await
            };
            let mut splits: Vec<(usize, Vec<PlannedRead>)> = Vec::new();
            for (i, result) in pending.iter().copied().zip(results) {
                match result {
                    Ok(data) => {
                        answered = true;
                        decoder.read(&self.reads[i], &data, &mut decoded);
                    }
                    Err(e) if e.is_illegal_address() => {
                        answered = true;
                        match plan::split(&self.reads[i], &points) {
                            Some(parts) => splits.push((i, parts)),
                            None => self.read_failed(i, &e, &mut failed),
                        }
                    }
                    Err(BusError::Stopped) => return Polled::Stopped,
                    Err(e) => {
                        // An exception is the device's answer: it is alive.
                        answered |= !e.is_silence();
                        self.read_failed(i, &e, &mut failed);
                    }
                }
            }
            pending.clear();
            // Replace split reads (from the back, so indices stay valid) and read the parts.
            splits.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, parts) in splits {
                let spec = self.reads[i].spec;
                info!(
                    device = %self.core.name(),
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
        decoder.finish(&mut decoded);
        // The device says it has no value: unknown, and nothing to warn about.
        failed.extend_from_slice(&decoded.no_value);
        for (pi, e) in std::mem::take(&mut decoded.errors) {
            self.core.point_error(pi, &e);
            failed.push(pi);
        }
        let values = decoded.values;
        if !answered {
            let why = format!(
                "{} polls without an answer; tried again every {}",
                self.config().offline_after,
                humantime::format_duration(self.config().offline_retry)
            );
            self.core.silent(&why);
            return Polled::Silent;
        }
        self.core.values(values, &failed, at);
        self.core.answered();
        Polled::Answered
    }

    /// Awaits a bus request of this device's poll. Meanwhile its commands are executed (unless
    /// one is already): a write goes to the bus ahead of polls, and a command for an offline
    /// device is refused at once, not after a probe's timeout.
    async fn wait<F: Future>(&mut self, unit: u8, request: F) -> F::Output {
        tokio::pin!(request);
        loop {
            tokio::select! {
                biased;
                out = &mut request => return out,
                Some(q) = next_command(&mut self.commands), if !self.executing => {
                    // Boxed: a refresh polls, and that poll could take a command (it doesn't:
                    // `executing`), which the compiler can't know.
                    Box::pin(self.command(unit, q)).await;
                }
            }
        }
    }

    /// A read of the poll failed: its points failed. Timeouts and transport errors are the
    /// device's (availability says it); a point is warned about only when the device answers
    /// but that point can't be read.
    fn read_failed(&mut self, i: usize, e: &BusError, failed: &mut Vec<usize>) {
        // Scale factors (after the points) are not points: theirs fail when they are applied.
        for &pi in self.reads[i].points.iter().filter(|pi| **pi < self.points) {
            if !e.is_silence() {
                self.core.point_error(pi, &e.to_string());
            }
            failed.push(pi);
        }
    }
}

/// A point's value from what a read of exactly its registers (or bit) returned.
fn decode_point(p: &PointConfig, data: &RawData) -> Result<Value, String> {
    let words: Vec<u16> = match data {
        RawData::Bits(b) => b.first().map(|x| vec![u16::from(*x)]).unwrap_or_default(),
        RawData::Words(w) => w.clone(),
    };
    match codec::decode_point(&words, p).map_err(|e| e.to_string())? {
        Some(raw) => Ok(codec::to_value(raw, p)),
        None => Err("the device reports no value (a raw value of `unavailable`)".to_string()),
    }
}

/// Whether a reload asked SunSpec devices to read their chain again; never for other devices.
async fn rewalk(sunspec: &mut Option<SunSpecWalk>) -> bool {
    match sunspec.as_mut().map(|s| &mut s.rewalk) {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
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
    use crate::bus::BusRequest;
    use crate::device::recorder::Recorder;

    /// A device polled every second that answers its first three polls with a changing value,
    /// then goes silent; `offline_after = 2`, `offline_retry = 10s`.
    fn device() -> Arc<DeviceConfig> {
        let text = r#"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[devices.meter]
bus = "plc"
unit = 1
poll = "1s"
offline_after = 2
offline_retry = "10s"
[devices.meter.points.power]
register = "holding:0"
"#;
        crate::config::parse(text, std::path::Path::new("t.toml"))
            .unwrap()
            .devices["meter"]
            .clone()
    }

    /// The poller's timing on tokio's paused clock: no wall time passes, and every instant is
    /// exact. Polls stay on their 1 s grid; a device silent for `offline_after` polls goes
    /// offline once, is then probed every `offline_retry` (a read of its first register only),
    /// and is online again with its first answer.
    #[tokio::test(start_paused = true)]
    async fn polls_keep_their_grid_and_a_silent_device_is_probed_every_offline_retry() {
        let (commands_tx, mut commands) = mpsc::channel(8);
        let (polls_tx, mut polls) = mpsc::channel(8);
        let stats = Arc::new(BusStats::default());
        let poller_stats = stats.clone();
        let bus = BusHandle::from_senders("plc".into(), commands_tx, polls_tx, stats);
        let recorder = Recorder::new();
        let links = recorder.links();
        let token = CancellationToken::new();
        let poller = DevicePoller::new("meter", &device(), 10, bus, links);
        let task = tokio::spawn(poller.run(token.clone()));
        // The bus: the first three polls answered (values 10, 11, 12), then silence until 42 s,
        // then answers again (the value is 10 + the request's number); what was asked is
        // recorded with its time.
        let mut asked: Vec<(u128, &str)> = Vec::new();
        let t0 = recorder.t0();
        let silent = || Err(BusError::Timeout(Duration::from_millis(500)));
        while asked.len() < 11 {
            tokio::select! {
                Some(BusRequest::Poll { reads, reply, .. }) = polls.recv() => {
                    let n = asked.len() as u16;
                    let at = t0.elapsed().as_millis();
                    asked.push((at, "poll"));
                    let answer = if n < 3 || at >= 42_000 {
                        reads.iter().map(|_| Ok(RawData::Words(vec![10 + n]))).collect()
                    } else {
                        reads.iter().map(|_| silent()).collect()
                    };
                    assert!(reply.send(answer).is_ok(), "the poller waits for its answer");
                }
                Some(BusRequest::Read { reply, .. }) = commands.recv() => {
                    let at = t0.elapsed().as_millis();
                    asked.push((at, "probe"));
                    let answer = if at >= 42_000 {
                        Ok(RawData::Words(vec![20]))
                    } else {
                        silent()
                    };
                    assert!(reply.send(answer).is_ok(), "the poller waits for its answer");
                }
            }
        }
        token.cancel();
        task.await.unwrap();
        // In request order, at exact instants: 1 s apart while online, then (offline after
        // the second silent poll, at 4 s) a probe every 10 s on the grid from the last poll;
        // the probe that is answered is followed at once by a full poll.
        assert_eq!(
            asked,
            [
                (0, "poll"),
                (1_000, "poll"),
                (2_000, "poll"),
                (3_000, "poll"),
                (4_000, "poll"),
                (14_000, "probe"),
                (24_000, "probe"),
                (34_000, "probe"),
                (44_000, "probe"),
                (44_000, "poll"),
                // Online again: back to 1 s.
                (45_000, "poll"),
            ]
        );
        // One line per state change, none per poll: no reading while silent, offline once.
        let events = recorder.events();
        let expected: Vec<(u128, String)> = [
            (0, "reading 10"),
            (0, "online"),
            (1_000, "reading 11"),
            (2_000, "reading 12"),
            (4_000, "offline"),
            (44_000, "reading 19"),
            (44_000, "online"),
            (45_000, "reading 20"),
        ]
        .iter()
        .map(|(t, e)| (*t, e.to_string()))
        .collect();
        assert_eq!(events, expected);
        assert_eq!(BusStats::get(&poller_stats.overruns), 0);
    }

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
