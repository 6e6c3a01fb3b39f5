//! Registers ↔ values: word and byte order, types, scale, offset, precision and map labels.
//! Pure functions, property-tested both ways (README "Configuration": `type`, `order`, `scale`).
//!
//! Byte order rule, the same for 2 and 4 registers: with the value's bytes big-endian as
//! A B C D (E F G H), `ABCD` puts them on the wire as written; `CDAB` reverses the order of the
//! 16-bit words; `BADC` swaps the two bytes inside each word; `DCBA` does both. A single
//! register follows the same rule (only the byte swap can apply).

use crate::config::{DataType, PointConfig, Unavailable, WordOrder};
use crate::model::Value;

/// A value as the registers hold it, before scale, offset and labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

/// Why registers could not become a value, or a value registers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    #[error("the device returned {0}, which is not a number")]
    NotFinite(f64),
    #[error("expected {0}")]
    Type(&'static str),
    #[error("{0} does not fit in {1}")]
    Range(String, &'static str),
    #[error("unknown label \"{0}\"; expected {1}")]
    Label(String, String),
}

fn swap_bytes(words: &mut [u16], order: WordOrder) {
    if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
        for w in words.iter_mut() {
            *w = w.swap_bytes();
        }
    }
}

fn swaps_words(order: WordOrder) -> bool {
    matches!(order, WordOrder::Cdab | WordOrder::Dcba)
}

/// Registers → the big-endian integer they carry, for 1, 2 or 4 registers.
fn words_to_u64(words: &[u16], order: WordOrder) -> u64 {
    let mut w = words.to_vec();
    swap_bytes(&mut w, order);
    if swaps_words(order) {
        w.reverse();
    }
    w.iter().fold(0u64, |acc, x| (acc << 16) | u64::from(*x))
}

/// The big-endian integer → `n` registers in `order`.
fn u64_to_words(v: u64, n: usize, order: WordOrder) -> Vec<u16> {
    let mut w: Vec<u16> = (0..n)
        .rev()
        .map(|i| ((v >> (16 * i)) & 0xFFFF) as u16)
        .collect();
    if swaps_words(order) {
        w.reverse();
    }
    swap_bytes(&mut w, order);
    w
}

/// Decodes registers (or one coil/discrete bit as a register 0/1) into a raw value.
pub fn decode(words: &[u16], ty: DataType, order: WordOrder) -> Result<Raw, CodecError> {
    let need = match ty {
        DataType::String => words.len().max(1),
        t => usize::from(t.registers(1)),
    };
    if words.len() != need {
        return Err(CodecError::Length {
            expected: need,
            got: words.len(),
        });
    }
    Ok(match ty {
        DataType::Bool => Raw::Bool(words[0] != 0),
        DataType::U16 => Raw::Unsigned(words_to_u64(words, order)),
        DataType::I16 => Raw::Signed(i64::from(words_to_u64(words, order) as u16 as i16)),
        DataType::U32 => Raw::Unsigned(words_to_u64(words, order)),
        DataType::I32 => Raw::Signed(i64::from(words_to_u64(words, order) as u32 as i32)),
        DataType::U64 => Raw::Unsigned(words_to_u64(words, order)),
        DataType::I64 => Raw::Signed(words_to_u64(words, order) as i64),
        DataType::F32 => {
            let f = f64::from(f32::from_bits(words_to_u64(words, order) as u32));
            if !f.is_finite() {
                return Err(CodecError::NotFinite(f));
            }
            Raw::Float(f)
        }
        DataType::F64 => {
            let f = f64::from_bits(words_to_u64(words, order));
            if !f.is_finite() {
                return Err(CodecError::NotFinite(f));
            }
            Raw::Float(f)
        }
        DataType::String => {
            let mut w = words.to_vec();
            swap_bytes(&mut w, order);
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
            let text = String::from_utf8_lossy(&bytes);
            Raw::Text(
                text.trim_end_matches(['\0', ' '])
                    .trim_start_matches('\0')
                    .to_string(),
            )
        }
    })
}

