//! Reading a SunSpec device's model chain over its bus: the "SunS" marker, then each model's ID
//! and length (L), model after model, until the end marker (ID 0xFFFF) — or until the device
//! refuses the next address, which some devices do instead of the marker.
//!
//! A chain that does not end (more than [`MAX_MODELS`] models: registers that repeat, a loop)
//! or a model whose length runs past the register map is refused whole: points built from a
//! broken chain would be plausible-looking wrong numbers.

use crate::bus::{BusError, BusHandle, RawData, ReadSpec};
use crate::config::{SunSpecChain, SunSpecModel, Table};

use super::{BASES, MARKER};

/// More models than any device has: a chain this long does not end.
pub const MAX_MODELS: usize = 64;

/// The ID that ends a chain.
const END: u16 = 0xFFFF;

/// Why a walk found no usable chain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WalkError {
    /// The device did not answer (it is offline, as after a failed poll).
    #[error("no answer: {0}")]
    Silent(String),
    #[error("no SunSpec marker \"SunS\" at holding {0}")]
    NoMarker(String),
    #[error(
        "the model chain does not end after {MAX_MODELS} models (registers that repeat, or a loop); last model {id} at holding:{address}"
    )]
    Endless { id: u16, address: u16 },
    #[error(
        "model {id} at holding:{address} with length {length} runs past the register map (address 65535)"
    )]
    PastMap { id: u16, address: u16, length: u16 },
    #[error("reading the chain at holding:{address} failed: {error}")]
    Read { address: u16, error: String },
    #[error("the bus is stopping")]
    Stopped,
}

/// The walk, with what the common model says of the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Walked {
    pub chain: SunSpecChain,
    /// The common model's manufacturer (Mn) and model (Md), when it has them.
    pub identity: Option<(String, String)>,
    /// How the chain ended when it had no end marker (for the log).
    pub ended_by: Option<String>,
}

/// Reads `count` holding registers of `unit` as a poll (behind commands, in the device's turn).
async fn read(bus: &BusHandle, unit: u8, address: u16, count: u16) -> Result<Vec<u16>, BusError> {
    let spec = ReadSpec {
        table: Table::Holding,
        start: address,
        count,
    };
    let result = bus
        .poll(unit, vec![spec])
        .await
        .into_iter()
        .next()
        .unwrap_or(Err(BusError::Stopped))?;
    match result {
        RawData::Words(w) if w.len() == usize::from(count) => Ok(w),
        RawData::Words(w) => Err(BusError::Transport(format!(
            "{} registers returned, {count} asked",
            w.len()
        ))),
        RawData::Bits(_) => Err(BusError::Transport("bits returned for registers".into())),
    }
}

fn failed(address: u16, e: BusError) -> WalkError {
    match e {
        BusError::Stopped => WalkError::Stopped,
        e if e.is_silence() => WalkError::Silent(e.to_string()),
        e => WalkError::Read {
            address,
            error: e.to_string(),
        },
    }
}

/// Walks the chain of `unit`: from `base`, or the usual bases in turn.
pub async fn walk(bus: &BusHandle, unit: u8, base: Option<u16>) -> Result<Walked, WalkError> {
    let bases: Vec<u16> = match base {
        Some(b) => vec![b],
        None => BASES.to_vec(),
    };
    let mut found = None;
    let mut silent = None;
    for b in &bases {
        match read(bus, unit, *b, 2).await {
            Ok(w) if w == MARKER => {
                found = Some(*b);
                break;
            }
            Ok(_) => {}
            Err(BusError::Stopped) => return Err(WalkError::Stopped),
            // An exception is an answer: the marker is not there.
            Err(e) if e.is_silence() => silent = Some(e.to_string()),
            Err(_) => {}
        }
        if silent.is_some() {
            // A device that does not answer at one base answers at none.
            break;
        }
    }
    let base = match (found, silent) {
        (Some(b), _) => b,
        (None, Some(e)) => return Err(WalkError::Silent(e)),
        (None, None) => {
            let tried: Vec<String> = bases.iter().map(u16::to_string).collect();
            return Err(WalkError::NoMarker(tried.join(", ")));
        }
    };
    let mut models: Vec<SunSpecModel> = Vec::new();
    let mut address = u32::from(base) + 2;
    let mut ended_by = None;
    loop {
        if address + 2 > 0x1_0000 {
            ended_by = Some("the register map ends without an end marker".to_string());
            break;
        }
        let at = address as u16;
        let header = match read(bus, unit, at, 2).await {
            Ok(w) => w,
            Err(e) if e.is_illegal_address() && !models.is_empty() => {
                ended_by = Some(format!(
                    "holding:{at} is refused (illegal data address) where the end marker would be"
                ));
                break;
            }
            Err(e) => return Err(failed(at, e)),
        };
        let (id, length) = (header[0], header[1]);
        if id == END {
            break;
        }
        if models.len() >= MAX_MODELS {
            let last = models.last().copied().unwrap_or(SunSpecModel {
                id,
                address: at,
                length,
            });
            return Err(WalkError::Endless {
                id: last.id,
                address: last.address,
            });
        }
        let next = address + 2 + u32::from(length);
        if next > 0x1_0000 {
            return Err(WalkError::PastMap {
                id,
                address: at,
                length,
            });
        }
        models.push(SunSpecModel {
            id,
            address: at,
            length,
        });
        address = next;
    }
    let identity = common_identity(bus, unit, &models).await;
    Ok(Walked {
        chain: SunSpecChain { base, models },
        identity,
        ended_by,
    })
}

/// The manufacturer and model strings of the chain's first common model.
async fn common_identity(
    bus: &BusHandle,
    unit: u8,
    models: &[SunSpecModel],
) -> Option<(String, String)> {
    let common = models.iter().find(|m| m.id == 1 && m.length >= 34)?;
    // Mn at 2..18 and Md at 18..34 from the ID register.
    let words = read(bus, unit, common.address.checked_add(2)?, 32)
        .await
        .ok()?;
    let text = |w: &[u16]| -> String {
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
        String::from_utf8_lossy(&bytes)
            .trim_end_matches(['\0', ' '])
            .trim()
            .to_string()
    };
    Some((text(&words[..16]), text(&words[16..32])))
}
