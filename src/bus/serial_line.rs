//! The task that owns a line-based serial port (`kind = "serial"`): reads lines, parses them in
//! the bus's format, routes each to the device whose `match` it meets, and writes command lines
//! with nothing else interleaved. A port that fails or disappears is reopened with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::BusError;
use crate::bus::line_codec::{self as line, Frame, LineCodec};
use crate::bus::port::{self, Backoff};
use crate::config::{BusConfig, LineFormat, MatchConfig};
use crate::rate_limit::RateLimit;

/// Parsed lines waiting for one device task. When full the line is dropped and counted: a
/// device that talks faster than we publish loses readings, not memory.
pub const DEVICE_LINES_CAP: usize = 64;
/// Command lines waiting for the port. When full, the sender waits (commands are few and
/// serialised per device already).
pub const WRITES_CAP: usize = 16;

/// Counters of a serial line bus.
#[derive(Debug, Default)]
pub struct LineStats {
    pub lines: AtomicU64,
    /// Lines that were not valid UTF-8, too long, or did not parse in the bus's format.
    pub garbage: AtomicU64,
    /// Lines that parsed but matched no device.
    pub unmatched: AtomicU64,
    /// Lines dropped because their device's queue was full.
    pub dropped: AtomicU64,
    pub writes: AtomicU64,
    pub reopens: AtomicU64,
}

/// A line to write, and what to wait for.
#[derive(Debug)]
pub struct LineWrite {
    /// Without its line ending; `\n` is appended.
    pub text: String,
    /// A reply line that must arrive within the bus timeout.
    pub expect: Option<regex::Regex>,
    /// The matching reply (when `expect` was given).
    pub reply: oneshot::Sender<Result<Option<String>, BusError>>,
}

/// The device side of a route.
struct Route {
    device: String,
    r#match: Option<MatchConfig>,
    tx: mpsc::Sender<Json>,
}

/// The cheap side: send command lines.
#[derive(Debug, Clone)]
pub struct LineHandle {
    writes: mpsc::Sender<LineWrite>,
    pub stats: Arc<LineStats>,
}

impl LineHandle {
    /// Writes `text` plus the line ending; with `expect`, waits for a matching line.
    pub async fn send(
        &self,
        text: String,
        expect: Option<regex::Regex>,
    ) -> Result<Option<String>, BusError> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(LineWrite {
                text,
                expect,
                reply,
            })
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.unwrap_or(Err(BusError::Stopped))
    }
}

/// The serial line bus task.
pub struct SerialLineBus {
    name: String,
    config: BusConfig,
    pattern: Option<regex::Regex>,
    routes: Vec<Route>,
    writes: mpsc::Receiver<LineWrite>,
    stats: Arc<LineStats>,
    garbage_log: RateLimit,
    unmatched_log: RateLimit,
}

impl SerialLineBus {
    pub fn new(name: &str, config: &BusConfig) -> (SerialLineBus, LineHandle) {
        let (tx, rx) = mpsc::channel(WRITES_CAP);
        let stats = Arc::new(LineStats::default());
        // The config was validated: a pattern compiles.
        let pattern = config
            .pattern
            .as_deref()
            .and_then(|p| regex::Regex::new(p).ok());
        (
            SerialLineBus {
                name: name.to_string(),
                config: config.clone(),
                pattern,
                routes: Vec::new(),
                writes: rx,
                stats: stats.clone(),
                garbage_log: RateLimit::new(Duration::from_secs(30)),
                unmatched_log: RateLimit::new(Duration::from_secs(30)),
            },
            LineHandle { writes: tx, stats },
        )
    }

    /// Routes lines that meet `match` (all lines when `None`) to a device; returns its receiver.
    pub fn add_device(
        &mut self,
        device: &str,
        r#match: Option<MatchConfig>,
    ) -> mpsc::Receiver<Json> {
        let (tx, rx) = mpsc::channel(DEVICE_LINES_CAP);
        self.routes.push(Route {
            device: device.to_string(),
            r#match,
            tx,
        });
        rx
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut was_down = false;
        let mut last_error = String::new();
        loop {
            let port = match port::open_serial(&self.config) {
                Ok(p) => p,
                Err(e) => {
                    if e != last_error {
                        warn!(bus = %self.name, error = %e, "cannot open serial port; retrying");
                        last_error = e;
                    }
                    was_down = true;
                    self.fail_writes_for(backoff.delay(), &shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    continue;
                }
            };
            if was_down {
                info!(bus = %self.name, port = ?self.config.port, "serial port open");
                self.stats.reopens.fetch_add(1, Ordering::Relaxed);
            }
            last_error.clear();
            backoff.reset();
            let reason = self.serve(port, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            warn!(bus = %self.name, error = %reason, "serial port lost; reopening");
            was_down = true;
        }
    }

    /// While the port is closed, commands are answered at once rather than left waiting.
    async fn fail_writes_for(&mut self, wait: Duration, shutdown: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                Some(w) = self.writes.recv() => {
                    answer(w.reply, Err(BusError::Unavailable(format!(
                        "serial port {} is not open",
                        self.config.port.as_deref().unwrap_or("?")
                    ))));
                }
            }
        }
    }