/// Encodes a raw value into registers (the inverse of [`decode`]). `length` is the register
/// count of a string point.
pub fn encode(
    raw: &Raw,
    ty: DataType,
    order: WordOrder,
    length: u16,
) -> Result<Vec<u16>, CodecError> {
    let n = usize::from(ty.registers(length));
    let int = |name: &'static str, min: i128, max: i128| -> Result<u64, CodecError> {
        let v: i128 = match raw {
            Raw::Unsigned(u) => i128::from(*u),
            Raw::Signed(i) => i128::from(*i),
            Raw::Bool(b) => i128::from(*b),
            Raw::Float(_) | Raw::Text(_) => return Err(CodecError::Type("an integer")),
        };
        if v < min || v > max {
            return Err(CodecError::Range(v.to_string(), name));
        }
        Ok(v as u64)
    };
    let bits = match ty {
        DataType::Bool => match raw {
            Raw::Bool(b) => u64::from(*b),
            _ => return Err(CodecError::Type("true or false")),
        },
        DataType::U16 => int("u16", 0, i128::from(u16::MAX))?,
        DataType::I16 => int("i16", i128::from(i16::MIN), i128::from(i16::MAX))? & 0xFFFF,
        DataType::U32 => int("u32", 0, i128::from(u32::MAX))?,
        DataType::I32 => int("i32", i128::from(i32::MIN), i128::from(i32::MAX))? & 0xFFFF_FFFF,
        DataType::U64 => int("u64", 0, i128::from(u64::MAX))?,
        DataType::I64 => int("i64", i128::from(i64::MIN), i128::from(i64::MAX))?,
        DataType::F32 => {
            let x = match raw {
                Raw::Float(f) => *f,
                Raw::Unsigned(u) => *u as f64,
                Raw::Signed(i) => *i as f64,
                _ => return Err(CodecError::Type("a number")),
            };
            // Beyond ±3.4e38 an f32 is an infinity: never written to a device as a value.
            let f = x as f32;
            if !f.is_finite() {
                return Err(CodecError::Range(x.to_string(), "f32"));
            }
            u64::from(f.to_bits())
        }
        DataType::F64 => {
            let x = match raw {
                Raw::Float(f) => *f,
                Raw::Unsigned(u) => *u as f64,
                Raw::Signed(i) => *i as f64,
                _ => return Err(CodecError::Type("a number")),
            };
            if !x.is_finite() {
                return Err(CodecError::Range(x.to_string(), "f64"));
            }
            x.to_bits()
        }
        DataType::String => {
            let Raw::Text(t) = raw else {
                return Err(CodecError::Type("a string"));
            };
            let bytes = t.as_bytes();
            if bytes.len() > n * 2 {
                return Err(CodecError::Range(
                    format!("\"{t}\" ({} bytes)", bytes.len()),
                    "the string's registers",
                ));
            }
            let mut padded = bytes.to_vec();
            padded.resize(n * 2, 0);
            let mut w: Vec<u16> = padded
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            swap_bytes(&mut w, order);
            return Ok(w);
        }
    };
    Ok(u64_to_words(bits, n, order))
}

/// Whether scale and offset turn the point's integers into fractional numbers.
fn is_fractional(p: &PointConfig) -> bool {
    let frac = |x: Option<f64>| x.is_some_and(|x| x.fract() != 0.0);
    frac(p.scale) || frac(p.offset)
}

fn round_to(x: f64, precision: Option<u8>) -> f64 {
    match precision {
        Some(p) => {
            let m = 10f64.powi(i32::from(p));
            let r = (x * m).round() / m;
            // Rounding can't make a finite number infinite except at the very edge of f64.
            if r.is_finite() { r } else { x }
        }
        None => x,
    }
}

/// A raw value → the published value: scale, offset, precision and map labels applied.
pub fn to_value(raw: Raw, p: &PointConfig) -> Value {
    to_value_scaled(raw, p, None)
}

/// Most decimal places a scale factor's rounding keeps (SunSpec's -10..10, and the digits of
/// a `scale` such as 0.001).
const MAX_IMPLIED_DECIMALS: i32 = 12;

