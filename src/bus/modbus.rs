//! The task that owns a Modbus bus (TCP, RTU on a serial port, RTU over TCP) and its one
//! tokio-modbus `Context`. Transactions are strictly serialised; commands go ahead of polls.
//!
//! tokio-modbus has no timeouts and no reconnect, so here:
//! - every transaction runs under the bus `timeout`, with `retries` more tries on timeouts,
//!   gateway "no answer" exceptions (0x0A, 0x0B) and transport errors (any other exception is
//!   the device's answer and is not retried);
//! - after a timeout or a mismatched answer on Modbus TCP the connection is dropped and made
//!   again, so a late answer can never be taken for the next request (tokio-modbus#59);
//! - RTU frames carry no transaction id, so on a serial port and on RTU over TCP whatever input
//!   waits is dropped before each request ([`ClearOnWrite`]): a late answer is discarded rather
//!   than returned as the next answer (tokio-modbus#324). A serial-to-TCP converter forwards a
//!   late answer to whichever connection is current, so a new connection would not help there;
//! - the silence between frames is kept: never less than 3.5 characters on RTU
//!   (tokio-modbus#180), `turnaround` when set;
//! - a port or connection that fails is reopened with capped backoff; while it is down,
//!   requests are answered at once with `Unavailable`, without blocking the queue. The backoff
//!   starts again from its minimum after a good transaction, not after a connect, so a device
//!   that accepts connections and then resets them is retried ever more slowly and logged once;
//! - a poll's reads go one by one, and the commands waiting are taken between two reads;
//! - at shutdown a read is abandoned; a write on the wire finishes its try, without retries.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::ReadCode;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, Slave, SlaveContext};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::plan;
use super::port::{self, Backoff};
use super::{
    BusError, BusHandle, BusRequest, BusStats, COMMANDS_CAP, IdentifySpec, Identity, RawData,
    ReadSpec, WriteSpec, Written,
};
use crate::config::{BusConfig, BusKind, Table};

/// Polls waiting for a bus: each device has at most one outstanding, so this only needs to be
/// as large as the number of devices; a full queue makes the poller wait (and count overruns).
pub const POLLS_CAP: usize = 64;

/// Extra silence after a timeout on RTU: a slow device may still be sending its answer.
pub const RTU_TIMEOUT_GUARD: Duration = Duration::from_millis(50);

/// A link whose waiting input can be thrown away.
pub trait DiscardInput {
    fn discard_input(&mut self) -> io::Result<()>;
}

