//! The `fieldbridge` binary: parse the command line, start logging, dispatch, and map errors to
//! the exit codes of CONTRACT §2 (0 normal, 1 runtime failure, 2 usage, 78 config).

use std::process::ExitCode;

use clap::Parser;
use fieldbridge::cli::{Cli, Command};
use fieldbridge::{EXIT_CONFIG, EXIT_FAILURE, app, check, config, demo, telemetry};

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    match cli.command {
        Command::Check(arg) => match config::Config::load(&arg.config) {
            Ok(config) => {
                print!("{}", check::summary(&config));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", arg.config.display(), errors.0.len());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo { mqtt, duration } => {
            if let Err(e) = telemetry::init(cli.log_level.as_deref().or(Some("warn"))) {
                eprintln!("fieldbridge: cannot start logging: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => ExitCode::from(rt.block_on(demo::run(mqtt, duration))),
                Err(e) => {
                    eprintln!("fieldbridge: cannot start the async runtime: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Run(arg) => {
            if let Err(e) = telemetry::init(cli.log_level.as_deref()) {
                eprintln!("fieldbridge: cannot start logging: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
            app::main(&arg.config)
        }
    }
}
