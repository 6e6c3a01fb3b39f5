//! One poll's answers → each point's value: the planned reads' words cut into points, decoded,
//! checked against `unavailable`, and scaled by the scale factors read in the same poll. Pure:
//! the device task uses it for its polls, `profiles --probe` for a walk's points and
//! `profiles --check --dump` for a register dump.

use crate::bus::RawData;
use crate::bus::codec::{self, Raw};
use crate::bus::plan::{self, PlannedRead, ScaleFactors};
use crate::config::PointConfig;
use crate::model::Value;

/// SunSpec's "not implemented" scale factor (0x8000 as an i16).
pub const SF_NOT_IMPLEMENTED: i16 = i16::MIN;
/// The scale factors a device may give: 10^-10 to 10^10. Anything else is a misread register,
/// and a value scaled by it would be wrong by orders of magnitude.
pub const SF_RANGE: std::ops::RangeInclusive<i16> = -10..=10;

/// What one poll gave, by point index.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub values: Vec<(usize, Value)>,
    /// The device says it has no value (`unavailable`, a scale factor "not implemented") or a
    /// scale factor could not be read: unknown, and nothing to warn about of the point itself.
    pub no_value: Vec<usize>,
    /// Could not be decoded, or scaled by a factor out of range: unknown, and worth a warning.
    pub errors: Vec<(usize, String)>,
}

impl Decoded {
    /// Clears it for the next poll, keeping its allocations.
    pub fn clear(&mut self) {
        self.values.clear();
        self.no_value.clear();
        self.errors.clear();
    }
}

/// Decodes one poll read by read. `points` are the device's points followed by the scale
/// factors they name (the plan's indices; see [`ScaleFactors`]).
pub struct PollDecoder<'a> {
    points: &'a [&'a PointConfig],
    scale: &'a ScaleFactors,
    /// By scale factor: the raw i16, once read this poll.
    factors: Vec<Option<i16>>,
    /// Points whose value waits for its scale factor: (point, factor, raw).
    waiting: Vec<(usize, usize, Raw)>,
}

