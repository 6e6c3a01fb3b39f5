//! Simulated Modbus devices for tests: tokio-modbus's own server, in-process, over TCP or over
//! a pseudo-terminal pair made by socat (RTU). Every request is logged, so tests can count
//! reads and see function codes; units can be silent, slow, refuse addresses, or clamp writes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_modbus::prelude::{
    ConformityLevel, DeviceIdObject, ExceptionCode, ReadCode, ReadDeviceIdentificationResponse,
    Request, Response, SlaveRequest,
};
use tokio_modbus::server::Service;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub unit: u8,
    pub fc: u8,
    pub address: u16,
    pub count: u16,
    pub at: Instant,
}

/// One simulated unit.
#[derive(Debug, Default, Clone)]
pub struct Unit {
    pub coils: HashMap<u16, bool>,
    pub discretes: HashMap<u16, bool>,
    pub inputs: HashMap<u16, u16>,
    pub holdings: HashMap<u16, u16>,
    /// Never answers.
    pub silent: bool,
    /// Answers after this long.
    pub delay: Duration,
    /// Register addresses (any table) that do not exist: reads touching them are refused with
    /// "illegal data address".
    pub missing: HashSet<u16>,
    /// Holding registers that clamp what is written to a maximum.
    pub clamp: HashMap<u16, u16>,
    /// Every read of holding registers adds 1 to them afterwards (values that always move).
    pub tick: bool,
    /// Answers register reads with one word too many (0xDEAD): a malformed answer.
    pub garbage: bool,
    /// FC 43/14 basic objects (0 vendor, 1 product, 2 revision); `None`: illegal function.
    pub identity: Option<Vec<(u8, String)>>,
    /// FC 17 additional data after the server id and run indicator; `None`: illegal function.
    pub server_id: Option<Vec<u8>>,
    /// Answers every request with this exception (0x0B: a gateway whose device is silent).
    pub exception: Option<ExceptionCode>,
    /// Register addresses (any table) whose reads fail with "server device failure".
    pub failing: HashSet<u16>,
    /// The next this-many requests are answered after `late` (past the gateway's timeout).
    pub late_answers: u32,
    pub late: Duration,
}

#[derive(Debug, Default)]
pub struct Sim {
    pub units: HashMap<u8, Unit>,
    pub log: Vec<Seen>,
}

/// The shared simulation behind one or more servers.
#[derive(Debug, Clone, Default)]
pub struct FakeModbus {
    pub sim: Arc<Mutex<Sim>>,
}

impl FakeModbus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on unit `id` (created if missing).
    pub fn unit<R>(&self, id: u8, f: impl FnOnce(&mut Unit) -> R) -> R {
        let mut sim = self.sim.lock().unwrap();
        f(sim.units.entry(id).or_default())
    }

    pub fn set_holding(&self, id: u8, address: u16, words: &[u16]) {
        self.unit(id, |u| {
            for (i, w) in words.iter().enumerate() {
                u.holdings.insert(address + i as u16, *w);
            }
        });
    }

    pub fn set_input(&self, id: u8, address: u16, words: &[u16]) {
        self.unit(id, |u| {
            for (i, w) in words.iter().enumerate() {
                u.inputs.insert(address + i as u16, *w);
            }
        });
    }

    pub fn log(&self) -> Vec<Seen> {
        self.sim.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.sim.lock().unwrap().log.clear();
    }

    /// Serves Modbus TCP on 127.0.0.1:0 (in this tokio runtime); returns the address.
    pub async fn serve_tcp(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve_tcp_on(listener)
    }

    /// Serves Modbus TCP on `listener` (in this tokio runtime), e.g. one made in another network
    /// namespace; returns its address.
    pub fn serve_tcp_on(&self, listener: tokio::net::TcpListener) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        let service = self.clone();
        tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, _addr| {
                let s = service.clone();
                async move { Ok(Some((s, stream))) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        addr
    }

    /// Serves Modbus RTU on one end of a socat pty pair; the gateway opens `PtyBus::path`.
    pub fn serve_rtu(&self, dir: &Path) -> PtyBus {
        let mut bus = PtyBus {
            path: dir.join("ttyGW"),
            server_path: dir.join("ttySIM"),
            socat: None,
            server: None,
            fake: self.clone(),
        };
        bus.plug();
        bus
    }
}

