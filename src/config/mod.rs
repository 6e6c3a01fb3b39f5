//! The configuration model (README "Configuration").
//!
//! The file is parsed into a spanned TOML tree (`load.rs`) and every key is extracted one by one
//! into the types below, so that *every* problem — syntax, unknown keys, wrong types, bad
//! durations and the cross-checks of `validate.rs` — is reported in one pass as
//! `file:line:col: key.path: message`, not only the first one serde would stop at.
//!
//! `load.rs` holds the machinery (positions and the typed key readers of `Extractor`), `error.rs` the
//! error types. Each section is extracted in a file of its own: `gateway.rs`, `mqtt.rs`,
//! `history.rs`, `homeassistant.rs`, `topics.rs`, `buses.rs`, `devices.rs`, and `points.rs` for
//! a device's points and actions, which reads them from their own table so that other files in
//! the same form reuse it: `profiles.rs` reads device profiles (README "Device profiles") with it.
//!
//! The types here are already validated: code outside this module can rely on names matching
//! `[a-z0-9_-]+`, a device's bus existing, a point's register table fitting its bus kind, and so on.

mod buses;
mod devices;
mod error;
mod extract;
mod gateway;
mod history;
mod homeassistant;
mod load;
mod mqtt;
mod points;
mod profiles;
mod topic_templates;
mod validate;
mod web;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use devices::SUNSPEC_PROFILE;
pub use error::{ConfigError, ConfigErrors};
pub use extract::{is_valid_name, one_of};
pub use history::check_postgres_url;
pub use load::{load, parse, parse_with};
pub use mqtt::parse_mqtt_url;
pub use points::{ALL_TYPES, override_point, parse_register};
pub use profiles::{
    Profile, ProfileDocument, ProfileIdentify, ProfileSource, Profiles, parse_profile, profiles_dir,
};

/// Where the config is read from when neither `-c` nor `FIELDBRIDGE_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fieldbridge/config.toml";
/// Where the history database lives unless `history.path` says otherwise.
pub const DEFAULT_HISTORY_PATH: &str = "/var/lib/fieldbridge/history.db";
/// Environment variable that supplies the MQTT password instead of `mqtt.password_file`.
pub const PASSWORD_ENV: &str = "FIELDBRIDGE_MQTT_PASSWORD";
/// Environment variable that supplies the PostgreSQL password instead of
/// `history.forward.password_file`.
pub const FORWARD_PASSWORD_ENV: &str = "FIELDBRIDGE_FORWARD_PASSWORD";

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, as given on the command line.
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub history: HistoryConfig,
    pub homeassistant: HomeAssistantConfig,
    pub topics: TopicsConfig,
    /// `[web]`: the commissioning page; `None` (no section) means no listener at all.
    pub web: Option<WebConfig>,
    /// Buses by name.
    pub buses: BTreeMap<String, BusConfig>,
    /// Devices by name, shared with the tasks that run them.
    pub devices: BTreeMap<String, Arc<DeviceConfig>>,
    /// Things that are valid but will not work as written (Home Assistant rejects a device
    /// class, say), with their positions; `check` prints them and `run` logs them.
    pub warnings: Vec<ConfigError>,
}

/// `[web]`
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// Default 127.0.0.1:8080; anything but loopback needs `password_file`.
    pub listen: std::net::SocketAddr,
    /// The page's password (first line), checked at login; without it (loopback only) the page
    /// needs no login.
    pub password_file: Option<PathBuf>,
    /// Commands, actions and register writes from the page. Default false: the page only reads.
    pub allow_writes: bool,
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Gateway id, used in `{base}/gateway/{gateway}/…` and the MQTT client id. Default: the
    /// host name, reduced to `[a-z0-9_-]`.
    pub id: String,
    /// `{base}` of every topic. Default `fieldbridge`.
    pub base_topic: String,
    /// Default `{location}` for devices that do not set one. Default `home`.
    pub location: String,
    /// How often `{base}/gateway/{gateway}/health` is published. Default 60 s.
    pub health_interval: Duration,
    /// `id` was not given and the host name every machine of its kind has (`raspberrypi`)
    /// stands in: `check` and the log say so.
    pub generic_id: bool,
}

