//! Buses: one task owns each port or socket (`modbus.rs` for Modbus, `serial_line.rs` for line
//! devices), and everything else talks to it through a cheap [`BusHandle`].
//!
//! A bus has two bounded queues: commands (MQTT commands and commissioning requests) and polls.
//! The bus task always takes a waiting command before the next poll (`select! { biased; }`), and
//! executes one transaction at a time, so transactions on the wire are strictly serialised. A
//! poll request carries all the reads of one device; the bus executes them read by read and
//! takes the commands waiting between two reads, so a command waits at most for the one
//! transaction on the wire, never for the rest of another device's poll (README "Modbus").

pub mod codec;
pub mod decode;
pub mod line_codec;
pub mod modbus;
pub mod plan;
pub mod port;
pub mod serial_line;
pub mod share;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_modbus::prelude::ExceptionCode;

use crate::config::Table;

/// Commands waiting for a bus. When full, `BusHandle::command` waits (back-pressure on the
/// command path, which is itself bounded and serialised per device).
pub const COMMANDS_CAP: usize = 32;

/// One read of contiguous registers or bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadSpec {
    pub table: Table,
    pub start: u16,
    pub count: u16,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawData {
    /// Coils and discrete inputs.
    Bits(Vec<bool>),
    /// Input and holding registers.
    Words(Vec<u16>),
}

/// One write, with the Modbus function it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteSpec {
    /// FC05
    Coil { address: u16, value: bool },
    /// FC15
    Coils { address: u16, values: Vec<bool> },
    /// FC06
    Register { address: u16, value: u16 },
    /// FC16
    Registers { address: u16, values: Vec<u16> },
}

/// Which identity request `scan --identify` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifySpec {
    /// FC 43 / MEI 14 "Read Device Identification", basic objects (vendor, product, revision).
    DeviceIdentification,
    /// FC 17 "Report Server ID" (serial line devices).
    ServerId,
}

/// What a device said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// FC 43/14: object id (0 VendorName, 1 ProductCode, 2 MajorMinorRevision, …) and text.
    Objects(Vec<(u8, String)>),
    /// FC 17: the server id byte, the run indicator, and the device-specific data after them.
    ServerId {
        id: u8,
        running: bool,
        data: Vec<u8>,
    },
}

/// Why a transaction failed. Callers branch on these: a timeout, a transport error or a
/// gateway's "no answer" counts towards `offline_after`; any other exception is the device's
/// answer.
/// A Modbus exception by its name in the specification, as logs and results show it.
pub fn exception_name(e: ExceptionCode) -> String {
    match e {
        ExceptionCode::IllegalFunction => "illegal function".into(),
        ExceptionCode::IllegalDataAddress => "illegal data address".into(),
        ExceptionCode::IllegalDataValue => "illegal data value".into(),
        ExceptionCode::ServerDeviceFailure => "server device failure".into(),
        ExceptionCode::Acknowledge => "acknowledge".into(),
        ExceptionCode::ServerDeviceBusy => "server device busy".into(),
        ExceptionCode::MemoryParityError => "memory parity error".into(),
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable".into(),
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond".into(),
        ExceptionCode::Custom(c) => format!("exception 0x{c:02x}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// No (complete) answer within the bus `timeout`, after all retries.
    #[error("timeout: no answer within {0:?}")]
    Timeout(Duration),
    /// The device answered with a Modbus exception; shown by name ("illegal data address").
    #[error("{}", exception_name(*.0))]
    Exception(ExceptionCode),
    /// A Modbus TCP-to-RTU gateway answered for a device behind it that did not (exception 0x0A
    /// "gateway path unavailable" or 0x0B "gateway target device failed to respond"): the
    /// device is as silent as after a timeout.
    #[error("{}", exception_name(*.0))]
    Gateway(ExceptionCode),
    /// The port or connection failed (unplugged, refused, reset, garbled).
    #[error("{0}")]
    Transport(String),
    /// The port cannot be opened now (missing, held by another process); the bus retries it.
    #[error("port unavailable: {0}")]
    Unavailable(String),
    /// The bus is stopping.
    #[error("bus stopped")]
    Stopped,
}

impl BusError {
    /// Modbus exception 0x02: a read spanning an address the device does not have.
    pub fn is_illegal_address(&self) -> bool {
        matches!(self, BusError::Exception(ExceptionCode::IllegalDataAddress))
    }

    /// Whether the device gave no answer at all (as opposed to an exception, its answer).
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            BusError::Timeout(_)
                | BusError::Gateway(_)
                | BusError::Transport(_)
                | BusError::Unavailable(_)
        )
    }
}

/// A request to the bus task. Each carries its reply channel.
#[derive(Debug)]
pub enum BusRequest {
    /// All reads of one device's poll, in order, with waiting commands taken between them
    /// (when it came through the poll queue). The reply has one result per read, in order.
    Poll {
        unit: u8,
        reads: Vec<ReadSpec>,
        reply: oneshot::Sender<Vec<Result<RawData, BusError>>>,
    },
    /// One read (read-back after a write, `refresh`, commissioning).
    Read {
        unit: u8,
        read: ReadSpec,
        reply: oneshot::Sender<Result<RawData, BusError>>,
    },
    /// One write.
    Write {
        unit: u8,
        write: WriteSpec,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Ask a unit who it is (commissioning).
    Identify {
        unit: u8,
        spec: IdentifySpec,
        reply: oneshot::Sender<Result<Identity, BusError>>,
    },
    /// A command's writes in order, stopping at the first that fails, then each written one
    /// read back: back to back, so no poll read comes between a write and its read-back.
    Command {
        unit: u8,
        writes: Vec<(WriteSpec, ReadSpec)>,
        reply: oneshot::Sender<Vec<Written>>,
    },
}

/// What became of one write of a [`BusRequest::Command`]: `None` where it was not tried (an
/// earlier write failed; a write that failed is not read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub write: Option<Result<(), BusError>>,
    pub read_back: Option<Result<RawData, BusError>>,
}

