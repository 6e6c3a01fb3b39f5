//! Extracting every key of a TOML document with its position (`load.rs` reads the file).
//!
//! serde stops at the first error, and `deny_unknown_fields` with it; users fixing a config on a
//! Pi over ssh want every mistake at once. So the file is parsed into toml's spanned tree and
//! each table is walked by hand: every unknown key, wrong type and bad value is recorded with its
//! line and column, and extraction goes on with the next key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigErrors};
use super::*;

/// Reads one TOML document with `extract`, which walks it from the root table; every problem
/// comes back with `path` and its line and column. The config is one such document; a device
/// profile file, whose `points` and `actions` go through the same extraction, is another.
pub(super) fn parse_document<T>(
    text: &str,
    path: &Path,
    extract: impl FnOnce(&mut Extractor<'_>, &Section<'_, '_>) -> T,
) -> Result<T, ConfigErrors> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    let mut cx = Extractor::new(text, path, root.get_ref());
    if !syntax.is_empty() {
        // A half-parsed document gives confusing follow-up errors: report the syntax only.
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            cx.error(span, "", e.message().trim());
        }
        return Err(cx.finish_errors());
    }
    let root = Section {
        table: root.get_ref(),
        at: 0..0,
        path: String::new(),
    };
    let out = extract(&mut cx, &root);
    if cx.errors.is_empty() {
        Ok(out)
    } else {
        Err(cx.finish_errors())
    }
}

/// A table being extracted: the table, where it was defined, and its dotted path from the root
/// of the document being read. That path is both the key named in errors and where
/// `Extractor::error_at` looks a key up, so a table can be extracted wherever it sits in its document.
pub(super) struct Section<'t, 'i> {
    pub(super) table: &'t DeTable<'i>,
    pub(super) at: Range<usize>,
    pub(super) path: String,
}

impl Section<'_, '_> {
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// Extraction context: the source for line/column, the spanned tree (so that cross-checks in
/// `validate.rs` can point at the right place), and the errors so far.
pub(super) struct Extractor<'s> {
    src: &'s str,
    root: &'s DeTable<'s>,
    file: String,
    errors: Vec<(usize, ConfigError)>,
}

impl<'s> Extractor<'s> {
    fn new(src: &'s str, path: &Path, root: &'s DeTable<'s>) -> Self {
        Self {
            src,
            root,
            file: path.display().to_string(),
            errors: Vec::new(),
        }
    }

    /// Where a dotted key path is in the file: the value of a key, the header of a table, or the
    /// closest enclosing table when the key is absent. Looked up on demand, so extraction keeps
    /// no index of its own (a config of thousands of points stays cheap to load).
    pub(super) fn span_of(&self, key: &str) -> Range<usize> {
        let mut table = self.root;
        let mut found = 0..0;
        for seg in key.split('.') {
            let Some((k, v)) = table.get_key_value(seg) else {
                break;
            };
            match v.get_ref() {
                DeValue::Table(t) => {
                    found = k.span();
                    table = t;
                }
                _ => {
                    found = v.span();
                    break;
                }
            }
        }
        found
    }