/// A serial-to-TCP converter in front of an RTU bus (as a USR or Moxa serial server in
/// transparent mode): bytes from the current TCP connection go to the serial line, and what the
/// line answers goes to whichever connection is current then — a late answer included.
pub struct RtuOverTcp {
    pub addr: SocketAddr,
    pub bus: PtyBus,
}

impl FakeModbus {
    /// Serves Modbus RTU over TCP (in this tokio runtime), through a converter as above.
    pub async fn serve_rtu_over_tcp(&self, dir: &Path) -> RtuOverTcp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bus = self.serve_rtu(dir);
        let serial = tokio_serial::SerialStream::open(&tokio_serial::new(bus.path_str(), 9600))
            .expect("open the converter's serial side");
        let (mut from_line, mut to_line) = tokio::io::split(serial);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current: Arc<tokio::sync::Mutex<Option<tokio::net::tcp::OwnedWriteHalf>>> =
            Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        // Line → the current connection.
        let cur = current.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok(n) = from_line.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(w) = cur.lock().await.as_mut() {
                    let _ = w.write_all(&buf[..n]).await;
                }
            }
        });
        // Connections → the line.
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if to_line.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (mut r, w) = stream.into_split();
                *current.lock().await = Some(w);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        RtuOverTcp { addr, bus }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

fn bits(map: &HashMap<u16, bool>, a: u16, n: u16) -> Vec<bool> {
    (a..a + n).map(|i| *map.get(&i).unwrap_or(&false)).collect()
}

fn words(map: &HashMap<u16, u16>, a: u16, n: u16) -> Vec<u16> {
    (a..a + n).map(|i| *map.get(&i).unwrap_or(&0)).collect()
}