/// `[mqtt]`
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (default 8883).
    pub url: MqttUrl,
    pub username: Option<String>,
    /// File holding the password (first line, trailing newline stripped). The environment
    /// variable `FIELDBRIDGE_MQTT_PASSWORD` is used when this is not set.
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs the broker's certificate; the system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any broker certificate (no chain, no host name check). Default false; logged as a
    /// warning at every start when set.
    pub tls_insecure: bool,
    /// MQTT client id. Default `fieldbridge-<gateway.id>` — stable, so a persistent session
    /// survives restarts.
    pub client_id: Option<String>,
    /// Default 30 s.
    pub keep_alive: Duration,
    /// Default false: the broker keeps our subscriptions and queued QoS 1 commands while we are
    /// away.
    pub clean_session: bool,
    /// Reconnect backoff floor. Default 1 s.
    pub reconnect_min: Duration,
    /// Reconnect backoff ceiling. Default 60 s.
    pub reconnect_max: Duration,
    /// Bound on messages held while the broker is away. Default 10 000.
    pub queue: usize,
}

impl std::fmt::Debug for MqttConfig {
    // Written by hand so that nothing secret-adjacent is ever printed by accident; the password
    // itself never lives in the config type at all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls_insecure", &self.tls_insecure)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("queue", &self.queue)
            .finish()
    }
}

/// A parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `[history]`
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    /// Default true. False: no history file, no writer, nothing recorded locally (nor forwarded).
    pub enabled: bool,
    /// Default `/var/lib/fieldbridge/history.db`.
    pub path: PathBuf,
    /// Rows older than this are deleted. Default 30 d.
    pub retention: Duration,
    /// Batching window. Default 1 s.
    pub flush: Duration,
    /// Cap on the database file in bytes; when reached, the oldest rows make room. Default none
    /// (the disk is the limit, and a full disk is treated the same way).
    pub max_size: Option<u64>,
    /// `[history.forward]`: also send every row to a central PostgreSQL. Default none.
    pub forward: Option<ForwardConfig>,
}

/// `[history.forward]` (README "Central history (PostgreSQL)"): the central PostgreSQL every local row is also sent to.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// `postgres://user@host[:port]/database[?param=value…]`; never with a password in it.
    pub url: String,
    /// A file whose first line is the password; else `FIELDBRIDGE_FORWARD_PASSWORD`, else none.
    pub password_file: Option<PathBuf>,
    /// TLS to the database, as libpq's `sslmode`. Default `prefer`.
    pub sslmode: SslMode,
    /// The CA certificate(s) the server's certificate must chain to (PEM) with `verify-ca` or
    /// `verify-full`. Default: the system's root certificates.
    pub ca_file: Option<PathBuf>,
}

/// libpq's `sslmode`, as PostgreSQL users know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified; else plain.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, the certificate chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static [&'static str] =
        &["disable", "prefer", "require", "verify-ca", "verify-full"];

    fn from_index(i: usize) -> SslMode {
        match i {
            0 => SslMode::Disable,
            2 => SslMode::Require,
            3 => SslMode::VerifyCa,
            4 => SslMode::VerifyFull,
            _ => SslMode::Prefer,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether the server's certificate is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// `[homeassistant]`
#[derive(Debug, Clone, PartialEq)]
pub struct HomeAssistantConfig {
    /// Default true.
    pub discovery: bool,
    /// Default `homeassistant`.
    pub prefix: String,
    /// Default `device`: one config per device (Home Assistant 2024.11 and later).
    pub mode: DiscoveryMode,
}

/// `homeassistant.mode`: how discovery configs are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// One config per device at `{prefix}/device/{gateway}_{device}/config`, one entry per
    /// entity in `cmps` (Home Assistant 2024.11 and later).
    Device,
    /// One config per entity at `{prefix}/{component}/{gateway}_{device}/{object}/config`.
    Entity,
}

impl DiscoveryMode {
    pub const NAMES: &'static [&'static str] = &["device", "entity"];
}

/// A point's `entity_category` in Home Assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityCategory {
    /// Settings (writable points only: Home Assistant refuses it on sensors).
    Config,
    /// Diagnostic readings.
    Diagnostic,
}

