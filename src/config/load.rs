//! Reading the file and extracting every key with its position.
//!
//! serde stops at the first error, and `deny_unknown_fields` with it; users fixing a config on a
//! Pi over ssh want every mistake at once. So the file is parsed into toml's spanned tree and
//! each table is walked by hand: every unknown key, wrong type and bad value is recorded with its
//! line and column, and extraction goes on with the next key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::*;

/// One problem in the config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// 1-based line and column; 0 when the problem has no position (unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `devices.boiler.points.temp.register`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one pass, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        }])),
    }
}

/// Parses and validates config text; `path` is used in messages and stored in the result.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    let mut cx = Cx::new(text, path, root.get_ref());
    if !syntax.is_empty() {
        // A half-parsed document gives confusing follow-up errors: report the syntax only.
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            cx.error(span, "", e.message().trim());
        }
        return Err(cx.finish_errors());
    }
    let root = Sec {
        table: root.get_ref(),
        at: 0..0,
        path: String::new(),
    };
    let config = cx.config(&root, path);
    if cx.errors.is_empty() {
        super::validate::validate(&config, &mut cx);
    }
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish_errors())
    }
}

/// A table being extracted: the table, where it was defined, and its dotted path.
pub(super) struct Sec<'t, 'i> {
    table: &'t DeTable<'i>,
    at: Range<usize>,
    path: String,
}

impl Sec<'_, '_> {
    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// Extraction context: the source for line/column, the spanned tree (so that cross-checks in
/// `validate.rs` can point at the right place), and the errors so far.
pub(super) struct Cx<'s> {
    src: &'s str,
    root: &'s DeTable<'s>,
    file: String,
    errors: Vec<(usize, ConfigError)>,
}

