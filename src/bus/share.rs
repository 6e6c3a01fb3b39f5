//! Bus sharing (`share = "127.0.0.1:5020"` on a Modbus bus): a Modbus TCP server whose requests
//! from other masters (Home Assistant's Modbus integration, vendor tools) go into the same bus
//! queue as fieldbridge's commands — ahead of polls, one transaction at a time — so they never
//! collide with fieldbridge's own traffic on the wire.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BusError, BusHandle, RawData, ReadSpec, WriteSpec};
use crate::config::Table;

/// Forwards requests into a bus.
#[derive(Clone)]
struct Forward {
    bus: BusHandle,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

/// A bus error as the Modbus exception a gateway answers with.
fn exception(e: &BusError) -> ExceptionCode {
    match e {
        BusError::Exception(
            code @ (ExceptionCode::IllegalFunction
            | ExceptionCode::IllegalDataAddress
            | ExceptionCode::IllegalDataValue
            | ExceptionCode::Acknowledge
            | ExceptionCode::ServerDeviceBusy),
        ) => *code,
        BusError::Exception(_) => ExceptionCode::ServerDeviceFailure,
        // What Modbus gateways answer when the device behind them is silent.
        BusError::Timeout(_) => ExceptionCode::GatewayTargetDevice,
        // A gateway behind this one said so: pass its word on.
        BusError::Gateway(ExceptionCode::GatewayPathUnavailable) => {
            ExceptionCode::GatewayPathUnavailable
        }
        BusError::Gateway(_) => ExceptionCode::GatewayTargetDevice,
        BusError::Transport(_) | BusError::Unavailable(_) | BusError::Stopped => {
            ExceptionCode::GatewayPathUnavailable
        }
    }
}

impl Service for Forward {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = BoxFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let bus = self.bus.clone();
        Box::pin(async move {
            let unit = req.slave;
            let read = |table, start, count| ReadSpec {
                table,
                start,
                count,
            };
            let result = match req.request {
                Request::ReadCoils(a, n) => {
                    bus.read(unit, read(Table::Coil, a, n))
                        .await
                        .map(|d| match d {
                            RawData::Bits(b) => Response::ReadCoils(b),
                            RawData::Words(_) => Response::ReadCoils(Vec::new()),
                        })
                }
                Request::ReadDiscreteInputs(a, n) => bus
                    .read(unit, read(Table::Discrete, a, n))
                    .await
                    .map(|d| match d {
                        RawData::Bits(b) => Response::ReadDiscreteInputs(b),
                        RawData::Words(_) => Response::ReadDiscreteInputs(Vec::new()),
                    }),
                Request::ReadHoldingRegisters(a, n) => bus
                    .read(unit, read(Table::Holding, a, n))
                    .await
                    .map(|d| match d {
                        RawData::Words(w) => Response::ReadHoldingRegisters(w),
                        RawData::Bits(_) => Response::ReadHoldingRegisters(Vec::new()),
                    }),
                Request::ReadInputRegisters(a, n) => bus
                    .read(unit, read(Table::Input, a, n))
                    .await
                    .map(|d| match d {
                        RawData::Words(w) => Response::ReadInputRegisters(w),
                        RawData::Bits(_) => Response::ReadInputRegisters(Vec::new()),
                    }),
                Request::WriteSingleCoil(a, v) => bus
                    .write(
                        unit,
                        WriteSpec::Coil {
                            address: a,
                            value: v,
                        },
                    )
                    .await
                    .map(|()| Response::WriteSingleCoil(a, v)),
                Request::WriteMultipleCoils(a, v) => {
                    let n = v.len() as u16;
                    bus.write(
                        unit,
                        WriteSpec::Coils {
                            address: a,
                            values: v.into_owned(),
                        },
                    )
                    .await
                    .map(|()| Response::WriteMultipleCoils(a, n))
                }
                Request::WriteSingleRegister(a, v) => bus
                    .write(
                        unit,
                        WriteSpec::Register {
                            address: a,
                            value: v,
                        },
                    )
                    .await
                    .map(|()| Response::WriteSingleRegister(a, v)),
                Request::WriteMultipleRegisters(a, v) => {
                    let n = v.len() as u16;
                    bus.write(
                        unit,
                        WriteSpec::Registers {
                            address: a,
                            values: v.into_owned(),
                        },
                    )
                    .await
                    .map(|()| Response::WriteMultipleRegisters(a, n))
                }
                _ => return Err(ExceptionCode::IllegalFunction),
            };
            result.map(Some).map_err(|e| exception(&e))
        })
    }
}

/// Serves other Modbus TCP masters on `addr`, forwarding into `bus`, until `shutdown`.
pub async fn serve(name: String, addr: SocketAddr, bus: BusHandle, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(bus = %name, address = %addr, error = %e, "cannot share the bus: listening failed");
            return;
        }
    };
    info!(bus = %name, address = %addr, "sharing the bus with other Modbus TCP masters");
    let service = Forward { bus };
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream, _peer| {
        let s = service.clone();
        async move { Ok(Some((s, stream))) }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = server.serve(&on_connected, |_e| {}) => {
            if let Err(e) = r {
                warn!(bus = %name, error = %e, "bus sharing stopped");
            }
        }
    }
}