impl EntityCategory {
    pub const NAMES: &'static [&'static str] = &["config", "diagnostic"];
    /// In the order of `NAMES`.
    pub const ALL: [EntityCategory; 2] = [EntityCategory::Config, EntityCategory::Diagnostic];

    pub fn name(self) -> &'static str {
        match self {
            EntityCategory::Config => "config",
            EntityCategory::Diagnostic => "diagnostic",
        }
    }
}

/// `[topics]`: the four device topic templates.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicsConfig {
    /// Default `{base}/{location}/sensor/{device}/{point}`.
    pub sensor: String,
    /// Default `{base}/{location}/device/{device}/state`.
    pub state: String,
    /// Default `{base}/{location}/device/{device}/command`.
    pub command: String,
    /// Default `{base}/{location}/device/{device}/availability`.
    pub availability: String,
}

/// The kind of a bus (`buses.<name>.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    ModbusRtu,
    ModbusTcp,
    ModbusRtuOverTcp,
    Serial,
}

impl BusKind {
    pub const NAMES: &'static [&'static str] =
        &["modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp", "serial"];

    pub fn name(self) -> &'static str {
        match self {
            BusKind::ModbusRtu => "modbus-rtu",
            BusKind::ModbusTcp => "modbus-tcp",
            BusKind::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            BusKind::Serial => "serial",
        }
    }

    /// Modbus buses address devices by `unit` and points by `register`.
    pub fn is_modbus(self) -> bool {
        !matches!(self, BusKind::Serial)
    }

    /// Buses that sit on a local serial port (`port`, `baud`, …) rather than an `address`.
    pub fn uses_serial_port(self) -> bool {
        matches!(self, BusKind::ModbusRtu | BusKind::Serial)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// `buses.<name>.format` for serial line buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Json,
    Kv,
    Regex,
}

/// `[buses.<name>]`
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    pub kind: BusKind,
    /// Serial port path (modbus-rtu, serial).
    pub port: Option<String>,
    /// Default 9600 (modbus-rtu), 115200 (serial).
    pub baud: u32,
    /// Default none.
    pub parity: Parity,
    /// 5..=8, default 8.
    pub data_bits: u8,
    /// 1 or 2, default 1.
    pub stop_bits: u8,
    /// `host:port` (modbus-tcp, modbus-rtu-over-tcp).
    pub address: Option<String>,
    /// Per transaction. Default 500 ms.
    pub timeout: Duration,
    /// Extra tries after a failed transaction. Default 1.
    pub retries: u32,
    /// Silence kept between transactions. Default: none on TCP; on RTU never less than 3.5
    /// characters at the baud rate, whatever is set.
    pub turnaround: Option<Duration>,
    /// Unused registers a coalesced read may span. Default 4.
    pub max_gap: u16,
    /// Line format (serial). Default json.
    pub format: LineFormat,
    /// Regex with named groups (serial, `format = "regex"`).
    pub pattern: Option<String>,
    /// Serial: what ends a line, read and written. Default `"\n"` (a `\r` before it is dropped).
    pub line_ending: LineEnding,
    /// Serial: longest line kept, in bytes; longer ones are dropped and counted. Default 1024.
    pub max_line: usize,
    /// Modbus: serve other Modbus TCP masters on this address, through this bus's queue.
    pub share: Option<std::net::SocketAddr>,
}

/// `buses.<name>.line_ending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `"\n"`: lines end at LF; a CR before it is dropped; LF is written.
    Lf,
    /// `"\r\n"`: lines end at LF (a CR before it is dropped); CR LF is written.
    CrLf,
    /// `"\r"`: lines end at CR; CR is written.
    Cr,
}

impl LineEnding {
    /// The byte a line ends at when reading.
    pub fn terminator(self) -> u8 {
        match self {
            LineEnding::Cr => b'\r',
            LineEnding::Lf | LineEnding::CrLf => b'\n',
        }
    }

    /// What is written after a command line.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::CrLf => b"\r\n",
            LineEnding::Cr => b"\r",
        }
    }
}

/// `devices.<name>.match` for devices sharing a serial line.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchConfig {
    pub field: String,
    pub equals: String,
}