    /// Reads and writes on an open port until it fails; returns why.
    pub async fn serve<P>(&mut self, port: P, shutdown: &CancellationToken) -> String
    where
        P: AsyncRead + AsyncWrite + Unpin,
    {
        let (reader, mut writer) = tokio::io::split(port);
        let mut frames = FramedRead::new(
            reader,
            LineCodec::with_terminator(self.config.max_line, self.config.line_ending.terminator()),
        );
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return "stopping".into(),
                Some(w) = self.writes.recv() => {
                    if let Err(e) = self.write(&mut writer, &mut frames, w).await {
                        return e;
                    }
                }
                frame = frames.next() => match frame {
                    Some(Ok(f)) => { self.frame(f); }
                    Some(Err(e)) => return e.to_string(),
                    None => return "end of file (device unplugged?)".into(),
                },
            }
        }
    }

    async fn write<W, R>(
        &mut self,
        writer: &mut W,
        frames: &mut FramedRead<R, LineCodec>,
        w: LineWrite,
    ) -> Result<(), String>
    where
        W: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        let mut bytes = w.text.into_bytes();
        bytes.extend_from_slice(self.config.line_ending.bytes());
        if let Err(e) = writer.write_all(&bytes).await {
            answer(w.reply, Err(BusError::Transport(e.to_string())));
            return Err(e.to_string());
        }
        if let Err(e) = writer.flush().await {
            answer(w.reply, Err(BusError::Transport(e.to_string())));
            return Err(e.to_string());
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let Some(expect) = w.expect else {
            answer(w.reply, Ok(None));
            return Ok(());
        };
        // Wait for the reply; lines that arrive meanwhile are still routed as usual.
        let deadline = Instant::now() + self.config.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, frames.next()).await {
                Err(_) => {
                    answer(w.reply, Err(BusError::Timeout(self.config.timeout)));
                    return Ok(());
                }
                Ok(Some(Ok(Frame::Line(l)))) if expect.is_match(&l) => {
                    answer(w.reply, Ok(Some(l)));
                    return Ok(());
                }
                Ok(Some(Ok(f))) => self.frame(f),
                Ok(Some(Err(e))) => {
                    answer(w.reply, Err(BusError::Transport(e.to_string())));
                    return Err(e.to_string());
                }
                Ok(None) => {
                    answer(w.reply, Err(BusError::Transport("port closed".into())));
                    return Err("end of file (device unplugged?)".into());
                }
            }
        }
    }

    fn frame(&mut self, f: Frame) {
        let line = match f {
            Frame::Line(l) => l,
            Frame::Invalid(l) => return self.garbage("invalid UTF-8", &l),
            Frame::TooLong => return self.garbage("line too long", ""),
        };
        if line.trim().is_empty() {
            return;
        }
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        let doc = match line::parse(&line, self.config.format, self.pattern.as_ref()) {
            Ok(d) => d,
            Err(e) => return self.garbage(&e.to_string(), &line),
        };
        let mut matched = false;
        for r in &self.routes {
            let hit = match &r.r#match {
                Some(m) => line::matches(&doc, &m.field, &m.equals),
                None => true,
            };
            if hit {
                matched = true;
                if r.tx.try_send(doc.clone()).is_err() {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(bus = %self.name, device = %r.device, "device queue full; line dropped");
                }
            }
        }
        if !matched {
            self.stats.unmatched.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.unmatched_log.check(Instant::now()) {
                warn!(bus = %self.name, line = %truncate(&line), suppressed, "line matches no device");
            }
        }
    }

    fn garbage(&mut self, why: &str, line: &str) {
        self.stats.garbage.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.garbage_log.check(Instant::now()) {
            warn!(bus = %self.name, error = %why, line = %truncate(line), suppressed, "unusable line on serial bus");
        }
    }

    /// The line format, for tests.
    pub fn format(&self) -> LineFormat {
        self.config.format
    }
}

/// Answers a request; a requester that stopped waiting is no error.
fn answer<T>(tx: oneshot::Sender<T>, value: T) {
    if tx.send(value).is_err() {
        tracing::debug!("requester gave up before the answer");
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}
