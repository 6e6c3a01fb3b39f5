//! The poll plan: a device's points coalesced into as few Modbus reads as possible, and what a
//! poll cycle costs on the wire (for `fieldbridge check`).
//!
//! Points of one table are sorted by address and merged into one read while the read stays
//! within the protocol's limit (125 registers, 2000 bits) and the unused registers it spans stay
//! within `max_gap` (bits: `max_gap` × 16, the same wire cost). A read the device refuses with
//! "illegal data address" is split — first into runs without gaps, then point by point — and the
//! split is kept for the following cycles.

use std::time::Duration;

use crate::bus::ReadSpec;
use crate::config::{BusConfig, BusKind, DataType, Parity, PointConfig, Table};

/// Most registers one read may return (FC03/FC04).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may return (FC01/FC02).
pub const MAX_BITS: u16 = 2000;

/// One planned read and the points it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRead {
    pub spec: ReadSpec,
    /// Indices into the device's point list.
    pub points: Vec<usize>,
}

/// Where a point's value sits in its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub table: Table,
    pub address: u16,
    /// Registers (or bits) the point takes.
    pub len: u16,
}

/// The slot of a Modbus point.
pub fn slot(p: &PointConfig) -> Option<Slot> {
    let reg = p.register?;
    let len = if reg.table.is_bits() {
        1
    } else {
        p.effective_type()
            .unwrap_or(DataType::U16)
            .registers(p.length.unwrap_or(1))
    };
    Some(Slot {
        table: reg.table,
        address: reg.address,
        len,
    })
}

fn limit(table: Table) -> u16 {
    if table.is_bits() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    }
}

fn gap_limit(table: Table, max_gap: u16) -> u32 {
    if table.is_bits() {
        u32::from(max_gap) * 16
    } else {
        u32::from(max_gap)
    }
}

/// Coalesces `slots` (index, slot) into reads, allowing `max_gap` unused registers inside a read.
pub fn coalesce(slots: &[(usize, Slot)], max_gap: u16) -> Vec<PlannedRead> {
    let mut sorted: Vec<(usize, Slot)> = slots.to_vec();
    sorted.sort_by_key(|(i, s)| (s.table, s.address, s.len, *i));
    let mut reads: Vec<PlannedRead> = Vec::new();
    for (i, s) in sorted {
        let end = u32::from(s.address) + u32::from(s.len);
        if let Some(last) = reads.last_mut() {
            let last_end = u32::from(last.spec.start) + u32::from(last.spec.count);
            let gap = u32::from(s.address).saturating_sub(last_end);
            let new_count = end.max(last_end) - u32::from(last.spec.start);
            if last.spec.table == s.table
                && gap <= gap_limit(s.table, max_gap)
                && new_count <= u32::from(limit(s.table))
            {
                last.spec.count = new_count as u16;
                last.points.push(i);
                continue;
            }
        }
        reads.push(PlannedRead {
            spec: ReadSpec {
                table: s.table,
                start: s.address,
                count: s.len,
            },
            points: vec![i],
        });
    }
    reads
}

/// The scale-factor registers a device's points name (`scale_register`): each is read once
/// per poll, as an i16, in the same reads as the points where it can be.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleFactors {
    /// One i16 point per distinct register, in order of first use. In a plan, scale factor
    /// `k` has the index `points.len() + k` (after the device's points).
    pub registers: Vec<PointConfig>,
    /// For each of the device's points, the index into `registers` of its scale factor.
    pub of_point: Vec<Option<usize>>,
}

impl ScaleFactors {
    pub fn of(points: &[&PointConfig]) -> ScaleFactors {
        let mut out = ScaleFactors::default();
        for p in points {
            let k = p.scale_register.map(|r| {
                match out.registers.iter().position(|s| s.register == Some(r)) {
                    Some(k) => k,
                    None => {
                        out.registers.push(PointConfig::register(
                            r.table,
                            r.address,
                            DataType::I16,
                        ));
                        out.registers.len() - 1
                    }
                }
            });
            out.of_point.push(k);
        }
        out
    }

