//! Line-based serial devices: framing bytes into lines and reading fields out of them.
//! Pure and property-tested; the serial bus task (`serial_line.rs`) drives it.
//!
//! tokio-util's `LinesCodec` ends the stream on one invalid UTF-8 byte (tokio-rs/tokio#3976);
//! a noisy RS-232 line must never stop the reader, so this codec works on bytes: lines end at
//! `\n` (a trailing `\r` is dropped), invalid UTF-8 is replaced, and a line longer than the limit
//! is discarded up to its end and counted.

use std::collections::BTreeMap;

use bytes::{Buf, BytesMut};
use serde_json::Value as Json;
use tokio_util::codec::Decoder;

use crate::config::LineFormat;

/// Default longest line kept; longer ones are dropped and counted.
pub const MAX_LINE: usize = 1024;

/// What came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line (without its ending), lossily decoded.
    Line(String),
    /// A line longer than the limit was dropped.
    TooLong,
    /// A line had invalid UTF-8 (replaced; the line is still delivered as `Line` after this).
    Invalid(String),
}

/// Byte-level line framing that never gives up on bad input.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// The byte lines end at (`\n`, or `\r` for CR-terminated devices).
    end: u8,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    /// Bytes of the buffer already searched for a newline.
    searched: usize,
}

impl LineCodec {
    pub fn new(max: usize) -> Self {
        Self::with_terminator(max, b'\n')
    }

    /// Lines ending at `end` instead of `\n`.
    pub fn with_terminator(max: usize, end: u8) -> Self {
        LineCodec {
            end,
            max: max.max(1),
            discarding: false,
            searched: 0,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            let end_byte = self.end;
            let found = buf[self.searched..].iter().position(|b| *b == end_byte);
            match found {
                Some(i) => {
                    let end = self.searched + i;
                    self.searched = 0;
                    if self.discarding {
                        buf.advance(end + 1);
                        self.discarding = false;
                        return Ok(Some(Frame::TooLong));
                    }
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    if self.end == b'\n' && line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max {
                        return Ok(Some(Frame::TooLong));
                    }
                    return Ok(Some(match std::str::from_utf8(&line) {
                        Ok(s) => Frame::Line(s.to_string()),
                        Err(_) => Frame::Invalid(String::from_utf8_lossy(&line).into_owned()),
                    }));
                }
                None => {
                    if self.discarding {
                        buf.clear();
                        self.searched = 0;
                        return Ok(None);
                    }
                    if buf.len() > self.max + 1 {
                        // Over-long: drop what we have and the rest up to the next newline.
                        buf.clear();
                        self.searched = 0;
                        self.discarding = true;
                        continue;
                    }
                    self.searched = buf.len();
                    return Ok(None);
                }
            }
        }
    }
}

/// The fields of one line, by name. Numbers in text (`"21.5"`) stay text here; points decide.
pub type Fields = BTreeMap<String, Json>;

/// Why a line gave no fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("no key=value pairs")]
    NoPairs,
    #[error("does not match the pattern")]
    NoMatch,
}

/// Parses a `json` line: one object per line. Nested values stay nested for JSON pointers.
pub fn parse_json(line: &str) -> Result<Json, LineError> {
    match serde_json::from_str::<Json>(line.trim()) {
        Ok(v @ Json::Object(_)) => Ok(v),
        Ok(_) => Err(LineError::Json("a JSON value that is not an object".into())),
        Err(e) => Err(LineError::Json(e.to_string())),
    }
}

/// Parses a `kv` line: `t=21.5 h=40`, pairs separated by spaces, commas or semicolons.
pub fn parse_kv(line: &str) -> Result<Json, LineError> {
    let mut m = serde_json::Map::new();
    for pair in line.split([' ', ',', ';', '\t']).filter(|s| !s.is_empty()) {
        if let Some((k, v)) = pair.split_once(['=', ':']) {
            if !k.is_empty() {
                m.insert(k.to_string(), Json::String(v.to_string()));
            }
        }
    }
    if m.is_empty() {
        Err(LineError::NoPairs)
    } else {
        Ok(Json::Object(m))
    }
}

/// Parses a `regex` line: the pattern's named groups.
pub fn parse_regex(line: &str, re: &regex::Regex) -> Result<Json, LineError> {
    let caps = re.captures(line).ok_or(LineError::NoMatch)?;
    let mut m = serde_json::Map::new();
    for name in re.capture_names().flatten() {
        if let Some(v) = caps.name(name) {
            m.insert(name.to_string(), Json::String(v.as_str().to_string()));
        }
    }
    Ok(Json::Object(m))
}