impl DiscardInput for SerialStream {
    /// The kernel's input buffer of the port.
    fn discard_input(&mut self) -> io::Result<()> {
        self.clear(ClearBuffer::Input)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl DiscardInput for tokio::net::TcpStream {
    /// Whatever the socket has received and nobody read.
    fn discard_input(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            match self.try_read(&mut buf) {
                // The peer closed: the next read says so.
                Ok(0) => return Ok(()),
                Ok(n) => tracing::debug!(bytes = n, "late input dropped before a request"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// An RTU link (serial port, or RTU over TCP) that drops whatever input is waiting before each
/// new request is written, so a late answer to a timed-out request can't be read as the answer
/// to the next one.
pub struct ClearOnWrite<T> {
    inner: T,
    /// Set by reads; the next write clears the input first.
    read_since_write: bool,
}

impl<T> ClearOnWrite<T> {
    pub fn new(inner: T) -> Self {
        ClearOnWrite {
            inner,
            // Start clean: whatever sat in the buffer before we opened the port is stale.
            read_since_write: true,
        }
    }
}

impl<T> fmt::Debug for ClearOnWrite<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClearOnWrite")
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClearOnWrite<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read_since_write = true;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + DiscardInput + Unpin> AsyncWrite for ClearOnWrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.read_since_write {
            self.read_since_write = false;
            if let Err(e) = self.inner.discard_input() {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Op {
    Read(ReadSpec),
    Write(WriteSpec),
    Identify(IdentifySpec),
}

enum Answer {
    Data(RawData),
    Written,
    Identity(Identity),
}

/// The bus task.
pub struct ModbusBus {
    name: String,
    config: BusConfig,
    commands: mpsc::Receiver<BusRequest>,
    polls: mpsc::Receiver<BusRequest>,
    stats: Arc<BusStats>,
    ctx: Option<Context>,
    /// When the last transaction ended: the next one keeps the silence after it.
    last_end: Option<Instant>,
    backoff: Backoff,
    /// While the link is down: when to try again, and why it is down.
    down: Option<(Instant, String)>,
    ever_up: bool,
    /// A good transaction since the link was last lost: the next loss is news worth a warning.
    healthy: bool,
    /// Cancelled at shutdown: reads are abandoned and writes are not retried.
    stopping: CancellationToken,
}

impl ModbusBus {
    pub fn new(name: &str, config: &BusConfig) -> (ModbusBus, BusHandle) {
        let (ctx_tx, ctx_rx) = mpsc::channel(COMMANDS_CAP);
        let (poll_tx, poll_rx) = mpsc::channel(POLLS_CAP);
        let stats = Arc::new(BusStats::default());
        (
            ModbusBus {
                name: name.to_string(),
                config: config.clone(),
                commands: ctx_rx,
                polls: poll_rx,
                stats: stats.clone(),
                ctx: None,
                last_end: None,
                backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
                down: None,
                ever_up: false,
                healthy: false,
                stopping: CancellationToken::new(),
            },
            BusHandle::from_senders(name.to_string(), ctx_tx, poll_tx, stats),
        )
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stopping = shutdown.clone();
        loop {
            // Commands first, always; a poll's reads then run back to back.
            let retry_at = self.down.as_ref().map(|(at, _)| *at);
            // Only a poll from the poll queue lets commands in between its reads.
            let (req, interleave) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(r) = self.commands.recv() => (r, false),
                Some(r) = self.polls.recv() => (r, true),
                // While the link is down the bus tries it on its own backoff, so a replugged
                // adapter is found even when every device on it is offline and polled rarely.
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    // Failure re-arms the backoff and is logged once by `connect`.
                    if self.connect().await.is_ok() {
                        tracing::debug!(bus = %self.name, "link back before any request");
                    }
                    continue;
                }
                else => break,
            };
            // A read is abandoned at shutdown (a dead device must not hold the stop up); a
            // write on the wire finishes (README "Signals and systemd"), also one taken between a poll's reads.
            self.handle(req, interleave).await;
        }
        // Whatever still waits is answered, not left hanging.
        self.commands.close();
        self.polls.close();
        while let Ok(r) = self.commands.try_recv() {
            refuse(r);
        }
        while let Ok(r) = self.polls.try_recv() {
            refuse(r);
        }
    }

    async fn handle(&mut self, req: BusRequest, interleave: bool) {
        match req {
            BusRequest::Poll { unit, reads, reply } => {
                let out = self.poll(unit, reads, interleave).await;
                answer(reply, out);
            }
            BusRequest::Read { unit, read, reply } => {
                let r = self.read_or_stop(unit, read).await;
                answer(reply, r);
            }
            BusRequest::Write { unit, write, reply } => {
                let r = self.transaction(unit, &Op::Write(write)).await.map(|_| ());
                answer(reply, r);
            }
            BusRequest::Identify { unit, spec, reply } => {
                let r = match self.transaction(unit, &Op::Identify(spec)).await {
                    Ok(Answer::Identity(i)) => Ok(i),
                    Ok(_) => Err(BusError::Transport("unexpected answer".into())),
                    Err(e) => Err(e),
                };
                answer(reply, r);
            }
            BusRequest::Command {
                unit,
                writes,
                reply,
            } => {
                let mut out: Vec<Written> = Vec::with_capacity(writes.len());
                for (w, _) in &writes {
                    let failed = out.iter().any(|o| !matches!(o.write, Some(Ok(()))));
                    let write = match failed {
                        true => None,
                        false => Some(
                            self.transaction(unit, &Op::Write(w.clone()))
                                .await
                                .map(|_| ()),
                        ),
                    };
                    out.push(Written {
                        write,
                        read_back: None,
                    });
                }
                for ((_, r), o) in writes.iter().zip(out.iter_mut()) {
                    if matches!(o.write, Some(Ok(()))) {
                        o.read_back = Some(self.read(unit, *r).await);
                    }
                }
                answer(reply, out);
            }
        }
    }

    /// A device's reads one by one. With `interleave` (a poll from the poll queue), the commands
    /// waiting are executed between two reads: they wait for one transaction at most.
    async fn poll(
        &mut self,
        unit: u8,
        reads: Vec<ReadSpec>,
        interleave: bool,
    ) -> Vec<Result<RawData, BusError>> {
        let mut out: Vec<Result<RawData, BusError>> = Vec::with_capacity(reads.len());
        for r in reads {
            if interleave && !out.is_empty() && !self.stopping.is_cancelled() {
                while let Ok(cmd) = self.commands.try_recv() {
                    // A command's own reads (a refresh) run back to back.
                    Box::pin(self.handle(cmd, false)).await;
                }
            }
            // A device that did not answer one read won't answer the next: the rest of its poll
            // gets the same error without costing the bus more timeouts.
            let silent = out
                .last()
                .and_then(|l| l.as_ref().err())
                .filter(|e| e.is_silence());
            match silent {
                Some(e) => {
                    let e = e.clone();
                    out.push(Err(e));
                }
                None => out.push(self.read_or_stop(unit, r).await),
            }
        }
        out
    }

    /// A read, abandoned (`Stopped`) when the bus stops.
    async fn read_or_stop(&mut self, unit: u8, spec: ReadSpec) -> Result<RawData, BusError> {
        let stopping = self.stopping.clone();
        tokio::select! {
            biased;
            _ = stopping.cancelled() => Err(BusError::Stopped),
            r = self.read(unit, spec) => r,
        }
    }

    async fn read(&mut self, unit: u8, spec: ReadSpec) -> Result<RawData, BusError> {
        match self.transaction(unit, &Op::Read(spec)).await? {
            Answer::Data(d) => Ok(d),
            _ => Err(BusError::Transport("unexpected answer".into())),
        }
    }

    /// One transaction with timeout, retries and the silence before it.
    async fn transaction(&mut self, unit: u8, op: &Op) -> Result<Answer, BusError> {
        let mut last = BusError::Timeout(self.config.timeout);
        for attempt in 0..=self.config.retries {
            // Stopping: no more tries (a try on the wire finishes).
            if attempt > 0 && self.stopping.is_cancelled() {
                break;
            }
            self.connect().await?;
            let Some(ctx) = self.ctx.as_mut() else {
                return Err(last);
            };
            // Only a silence still to come is slept: tokio's timer rounds a deadline up to its
            // next millisecond, so sleeping until a moment already past (a TCP bus without
            // `turnaround`) would hold every transaction up to 1 ms after the one before.
            if let Some(end) = self.last_end {
                let quiet_until = end + plan::silence(&self.config);
                if quiet_until > Instant::now() {
                    tokio::time::sleep_until(quiet_until).await;
                }
            }
            ctx.set_slave(Slave(unit));
            let started = Instant::now();
            let result = tokio::time::timeout(self.config.timeout, exec(ctx, op)).await;
            let now = Instant::now();
            self.last_end = Some(now);
            let took = now.duration_since(started).as_micros() as u64;
            BusStats::add(&self.stats.transactions, 1);
            BusStats::add(&self.stats.latency_us_total, took);
            self.stats.latency.record(took);
            BusStats::add(&self.stats.busy_us_total, took);
            match result {
                Ok(Ok(Ok(outcome))) => {
                    self.answered();
                    return Ok(outcome);
                }
                Ok(Ok(Err(
                    e
                    @ (ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice),
                ))) => {
                    // The gateway answered; the device behind it did not: like a timeout,
                    // without the stale answer to fear.
                    self.answered();
                    BusStats::add(&self.stats.gateway_exceptions, 1);
                    last = BusError::Gateway(e);
                }
                Ok(Ok(Err(exception))) => {
                    self.answered();
                    BusStats::add(&self.stats.exceptions, 1);
                    return Err(BusError::Exception(exception));
                }
                Ok(Err(tokio_modbus::Error::Protocol(p))) => {
                    // A mismatched answer: a late one, or garbage. Start the link afresh.
                    BusStats::add(&self.stats.errors, 1);
                    last = BusError::Transport(format!("protocol error: {p}"));
                    self.drop_link_if_stream();
                }
                Ok(Err(tokio_modbus::Error::Transport(e)))
                    if e.kind() == io::ErrorKind::InvalidData =>
                {
                    // A malformed answer (bad CRC, wrong length): the device's fault, not the
                    // link's. The link is opened afresh at once, so no leftover of the answer
                    // is read as the next one, but not marked down: the other devices on the
                    // bus go on without a pause.
                    BusStats::add(&self.stats.errors, 1);
                    last = BusError::Transport(e.to_string());
                    self.ctx = None;
                }
                Ok(Err(tokio_modbus::Error::Transport(e))) => {
                    BusStats::add(&self.stats.errors, 1);
                    last = BusError::Transport(e.to_string());
                    self.link_lost(&e.to_string());
                }
                Err(_) => {
                    BusStats::add(&self.stats.timeouts, 1);
                    last = BusError::Timeout(self.config.timeout);
                    // RTU: the device may still be answering; keep off the wire a while, and
                    // ClearOnWrite drops the late answer before the next request.
                    if self.config.kind != BusKind::ModbusTcp {
                        self.last_end = Some(Instant::now() + RTU_TIMEOUT_GUARD);
                    }
                    // Modbus TCP: the answer may still come; a new connection can't receive it.
                    self.drop_link_if_stream();
                }
            }
        }
        Err(last)
    }

    /// Opens the link if needed. While it is down and the backoff has not passed, refuses at
    /// once.
    async fn connect(&mut self) -> Result<(), BusError> {
        if self.ctx.is_some() {
            return Ok(());
        }
        if let Some((retry_at, reason)) = &self.down {
            if Instant::now() < *retry_at {
                return Err(BusError::Unavailable(reason.clone()));
            }
        }
        let (config, name) = (self.config.clone(), self.name.clone());
        match open(&config, &name).await {
            Ok(ctx) => {
                self.ctx = Some(ctx);
                if self.down.take().is_some() || !self.ever_up {
                    if self.ever_up {
                        BusStats::add(&self.stats.reconnects, 1);
                        // Offline devices try again now rather than at their `offline_retry`.
                        self.stats.reconnected.notify_waiters();
                    }
                    tracing::debug!(bus = %self.name, "bus link opened");
                }
                self.ever_up = true;
                Ok(())
            }
            Err(reason) => {
                let first = self.down.as_ref().is_none_or(|(_, r)| r != &reason);
                if first && (self.healthy || !self.ever_up) {
                    warn!(bus = %self.name, error = %reason, "bus unavailable; retrying with backoff");
                } else {
                    tracing::debug!(bus = %self.name, error = %reason, "bus still unavailable");
                }
                self.healthy = false;
                self.down = Some((Instant::now() + self.backoff.delay(), reason.clone()));
                Err(BusError::Unavailable(reason))
            }
        }
    }

    /// Something answered on the link: it works. The backoff starts from its minimum again,
    /// and the link coming up after a loss is logged once, here.
    fn answered(&mut self) {
        self.backoff.reset();
        if !self.healthy {
            self.healthy = true;
            info!(bus = %self.name, "bus connected");
        }
    }

    /// After a timeout or mismatch on Modbus TCP: a new connection, so the late answer can't
    /// be read (RTU links drop it before the next request instead).
    fn drop_link_if_stream(&mut self) {
        if self.config.kind == BusKind::ModbusTcp {
            self.ctx = None;
        }
    }

    /// The port or connection failed: reopen on the next transaction (after backoff). Logged
    /// when a link that worked is lost, not at every failed try of one that never recovered.
    fn link_lost(&mut self, reason: &str) {
        self.ctx = None;
        if self.healthy {
            warn!(bus = %self.name, error = %reason, "bus connection lost; reopening");
        } else {
            tracing::debug!(bus = %self.name, error = %reason, "bus connection lost again");
        }
        self.healthy = false;
        self.down = Some((Instant::now() + self.backoff.delay(), reason.to_string()));
    }
}

/// Opens the bus's port or connection and wraps it in a tokio-modbus context.
async fn open(config: &BusConfig, name: &str) -> Result<Context, String> {
    let connect_timeout = config.timeout.max(Duration::from_secs(1));
    match config.kind {
        BusKind::ModbusRtu | BusKind::Serial => {
            let port = port::open_serial(config)?;
            Ok(tokio_modbus::client::rtu::attach_slave(
                ClearOnWrite::new(port),
                Slave(1),
            ))
        }
        BusKind::ModbusTcp | BusKind::ModbusRtuOverTcp => {
            let address = config.address.clone().unwrap_or_default();
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio::net::TcpStream::connect(address.as_str()),
            )
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            // Requests and answers are small; don't let Nagle hold them back.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(bus = %name, error = %e, "TCP_NODELAY not set");
            }
            Ok(if config.kind == BusKind::ModbusTcp {
                tokio_modbus::client::tcp::attach_slave(stream, Slave(1))
            } else {
                tokio_modbus::client::rtu::attach_slave(ClearOnWrite::new(stream), Slave(1))
            })
        }
    }
}

/// One request through `Client::call`, with the answer checked here: tokio-modbus's typed
/// helpers `debug_assert!` that a write's echo equals the request, which panics the bus task
/// on a device that clamps what it is given (and a short answer trips the read helpers' checks).
async fn exec(
    ctx: &mut Context,
    op: &Op,
) -> Result<Result<Answer, ExceptionCode>, tokio_modbus::Error> {
    let request = match op {
        Op::Read(r) => match r.table {
            Table::Coil => Request::ReadCoils(r.start, r.count),
            Table::Discrete => Request::ReadDiscreteInputs(r.start, r.count),
            Table::Holding => Request::ReadHoldingRegisters(r.start, r.count),
            Table::Input => Request::ReadInputRegisters(r.start, r.count),
        },
        Op::Write(w) => match w {
            WriteSpec::Coil { address, value } => Request::WriteSingleCoil(*address, *value),
            WriteSpec::Coils { address, values } => {
                Request::WriteMultipleCoils(*address, Cow::Borrowed(values))
            }
            WriteSpec::Register { address, value } => {
                Request::WriteSingleRegister(*address, *value)
            }
            WriteSpec::Registers { address, values } => {
                Request::WriteMultipleRegisters(*address, Cow::Borrowed(values))
            }
        },
        Op::Identify(IdentifySpec::DeviceIdentification) => {
            Request::ReadDeviceIdentification(ReadCode::Basic, 0)
        }
        Op::Identify(IdentifySpec::ServerId) => Request::ReportServerId,
    };
    let response = match ctx.call(request).await? {
        Ok(r) => r,
        Err(exception) => return Ok(Err(exception)),
    };
    Ok(Ok(match op {
        Op::Read(r) => Answer::Data(read_answer(r, response)?),
        // A write's echo may differ from the request (a device that clamps); the read-back
        // that follows every command says what the device kept.
        Op::Write(_) => Answer::Written,
        Op::Identify(_) => Answer::Identity(identity_answer(response)?),
    }))
}

/// A device's answer to an identity request, as text where it is text.
fn identity_answer(response: Response) -> Result<Identity, tokio_modbus::Error> {
    match response {
        Response::ReadDeviceIdentification(r) => Ok(Identity::Objects(
            r.device_id_objects
                .iter()
                .map(|o| (o.id, String::from_utf8_lossy(&o.value).trim().to_string()))
                .collect(),
        )),
        Response::ReportServerId(id, running, data) => Ok(Identity::ServerId { id, running, data }),
        other => Err(tokio_modbus::Error::Transport(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {other:?}"),
        ))),
    }
}

/// Checks a device's answer to the read `r`: the right kind, and as many values as asked (bits
/// come in whole bytes; the padding is cut off). Anything else is a malformed answer
/// (`InvalidData`), never data.
pub fn read_answer(r: &ReadSpec, response: Response) -> Result<RawData, tokio_modbus::Error> {
    let bad = |msg: String| {
        tokio_modbus::Error::Transport(io::Error::new(io::ErrorKind::InvalidData, msg))
    };
    let short =
        |got: usize, want: u16| bad(format!("the device answered {got} values for {want} asked"));
    let bits = matches!(r.table, Table::Coil | Table::Discrete);
    match response {
        Response::ReadCoils(mut b) | Response::ReadDiscreteInputs(mut b) if bits => {
            if b.len() < usize::from(r.count) {
                return Err(short(b.len(), r.count));
            }
            b.truncate(usize::from(r.count));
            Ok(RawData::Bits(b))
        }
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) if !bits => {
            if w.len() != usize::from(r.count) {
                return Err(short(w.len(), r.count));
            }
            Ok(RawData::Words(w))
        }
        other => Err(bad(format!("unexpected answer {other:?}"))),
    }
}

fn answer<T>(tx: oneshot::Sender<T>, value: T) {
    if tx.send(value).is_err() {
        tracing::debug!("requester gave up before the answer");
    }
}

fn refuse(r: BusRequest) {
    match r {
        BusRequest::Poll { reads, reply, .. } => {
            answer(reply, vec![Err(BusError::Stopped); reads.len()]);
        }
        BusRequest::Read { reply, .. } => answer(reply, Err(BusError::Stopped)),
        BusRequest::Write { reply, .. } => answer(reply, Err(BusError::Stopped)),
        BusRequest::Identify { reply, .. } => answer(reply, Err(BusError::Stopped)),
        BusRequest::Command { writes, reply, .. } => {
            let stopped = Written {
                write: Some(Err(BusError::Stopped)),
                read_back: None,
            };
            answer(reply, vec![stopped; writes.len()]);
        }
    }
}