/// [`to_value`] with a scale factor read from the device (`scale_register`): raw × 10^sf, then
/// `scale` and `offset`. Without `precision`, the result is rounded to the decimals the factor
/// and `scale` imply (0.1 × 2301 is 230.1, not 230.10000000000002).
pub fn to_value_scaled(raw: Raw, p: &PointConfig, sf: Option<i16>) -> Value {
    if let Some(map) = &p.map {
        let key = match &raw {
            Raw::Bool(b) => Some(i64::from(*b)),
            Raw::Unsigned(u) => i64::try_from(*u).ok(),
            Raw::Signed(i) => Some(*i),
            _ => None,
        };
        if let Some(label) = key.and_then(|k| map.get(&k)) {
            return Value::Text(label.clone());
        }
        // A value the map does not name is published as the number it is, never guessed.
    }
    let scaled = p.scale.is_some() || p.offset.is_some() || sf.is_some_and(|s| s != 0);
    let scale = p.scale.unwrap_or(1.0) * sf.map_or(1.0, |s| 10f64.powi(i32::from(s)));
    let offset = p.offset.unwrap_or(0.0);
    let precision = match (p.precision, sf) {
        (Some(pr), _) => Some(pr),
        (None, Some(s)) => Some(implied_decimals(p, s)),
        (None, None) => None,
    };
    match raw {
        Raw::Bool(b) => Value::Bool(b),
        Raw::Text(t) => Value::Text(t),
        Raw::Float(f) => Value::Float(round_to(f * scale + offset, precision)),
        Raw::Unsigned(u) if !scaled => Value::Int(i128::from(u)),
        Raw::Signed(i) if !scaled => Value::Int(i128::from(i)),
        Raw::Unsigned(_) | Raw::Signed(_) => {
            let x = match raw {
                Raw::Unsigned(u) => u as f64,
                Raw::Signed(i) => i as f64,
                _ => 0.0,
            };
            let v = x * scale + offset;
            if is_fractional(p) || sf.is_some_and(|s| s < 0) {
                Value::Float(round_to(v, precision))
            } else {
                Value::Int(v as i128)
            }
        }
    }
}

/// The decimals a value scaled by 10^sf and the point's `scale`/`offset` can have.
fn implied_decimals(p: &PointConfig, sf: i16) -> u8 {
    let decimals = |x: Option<f64>| -> i32 {
        let Some(x) = x else { return 0 };
        (0..MAX_IMPLIED_DECIMALS)
            .find(|d| {
                let m = x * 10f64.powi(*d);
                (m - m.round()).abs() < 1e-9 * m.abs().max(1.0)
            })
            .unwrap_or(MAX_IMPLIED_DECIMALS)
    };
    let d = (-i32::from(sf)).max(0) + decimals(p.scale).max(decimals(p.offset));
    d.clamp(0, MAX_IMPLIED_DECIMALS) as u8
}

/// Whether a raw value is one the point's `unavailable` list names ("not implemented").
pub fn is_unavailable(raw: &Raw, p: &PointConfig) -> bool {
    if p.unavailable.is_empty() {
        return false;
    }
    let bits = p
        .effective_type()
        .map_or(16, |t| u32::from(t.registers(1)) * 16)
        .min(64);
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let pattern = match raw {
        Raw::Unsigned(u) => *u & mask,
        Raw::Signed(i) => (*i as u64) & mask,
        Raw::Bool(_) | Raw::Float(_) | Raw::Text(_) => return false,
    };
    p.unavailable.iter().any(|u| match u {
        Unavailable::Int(n) => (*n as u64) & mask == pattern,
        Unavailable::NaN => false,
    })
}