    /// The device's points followed by the scale-factor registers: what a plan's indices count.
    pub fn with_points<'a>(&'a self, points: &[&'a PointConfig]) -> Vec<&'a PointConfig> {
        points
            .iter()
            .copied()
            .chain(self.registers.iter())
            .collect()
    }
}

/// The reads of a device's Modbus points, and of the scale factors they name (indices from
/// `points.len()`, see [`ScaleFactors`]).
pub fn plan(points: &[&PointConfig], max_gap: u16) -> Vec<PlannedRead> {
    let sf = ScaleFactors::of(points);
    let all = sf.with_points(points);
    let slots: Vec<(usize, Slot)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, p)| slot(p).map(|s| (i, s)))
        .collect();
    coalesce(&slots, max_gap)
}

/// Splits a refused read: into gap-free runs if it spans gaps, else into one read per point.
/// Returns `None` when it cannot be split further (a single point).
pub fn split(read: &PlannedRead, points: &[&PointConfig]) -> Option<Vec<PlannedRead>> {
    let slots: Vec<(usize, Slot)> = read
        .points
        .iter()
        .filter_map(|i| points.get(*i).and_then(|p| slot(p)).map(|s| (*i, s)))
        .collect();
    let runs = coalesce(&slots, 0);
    if runs.len() > 1 {
        return Some(runs);
    }
    if slots.len() > 1 {
        return Some(
            slots
                .iter()
                .map(|(i, s)| PlannedRead {
                    spec: ReadSpec {
                        table: s.table,
                        start: s.address,
                        count: s.len,
                    },
                    points: vec![*i],
                })
                .collect(),
        );
    }
    None
}

/// Time on the wire of one character: start bit, data bits, parity, stop bits.
pub fn char_time(bus: &BusConfig) -> Duration {
    let bits = 1
        + u32::from(bus.data_bits)
        + u32::from(bus.parity != Parity::None)
        + u32::from(bus.stop_bits);
    Duration::from_secs_f64(f64::from(bits) / f64::from(bus.baud.max(1)))
}

/// The silence kept between RTU frames: `turnaround`, never less than 3.5 characters.
pub fn rtu_silence(bus: &BusConfig) -> Duration {
    bus.turnaround
        .unwrap_or_default()
        .max(char_time(bus).mul_f64(3.5))
}

/// The silence kept between transactions on any kind of bus.
pub fn silence(bus: &BusConfig) -> Duration {
    match bus.kind {
        BusKind::ModbusRtu => rtu_silence(bus),
        _ => bus.turnaround.unwrap_or_default(),
    }
}

/// Bytes of an RTU read request and its response.
pub fn rtu_frame_bytes(read: &ReadSpec) -> (u32, u32) {
    // Request: unit, function, start (2), count (2), CRC (2).
    let request = 8;
    let data = if read.table.is_bits() {
        u32::from(read.count).div_ceil(8)
    } else {
        u32::from(read.count) * 2
    };
    // Response: unit, function, byte count, data, CRC (2).
    (request, 5 + data)
}

/// Wire time of one read on an RTU bus: both frames plus the silence after each.
pub fn rtu_read_time(bus: &BusConfig, read: &ReadSpec) -> Duration {
    let (req, resp) = rtu_frame_bytes(read);
    char_time(bus) * (req + resp) + rtu_silence(bus) * 2
}

/// Expected load of a bus: wire time per second of polling, from every device's cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct BusLoad {
    /// Reads per second, all devices together.
    pub reads_per_second: f64,
    /// Fraction of the wire busy (RTU only; `None` for TCP where the wire is not the limit).
    pub utilisation: Option<f64>,
}

