//! The command line (CONTRACT §2).

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
    Check(ConfigArg),
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
        /// table (for people), csv or json.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
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