impl Service for FakeModbus {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = BoxFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let sim = self.sim.clone();
        Box::pin(async move {
            let unit_id = req.slave;
            let (fc, address, count) = match &req.request {
                Request::ReadCoils(a, n) => (1, *a, *n),
                Request::ReadDiscreteInputs(a, n) => (2, *a, *n),
                Request::ReadHoldingRegisters(a, n) => (3, *a, *n),
                Request::ReadInputRegisters(a, n) => (4, *a, *n),
                Request::WriteSingleCoil(a, _) => (5, *a, 1),
                Request::WriteSingleRegister(a, _) => (6, *a, 1),
                Request::WriteMultipleCoils(a, v) => (15, *a, v.len() as u16),
                Request::WriteMultipleRegisters(a, v) => (16, *a, v.len() as u16),
                Request::ReportServerId => (17, 0, 0),
                Request::ReadDeviceIdentification(_, _) => (43, 0, 0),
                _ => (0, 0, 0),
            };
            let (silent, delay) = {
                let mut s = sim.lock().unwrap();
                s.log.push(Seen {
                    unit: unit_id,
                    fc,
                    address,
                    count,
                    at: Instant::now(),
                });
                match s.units.get_mut(&unit_id) {
                    None => (true, Duration::ZERO),
                    Some(u) if u.late_answers > 0 => {
                        u.late_answers -= 1;
                        (u.silent, u.late)
                    }
                    Some(u) => (u.silent, u.delay),
                }
            };
            if silent {
                return Ok(None);
            }
            if !delay.is_zero() {
                // The unit's own answer time (`delay`, or `late` past the gateway's timeout):
                // a slow device is the thing tested.
                tokio::time::sleep(delay).await;
            }
            let mut s = sim.lock().unwrap();
            let Some(u) = s.units.get_mut(&unit_id) else {
                return Ok(None);
            };
            if let Some(e) = u.exception {
                return Err(e);
            }
            if (address..address.saturating_add(count)).any(|a| u.missing.contains(&a)) {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            if fc <= 4 && (address..address.saturating_add(count)).any(|a| u.failing.contains(&a)) {
                return Err(ExceptionCode::ServerDeviceFailure);
            }
            let resp = match req.request {
                Request::ReadCoils(a, n) => Response::ReadCoils(bits(&u.coils, a, n)),
                Request::ReadDiscreteInputs(a, n) => {
                    Response::ReadDiscreteInputs(bits(&u.discretes, a, n))
                }
                Request::ReadHoldingRegisters(a, n) => {
                    let mut w = words(&u.holdings, a, n);
                    if u.garbage {
                        w.push(0xDEAD);
                    }
                    if u.tick {
                        for i in a..a + n {
                            let v = u.holdings.entry(i).or_default();
                            *v = v.wrapping_add(1);
                        }
                    }
                    Response::ReadHoldingRegisters(w)
                }
                Request::ReadInputRegisters(a, n) => {
                    let mut w = words(&u.inputs, a, n);
                    if u.garbage {
                        w.push(0xDEAD);
                    }
                    Response::ReadInputRegisters(w)
                }
                Request::WriteSingleCoil(a, v) => {
                    u.coils.insert(a, v);
                    Response::WriteSingleCoil(a, v)
                }
                Request::WriteMultipleCoils(a, v) => {
                    for (i, b) in v.iter().enumerate() {
                        u.coils.insert(a + i as u16, *b);
                    }
                    Response::WriteMultipleCoils(a, v.len() as u16)
                }
                Request::WriteSingleRegister(a, v) => {
                    let v = u.clamp.get(&a).map_or(v, |max| v.min(*max));
                    u.holdings.insert(a, v);
                    Response::WriteSingleRegister(a, v)
                }
                Request::WriteMultipleRegisters(a, v) => {
                    for (i, w) in v.iter().enumerate() {
                        let addr = a + i as u16;
                        let w = u.clamp.get(&addr).map_or(*w, |max| (*w).min(*max));
                        u.holdings.insert(addr, w);
                    }
                    Response::WriteMultipleRegisters(a, v.len() as u16)
                }
                Request::ReadDeviceIdentification(_, _) => match &u.identity {
                    Some(objects) => {
                        Response::ReadDeviceIdentification(ReadDeviceIdentificationResponse {
                            read_code: ReadCode::Basic,
                            conformity_level: ConformityLevel::BasicIdentificationStreamOnly,
                            more_follows: false,
                            next_object_id: 0,
                            device_id_objects: objects
                                .iter()
                                .map(|(id, v)| DeviceIdObject {
                                    id: *id,
                                    value: tokio_modbus::bytes::Bytes::from(v.clone()),
                                })
                                .collect(),
                        })
                    }
                    None => return Err(ExceptionCode::IllegalFunction),
                },
                Request::ReportServerId => match &u.server_id {
                    Some(data) => Response::ReportServerId(unit_id, true, data.clone()),
                    None => return Err(ExceptionCode::IllegalFunction),
                },
                _ => return Err(ExceptionCode::IllegalFunction),
            };
            Ok(Some(resp))
        })
    }
}

/// An RS-485 bus stand-in: two pseudo-terminals joined by socat, the simulated devices on one,
/// the gateway on the other (at `path`, a stable symlink). `unplug` kills socat — the gateway's
/// port goes away as when a USB adapter is pulled; `plug` makes a new pair at the same path.
pub struct PtyBus {
    pub path: PathBuf,
    server_path: PathBuf,
    socat: Option<Child>,
    server: Option<tokio::task::JoinHandle<()>>,
    fake: FakeModbus,
}

impl PtyBus {
    pub fn plug(&mut self) {
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.path.display()))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.server_path.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        self.socat = Some(child);
        super::until_blocking(
            Duration::from_secs(5),
            || self.path.exists() && self.server_path.exists(),
            || "socat made no ptys".into(),
        );
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(
            self.server_path.display().to_string(),
            9600,
        ))
        .expect("open simulator side");
        let fake = self.fake.clone();
        self.server = Some(tokio::spawn(async move {
            let _ = tokio_modbus::server::rtu::Server::new(port)
                .serve_forever(fake)
                .await;
        }));
    }

    pub fn unplug(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        if let Some(mut c) = self.socat.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Gone with socat, or given up on after 5 s (a replug makes it anew either way).
        let _ = super::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            (!self.path.exists()).then_some(())
        });
    }

    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for PtyBus {
    fn drop(&mut self) {
        self.unplug();
    }
}
