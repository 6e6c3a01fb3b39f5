//! The `fieldbridge` binary: parse the command line, start logging, dispatch, and map errors to
//! the exit codes of README "Commands" (0 normal, 1 runtime failure, 2 usage, 78 config).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use fieldbridge::cli::{Cli, Command};
use fieldbridge::{
    EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE, app, catalogue, check, commission, config, demo,
    history, telemetry,
};

/// Runs a commissioning command: config from `path`, the async work, its text on stdout. A
/// wrong command line (an unknown bus, a bad `--register`, `--type`, `--count`, `--value`)
/// exits 2, a bus or device failure 1.
fn commissioning<F, Fut>(path: &std::path::Path, f: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<config::Config>) -> Fut,
    Fut: std::future::Future<Output = Result<String, commission::Error>>,
{
    let config = match config::Config::load(path) {
        Ok(c) => std::sync::Arc::new(c),
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldbridge: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    printed(rt.block_on(f(config)).map_err(|e| match e {
        commission::Error::Usage(e) => (EXIT_USAGE, format!("fieldbridge: {e}")),
        commission::Error::Failed(e) => (EXIT_FAILURE, format!("fieldbridge: {e}")),
    }))
}

/// A command's text on stdout; or its message on stderr, and its exit code.
fn printed(result: Result<String, (u8, String)>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

/// `--register holding:10`, as a usage error when it is not one.
fn register_arg(text: &str) -> Result<config::Register, commission::Error> {
    config::parse_register(text).map_err(|e| commission::Error::Usage(format!("--register: {e}")))
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    let log_level = cli.log_level;
    match cli.command {
        Command::Check { config, quiet } => check(&config.config, quiet),
        Command::History {
            config,
            device,
            point,
            since,
            until,
            limit,
            events,
            format,
        } => history(
            &config.config,
            Query {
                device,
                point,
                since,
                until,
                limit,
                events,
                format,
            },
        ),
        Command::Read {
            config,
            bus,
            unit,
            register,
            count,
        } => commissioning(&config.config, |config| async move {
            let register = register_arg(&register)?;
            commission::read(&config, &bus, unit, register, count).await
        }),
        Command::Write {
            config,
            bus,
            unit,
            register,
            data_type,
            order,
            value,
        } => commissioning(&config.config, |config| async move {
            let register = register_arg(&register)?;
            let (ty, order) = write_args(&data_type, &order)?;
            commission::write(&config, &bus, unit, register, ty, order, &value).await
        }),
        Command::Scan {
            config,
            bus,
            units,
            identify,
        } => scan(&config.config, bus, units, identify),
        Command::Profiles {
            config,
            probe: true,
            bus: Some(bus),
            unit: Some(unit),
            ..
        } => commissioning(&config.config, |config| async move {
            commission::probe_sunspec(&config, &bus, unit).await
        }),
        Command::Profiles {
            check: Some(file),
            dump,
            ..
        } => profiles_check(&file, dump.as_deref()),
        Command::Profiles { config, name, .. } => profiles_show(&config.config, name),
        Command::Demo { mqtt, duration } => demo(log_level.as_deref(), mqtt, duration),
        Command::Run(arg) => {
            if let Err(e) = telemetry::init(log_level.as_deref()) {
                eprintln!("fieldbridge: cannot start logging: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
            app::main(&arg.config)
        }
    }
}

/// `fieldbridge check`: the config's summary, or every error (exit 78).
fn check(path: &Path, quiet: bool) -> ExitCode {
    match config::Config::load(path) {
        Ok(config) => {
            if !quiet {
                print!("{}", check::summary(&config));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What `fieldbridge history` was asked for.
struct Query {
    device: Option<String>,
    point: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u64>,
    events: bool,
    format: String,
}

/// `fieldbridge history`: the local history's readings or events, streamed to stdout.
fn history(path: &Path, query: Query) -> ExitCode {
    let Query {
        device,
        point,
        since,
        until,
        limit,
        events,
        format,
    } = query;
    let config = match config::Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let now = std::time::SystemTime::now();
    let parse = |t: Option<String>| t.map(|t| history::parse_time(&t, now)).transpose();
    let (since, until) = match (parse(since), parse(until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fieldbridge history: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let format = match format.as_str() {
        "csv" => history::Format::Csv,
        "json" => history::Format::Json,
        _ => history::Format::Table,
    };
    let filter = history::Filter {
        device,
        point,
        since,
        until,
        limit,
    };
    if !config.history.enabled {
        eprintln!(
            "fieldbridge history: the history is turned off (history.enabled = false in {}); nothing is recorded",
            path.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    let path = config.history.path.clone();
    if !path.exists() {
        eprintln!("fieldbridge history: no history at {} yet", path.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(history::QueryError::Io)
        .and_then(|rt| {
            rt.block_on(async {
                let pool = history::open_read_only(&path)
                    .await
                    .map_err(|e| history::QueryError::Io(std::io::Error::other(e)))?;
                let out = std::io::BufWriter::new(std::io::stdout().lock());
                history::print(&pool, &filter, events, format, out).await
            })
        });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (`| head`): it has what it wanted.
        Err(history::QueryError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldbridge history: {}: {e}", path.display());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `--type` and `--order` of `fieldbridge write`.
fn write_args(
    data_type: &str,
    order: &str,
) -> Result<(config::DataType, config::WordOrder), commission::Error> {
    let ty = match config::DataType::NAMES.iter().position(|n| *n == data_type) {
        Some(i) => config::ALL_TYPES[i],
        None => {
            return Err(commission::Error::Usage(format!(
                "--type: unknown type \"{data_type}\"; expected {}",
                config::one_of(config::DataType::NAMES)
            )));
        }
    };
    let order = match order {
        "ABCD" => config::WordOrder::Abcd,
        "CDAB" => config::WordOrder::Cdab,
        "BADC" => config::WordOrder::Badc,
        "DCBA" => config::WordOrder::Dcba,
        other => {
            return Err(commission::Error::Usage(format!(
                "--order: unknown order \"{other}\"; expected ABCD, CDAB, BADC or DCBA"
            )));
        }
    };
    Ok((ty, order))
}

/// `fieldbridge scan`: the units that answer on a bus, with `--identify` the profile each
/// matches.
fn scan(path: &Path, bus: String, units: String, identify: bool) -> ExitCode {
    // The config loads only when its profiles do, so these are the same, without errors.
    let (all, _) = config::Profiles::load(&config::profiles_dir(path));
    commissioning(path, |config| async move {
        let units = commission::parse_units(&units).map_err(commission::Error::Usage)?;
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let profiles = identify.then_some(&all);
        let found = commission::scan(&config, &bus, units, profiles, |u| {
            if tty {
                eprint!("\rscanning unit {u:>3}");
            }
        })
        .await?;
        if tty {
            eprintln!();
        }
        let mut out = String::new();
        for (u, what) in &found {
            out += &format!("unit {u}: {what}\n");
        }
        out += &format!("{} unit(s) answered\n", found.len());
        Ok(out)
    })
}

/// `fieldbridge profiles --check FILE [--dump DUMP]`.
fn profiles_check(file: &Path, dump: Option<&Path>) -> ExitCode {
    printed(catalogue::check_file(file, dump).map_err(|e| match e {
        catalogue::CheckError::Profile(e) => (EXIT_CONFIG, e.to_string()),
        catalogue::CheckError::Dump(e) => (EXIT_USAGE, format!("fieldbridge profiles: {e}")),
    }))
}

/// `fieldbridge profiles [NAME]`: the profiles, or one of them.
fn profiles_show(path: &Path, name: Option<String>) -> ExitCode {
    let (all, errors) = config::Profiles::load(&config::profiles_dir(path));
    if !errors.is_empty() {
        eprintln!("{}", config::ConfigErrors(errors.clone()));
        eprintln!("{} error(s) in device profiles", errors.len());
        return ExitCode::from(EXIT_CONFIG);
    }
    match name {
        None => {
            print!("{}", catalogue::list(&all));
            ExitCode::SUCCESS
        }
        Some(n) if n == config::SUNSPEC_PROFILE => {
            print!("{}", catalogue::show_sunspec());
            ExitCode::SUCCESS
        }
        Some(n) => match all.get(&n) {
            Some(p) => {
                print!("{}", catalogue::show(p));
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "fieldbridge profiles: no profile \"{n}\"; profiles: {}",
                    all.names().join(", ")
                );
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}

/// `fieldbridge demo`: simulated devices through the real gateway.
fn demo(
    log_level: Option<&str>,
    mqtt: Option<String>,
    duration: Option<std::time::Duration>,
) -> ExitCode {
    if let Err(e) = telemetry::init(log_level.or(Some("warn"))) {
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
