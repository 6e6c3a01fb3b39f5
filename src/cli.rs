//! The command line (README "Commands").

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "fieldbridge",
    version,
    about = "Bridge Modbus and serial field devices to MQTT"
)]
pub struct Cli {
    /// Log filter, RUST_LOG style (`info`, `debug`, `info,fieldbridge::mqtt=debug`). Overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// `-c/--config`, shared by every command that reads the config.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(short, long, env = "FIELDBRIDGE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd supervises it).
    Run(ConfigArg),
    /// Validate the config and print what it will do; exit 0, or 78 with every error.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Print only the errors (for `ExecReload=`: nothing in the journal for a good file).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Read the local history.
    History {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Only this point.
        #[arg(long)]
        point: Option<String>,
        /// From: a duration ago (`1h`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// To: a duration ago (`10m`) or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only the newest N rows (still printed oldest first).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Availability changes, commands (with their results) and gateway starts/stops
        /// instead of readings.
        #[arg(long, conflicts_with = "point")]
        events: bool,
        /// table (for people), csv or json.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
    },
    /// Read registers once and show every decoding of them (commissioning; no MQTT).
    Read {
        #[command(flatten)]
        config: ConfigArg,
        /// Bus name from the config.
        #[arg(long)]
        bus: String,
        /// Modbus unit id.
        #[arg(long)]
        unit: u8,
        /// `holding:10`, `input:0`, `coil:3`, `discrete:0`.
        #[arg(long)]
        register: String,
        /// Registers (or bits) to read.
        #[arg(long, default_value_t = 1)]
        count: u16,
    },
    /// Write one typed value and read it back (commissioning; no MQTT).
    Write {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        bus: String,
        #[arg(long)]
        unit: u8,
        /// `holding:10` or `coil:3`.
        #[arg(long)]
        register: String,
        /// bool u16 i16 u32 i32 u64 i64 f32 f64 string.
        #[arg(long = "type", default_value = "u16")]
        data_type: String,
        /// ABCD CDAB BADC DCBA.
        #[arg(long, default_value = "ABCD")]
        order: String,
        /// The value (negative numbers welcome).
        #[arg(long, allow_hyphen_values = true)]
        value: String,
    },
    /// Find which Modbus unit ids answer on a bus.
    Scan {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        bus: String,
        /// `1-247` or one id.
        #[arg(long, default_value = "1-247")]
        units: String,
        /// Also ask each answering unit who it is (FC 43/14, FC 17) and name matching profiles.
        #[arg(long)]
        identify: bool,
    },
    /// List the device profiles (built in and the user's), or print one; walk a SunSpec
    /// device (`--probe`); check a profile file of your own (`--check`).
    Profiles {
        #[command(flatten)]
        config: ConfigArg,
        /// Print this profile's points, actions and source document.
        #[arg(conflicts_with_all = ["probe", "check"])]
        name: Option<String>,
        /// Read a SunSpec device's model chain over a bus of the config and print every model
        /// and every point's value, as `profile = "sunspec"` would publish them.
        #[arg(long, requires_all = ["bus", "unit"], conflicts_with = "check")]
        probe: bool,
        /// The bus of `--probe`.
        #[arg(long, requires = "probe")]
        bus: Option<String>,
        /// The unit id of `--probe`.
        #[arg(long, requires = "probe")]
        unit: Option<u8>,
        /// Validate this profile file (errors as `file:line:col`, exit 78).
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
        /// With `--check`: decode every point from this register dump (what `fieldbridge read`
        /// prints, several reads appended).
        #[arg(long, value_name = "DUMP", requires = "check")]
        dump: Option<PathBuf>,
    },
    /// Simulated devices, the real gateway against them, every publish printed.
    Demo {
        /// Use this broker instead of the in-process one (`mqtt://HOST:PORT`).
        #[arg(long, value_name = "URL")]
        mqtt: Option<String>,
        /// Stop after this long (`30s`, `5m`); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}
