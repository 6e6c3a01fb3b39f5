//! Simulated devices for `fieldbridge demo`: a Modbus TCP thermostat, a Modbus RTU energy meter
//! (an Eastron SDM120, polled through its built-in profile) on a pseudo-terminal, and a serial
//! weather station printing JSON lines. Their values move.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

/// Registers of one simulated unit.
#[derive(Debug, Default)]
pub struct Registers {
    pub coils: HashMap<u16, bool>,
    pub inputs: HashMap<u16, u16>,
    pub holdings: HashMap<u16, u16>,
}

/// A simulated Modbus unit (any unit id answers).
#[derive(Debug, Clone, Default)]
pub struct SimUnit {
    pub regs: Arc<Mutex<Registers>>,
}

fn lock(m: &Mutex<Registers>) -> std::sync::MutexGuard<'_, Registers> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for SimUnit {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = BoxFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let regs = self.regs.clone();
        Box::pin(async move {
            let mut r = lock(&regs);
            let words = |m: &HashMap<u16, u16>, a: u16, n: u16| -> Vec<u16> {
                (a..a.saturating_add(n))
                    .map(|i| *m.get(&i).unwrap_or(&0))
                    .collect()
            };
            Ok(Some(match req.request {
                Request::ReadCoils(a, n) => Response::ReadCoils(
                    (a..a.saturating_add(n))
                        .map(|i| *r.coils.get(&i).unwrap_or(&false))
                        .collect(),
                ),
                Request::ReadInputRegisters(a, n) => {
                    Response::ReadInputRegisters(words(&r.inputs, a, n))
                }
                Request::ReadHoldingRegisters(a, n) => {
                    Response::ReadHoldingRegisters(words(&r.holdings, a, n))
                }
                Request::WriteSingleCoil(a, v) => {
                    r.coils.insert(a, v);
                    Response::WriteSingleCoil(a, v)
                }
                Request::WriteSingleRegister(a, v) => {
                    r.holdings.insert(a, v);
                    Response::WriteSingleRegister(a, v)
                }
                Request::WriteMultipleRegisters(a, v) => {
                    for (i, w) in v.iter().enumerate() {
                        r.holdings.insert(a.saturating_add(i as u16), *w);
                    }
                    Response::WriteMultipleRegisters(a, v.len() as u16)
                }
                _ => return Err(ExceptionCode::IllegalFunction),
            }))
        })
    }
}

/// A thermostat on Modbus TCP: input 0 = temperature × 10, holding 0 = setpoint × 10, coil 0 =
/// the heating relay, which the thermostat switches itself.
pub async fn thermostat(shutdown: CancellationToken) -> std::io::Result<(SocketAddr, SimUnit)> {
    let unit = SimUnit::default();
    {
        let mut r = lock(&unit.regs);
        r.inputs.insert(0, 195);
        r.holdings.insert(0, 210);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = unit.clone();
    let t = shutdown.clone();
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, _| {
            let s = service.clone();
            async move { Ok(Some((s, stream))) }
        };
        tokio::select! {
            _ = t.cancelled() => {}
            _ = server.serve(&on_connected, |_| {}) => {}
        }
    });
    let regs = unit.regs.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut r = lock(&regs);
            let temp = i32::from(*r.inputs.get(&0).unwrap_or(&0));
            let set = i32::from(*r.holdings.get(&0).unwrap_or(&0));
            let heating = temp < set;
            r.coils.insert(0, heating);
            let next = if heating { temp + 3 } else { temp - 2 };
            r.inputs.insert(0, next.clamp(0, 400) as u16);
        }
    });
    Ok((addr, unit))
}

fn f32_abcd(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, (b & 0xFFFF) as u16]
}

/// An Eastron SDM120 energy meter on Modbus RTU over a pseudo-terminal, at the addresses of its
/// protocol document (the `eastron-sdm120` profile): IEEE 754 floats, high word first, in input
/// registers. Returns the path the gateway opens.
pub fn energy_meter(shutdown: CancellationToken) -> std::io::Result<String> {
    let (master, slave) = SerialStream::pair().map_err(std::io::Error::other)?;
    let path = slave
        .name()
        .ok_or_else(|| std::io::Error::other("pseudo-terminal has no name"))?;
    let unit = SimUnit::default();
    let regs = unit.regs.clone();
    let t = shutdown.clone();
    tokio::spawn(async move {
        // Keep the slave end open so the master never sees a hang-up between gateway opens.
        let _slave = slave;
        tokio::select! {
            _ = t.cancelled() => {}
            _ = tokio_modbus::server::rtu::Server::new(master).serve_forever(unit) => {}
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0f32;
        let mut kwh = 1234.5f32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            n += 1.0;
            let volts = 230.0 + 2.0 * (n / 7.0).sin();
            let amps = 4.0 + 1.5 * (n / 5.0).sin();
            let watts = volts * amps * 0.97;
            kwh += watts / 3_600_000.0;
            let mut r = lock(&regs);
            for (addr, x) in [
                (0x00u16, volts),
                (0x06, amps),
                (0x0C, watts),
                (0x12, volts * amps),
                (0x18, volts * amps * 0.243),
                (0x1E, 0.97),
                (0x46, 50.0),
                (0x48, kwh),
                (0x4A, 0.0),
                (0x4C, 0.0),
                (0x4E, 0.0),
                (0x156, kwh),
            ] {
                let w = f32_abcd(x);
                r.inputs.insert(addr, w[0]);
                r.inputs.insert(addr + 1, w[1]);
            }
        }
    });
    Ok(path)
}

/// A weather station on a serial line: prints `{"id":"weather1","temp":..,"hum":..}` every
/// second and answers `LED <n>` with `OK`. Returns the path the gateway opens.
pub fn weather_station(shutdown: CancellationToken) -> std::io::Result<String> {
    let (master, slave) = SerialStream::pair().map_err(std::io::Error::other)?;
    let path = slave
        .name()
        .ok_or_else(|| std::io::Error::other("pseudo-terminal has no name"))?;
    tokio::spawn(async move {
        let _slave = slave;
        let (rd, mut wr) = tokio::io::split(master);
        let mut lines = BufReader::new(rd).lines();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0f64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    n += 1.0;
                    let line = format!(
                        "{{\"id\":\"weather1\",\"temp\":{:.1},\"hum\":{}}}\n",
                        12.0 + 3.0 * (n / 11.0).sin(),
                        60 + (n as i64 % 7)
                    );
                    if wr.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                line = lines.next_line() => match line {
                    Ok(Some(l)) if l.starts_with("LED") => {
                        if wr.write_all(b"OK\n").await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
            }
        }
    });
    Ok(path)
}