/// Counters of one bus, shared with the health topic.
#[derive(Debug, Default)]
pub struct BusStats {
    pub transactions: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub exceptions: AtomicU64,
    /// Gateway exceptions 0x0A/0x0B: the device behind a TCP-to-RTU gateway did not answer.
    pub gateway_exceptions: AtomicU64,
    /// Polls skipped because the previous one of the same device was still waiting.
    pub overruns: AtomicU64,
    /// Sum of transaction latencies in microseconds (with `transactions`, the mean).
    pub latency_us_total: AtomicU64,
    /// Time the bus spent in transactions, in microseconds (for utilisation).
    pub busy_us_total: AtomicU64,
    pub reconnects: AtomicU64,
    /// Woken when the link comes back after being down.
    pub reconnected: tokio::sync::Notify,
    /// Transaction latencies, for p50/p99.
    pub latency: LatencyHistogram,
}

/// Latencies in buckets whose upper bounds grow by √2 from 50 µs (to ~2 min): lock-free to
/// record, a quantile is the upper bound of its bucket (within 41 %).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

const LATENCY_BUCKETS: usize = 44;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    fn upper_bound_us(i: usize) -> f64 {
        50.0 * std::f64::consts::SQRT_2.powi(i as i32)
    }

    pub fn record(&self, us: u64) {
        let i = (0..LATENCY_BUCKETS)
            .find(|i| us as f64 <= Self::upper_bound_us(*i))
            .unwrap_or(LATENCY_BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` before any transaction.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_bound_us(i) / 1000.0);
            }
        }
        None
    }
}

impl BusStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The cheap, clonable side of a bus.
#[derive(Debug, Clone)]
pub struct BusHandle {
    pub name: String,
    commands: mpsc::Sender<BusRequest>,
    polls: mpsc::Sender<BusRequest>,
    pub stats: Arc<BusStats>,
}

impl BusHandle {
    /// Builds a handle from raw channels (the bus task holds the receivers). Also the test seam.
    pub fn from_senders(
        name: String,
        commands: mpsc::Sender<BusRequest>,
        polls: mpsc::Sender<BusRequest>,
        stats: Arc<BusStats>,
    ) -> Self {
        BusHandle {
            name,
            commands,
            polls,
            stats,
        }
    }

    /// Polls a device: its reads back to back. The poll queue holds one request per device at
    /// most (each poller waits for its reply), so it cannot grow without bound.
    pub async fn poll(&self, unit: u8, reads: Vec<ReadSpec>) -> Vec<Result<RawData, BusError>> {
        Self::poll_on(&self.polls, unit, reads).await
    }

    /// A device's reads ahead of polls (`refresh`): back to back, like a command.
    pub async fn poll_now(&self, unit: u8, reads: Vec<ReadSpec>) -> Vec<Result<RawData, BusError>> {
        Self::poll_on(&self.commands, unit, reads).await
    }

    async fn poll_on(
        queue: &mpsc::Sender<BusRequest>,
        unit: u8,
        reads: Vec<ReadSpec>,
    ) -> Vec<Result<RawData, BusError>> {
        let n = reads.len();
        let (reply, rx) = oneshot::channel();
        if queue
            .send(BusRequest::Poll { unit, reads, reply })
            .await
            .is_err()
        {
            return vec![Err(BusError::Stopped); n];
        }
        rx.await.unwrap_or_else(|_| vec![Err(BusError::Stopped); n])
    }

    /// One read, ahead of polls.
    pub async fn read(&self, unit: u8, read: ReadSpec) -> Result<RawData, BusError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(BusRequest::Read { unit, read, reply })
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.unwrap_or(Err(BusError::Stopped))
    }

    /// An identity request, ahead of polls.
    pub async fn identify(&self, unit: u8, spec: IdentifySpec) -> Result<Identity, BusError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(BusRequest::Identify { unit, spec, reply })
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.unwrap_or(Err(BusError::Stopped))
    }

    /// A command's writes and their read-backs, back to back, ahead of polls.
    pub async fn command(&self, unit: u8, writes: Vec<(WriteSpec, ReadSpec)>) -> Vec<Written> {
        let n = writes.len();
        let stopped = || {
            vec![
                Written {
                    write: Some(Err(BusError::Stopped)),
                    read_back: None,
                };
                n
            ]
        };
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(BusRequest::Command {
                unit,
                writes,
                reply,
            })
            .await
            .is_err()
        {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// One write, ahead of polls.
    pub async fn write(&self, unit: u8, write: WriteSpec) -> Result<(), BusError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(BusRequest::Write { unit, write, reply })
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.unwrap_or(Err(BusError::Stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_the_histogram() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..98 {
            h.record(1_000); // 1 ms
        }
        h.record(100_000); // 100 ms
        h.record(100_000);
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((1.0..1.5).contains(&p50), "{p50}");
        assert!((100.0..142.0).contains(&p99), "{p99}");
    }
}