/// Parses a line in `format`.
pub fn parse(line: &str, format: LineFormat, re: Option<&regex::Regex>) -> Result<Json, LineError> {
    match (format, re) {
        (LineFormat::Json, _) => parse_json(line),
        (LineFormat::Kv, _) => parse_kv(line),
        (LineFormat::Regex, Some(re)) => parse_regex(line, re),
        (LineFormat::Regex, None) => Err(LineError::NoMatch),
    }
}

/// A field of a parsed line: a key, or a JSON pointer (`/a/b`).
pub fn field<'a>(doc: &'a Json, name: &str) -> Option<&'a Json> {
    if name.starts_with('/') {
        doc.pointer(name)
    } else {
        doc.get(name)
    }
}

/// A field's text as the value it reads as: text that parses as a number is a number,
/// `true`/`false` a boolean, anything else stays text.
pub fn typed(v: &Json) -> Json {
    match v {
        Json::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Json::from(i)
            } else if let Some(f) = t
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && !t.eq_ignore_ascii_case("nan") && !t.contains("inf"))
            {
                serde_json::Number::from_f64(f)
                    .map(Json::Number)
                    .unwrap_or_else(|| v.clone())
            } else if t == "true" || t == "false" {
                Json::Bool(t == "true")
            } else {
                v.clone()
            }
        }
        other => other.clone(),
    }
}

/// Whether a line belongs to a device with `match = { field, equals }`.
pub fn matches(doc: &Json, field_name: &str, equals: &str) -> bool {
    match field(doc, field_name) {
        Some(Json::String(s)) => s == equals,
        Some(Json::Number(n)) => n.to_string() == equals,
        Some(Json::Bool(b)) => b.to_string() == equals,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn invalid_utf8_does_not_stop_the_reader() {
        let f = frames(b"a=1\r\n\xff\xfe=2\nb=3\n", 64);
        assert_eq!(
            f,
            vec![
                Frame::Line("a=1".into()),
                Frame::Invalid("\u{fffd}\u{fffd}=2".into()),
                Frame::Line("b=3".into()),
            ]
        );
    }

    #[test]
    fn over_long_lines_are_dropped_and_the_next_line_is_read() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(
            frames(&input, 10),
            vec![Frame::TooLong, Frame::Line("ok".into())]
        );
    }

    #[test]
    fn an_over_long_line_split_across_reads_is_dropped_whole() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"0123456789abc"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"def\nT=1\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line("T=1".into()))
        );
    }

    #[test]
    fn cr_terminated_lines_are_read_too() {
        let mut codec = LineCodec::with_terminator(64, b'\r');
        let mut buf = BytesMut::from(&b"a=1\rb=2\r"[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line("a=1".into()))
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line("b=2".into()))
        );
    }

    #[test]
    fn formats_give_fields() {
        let j = parse_json(r#"{"id":"weather1","temp":21.5,"a":{"b":3}}"#).unwrap();
        assert_eq!(field(&j, "temp"), Some(&Json::from(21.5)));
        assert_eq!(field(&j, "/a/b"), Some(&Json::from(3)));
        assert!(matches(&j, "id", "weather1"));
        let kv = parse_kv("t=21.5, h=40;s=ok").unwrap();
        assert_eq!(typed(field(&kv, "t").unwrap()), Json::from(21.5));
        assert_eq!(typed(field(&kv, "h").unwrap()), Json::from(40));
        assert_eq!(typed(field(&kv, "s").unwrap()), Json::from("ok"));
        let re = regex::Regex::new(r"^T(?P<temperature>[-\d.]+)").unwrap();
        let r = parse_regex("T-3.5 rest", &re).unwrap();
        assert_eq!(typed(field(&r, "temperature").unwrap()), Json::from(-3.5));
        assert_eq!(parse_regex("X1", &re), Err(LineError::NoMatch));
        assert!(parse_json("[1]").is_err());
        assert_eq!(parse_kv("garbage"), Err(LineError::NoPairs));
    }

    proptest! {
        #[test]
        fn any_bytes_never_error_and_good_lines_survive(noise in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut input = noise.clone();
            input.extend_from_slice(b"\nGOOD=1\n");
            let f = frames(&input, 64);
            prop_assert_eq!(f.last(), Some(&Frame::Line("GOOD=1".into())));
        }
    }
}