impl<'s> Cx<'s> {
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
    fn span_of(&self, key: &str) -> Range<usize> {
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

    fn finish_errors(&mut self) -> ConfigErrors {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|(offset, _)| *offset);
        errors.dedup_by(|a, b| a.1 == b.1);
        ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())
    }

    /// Records an error at a byte span.
    pub(super) fn error(&mut self, span: Range<usize>, key: &str, message: impl fmt::Display) {
        let (line, column) = line_col(self.src, span.start);
        self.errors.push((
            span.start,
            ConfigError {
                file: self.file.clone(),
                line,
                column,
                key: key.to_string(),
                message: message.to_string(),
            },
        ));
    }

    /// Records an error at the value of a key path seen during extraction (or the closest
    /// enclosing table when the key itself is absent).
    pub(super) fn error_at(&mut self, key: &str, message: impl fmt::Display) {
        let span = self.span_of(key);
        self.error(span, key, message);
    }

    /// Reports keys of `sec` that are not in `allowed`.
    fn keys(&mut self, sec: &Sec, allowed: &[&str]) {
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

    fn value<'t, 'i>(&mut self, sec: &Sec<'t, 'i>, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        sec.table.get(key)
    }

    fn type_error(&mut self, sec: &Sec, key: &str, v: &Spanned<DeValue>, expected: &str) {
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

    fn string(&mut self, sec: &Sec, key: &str) -> Option<String> {
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
    fn text(&mut self, sec: &Sec, key: &str) -> Option<String> {
        let s = self.string(sec, key)?;
        if s.trim().is_empty() {
            self.error_at(&sec.key(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    fn required<T>(&mut self, sec: &Sec, key: &str, v: Option<T>, what: &str) -> Option<T> {
        if v.is_none() && !sec.table.contains_key(key) {
            self.error(sec.at.clone(), &sec.key(key), format!("missing {what}"));
        }
        v
    }

    fn int(&mut self, sec: &Sec, key: &str, min: i64, max: i64) -> Option<i64> {
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

    fn float(&mut self, sec: &Sec, key: &str) -> Option<f64> {
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

    fn boolean(&mut self, sec: &Sec, key: &str) -> Option<bool> {
        let v = self.value(sec, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(sec, key, v, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, sec: &Sec, key: &str) -> Option<Duration> {
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
    fn size(&mut self, sec: &Sec, key: &str) -> Option<u64> {
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
    fn choice(&mut self, sec: &Sec, key: &str, what: &str, names: &[&str]) -> Option<usize> {
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
    fn name(&mut self, span: Range<usize>, key: &str, name: &str) -> bool {
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

    fn table<'t, 'i>(&mut self, sec: &Sec<'t, 'i>, key: &str) -> Option<Sec<'t, 'i>> {
        let v = self.value(sec, key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Sec {
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
    fn named<'t, 'i>(&mut self, sec: &Sec<'t, 'i>, key: &str) -> Vec<(String, Sec<'t, 'i>)> {
        let Some(outer) = self.table(sec, key) else {
            return Vec::new();
        };
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
                    Sec {
                        table: t,
                        at: k.span(),
                        path,
                    },
                )),
                _ => self.type_error(&outer, &name, v, "a table"),
            }
        }
        out
    }

    fn config(&mut self, root: &Sec, path: &Path) -> Config {
        self.keys(
            root,
            &[
                "gateway",
                "mqtt",
                "history",
                "homeassistant",
                "topics",
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
        let mut buses = BTreeMap::new();
        for (name, sec) in self.named(root, "buses") {
            if let Some(bus) = self.bus(&sec) {
                buses.insert(name, bus);
            }
        }
        let mut devices = BTreeMap::new();
        for (name, sec) in self.named(root, "devices") {
            if let Some(dev) = self.device(&sec, &gateway.location, &buses) {
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
            buses,
            devices,
        }
    }

    /// A sub-table, or an empty one standing in for an absent section (all defaults).
    fn table_or_empty<'t, 'i>(
        &mut self,
        sec: &Sec<'t, 'i>,
        key: &str,
        empty: &'t DeTable<'i>,
    ) -> Sec<'t, 'i> {
        // An absent section, or one of the wrong type (reported already), takes the defaults.
        self.table(sec, key).unwrap_or_else(|| Sec {
            table: empty,
            at: 0..0,
            path: sec.key(key),
        })
    }

    fn gateway(&mut self, s: &Sec) -> GatewayConfig {
        self.keys(s, &["id", "base_topic", "location", "health_interval"]);
        let id = match self.string(s, "id") {
            Some(id) => {
                let span = self.span_of("gateway.id");
                self.name(span, "gateway.id", &id);
                id
            }
            None => default_gateway_id(),
        };
        let base_topic = self
            .text(s, "base_topic")
            .unwrap_or_else(|| "fieldbridge".into());
        let location = match self.string(s, "location") {
            Some(l) => {
                let span = self.span_of("gateway.location");
                self.name(span, "gateway.location", &l);
                l
            }
            None => "home".into(),
        };
        GatewayConfig {
            id,
            base_topic,
            location,
            health_interval: self
                .duration(s, "health_interval")
                .unwrap_or(Duration::from_secs(60)),
        }
    }

    fn mqtt(&mut self, s: &Sec) -> MqttConfig {
        self.keys(
            s,
            &[
                "url",
                "username",
                "password_file",
                "ca_file",
                "cert_file",
                "key_file",
                "tls_insecure",
                "client_id",
                "keep_alive",
                "clean_session",
                "reconnect_min",
                "reconnect_max",
                "queue",
            ],
        );
        let url = match self.string(s, "url") {
            Some(u) => match parse_mqtt_url(&u) {
                Ok(url) => url,
                Err(msg) => {
                    self.error_at("mqtt.url", msg);
                    default_url()
                }
            },
            None => default_url(),
        };
        MqttConfig {
            url,
            username: self.text(s, "username"),
            password_file: self.text(s, "password_file").map(PathBuf::from),
            ca_file: self.text(s, "ca_file").map(PathBuf::from),
            cert_file: self.text(s, "cert_file").map(PathBuf::from),
            key_file: self.text(s, "key_file").map(PathBuf::from),
            tls_insecure: self.boolean(s, "tls_insecure").unwrap_or(false),
            client_id: self.text(s, "client_id"),
            keep_alive: self
                .duration(s, "keep_alive")
                .unwrap_or(Duration::from_secs(30)),
            clean_session: self.boolean(s, "clean_session").unwrap_or(false),
            reconnect_min: self
                .duration(s, "reconnect_min")
                .unwrap_or(Duration::from_secs(1)),
            reconnect_max: self
                .duration(s, "reconnect_max")
                .unwrap_or(Duration::from_secs(60)),
            queue: self.int(s, "queue", 1, 10_000_000).unwrap_or(10_000) as usize,
        }
    }

    fn history(&mut self, s: &Sec) -> HistoryConfig {
        self.keys(s, &["path", "retention", "flush", "max_size"]);
        HistoryConfig {
            path: self
                .text(s, "path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HISTORY_PATH)),
            retention: self
                .duration(s, "retention")
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            flush: self.duration(s, "flush").unwrap_or(Duration::from_secs(1)),
            max_size: self.size(s, "max_size"),
        }
    }

    fn homeassistant(&mut self, s: &Sec) -> HomeAssistantConfig {
        self.keys(s, &["discovery", "prefix"]);
        HomeAssistantConfig {
            discovery: self.boolean(s, "discovery").unwrap_or(true),
            prefix: self
                .text(s, "prefix")
                .unwrap_or_else(|| "homeassistant".into()),
        }
    }

    fn topics(&mut self, s: &Sec) -> TopicsConfig {
        self.keys(s, &["sensor", "state", "command", "availability"]);
        TopicsConfig {
            sensor: self
                .text(s, "sensor")
                .unwrap_or_else(|| "{base}/{location}/sensor/{device}/{point}".into()),
            state: self
                .text(s, "state")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/state".into()),
            command: self
                .text(s, "command")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/command".into()),
            availability: self
                .text(s, "availability")
                .unwrap_or_else(|| "{base}/{location}/device/{device}/availability".into()),
        }
    }

    fn bus(&mut self, s: &Sec) -> Option<BusConfig> {
        let kind_i = self.choice(s, "kind", "bus kind", BusKind::NAMES);
        let kind = kind_i.map(|i| match i {
            0 => BusKind::ModbusRtu,
            1 => BusKind::ModbusTcp,
            2 => BusKind::ModbusRtuOverTcp,
            _ => BusKind::Serial,
        });
        let kind = self.required(
            s,
            "kind",
            kind,
            "bus kind (modbus-rtu, modbus-tcp, modbus-rtu-over-tcp or serial)",
        );
        const COMMON: &[&str] = &["kind", "timeout", "retries"];
        const PORT: &[&str] = &["port", "baud", "parity", "data_bits", "stop_bits"];
        const MODBUS: &[&str] = &["turnaround", "max_gap", "share"];
        let allowed: Vec<&str> = match kind {
            Some(BusKind::ModbusRtu) => [COMMON, PORT, MODBUS].concat(),
            Some(BusKind::ModbusTcp) | Some(BusKind::ModbusRtuOverTcp) => {
                [COMMON, &["address"], MODBUS].concat()
            }
            Some(BusKind::Serial) => [
                COMMON,
                PORT,
                &["format", "pattern", "line_ending", "max_line"],
            ]
            .concat(),
            None => [
                COMMON,
                PORT,
                MODBUS,
                &["address", "format", "pattern", "line_ending", "max_line"],
            ]
            .concat(),
        };
        // Keys that exist for another kind get a clearer message than "unknown key".
        let all: Vec<&str> = [
            COMMON,
            PORT,
            MODBUS,
            &["address", "format", "pattern", "line_ending", "max_line"],
        ]
        .concat();
        for (k, _) in s.table.iter() {
            let name = k.get_ref().as_ref();
            if all.contains(&name) && !allowed.contains(&name) {
                if let Some(kind) = kind {
                    self.error(
                        k.span(),
                        &s.key(name),
                        format!("\"{name}\" does not apply to a {} bus", kind.name()),
                    );
                }
            }
        }
        let unknown: Vec<&str> = all;
        self.keys(s, &unknown);
        let port = self.text(s, "port");
        let address = self.text(s, "address");
        if let Some(kind) = kind {
            if kind.uses_serial_port() {
                self.required(
                    s,
                    "port",
                    port.as_ref(),
                    "serial port (e.g. port = \"/dev/ttyUSB0\")",
                );
            } else {
                self.required(s, "address", address.as_ref(), "address (host:port)");
                if let Some(a) = &address {
                    if let Err(msg) = check_socket_address(a) {
                        self.error_at(&s.key("address"), msg);
                    }
                }
            }
        }
        let parity = match self.choice(s, "parity", "parity", &["none", "even", "odd"]) {
            Some(1) => Parity::Even,
            Some(2) => Parity::Odd,
            _ => Parity::None,
        };
        let format = match self.choice(s, "format", "line format", &["json", "kv", "regex"]) {
            Some(1) => LineFormat::Kv,
            Some(2) => LineFormat::Regex,
            _ => LineFormat::Json,
        };
        let pattern = self.text(s, "pattern");
        if let Some(p) = &pattern {
            match regex::Regex::new(p) {
                Ok(re) if re.capture_names().flatten().next().is_none() => self.error_at(
                    &s.key("pattern"),
                    "the pattern has no named groups, e.g. (?P<temperature>[-\\d.]+)",
                ),
                Ok(_) => {}
                Err(e) => {
                    let msg = e.to_string();
                    let first = msg.lines().last().unwrap_or("invalid");
                    self.error_at(
                        &s.key("pattern"),
                        format!("invalid regex: {}", first.trim()),
                    )
                }
            }
        }
        if kind == Some(BusKind::Serial) {
            if format == LineFormat::Regex && pattern.is_none() && !s.table.contains_key("pattern")
            {
                self.error_at(
                    &s.key("format"),
                    "format \"regex\" needs a `pattern` with named groups",
                );
            }
            if format != LineFormat::Regex && pattern.is_some() {
                self.error_at(
                    &s.key("pattern"),
                    "`pattern` is only used with format = \"regex\"",
                );
            }
        }
        let baud = self
            .int(s, "baud", 50, 4_000_000)
            .map(|b| b as u32)
            .unwrap_or(9600);
        let data_bits = self.int(s, "data_bits", 5, 8).map(|b| b as u8).unwrap_or(8);
        let stop_bits = self.int(s, "stop_bits", 1, 2).map(|b| b as u8).unwrap_or(1);
        Some(BusConfig {
            kind: kind?,
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
            address,
            timeout: self
                .duration(s, "timeout")
                .unwrap_or(Duration::from_millis(500)),
            retries: self.int(s, "retries", 0, 10).unwrap_or(1) as u32,
            turnaround: self.duration(s, "turnaround"),
            max_gap: self.int(s, "max_gap", 0, 124).unwrap_or(4) as u16,
            format,
            pattern,
            line_ending: match self.string(s, "line_ending").as_deref() {
                None | Some("\n") => LineEnding::Lf,
                Some("\r\n") => LineEnding::CrLf,
                Some("\r") => LineEnding::Cr,
                Some(other) => {
                    self.error_at(
                        &s.key("line_ending"),
                        format!(
                            "unknown line ending {:?}; expected \"\\n\", \"\\r\\n\" or \"\\r\"",
                            other
                        ),
                    );
                    LineEnding::Lf
                }
            },
            max_line: self.int(s, "max_line", 16, 65_536).unwrap_or(1024) as usize,
            share: match self.string(s, "share") {
                Some(a) => {
                    match a.parse::<std::net::SocketAddr>() {
                        Ok(addr) => Some(addr),
                        Err(_) => {
                            self.error_at(
                            &s.key("share"),
                            format!("invalid address \"{a}\"; expected ip:port, e.g. \"127.0.0.1:5020\""),
                        );
                            None
                        }
                    }
                }
                None => None,
            },
        })
    }

    fn device(
        &mut self,
        s: &Sec,
        default_location: &str,
        buses: &BTreeMap<String, BusConfig>,
    ) -> Option<DeviceConfig> {
        self.keys(
            s,
            &[
                "bus",
                "unit",
                "location",
                "poll",
                "offline_after",
                "offline_retry",
                "name",
                "manufacturer",
                "model",
                "match",
                "silence",
                "write_multiple",
                "points",
                "actions",
            ],
        );
        let bus_name = self.text(s, "bus");
        let bus_name = self.required(s, "bus", bus_name, "bus");
        let bus = bus_name.as_ref().and_then(|b| buses.get(b));
        if let Some(b) = &bus_name {
            if bus.is_none() {
                let defined: Vec<&str> = buses.keys().map(String::as_str).collect();
                let msg = if defined.is_empty() {
                    format!("unknown bus \"{b}\"; no buses are defined")
                } else {
                    format!("unknown bus \"{b}\"; defined buses: {}", defined.join(", "))
                };
                self.error_at(&s.key("bus"), msg);
            }
        }
        let kind = bus.map(|b| b.kind);
        let unit = self.int(s, "unit", 0, 255).map(|u| u as u8);
        match kind {
            Some(k) if k.is_modbus() => {
                self.required(s, "unit", unit, "Modbus unit id (unit = 1..247)");
            }
            Some(_) if unit.is_some() => {
                self.error_at(
                    &s.key("unit"),
                    "`unit` applies to Modbus buses only; this device is on a serial bus",
                );
            }
            _ => {}
        }
        let location = match self.string(s, "location") {
            Some(l) => {
                let key = s.key("location");
                let span = self.span_of(&key);
                self.name(span, &key, &l);
                l
            }
            None => default_location.to_string(),
        };
        let m = match self.table(s, "match") {
            Some(m) => {
                self.keys(&m, &["field", "equals"]);
                let field = self.text(&m, "field");
                let field = self.required(&m, "field", field, "field");
                let v = self.value(&m, "equals");
                let equals = match v.map(|v| (v, v.get_ref())) {
                    Some((_, DeValue::String(x))) => Some(x.to_string()),
                    Some((_, DeValue::Integer(i))) => Some(i.as_str().to_string()),
                    Some((_, DeValue::Boolean(b))) => Some(b.to_string()),
                    Some((v, _)) => {
                        self.type_error(&m, "equals", v, "a string, integer or boolean");
                        None
                    }
                    None => None,
                };
                let equals = self.required(&m, "equals", equals, "equals");
                if matches!(kind, Some(k) if k.is_modbus()) {
                    self.error_at(&s.key("match"), "`match` applies to serial buses only");
                }
                field
                    .zip(equals)
                    .map(|(field, equals)| MatchConfig { field, equals })
            }
            None => None,
        };
        let poll = self.duration(s, "poll").unwrap_or(Duration::from_secs(10));
        let silence = self
            .duration(s, "silence")
            .unwrap_or(Duration::from_secs(60));
        let write_multiple = self.boolean(s, "write_multiple").unwrap_or(false);
        match kind {
            Some(BusKind::Serial) => {
                for key in ["poll", "offline_after", "offline_retry", "write_multiple"] {
                    if s.table.contains_key(key) {
                        self.error_at(
                            &s.key(key),
                            format!("`{key}` applies to Modbus devices; serial devices talk when they want (see `silence`)"),
                        );
                    }
                }
            }
            Some(_) if s.table.contains_key("silence") => {
                self.error_at(
                    &s.key("silence"),
                    "`silence` applies to serial devices; Modbus devices use `offline_after`",
                );
            }
            _ => {}
        }
        let offline_retry = self
            .duration(s, "offline_retry")
            .unwrap_or(Duration::from_secs(30))
            .max(poll);
        let mut points = BTreeMap::new();
        for (name, ps) in self.named(s, "points") {
            if RESERVED_POINTS.contains(&name.as_str()) {
                let key = ps.path.clone();
                self.error(
                    ps.at.clone(),
                    &key,
                    format!("\"{name}\" is a reserved name (it is a key of the state and command payloads); choose another point name"),
                );
                continue;
            }
            if let Some(p) = self.point(&ps, kind) {
                points.insert(name, p);
            }
        }
        if points.is_empty() && !s.table.contains_key("points") {
            self.error(
                s.at.clone(),
                &s.key("points"),
                "a device needs at least one point",
            );
        }
        let mut actions = BTreeMap::new();
        for (name, acs) in self.named(s, "actions") {
            if RESERVED_ACTIONS.contains(&name.as_str()) {
                self.error(
                    acs.at.clone(),
                    &acs.path,
                    format!("\"{name}\" is a built-in action; choose another name"),
                );
                continue;
            }
            if let Some(a) = self.action(&acs, kind, &points) {
                actions.insert(name, a);
            }
        }
        Some(DeviceConfig {
            bus: bus_name?,
            unit,
            location,
            poll,
            offline_after: self.int(s, "offline_after", 1, 1000).unwrap_or(3) as u32,
            offline_retry,
            name: self.text(s, "name"),
            manufacturer: self.text(s, "manufacturer"),
            model: self.text(s, "model"),
            silence,
            write_multiple,
            r#match: m,
            points,
            actions,
        })
    }

    fn point(&mut self, s: &Sec, kind: Option<BusKind>) -> Option<PointConfig> {
        self.keys(
            s,
            &[
                "register",
                "field",
                "type",
                "length",
                "order",
                "scale",
                "offset",
                "precision",
                "unit",
                "deadband",
                "heartbeat",
                "device_class",
                "state_class",
                "writable",
                "min",
                "max",
                "map",
                "qos",
                "retain",
                "send",
                "expect",
            ],
        );
        let modbus = kind.map(BusKind::is_modbus);
        let register = match self.string(s, "register") {
            Some(r) => match parse_register(&r) {
                Ok(reg) => Some(reg),
                Err(msg) => {
                    self.error_at(&s.key("register"), msg);
                    None
                }
            },
            None => None,
        };
        let field = self.text(s, "field");
        match modbus {
            Some(true) => {
                if !s.table.contains_key("register") {
                    self.error(
                        s.at.clone(),
                        &s.key("register"),
                        "missing register (e.g. register = \"holding:10\")",
                    );
                }
                if field.is_some() {
                    self.error_at(
                        &s.key("field"),
                        "`field` applies to serial buses; Modbus points use `register`",
                    );
                }
            }
            Some(false) => {
                if s.table.contains_key("register") {
                    self.error_at(
                        &s.key("register"),
                        "`register` applies to Modbus buses; serial points use `field`",
                    );
                }
            }
            None => {}
        }
        let data_type = self
            .choice(s, "type", "type", DataType::NAMES)
            .map(|i| ALL_TYPES[i]);
        let length = self.int(s, "length", 1, 125).map(|l| l as u16);
        let order = match self.choice(s, "order", "order", WordOrder::NAMES) {
            Some(1) => WordOrder::Cdab,
            Some(2) => WordOrder::Badc,
            Some(3) => WordOrder::Dcba,
            _ => WordOrder::Abcd,
        };
        let map = self.map(s);
        let point = PointConfig {
            register,
            field,
            data_type,
            length,
            order,
            scale: self.float(s, "scale"),
            offset: self.float(s, "offset"),
            precision: self.int(s, "precision", 0, 12).map(|p| p as u8),
            unit: self.string(s, "unit"),
            deadband: match self.float(s, "deadband") {
                Some(d) if d < 0.0 => {
                    self.error_at(&s.key("deadband"), "must not be negative");
                    0.0
                }
                Some(d) => d,
                None => 0.0,
            },
            heartbeat: self.duration(s, "heartbeat"),
            device_class: self.text(s, "device_class"),
            state_class: self.text(s, "state_class"),
            writable: self.boolean(s, "writable").unwrap_or(false),
            min: self.float(s, "min"),
            max: self.float(s, "max"),
            map,
            qos: self.int(s, "qos", 0, 1).unwrap_or(0) as u8,
            retain: self.boolean(s, "retain").unwrap_or(false),
            send: self.text(s, "send"),
            expect: self.text(s, "expect"),
        };
        let mut point = point;
        if point.send.is_some() {
            point.writable = true;
        }
        self.check_point(s, &point, kind);
        Some(point)
    }

    /// `map = { 0 = "off", 1 = "on" }`: integer keys, unique labels.
    fn map(&mut self, s: &Sec) -> Option<BTreeMap<i64, String>> {
        let m = self.table(s, "map")?;
        let mut out = BTreeMap::new();
        let mut labels: HashMap<String, String> = HashMap::new();
        for (k, v) in m.table.iter() {
            let raw = k.get_ref().as_ref();
            let key = m.key(raw);
            let Ok(n) = raw.trim().parse::<i64>() else {
                self.error(
                    k.span(),
                    &key,
                    format!("map keys are raw integer values; \"{raw}\" is not an integer"),
                );
                continue;
            };
            let DeValue::String(label) = v.get_ref() else {
                self.type_error(&m, raw, v, "a label string");
                continue;
            };
            if label.is_empty() {
                self.error(v.span(), &key, "a label must not be empty");
                continue;
            }
            if let Some(first) = labels.get(label.as_ref()) {
                self.error(
                    v.span(),
                    &key,
                    format!(
                        "label \"{label}\" is used twice (also for {first}); labels must be unique"
                    ),
                );
                continue;
            }
            labels.insert(label.to_string(), raw.to_string());
            out.insert(n, label.to_string());
        }
        if out.is_empty() && m.table.is_empty() {
            self.error(m.at.clone(), &m.path, "an empty map has no labels");
        }
        Some(out)
    }

    fn check_point(&mut self, s: &Sec, p: &PointConfig, kind: Option<BusKind>) {
        let ty = p.effective_type();
        if let (Some(reg), Some(ty)) = (p.register, ty) {
            if reg.table.is_bits() && ty != DataType::Bool {
                self.error_at(
                    &s.key("type"),
                    format!(
                        "a {} holds single bits; type must be bool, not {}",
                        reg.table.name(),
                        ty.name()
                    ),
                );
            }
            let len = ty.registers(p.length.unwrap_or(1));
            if reg.address as u32 + len as u32 > 65_536 {
                self.error_at(
                    &s.key("register"),
                    format!("{reg} with {len} registers runs past address 65535"),
                );
            }
            if p.writable && !reg.table.is_writable() {
                self.error_at(
                    &s.key("writable"),
                    format!("{} registers are read-only in Modbus; only coil and holding can be writable", reg.table.name()),
                );
            }
        }
        if kind == Some(BusKind::Serial) && p.writable && p.send.is_none() {
            self.error_at(
                &s.key("writable"),
                "a writable serial point needs `send`, the line that sets it (e.g. send = \"SET {value}\")",
            );
        }
        if matches!(kind, Some(k) if k.is_modbus()) {
            for key in ["send", "expect"] {
                if s.table.contains_key(key) {
                    self.error_at(&s.key(key), format!("`{key}` applies to serial points"));
                }
            }
        }
        if p.expect.is_some() && p.send.is_none() {
            self.error_at(&s.key("expect"), "`expect` needs `send`");
        }
        if let Some(re) = p.expect.as_deref() {
            if let Err(e) = regex::Regex::new(re) {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("invalid").trim().to_string();
                self.error_at(&s.key("expect"), format!("invalid regex: {last}"));
            }
        }
        match ty {
            Some(DataType::String) => {
                if p.length.is_none() && p.register.is_some() {
                    self.error(
                        s.at.clone(),
                        &s.key("length"),
                        "a string point needs `length` (registers)",
                    );
                }
            }
            _ => {
                if p.length.is_some() {
                    self.error_at(
                        &s.key("length"),
                        "`length` applies to type = \"string\" only",
                    );
                }
            }
        }
        if matches!(ty, Some(DataType::Bool) | Some(DataType::String)) {
            for key in ["scale", "offset", "precision", "min", "max", "deadband"] {
                if s.table.contains_key(key) {
                    let t = ty.map(DataType::name).unwrap_or("");
                    self.error_at(
                        &s.key(key),
                        format!("`{key}` applies to numeric points, not {t}"),
                    );
                }
            }
        }
        if let (Some(min), Some(max)) = (p.min, p.max) {
            if min > max {
                self.error_at(&s.key("min"), format!("min {min} is above max {max}"));
            }
        }
        if let Some(map) = &p.map {
            if matches!(
                ty,
                Some(DataType::F32) | Some(DataType::F64) | Some(DataType::String)
            ) {
                self.error_at(&s.key("map"), "`map` labels integer or bool values");
            } else if ty == Some(DataType::Bool) {
                if let Some(k) = map.keys().find(|k| **k != 0 && **k != 1) {
                    self.error_at(
                        &s.key("map"),
                        format!("a bool point maps only 0 and 1, not {k}"),
                    );
                }
            }
            if p.scale.is_some() || p.offset.is_some() {
                self.error_at(
                    &s.key("map"),
                    "`map` cannot be combined with `scale`/`offset`",
                );
            }
        }
    }

    fn action(
        &mut self,
        s: &Sec,
        kind: Option<BusKind>,
        points: &BTreeMap<String, PointConfig>,
    ) -> Option<ActionConfig> {
        self.keys(s, &["set", "send", "expect"]);
        let mut set = BTreeMap::new();
        if let Some(t) = self.table(s, "set") {
            for (k, v) in t.table.iter() {
                let point = k.get_ref().to_string();
                let key = t.key(&point);
                let value = match v.get_ref() {
                    DeValue::Boolean(b) => SetValue::Bool(*b),
                    DeValue::String(x) => SetValue::String(x.to_string()),
                    DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n) => SetValue::Integer(n),
                        Err(_) => {
                            self.error(v.span(), &key, "integer out of range");
                            continue;
                        }
                    },
                    DeValue::Float(f) => match f.as_str().parse::<f64>() {
                        Ok(x) if x.is_finite() => SetValue::Float(x),
                        _ => {
                            self.error(v.span(), &key, "expected a finite number");
                            continue;
                        }
                    },
                    _ => {
                        self.type_error(&t, &point, v, "a value (number, string or boolean)");
                        continue;
                    }
                };
                match points.get(&point) {
                    None => {
                        let msg = match closest(
                            &point,
                            &points.keys().map(String::as_str).collect::<Vec<_>>(),
                        ) {
                            Some(near) => {
                                format!("unknown point \"{point}\" (did you mean \"{near}\"?)")
                            }
                            None => format!("unknown point \"{point}\""),
                        };
                        self.error(k.span(), &key, msg);
                        continue;
                    }
                    Some(p) if !p.writable => {
                        self.error(k.span(), &key, format!("point \"{point}\" is not writable"));
                        continue;
                    }
                    Some(p) => {
                        if let Err(msg) = check_set_value(p, &value) {
                            self.error(v.span(), &key, msg);
                            continue;
                        }
                    }
                }
                set.insert(point, value);
            }
        }
        let send = self.text(s, "send");
        let expect = self.text(s, "expect");
        if let Some(re) = expect.as_deref() {
            if let Err(e) = regex::Regex::new(re) {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("invalid").trim().to_string();
                self.error_at(&s.key("expect"), format!("invalid regex: {last}"));
            }
        }
        match kind {
            Some(k) if k.is_modbus() => {
                if send.is_some() || expect.is_some() {
                    self.error(
                        s.at.clone(),
                        &s.path,
                        "`send`/`expect` apply to serial buses; Modbus actions use `set`",
                    );
                } else if set.is_empty() && !s.table.contains_key("set") {
                    self.error(
                        s.at.clone(),
                        &s.key("set"),
                        "missing set (e.g. set = { state = \"on\" })",
                    );
                }
            }
            Some(_) => {
                if send.is_none() && !s.table.contains_key("send") {
                    self.error(
                        s.at.clone(),
                        &s.key("send"),
                        "missing send (e.g. send = \"LED {value}\")",
                    );
                }
                if s.table.contains_key("set") {
                    self.error_at(
                        &s.key("set"),
                        "serial actions write with `send`; `set` applies to Modbus devices",
                    );
                }
            }
            None => {}
        }
        Some(ActionConfig { set, send, expect })
    }
}

/// The longest duration any key takes (ten years).
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Point names that would collide with keys of the contract's payloads.
pub const RESERVED_POINTS: &[&str] = &["timestamp", "action", "id"];
/// Action names the command handler gives a meaning of its own.
pub const RESERVED_ACTIONS: &[&str] = &["set", "refresh"];

/// Every data type, in the order of `DataType::NAMES`.
pub const ALL_TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::String,
];

/// Checks a value from an action's `set` table against the point it writes.
fn check_set_value(p: &PointConfig, v: &SetValue) -> Result<(), String> {
    if let Some(map) = &p.map {
        return match v {
            SetValue::String(label) if map.values().any(|l| l == label) => Ok(()),
            SetValue::String(label) => Err(format!(
                "unknown label \"{label}\"; expected {}",
                one_of(&map.values().map(String::as_str).collect::<Vec<_>>())
            )),
            SetValue::Integer(n) if map.contains_key(n) => Ok(()),
            _ => Err("expected one of the point's map labels".into()),
        };
    }
    let number = match (p.effective_type(), v) {
        (Some(DataType::Bool), SetValue::Bool(_)) => return Ok(()),
        (Some(DataType::Bool), _) => return Err("expected true or false".into()),
        (Some(DataType::String), SetValue::String(_)) => return Ok(()),
        (Some(DataType::String), _) => return Err("expected a string".into()),
        (_, SetValue::Integer(n)) => *n as f64,
        (_, SetValue::Float(f)) => *f,
        _ => return Err("expected a number".into()),
    };
    if let Some(min) = p.min {
        if number < min {
            return Err(format!("{number} is below min {min}"));
        }
    }
    if let Some(max) = p.max {
        if number > max {
            return Err(format!("{number} is above max {max}"));
        }
    }
    Ok(())
}

fn default_url() -> MqttUrl {
    MqttUrl {
        tls: false,
        host: "127.0.0.1".into(),
        port: 1883,
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts in brackets.
pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!(
            "unsupported URL \"{url}\"; expected mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "unsupported URL \"{url}\"; give only host and port (credentials go in username/password_file)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let Some((h, after)) = r.split_once(']') else {
            return Err(format!("invalid URL \"{url}\": unclosed '['"));
        };
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("invalid URL \"{url}\"")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("invalid URL \"{url}\": no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("invalid port \"{p}\" in URL \"{url}\"")),
        },
    };
    Ok(MqttUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

/// `host:port` for Modbus TCP; the host may be a name, resolved when the bus opens.
fn check_socket_address(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!(
            "invalid address \"{a}\"; expected host:port, e.g. \"192.168.1.50:502\""
        ));
    };
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!(
            "invalid address \"{a}\"; expected host:port, e.g. \"192.168.1.50:502\""
        ));
    }
    Ok(())
}

/// `holding:10` → table and 0-based address.
pub fn parse_register(s: &str) -> Result<Register, String> {
    let Some((table, addr)) = s.split_once(':') else {
        return Err(format!(
            "invalid register \"{s}\"; expected table:address, e.g. \"holding:10\""
        ));
    };
    let table = match table.trim() {
        "coil" => Table::Coil,
        "discrete" => Table::Discrete,
        "input" => Table::Input,
        "holding" => Table::Holding,
        other => {
            return Err(format!(
                "unknown register table \"{other}\"; expected coil, discrete, input or holding"
            ));
        }
    };
    let address = addr.trim();
    let address = if let Some(hex) = address.strip_prefix("0x") {
        u16::from_str_radix(hex, 16).ok()
    } else {
        address.parse::<u16>().ok()
    };
    match address {
        Some(address) => Ok(Register { table, address }),
        None => Err(format!(
            "invalid register address \"{}\"; expected 0 to 65535",
            addr.trim()
        )),
    }
}

/// `[a-z0-9_-]+`
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

pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn default_gateway_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "fieldbridge".into()
    } else {
        id
    }
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
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
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
    fn mqtt_urls_parse_with_default_ports() {
        assert_eq!(
            parse_mqtt_url("mqtt://broker.lan").ok(),
            Some(MqttUrl {
                tls: false,
                host: "broker.lan".into(),
                port: 1883
            })
        );
        assert_eq!(
            parse_mqtt_url("mqtts://[::1]:8884").ok(),
            Some(MqttUrl {
                tls: true,
                host: "::1".into(),
                port: 8884
            })
        );
        assert!(parse_mqtt_url("tcp://x:1883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
        assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    }

    #[test]
    fn registers_parse_tables_and_addresses() {
        assert_eq!(
            parse_register("holding:10"),
            Ok(Register {
                table: Table::Holding,
                address: 10
            })
        );
        assert_eq!(
            parse_register("coil:0x10"),
            Ok(Register {
                table: Table::Coil,
                address: 16
            })
        );
        assert!(parse_register("holdng:1").is_err());
        assert!(parse_register("input:70000").is_err());
        assert!(parse_register("input").is_err());
    }

    #[test]
    fn typos_suggest_the_nearest_key() {
        assert_eq!(closest("polll", &["poll", "points"]), Some("poll"));
        assert_eq!(closest("zzzzzz", &["poll", "points"]), None);
    }
}