/// A point's registers → its raw value, or `None` when the device says it has no value (a
/// raw value of `unavailable`, or NaN where `unavailable` lists `nan`).
pub fn decode_point(words: &[u16], p: &PointConfig) -> Result<Option<Raw>, CodecError> {
    let ty = p.effective_type().unwrap_or(DataType::U16);
    match decode(words, ty, p.order) {
        Ok(raw) if is_unavailable(&raw, p) => Ok(None),
        Ok(raw) => Ok(Some(raw)),
        Err(CodecError::NotFinite(f))
            if f.is_nan() && p.unavailable.contains(&Unavailable::NaN) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What writing a value turned into: the raw value and whether it had to be rounded to the
/// register's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub raw: Raw,
    /// The value the registers will actually hold, after rounding.
    pub effective: Value,
    pub rounded: bool,
}

/// A commanded value → the raw value to write (the inverse of [`to_value`]).
pub fn from_value(v: &Value, p: &PointConfig) -> Result<Encoded, CodecError> {
    let ty = p.effective_type().unwrap_or(DataType::U16);
    if let Some(map) = &p.map {
        if let Value::Text(label) = v {
            let Some((k, _)) = map.iter().find(|(_, l)| *l == label) else {
                let labels: Vec<&str> = map.values().map(String::as_str).collect();
                return Err(CodecError::Label(
                    label.clone(),
                    crate::config::one_of(&labels),
                ));
            };
            let raw = match ty {
                DataType::Bool => Raw::Bool(*k != 0),
                _ if *k < 0 => Raw::Signed(*k),
                _ => Raw::Unsigned(*k as u64),
            };
            return Ok(Encoded {
                raw,
                effective: v.clone(),
                rounded: false,
            });
        }
    }
    match ty {
        DataType::Bool => match v {
            Value::Bool(b) => Ok(Encoded {
                raw: Raw::Bool(*b),
                effective: v.clone(),
                rounded: false,
            }),
            _ => Err(CodecError::Type("true or false")),
        },
        DataType::String => match v {
            Value::Text(t) => Ok(Encoded {
                raw: Raw::Text(t.clone()),
                effective: v.clone(),
                rounded: false,
            }),
            _ => Err(CodecError::Type("a string")),
        },
        DataType::F32 | DataType::F64 => {
            let x = v.as_f64().ok_or(CodecError::Type("a number"))?;
            let scale = p.scale.unwrap_or(1.0);
            let raw = (x - p.offset.unwrap_or(0.0)) / scale;
            let stored = if ty == DataType::F32 {
                f64::from(raw as f32)
            } else {
                raw
            };
            // Beyond ±3.4e38 an f32 is an infinity: refused like a value above `max`.
            if !stored.is_finite() {
                return Err(CodecError::Range(x.to_string(), ty.name()));
            }
            let effective = stored * scale + p.offset.unwrap_or(0.0);
            Ok(Encoded {
                raw: Raw::Float(stored),
                effective: Value::Float(round_to(effective, p.precision)),
                rounded: false,
            })
        }
        _ => {
            let x = v.as_f64().ok_or(CodecError::Type("a number"))?;
            let scale = p.scale.unwrap_or(1.0);
            let offset = p.offset.unwrap_or(0.0);
            let exact = (x - offset) / scale;
            let n = exact.round();
            // Tolerate float noise such as 21.5 / 0.1 = 214.99999999999997.
            let rounded = (exact - n).abs() > 1e-6;
            if !n.is_finite() || n < i64::MIN as f64 || n > u64::MAX as f64 {
                return Err(CodecError::Range(x.to_string(), ty.name()));
            }
            let raw = if n < 0.0 {
                Raw::Signed(n as i64)
            } else {
                Raw::Unsigned(n as u64)
            };
            let effective = to_value(raw.clone(), p);
            Ok(Encoded {
                raw,
                effective,
                rounded,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Table;
    use proptest::prelude::*;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    fn point(ty: DataType) -> PointConfig {
        PointConfig {
            writable: true,
            ..PointConfig::register(Table::Holding, 0, ty)
        }
    }

    #[test]
    fn orders_follow_the_contract_for_two_registers() {
        // 0x11223344 = bytes A=11 B=22 C=33 D=44
        let v = Raw::Unsigned(0x1122_3344);
        let enc = |o| encode(&v, DataType::U32, o, 0).unwrap();
        assert_eq!(enc(WordOrder::Abcd), vec![0x1122, 0x3344]);
        assert_eq!(enc(WordOrder::Cdab), vec![0x3344, 0x1122]);
        assert_eq!(enc(WordOrder::Badc), vec![0x2211, 0x4433]);
        assert_eq!(enc(WordOrder::Dcba), vec![0x4433, 0x2211]);
    }

    #[test]
    fn orders_follow_the_same_rule_for_four_registers() {
        let v = Raw::Unsigned(0x1122_3344_5566_7788);
        let enc = |o| encode(&v, DataType::U64, o, 0).unwrap();
        assert_eq!(enc(WordOrder::Abcd), vec![0x1122, 0x3344, 0x5566, 0x7788]);
        assert_eq!(enc(WordOrder::Cdab), vec![0x7788, 0x5566, 0x3344, 0x1122]);
        assert_eq!(enc(WordOrder::Badc), vec![0x2211, 0x4433, 0x6655, 0x8877]);
        assert_eq!(enc(WordOrder::Dcba), vec![0x8877, 0x6655, 0x4433, 0x2211]);
    }

    #[test]
    fn known_register_contents_decode() {
        // 21.5f32 = 0x41AC0000
        assert_eq!(
            decode(&[0x0000, 0x41AC], DataType::F32, WordOrder::Cdab),
            Ok(Raw::Float(21.5))
        );
        assert_eq!(
            decode(&[0xFF9C], DataType::I16, WordOrder::Abcd),
            Ok(Raw::Signed(-100))
        );
        assert_eq!(
            decode(&[0x4142, 0x4300], DataType::String, WordOrder::Abcd),
            Ok(Raw::Text("ABC".into()))
        );
        assert_eq!(
            decode(&[0x4241, 0x0043], DataType::String, WordOrder::Badc),
            Ok(Raw::Text("ABC".into()))
        );
        assert!(matches!(
            decode(&[0x7FC0, 0], DataType::F32, WordOrder::Abcd),
            Err(CodecError::NotFinite(_))
        ));
        assert!(matches!(
            decode(&[1], DataType::U32, WordOrder::Abcd),
            Err(CodecError::Length { .. })
        ));
    }

    #[test]
    fn values_beyond_a_float_type_are_refused_never_written_as_infinity() {
        assert!(matches!(
            encode(&Raw::Float(1e39), DataType::F32, WordOrder::Abcd, 0),
            Err(CodecError::Range(_, "f32"))
        ));
        assert!(encode(&Raw::Float(-1e39), DataType::F32, WordOrder::Abcd, 0).is_err());
        assert!(
            encode(
                &Raw::Float(f64::INFINITY),
                DataType::F64,
                WordOrder::Abcd,
                0
            )
            .is_err()
        );
        assert!(encode(&Raw::Float(f64::NAN), DataType::F32, WordOrder::Abcd, 0).is_err());
        assert_eq!(
            encode(&Raw::Float(3.0e38), DataType::F32, WordOrder::Abcd, 0).map(|w| w.len()),
            Ok(2)
        );
        assert!(encode(&Raw::Float(1e39), DataType::F64, WordOrder::Abcd, 0).is_ok());
    }

    #[test]
    fn a_scale_factor_from_the_device_scales_before_scale_and_offset() {
        let p = point(DataType::U16);
        // SunSpec: 2301 with V_SF -1 is 230.1 V, with no binary noise.
        assert_eq!(
            to_value_scaled(Raw::Unsigned(2301), &p, Some(-1)),
            Value::Float(230.1)
        );
        assert_eq!(
            to_value_scaled(Raw::Unsigned(4999), &p, Some(-2)),
            Value::Float(49.99)
        );
        // A positive factor keeps integers integers; 0 changes nothing.
        assert_eq!(
            to_value_scaled(Raw::Unsigned(123), &p, Some(2)),
            Value::Int(12_300)
        );
        assert_eq!(
            to_value_scaled(Raw::Unsigned(7), &p, Some(0)),
            Value::Int(7)
        );
        let mut p = point(DataType::I16);
        assert_eq!(
            to_value_scaled(Raw::Signed(-1234), &p, Some(-3)),
            Value::Float(-1.234)
        );
        // Then the point's own scale (Wh to kWh) and offset.
        p.scale = Some(0.001);
        assert_eq!(
            to_value_scaled(Raw::Signed(12345), &p, Some(1)),
            Value::Float(123.45)
        );
        p.precision = Some(1);
        assert_eq!(
            to_value_scaled(Raw::Signed(12345), &p, Some(1)),
            Value::Float(123.5)
        );
    }

    #[test]
    fn unavailable_values_match_by_number_or_by_bit_pattern() {
        let mut p = point(DataType::I16);
        p.unavailable = vec![Unavailable::Int(0x8000)];
        assert_eq!(decode_point(&[0x8000], &p), Ok(None));
        assert_eq!(decode_point(&[0x8001], &p), Ok(Some(Raw::Signed(-32767))));
        p.unavailable = vec![Unavailable::Int(-32768)];
        assert_eq!(decode_point(&[0x8000], &p), Ok(None));
        let mut p = point(DataType::U16);
        p.unavailable = vec![Unavailable::Int(0xFFFF)];
        assert_eq!(decode_point(&[0xFFFF], &p), Ok(None));
        assert_eq!(decode_point(&[0xFFFE], &p), Ok(Some(Raw::Unsigned(0xFFFE))));
        let mut p = point(DataType::U32);
        p.unavailable = vec![Unavailable::Int(0)];
        assert_eq!(decode_point(&[0, 0], &p), Ok(None));
        let mut p = point(DataType::I32);
        p.unavailable = vec![Unavailable::Int(0x8000_0000)];
        assert_eq!(decode_point(&[0x8000, 0], &p), Ok(None));
        // NaN is unknown only where the point says so; otherwise it is an error to report.
        let mut p = point(DataType::F32);
        assert!(decode_point(&[0x7FC0, 0], &p).is_err());
        p.unavailable = vec![Unavailable::NaN];
        assert_eq!(decode_point(&[0x7FC0, 0], &p), Ok(None));
        assert!(decode_point(&[0x7F80, 0], &p).is_err(), "+inf is not NaN");
    }

    #[test]
    fn scale_offset_and_precision_shape_the_published_value() {
        let mut p = point(DataType::I16);
        p.scale = Some(0.1);
        p.precision = Some(1);
        assert_eq!(to_value(Raw::Signed(215), &p), Value::Float(21.5));
        assert_eq!(to_value(Raw::Signed(-3), &p), Value::Float(-0.3));
        p.scale = Some(10.0);
        p.offset = Some(-5.0);
        assert_eq!(to_value(Raw::Signed(3), &p), Value::Int(25));
        let plain = point(DataType::U64);
        assert_eq!(
            to_value(Raw::Unsigned(u64::MAX), &plain),
            Value::Int(i128::from(u64::MAX))
        );
    }

    #[test]
    fn map_labels_both_ways() {
        let mut p = point(DataType::U16);
        p.map = Some([(0, "off".to_string()), (1, "on".to_string())].into());
        assert_eq!(to_value(Raw::Unsigned(1), &p), Value::Text("on".into()));
        assert_eq!(to_value(Raw::Unsigned(7), &p), Value::Int(7));
        assert_eq!(
            from_value(&Value::Text("off".into()), &p).map(|e| e.raw),
            Ok(Raw::Unsigned(0))
        );
        assert!(matches!(
            from_value(&Value::Text("dim".into()), &p),
            Err(CodecError::Label(..))
        ));
    }

    #[test]
    fn writes_round_to_the_register_resolution_and_say_so() {
        let mut p = point(DataType::U16);
        p.scale = Some(0.5);
        let e = from_value(&Value::Float(21.3), &p).unwrap();
        assert_eq!(e.raw, Raw::Unsigned(43));
        assert!(e.rounded);
        assert_eq!(e.effective, Value::Float(21.5));
        let e = from_value(&Value::Float(21.5), &p).unwrap();
        assert!(!e.rounded);
    }

    fn ints() -> impl Strategy<Value = (DataType, Raw)> {
        prop_oneof![
            any::<u16>().prop_map(|v| (DataType::U16, Raw::Unsigned(u64::from(v)))),
            any::<i16>().prop_map(|v| (DataType::I16, Raw::Signed(i64::from(v)))),
            any::<u32>().prop_map(|v| (DataType::U32, Raw::Unsigned(u64::from(v)))),
            any::<i32>().prop_map(|v| (DataType::I32, Raw::Signed(i64::from(v)))),
            any::<u64>().prop_map(|v| (DataType::U64, Raw::Unsigned(v))),
            any::<i64>().prop_map(|v| (DataType::I64, Raw::Signed(v))),
            any::<bool>().prop_map(|v| (DataType::Bool, Raw::Bool(v))),
            proptest::num::f32::NORMAL.prop_map(|v| (DataType::F32, Raw::Float(f64::from(v)))),
            proptest::num::f64::NORMAL.prop_map(|v| (DataType::F64, Raw::Float(v))),
            "[ -~]{0,8}".prop_map(|s| (DataType::String, Raw::Text(s.trim_end().to_string()))),
        ]
    }

    proptest! {
        #[test]
        fn every_type_and_order_round_trips((ty, raw) in ints(), o in 0usize..4) {
            let order = ORDERS[o];
            let words = encode(&raw, ty, order, 4).unwrap();
            prop_assert_eq!(words.len(), usize::from(ty.registers(4)));
            let back = decode(&words, ty, order).unwrap();
            prop_assert_eq!(back, raw);
        }

        #[test]
        fn scaled_writes_read_back_as_written(raw in 0u16..=u16::MAX, s in 1u32..100) {
            let mut p = point(DataType::U16);
            p.scale = Some(f64::from(s) / 10.0);
            p.precision = Some(3);
            let published = to_value(Raw::Unsigned(u64::from(raw)), &p);
            let e = from_value(&published, &p).unwrap();
            prop_assert_eq!(e.raw, Raw::Unsigned(u64::from(raw)));
        }
    }
}