/// `[devices.<name>]`
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub bus: String,
    /// Modbus unit id (Modbus buses only).
    pub unit: Option<u8>,
    /// `{location}` of this device; `gateway.location` otherwise.
    pub location: String,
    /// Poll period. Default 10 s.
    pub poll: Duration,
    /// Consecutive failed polls before availability goes offline. Default 3.
    pub offline_after: u32,
    /// How often an offline device is tried. Default 30 s, never less than `poll`.
    pub offline_retry: Duration,
    /// Friendly name for Home Assistant. Default: the device name.
    pub name: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Serial devices: `offline` when no line for the device arrived for this long. Default 60 s.
    pub silence: Duration,
    /// Modbus devices: write single registers with FC16 too, for devices that refuse FC06.
    /// Default false.
    pub write_multiple: bool,
    /// Line routing (serial buses only).
    pub r#match: Option<MatchConfig>,
    /// Points by name.
    pub points: BTreeMap<String, PointConfig>,
    /// Named actions by name.
    pub actions: BTreeMap<String, ActionConfig>,
    /// The profile the device's points start from (`profile = "NAME"`), if any.
    pub profile: Option<DeviceProfile>,
    /// `profile = "sunspec"`: the points come from the device's SunSpec model chain, read at
    /// run time (`crate::sunspec`).
    pub sunspec: Option<SunSpecDevice>,
}

impl DeviceConfig {
    /// A SunSpec device whose model chain has not been read yet: it has only its own points.
    pub fn awaits_walk(&self) -> bool {
        self.sunspec.as_ref().is_some_and(|s| s.chain.is_none())
    }
}

/// A device with `profile = "sunspec"`.
#[derive(Debug, Clone, PartialEq)]
pub struct SunSpecDevice {
    /// `sunspec_base`: where the "SunS" marker is; default 40000, then 0, then 50000.
    pub base: Option<u16>,
    /// The device's own points as the config gives them: additions (with a `register`) and
    /// overrides of the points the walk builds, with the keys each override sets.
    pub own: BTreeMap<String, (PointConfig, Vec<String>)>,
    /// The models found on the device, once its chain was read; `points` are built from them.
    pub chain: Option<SunSpecChain>,
}

/// A SunSpec device's model chain as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SunSpecChain {
    /// Where "SunS" was found.
    pub base: u16,
    pub models: Vec<SunSpecModel>,
}

/// One model of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SunSpecModel {
    pub id: u16,
    /// The address of its ID register (its points count from there).
    pub address: u16,
    /// Its length (L), without the ID and L registers.
    pub length: u16,
}

/// Which profile a device uses, and what its own points changed (for `check`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    pub name: String,
    /// Where the profile came from: built in, or the user's file.
    pub source: String,
    /// The profile's points by name, each with the keys the device overrides (empty: as the
    /// profile has it). Points of the device not listed here are the device's own.
    pub points: BTreeMap<String, Vec<String>>,
}

/// Modbus register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }

    /// Coils and discrete inputs hold bits; input and holding registers hold 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// Only coils and holding registers can be written.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
}

/// `register = "holding:10"`
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Register {
    pub table: Table,
    /// 0-based protocol address.
    pub address: u16,
}

impl std::fmt::Display for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.table.name(), self.address)
    }
}

/// A point's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    pub const NAMES: &'static [&'static str] = &[
        "bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }

    /// Registers taken by one value (`string` takes `length`).
    pub fn registers(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String)
    }

    /// Whether `n` names a raw value of an integer type: as a number of the type, or as its
    /// bit pattern (`0x8000` and `-32768` are the same i16; `-1` is the u16 `0xFFFF` only as a
    /// bit pattern, which is how a register map writes it).
    pub fn holds_raw(self, n: i64) -> bool {
        let bits = match self {
            DataType::U16 | DataType::I16 => 16,
            DataType::U32 | DataType::I32 => 32,
            DataType::U64 | DataType::I64 => return true,
            DataType::Bool | DataType::F32 | DataType::F64 | DataType::String => return false,
        };
        let signed = -(1i64 << (bits - 1))..(1i64 << (bits - 1));
        let unsigned = 0..(1i64 << bits);
        signed.contains(&n) || unsigned.contains(&n)
    }
}

/// Word and byte order of multi-register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// Big-endian words and bytes.
    Abcd,
    /// Words swapped.
    Cdab,
    /// Bytes swapped in each word.
    Badc,
    /// Both.
    Dcba,
}