impl<'a> PollDecoder<'a> {
    pub fn new(points: &'a [&'a PointConfig], scale: &'a ScaleFactors) -> Self {
        PollDecoder {
            points,
            scale,
            factors: vec![None; scale.registers.len()],
            waiting: Vec::new(),
        }
    }

    /// The device's own points (before the scale factors).
    fn own(&self) -> usize {
        self.points.len() - self.scale.registers.len()
    }

    /// The points of one read that came back.
    pub fn read(&mut self, read: &PlannedRead, data: &RawData, out: &mut Decoded) {
        let own = self.own();
        for &pi in &read.points {
            let Some(p) = self.points.get(pi).copied() else {
                continue;
            };
            let Some(slot) = plan::slot(p) else { continue };
            let offset = usize::from(slot.address.wrapping_sub(read.spec.start));
            let len = usize::from(slot.len);
            let bit: [u16; 1];
            let words: Option<&[u16]> = match data {
                RawData::Bits(bits) => match bits.get(offset) {
                    Some(b) => {
                        bit = [u16::from(*b)];
                        Some(&bit[..])
                    }
                    None => None,
                },
                RawData::Words(w) => w.get(offset..offset + len),
            };
            let decoded = match words {
                Some(w) => codec::decode_point(w, p).map_err(|e| e.to_string()),
                None => Err("the device returned fewer registers than asked".to_string()),
            };
            if pi >= own {
                // A scale factor: kept for the points that name it.
                if let (Ok(Some(Raw::Signed(sf))), Some(slot)) =
                    (decoded, self.factors.get_mut(pi - own))
                {
                    *slot = i16::try_from(sf).ok();
                }
                continue;
            }
            match decoded {
                Ok(Some(raw)) => match self.scale.of_point.get(pi).copied().flatten() {
                    Some(k) => self.waiting.push((pi, k, raw)),
                    None => out.values.push((pi, codec::to_value(raw, p))),
                },
                Ok(None) => out.no_value.push(pi),
                Err(e) => out.errors.push((pi, e)),
            }
        }
    }

    /// The values that waited for their scale factors. A factor that was not read leaves its
    /// points unknown (the failed read is reported on its own); one the device does not
    /// implement too; one outside -10..10 is an error of the point. Never a value with a stale
    /// or missing scale.
    pub fn finish(self, out: &mut Decoded) {
        for (pi, k, raw) in self.waiting {
            let Some(p) = self.points.get(pi).copied() else {
                continue;
            };
            match self.factors.get(k).copied().flatten() {
                Some(sf) if SF_RANGE.contains(&sf) => {
                    out.values
                        .push((pi, codec::to_value_scaled(raw, p, Some(sf))));
                }
                Some(SF_NOT_IMPLEMENTED) | None => out.no_value.push(pi),
                Some(sf) => {
                    let register = self
                        .scale
                        .registers
                        .get(k)
                        .and_then(|r| r.register)
                        .map(|r| r.to_string())
                        .unwrap_or_default();
                    out.errors.push((
                        pi,
                        format!(
                            "its scale factor at {register} is {sf}, outside -10..10; not published"
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ReadSpec;
    use crate::config::{DataType, Register, Table, Unavailable};

    fn scaled(address: u16, sf: u16) -> PointConfig {
        let mut p = PointConfig::register(Table::Holding, address, DataType::U16);
        p.scale_register = Some(Register {
            table: Table::Holding,
            address: sf,
        });
        p.unavailable = vec![Unavailable::Int(0xFFFF)];
        p
    }

    fn poll(points: &[PointConfig], words: &[u16]) -> Decoded {
        let refs: Vec<&PointConfig> = points.iter().collect();
        let scale = ScaleFactors::of(&refs);
        let all = scale.with_points(&refs);
        let reads = plan::plan(&refs, 4);
        assert_eq!(reads.len(), 1, "one coalesced read with its scale factors");
        let mut out = Decoded::default();
        let mut d = PollDecoder::new(&all, &scale);
        let r = &reads[0];
        assert_eq!(r.spec.start, 0);
        let data = RawData::Words(words[..usize::from(r.spec.count)].to_vec());
        d.read(r, &data, &mut out);
        d.finish(&mut out);
        out
    }

    #[test]
    fn values_wait_for_their_scale_factor_read_in_the_same_read() {
        // Two points share the factor at 2; one more has its own at 4.
        let points = [scaled(0, 2), scaled(1, 2), scaled(3, 4)];
        let out = poll(&points, &[2301, 0xFFFF, (-1i16) as u16, 7, 3]);
        assert_eq!(
            out.values,
            vec![(0, Value::Float(230.1)), (2, Value::Int(7000))]
        );
        assert_eq!(out.no_value, vec![1], "0xFFFF is not implemented");
        assert!(out.errors.is_empty());
    }

    #[test]
    fn a_factor_not_implemented_or_out_of_range_leaves_the_value_unknown() {
        let points = [scaled(0, 2), scaled(1, 3)];
        let out = poll(&points, &[100, 100, 0x8000, 11]);
        assert!(out.values.is_empty());
        assert_eq!(out.no_value, vec![0]);
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].1.contains("holding:3 is 11, outside -10..10"),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn a_factor_whose_read_failed_leaves_its_points_unknown() {
        let points = [scaled(0, 100)];
        let refs: Vec<&PointConfig> = points.iter().collect();
        let scale = ScaleFactors::of(&refs);
        let all = scale.with_points(&refs);
        let reads = plan::plan(&refs, 4);
        assert_eq!(reads.len(), 2, "the factor is too far to coalesce");
        let mut out = Decoded::default();
        let mut d = PollDecoder::new(&all, &scale);
        // Only the value's read came back.
        let r = reads.iter().find(|r| r.spec.start == 0).unwrap();
        assert_eq!(
            r.spec,
            ReadSpec {
                table: Table::Holding,
                start: 0,
                count: 1
            }
        );
        d.read(r, &RawData::Words(vec![42]), &mut out);
        d.finish(&mut out);
        assert!(out.values.is_empty());
        assert_eq!(out.no_value, vec![0]);
    }
}