    /// No error so far.
    pub(super) fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn finish_errors(&mut self) -> ConfigErrors {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|(offset, _)| *offset);
        errors.dedup_by(|a, b| a.1 == b.1);
        ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())
    }

    /// Records an error at a byte span.
    pub(super) fn error(&mut self, span: Range<usize>, key: &str, message: impl fmt::Display) {
        let e = self.located(span.clone(), key, message);
        self.errors.push((span.start, e));
    }

    /// A problem at a byte span, with its line and column.
    pub(super) fn located(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        let (line, column) = line_col(self.src, span.start);
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Records an error at the value of a key path seen during extraction (or the closest
    /// enclosing table when the key itself is absent).
    pub(super) fn error_at(&mut self, key: &str, message: impl fmt::Display) {
        let span = self.span_of(key);
        self.error(span, key, message);
    }

    /// Reports keys of `sec` that are not in `allowed`.
    pub(super) fn keys(&mut self, sec: &Section, allowed: &[&str]) {
        for (k, _) in sec.table.iter() {
            let name = k.get_ref().as_ref();
            if !allowed.contains(&name) {
                let msg = match closest(name, allowed) {
                    Some(near) => format!("unknown key \"{name}\" (did you mean \"{near}\"?)"),
                    None => format!("unknown key \"{name}\"; expected {}", one_of(allowed)),
                };
                self.error(k.span(), &sec.key(name), msg);
            }
        }
    }

    pub(super) fn value<'t, 'i>(
        &mut self,
        sec: &Section<'t, 'i>,
        key: &str,
    ) -> Option<&'t Spanned<DeValue<'i>>> {
        sec.table.get(key)
    }

    pub(super) fn type_error(
        &mut self,
        sec: &Section,
        key: &str,
        v: &Spanned<DeValue>,
        expected: &str,
    ) {
        let found = match v.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        self.error(
            v.span(),
            &sec.key(key),
            format!("expected {expected}, found {found}"),
        );
    }

    pub(super) fn string(&mut self, sec: &Section, key: &str) -> Option<String> {
        let v = self.value(sec, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.type_error(sec, key, v, "a string");
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(super) fn text(&mut self, sec: &Section, key: &str) -> Option<String> {
        let s = self.string(sec, key)?;
        if s.trim().is_empty() {
            self.error_at(&sec.key(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn required<T>(
        &mut self,
        sec: &Section,
        key: &str,
        v: Option<T>,
        what: &str,
    ) -> Option<T> {
        if v.is_none() && !sec.table.contains_key(key) {
            self.error(sec.at.clone(), &sec.key(key), format!("missing {what}"));
        }
        v
    }

    pub(super) fn int(&mut self, sec: &Section, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.value(sec, key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_error(sec, key, v, "an integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    v.span(),
                    &sec.key(key),
                    format!("{i} is out of range; expected {min} to {max}"),
                );
                None
            }
        }
    }

    pub(super) fn float(&mut self, sec: &Section, key: &str) -> Option<f64> {
        let v = self.value(sec, key)?;
        let f = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.type_error(sec, key, v, "a number");
                return None;
            }
        };
        match f {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.error(v.span(), &sec.key(key), "expected a finite number");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, sec: &Section, key: &str) -> Option<bool> {
        let v = self.value(sec, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(sec, key, v, "true or false");
                None
            }
        }
    }

    pub(super) fn duration(&mut self, sec: &Section, key: &str) -> Option<Duration> {
        let v = self.value(sec, key)?;
        let DeValue::String(s) = v.get_ref() else {
            self.type_error(
                sec,
                key,
                v,
                "a duration string like \"250ms\", \"5s\" or \"30d\"",
            );
            return None;
        };
        match humantime::parse_duration(s) {
            // Far-future deadlines overflow timers; nothing here needs more than a few years.
            Ok(d) if d > MAX_DURATION => {
                self.error(v.span(), &sec.key(key), "too long; at most 3650 days");
                None
            }
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(v.span(), &sec.key(key), "must be longer than 0");
                None
            }
            Err(e) => {
                self.error(
                    v.span(),
                    &sec.key(key),
                    format!(
                        "invalid duration \"{s}\" ({e}); expected e.g. \"250ms\", \"5s\" or \"30d\""
                    ),
                );
                None
            }
        }
    }

    /// A size in bytes: `"64MB"`, `"512KiB"`, `"1GB"` (K, M, G are powers of 1024, with or
    /// without `B`/`iB`), or an integer number of bytes. At least 64 KiB.
    pub(super) fn size(&mut self, sec: &Section, key: &str) -> Option<u64> {
        const MIN: u64 = 64 * 1024;
        let v = self.value(sec, key)?;
        let bytes = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(s) => parse_size(s),
            _ => {
                self.type_error(sec, key, v, "a size like \"64MB\"");
                return None;
            }
        };
        match bytes {
            Some(b) if b >= MIN => Some(b),
            Some(_) => {
                self.error(v.span(), &sec.key(key), "too small; at least 64KiB");
                None
            }
            None => {
                self.error(
                    v.span(),
                    &sec.key(key),
                    "invalid size; expected e.g. \"512KiB\", \"64MB\" or \"1GB\"",
                );
                None
            }
        }
    }

    /// A string that must be one of `names`; returns its index.
    pub(super) fn choice(
        &mut self,
        sec: &Section,
        key: &str,
        what: &str,
        names: &[&str],
    ) -> Option<usize> {
        let s = self.string(sec, key)?;
        match names.iter().position(|n| *n == s) {
            Some(i) => Some(i),
            None => {
                self.error_at(
                    &sec.key(key),
                    format!("unknown {what} \"{s}\"; expected {}", one_of(names)),
                );
                None
            }
        }
    }

    /// A name used in topics: `[a-z0-9_-]+`.
    pub(super) fn name(&mut self, span: Range<usize>, key: &str, name: &str) -> bool {
        if is_valid_name(name) {
            true
        } else {
            self.error(
                span,
                key,
                format!("invalid name \"{name}\"; names use only a-z, 0-9, _ and -"),
            );
            false
        }
    }

    pub(super) fn table<'t, 'i>(
        &mut self,
        sec: &Section<'t, 'i>,
        key: &str,
    ) -> Option<Section<'t, 'i>> {
        let v = self.value(sec, key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Section {
                table: t,
                at: sec
                    .table
                    .get_key_value(key)
                    .map(|(k, _)| k.span())
                    .unwrap_or_else(|| v.span()),
                path: sec.key(key),
            }),
            _ => {
                self.type_error(sec, key, v, "a table");
                None
            }
        }
    }

    /// The entries of a table of named tables (`[buses.<name>]`), names checked.
    pub(super) fn named<'t, 'i>(
        &mut self,
        sec: &Section<'t, 'i>,
        key: &str,
    ) -> Vec<(String, Section<'t, 'i>)> {
        let Some(outer) = self.table(sec, key) else {
            return Vec::new();
        };
        self.entries(&outer)
    }

    /// The entries of `outer`, a table of named tables, names checked.
    pub(super) fn entries<'t, 'i>(
        &mut self,
        outer: &Section<'t, 'i>,
    ) -> Vec<(String, Section<'t, 'i>)> {
        let mut out = Vec::new();
        for (k, v) in outer.table.iter() {
            let name = k.get_ref().to_string();
            let path = outer.key(&name);
            if !self.name(k.span(), &path, &name) {
                continue;
            }
            match v.get_ref() {
                DeValue::Table(t) => out.push((
                    name,
                    Section {
                        table: t,
                        at: k.span(),
                        path,
                    },
                )),
                _ => self.type_error(outer, &name, v, "a table"),
            }
        }
        out
    }

    pub(super) fn config(&mut self, root: &Section, path: &Path, profiles: &Profiles) -> Config {
        self.keys(
            root,
            &[
                "gateway",
                "mqtt",
                "history",
                "homeassistant",
                "topics",
                "web",
                "buses",
                "devices",
            ],
        );
        let empty = DeTable::new();
        let gateway = {
            let sec = self.table_or_empty(root, "gateway", &empty);
            self.gateway(&sec)
        };
        let mqtt = {
            let sec = self.table_or_empty(root, "mqtt", &empty);
            self.mqtt(&sec)
        };
        let history = {
            let sec = self.table_or_empty(root, "history", &empty);
            self.history(&sec)
        };
        let homeassistant = {
            let sec = self.table_or_empty(root, "homeassistant", &empty);
            self.homeassistant(&sec)
        };
        let topics = {
            let sec = self.table_or_empty(root, "topics", &empty);
            self.topics(&sec)
        };
        let web = self.table(root, "web").map(|sec| self.web(&sec));
        let mut buses = BTreeMap::new();
        for (name, sec) in self.named(root, "buses") {
            if let Some(bus) = self.bus(&sec) {
                buses.insert(name, bus);
            }
        }
        let mut devices = BTreeMap::new();
        for (name, sec) in self.named(root, "devices") {
            if let Some(dev) = self.device(&sec, &gateway.location, &buses, profiles) {
                devices.insert(name, std::sync::Arc::new(dev));
            }
        }
        Config {
            path: path.to_path_buf(),
            gateway,
            mqtt,
            history,
            homeassistant,
            topics,
            web,
            buses,
            devices,
            warnings: Vec::new(),
        }
    }

    /// A sub-table, or an empty one standing in for an absent section (all defaults).
    fn table_or_empty<'t, 'i>(
        &mut self,
        sec: &Section<'t, 'i>,
        key: &str,
        empty: &'t DeTable<'i>,
    ) -> Section<'t, 'i> {
        // An absent section, or one of the wrong type (reported already), takes the defaults.
        self.table(sec, key).unwrap_or_else(|| Section {
            table: empty,
            at: 0..0,
            path: sec.key(key),
        })
    }
}

/// The longest duration any key takes (ten years).
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// `"64MB"`, `"512 KiB"`, `"1g"`, `"4096"`: bytes, with K/M/G as powers of 1024.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `[a-z0-9_-]+`
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// "a, b or c"
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The allowed name closest to a typo, if it is close enough to be a likely typo.
pub(super) fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (levenshtein(name, a), *a))
        .filter(|(d, a)| *d <= 2.min(a.len() / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let src = "a = 1\nunit = \"°C\"\nx";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let x = src.find('x').unwrap_or(0);
        assert_eq!(line_col(src, x), (3, 1));
    }

    #[test]
    fn typos_suggest_the_nearest_key() {
        assert_eq!(closest("polll", &["poll", "points"]), Some("poll"));
        assert_eq!(closest("zzzzzz", &["poll", "points"]), None);
    }
}