impl WordOrder {
    pub const NAMES: &'static [&'static str] = &["ABCD", "CDAB", "BADC", "DCBA"];
    /// Every order, in the order of `NAMES`.
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];
}

/// `[devices.<d>.points.<p>]`
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// Modbus register (Modbus buses).
    pub register: Option<Register>,
    /// JSON key or pointer, kv key or regex group (serial buses).
    pub field: Option<String>,
    /// Default u16 for registers, bool for coils/discretes; for serial points, whatever the line
    /// carries unless set.
    pub data_type: Option<DataType>,
    /// Registers of a `string` point.
    pub length: Option<u16>,
    /// Default ABCD.
    pub order: WordOrder,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub precision: Option<u8>,
    pub unit: Option<String>,
    /// Default 0: any change is published.
    pub deadband: f64,
    /// Re-publish an unchanged value this often. Default off.
    pub heartbeat: Option<Duration>,
    /// Home Assistant device class; checked against what its platform accepts.
    pub device_class: Option<String>,
    /// Home Assistant state class; default from `device_class` (energy, gas, water:
    /// `total_increasing`; none for enums) or `measurement` for numbers.
    pub state_class: Option<String>,
    /// Home Assistant entity category.
    pub entity_category: Option<EntityCategory>,
    /// Home Assistant icon, `prefix:name` (`mdi:thermometer`).
    pub icon: Option<String>,
    /// Whether Home Assistant enables the entity when it first sees it. Default true.
    pub enabled_by_default: bool,
    /// Default false.
    pub writable: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Raw value → label.
    pub map: Option<BTreeMap<i64, String>>,
    /// QoS of the sensor topic, 0 or 1. Default 0.
    pub qos: u8,
    /// Retain flag of the sensor topic. Default false.
    pub retain: bool,
    /// Serial points: the line written to set this point (`{value}` is the new value); makes
    /// the point writable.
    pub send: Option<String>,
    /// Serial points: a reply (regex) that must come back within the bus timeout after `send`.
    pub expect: Option<String>,
    /// A scale factor read from another register of the device in the same poll (an i16,
    /// SunSpec's "sunssf"): value = raw × 10^sf, then `scale` and `offset`.
    pub scale_register: Option<Register>,
    /// Raw values that mean "no value" (SunSpec's "not implemented"): the point is unknown, as
    /// after a failed read, and nothing is published for it.
    pub unavailable: Vec<Unavailable>,
}

/// One entry of a point's `unavailable` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// An integer raw value: the decoded number, or its bit pattern in the point's width
    /// (`0x8000` and `-32768` both name the same i16).
    Int(i64),
    /// A float that is not a number.
    NaN,
}

impl PointConfig {
    /// A plain register point with every option at its default (for tests and tools).
    pub fn register(table: Table, address: u16, data_type: DataType) -> Self {
        PointConfig {
            register: Some(Register { table, address }),
            field: None,
            data_type: Some(data_type),
            length: None,
            order: WordOrder::Abcd,
            scale: None,
            offset: None,
            precision: None,
            unit: None,
            deadband: 0.0,
            heartbeat: None,
            device_class: None,
            state_class: None,
            entity_category: None,
            icon: None,
            enabled_by_default: true,
            writable: false,
            min: None,
            max: None,
            map: None,
            qos: 0,
            retain: false,
            send: None,
            expect: None,
            scale_register: None,
            unavailable: Vec::new(),
        }
    }

    /// The effective value type.
    pub fn effective_type(&self) -> Option<DataType> {
        self.data_type.or(match self.register {
            Some(r) if r.table.is_bits() => Some(DataType::Bool),
            Some(_) => Some(DataType::U16),
            None => None,
        })
    }
}

/// A value in an action's `set` table.
#[derive(Debug, Clone, PartialEq)]
pub enum SetValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

/// `[devices.<d>.actions.<a>]`
#[derive(Debug, Clone, PartialEq)]
pub struct ActionConfig {
    /// Points and the values to write.
    pub set: BTreeMap<String, SetValue>,
    /// Template written to a serial line.
    pub send: Option<String>,
    /// Reply that must come back within the bus timeout (regex).
    pub expect: Option<String>,
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        load(path)
    }

    /// MQTT client id: `mqtt.client_id`, or `fieldbridge-<gateway.id>`.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fieldbridge-{}", self.gateway.id))
    }
}