/// Estimates the load of `bus` from `(cycle reads, poll period)` of each device on it.
pub fn bus_load(bus: &BusConfig, devices: &[(Vec<ReadSpec>, Duration)]) -> BusLoad {
    let mut reads_per_second = 0.0;
    let mut busy = 0.0;
    for (reads, period) in devices {
        let p = period.as_secs_f64().max(1e-3);
        reads_per_second += reads.len() as f64 / p;
        busy += reads
            .iter()
            .map(|r| rtu_read_time(bus, r).as_secs_f64())
            .sum::<f64>()
            / p;
    }
    BusLoad {
        reads_per_second,
        utilisation: (bus.kind == BusKind::ModbusRtu).then_some(busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(table: Table, address: u16, ty: DataType) -> PointConfig {
        PointConfig::register(table, address, ty)
    }

    #[test]
    fn contiguous_runs_become_one_read_each() {
        let mut pts = Vec::new();
        for a in 0..20 {
            pts.push(p(Table::Holding, a, DataType::U16));
        }
        for a in 0..10 {
            pts.push(p(Table::Holding, 100 + 2 * a, DataType::F32));
        }
        for a in 0..10 {
            pts.push(p(Table::Input, a, DataType::I16));
        }
        let refs: Vec<&PointConfig> = pts.iter().collect();
        let reads = plan(&refs, 4);
        let specs: Vec<ReadSpec> = reads.iter().map(|r| r.spec).collect();
        assert_eq!(
            specs,
            vec![
                ReadSpec {
                    table: Table::Input,
                    start: 0,
                    count: 10
                },
                ReadSpec {
                    table: Table::Holding,
                    start: 0,
                    count: 20
                },
                ReadSpec {
                    table: Table::Holding,
                    start: 100,
                    count: 20
                },
            ]
        );
        assert_eq!(reads.iter().map(|r| r.points.len()).sum::<usize>(), 40);
    }

    #[test]
    fn small_gaps_are_spanned_and_large_ones_split() {
        let pts = [
            p(Table::Holding, 0, DataType::U16),
            p(Table::Holding, 5, DataType::U16), // gap 4: spanned
            p(Table::Holding, 11, DataType::U16), // gap 5: new read
        ];
        let refs: Vec<&PointConfig> = pts.iter().collect();
        let specs: Vec<(u16, u16)> = plan(&refs, 4)
            .iter()
            .map(|r| (r.spec.start, r.spec.count))
            .collect();
        assert_eq!(specs, vec![(0, 6), (11, 1)]);
    }

    #[test]
    fn reads_never_exceed_the_protocol_limits() {
        let pts: Vec<PointConfig> = (0..300)
            .map(|a| p(Table::Holding, a, DataType::U16))
            .collect();
        let refs: Vec<&PointConfig> = pts.iter().collect();
        let counts: Vec<u16> = plan(&refs, 4).iter().map(|r| r.spec.count).collect();
        assert_eq!(counts, vec![125, 125, 50]);
        let bits: Vec<PointConfig> = (0..2100)
            .map(|a| p(Table::Coil, a, DataType::Bool))
            .collect();
        let refs: Vec<&PointConfig> = bits.iter().collect();
        let counts: Vec<u16> = plan(&refs, 4).iter().map(|r| r.spec.count).collect();
        assert_eq!(counts, vec![2000, 100]);
    }

    #[test]
    fn a_refused_read_splits_into_runs_then_points() {
        let pts = [
            p(Table::Holding, 0, DataType::U16),
            p(Table::Holding, 1, DataType::U16),
            p(Table::Holding, 4, DataType::U32),
        ];
        let refs: Vec<&PointConfig> = pts.iter().collect();
        let reads = plan(&refs, 4);
        assert_eq!(reads.len(), 1);
        let runs = split(&reads[0], &refs).unwrap();
        let specs: Vec<(u16, u16)> = runs.iter().map(|r| (r.spec.start, r.spec.count)).collect();
        assert_eq!(specs, vec![(0, 2), (4, 2)]);
        let single = split(&runs[0], &refs).unwrap();
        assert_eq!(single.len(), 2);
        assert_eq!(split(&single[0], &refs), None);
    }

    #[test]
    fn wire_time_follows_baud_and_frame_size() {
        let bus = BusConfig {
            kind: BusKind::ModbusRtu,
            port: Some("/dev/null".into()),
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            address: None,
            timeout: Duration::from_millis(500),
            retries: 1,
            turnaround: None,
            max_gap: 4,
            format: crate::config::LineFormat::Json,
            pattern: None,
            line_ending: crate::config::LineEnding::Lf,
            max_line: 1024,
            share: None,
        };
        // 10 bits per character at 9600 baud.
        assert!((char_time(&bus).as_secs_f64() - 10.0 / 9600.0).abs() < 1e-9);
        let r = ReadSpec {
            table: Table::Holding,
            start: 0,
            count: 10,
        };
        // 8 + 25 bytes and 2 × 3.5 characters of silence = 40 characters.
        let t = rtu_read_time(&bus, &r).as_secs_f64();
        assert!((t - 40.0 * 10.0 / 9600.0).abs() < 1e-6, "{t}");
    }
}
