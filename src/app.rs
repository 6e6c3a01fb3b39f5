//! The daemon's life: build everything fallible first, then spawn the long-lived tasks under one
//! cancellation tree, supervise them, reload on SIGHUP and stop in order on SIGTERM/SIGINT.
//!
//! Order of shutdown: stop the devices and buses (a read is abandoned, a write on the wire
//! finishes), flush the history, then the MQTT link publishes the retained `offline` status
//! and disconnects. The 2 s the README promises is split once, from the moment the stop begins:
//! each stage ends at its own point of that one deadline (a stage that finishes early leaves
//! its time to the next), so dead devices on a bus cannot eat the time the history and the
//! `offline` status need, and no stage can push the total past it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigErrors, FORWARD_PASSWORD_ENV, PASSWORD_ENV};
use crate::device::Links;
use crate::fleet::Fleet;
use crate::history::{ForwardLink, Forwarder, History, HistoryHandle};
use crate::mqtt::{Incoming, Mqtt, MqttHandle, MqttSettings, Outgoing, Secret, TlsSettings};
use crate::report::Reports;
use crate::router::Router;
use crate::topics::Topic;
use crate::topics::Topics;
use crate::{EXIT_CONFIG, EXIT_FAILURE, ha, health, payload, systemd};

/// When the stop is over, from its start: with the runtime's [`RUNTIME_WIND_DOWN`], the
/// process is gone within 2 s of SIGTERM (README "Signals and systemd"), however many devices
/// are dead.
pub const STOP_TOTAL: Duration = Duration::from_millis(1700);
/// What the runtime gives tasks that ignored their cancellation (a blocked read on a dead
/// device) before the process exits anyway.
pub const RUNTIME_WIND_DOWN: Duration = Duration::from_millis(200);
/// When the devices and buses are stopped, from the stop's start: a write on the wire finishes
/// its try (the default `timeout` is 500 ms).
pub const STOP_DEVICES: Duration = Duration::from_millis(800);
/// When the history is on disk and closed, from the stop's start: its last batch (one
/// transaction, one fsync) has at least 450 ms, more when the devices stopped early, as an
/// fsync can take long on a busy SD card.
pub const STOP_HISTORY: Duration = Duration::from_millis(1250);
/// The MQTT link's share, last: `offline` and what is queued ([`crate::mqtt::STOP_FLUSH`]).
pub const STOP_MQTT: Duration = STOP_TOTAL.saturating_sub(STOP_HISTORY);

// The split holds the promise by construction.
const _: () = assert!(STOP_TOTAL.as_millis() + RUNTIME_WIND_DOWN.as_millis() < 2000);
const _: () = assert!(STOP_DEVICES.as_millis() < STOP_HISTORY.as_millis());
const _: () = assert!(crate::mqtt::STOP_FLUSH.as_millis() <= STOP_MQTT.as_millis());

/// Why `build` refused to start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config file is invalid, or a file it names (password, certificate) can't be used.
    #[error("{0}")]
    Config(String),
    /// Anything else that keeps the daemon from starting.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<ConfigErrors> for BuildError {
    fn from(e: ConfigErrors) -> Self {
        BuildError::Config(e.to_string())
    }
}

/// `fieldbridge run`: runs until SIGTERM/SIGINT and returns the process exit code.
pub fn main(config_path: &Path) -> ExitCode {
    // One thread runs every task: a gateway waits on sockets and timers, and a message handed
    // from task to task (MQTT link, device, bus) wakes no other thread. SQLite runs on sqlx's
    // own thread; file and DNS work on tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .thread_name("fieldbridge")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async {
        match build(config_path).await {
            Ok(gateway) => gateway.run().await,
            Err(BuildError::Config(msg)) => {
                for line in msg.lines() {
                    error!("{line}");
                }
                EXIT_CONFIG
            }
            Err(BuildError::Other(e)) => {
                error!(error = format!("{e:#}"), "cannot start");
                EXIT_FAILURE
            }
        }
    });
    // Don't wait for tasks that ignored cancellation (a blocked read on a dead device).
    runtime.shutdown_timeout(RUNTIME_WIND_DOWN);
    ExitCode::from(code)
}

/// Everything fallible, done before any long-lived task exists.
pub struct Gateway {
    config: Config,
    config_path: PathBuf,
    mqtt: Mqtt,
    handle: MqttHandle,
    incoming: mpsc::Receiver<Incoming>,
    topics: Topics,
    signals: Signals,
    /// None when `history.enabled = false`, or when it could not be opened (`history_error`).
    history: Option<sqlx::SqlitePool>,
    /// Why the history could not be opened at start: the gateway runs without it meanwhile.
    history_error: Option<String>,
    /// Old readings deleted at open to make room for a migration (counted as the history full).
    history_made_room: u64,
    /// The ids of executed commands (`commands.db` in the state directory); None when it cannot
    /// be written.
    command_log: Option<crate::history::CommandLog>,
    /// The central database's driver options, with `[history.forward]`.
    forward: Option<sqlx::postgres::PgConnectOptions>,
    /// `demo`: remove discovery, state and availability when it stops.
    ephemeral: bool,
    /// With `[web]`: the commissioning page's listener, bound, and its password.
    web: Option<(tokio::net::TcpListener, Option<Secret>)>,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Loads the config and prepares every resource; nothing runs yet.
pub async fn build(config_path: &Path) -> Result<Gateway, BuildError> {
    // Signal handlers first: a SIGTERM during start-up must not kill us half-way.
    let signals = Signals {
        term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    };
    let config = Config::load(config_path)?;
    // The history never stops the bridging (README "History"): a file that cannot be made,
    // opened or migrated (a full or read-only disk, a corrupt file) is logged, and the gateway
    // runs without it, trying it again every minute.
    let (history, history_error, history_made_room) = if config.history.enabled {
        match open_history(&config).await {
            Ok((pool, made_room)) => (Some(pool), None, made_room),
            Err(why) => {
                error!(
                    path = %config.history.path.display(),
                    error = %why,
                    "history unavailable; the gateway runs on without it and tries it again every minute"
                );
                (None, Some(why), 0)
            }
        }
    } else {
        (None, None, 0)
    };
    // The ids of executed commands, in the state directory, with the history off too.
    let command_log = match crate::history::CommandLog::open(state_dir(&config)).await {
        Ok(log) => Some(log),
        Err(e) => {
            warn!(
                error = %e,
                "cannot keep command ids on disk; they are kept in memory only, and a command delivered again after a crash could run twice"
            );
            None
        }
    };
    let forward = match &config.history.forward {
        Some(f) => {
            let password = read_password(
                &config,
                "history.forward.password_file",
                f.password_file.as_deref(),
                FORWARD_PASSWORD_ENV,
            )?;
            if password.is_some() {
                warn_unverified_password(f);
            }
            let options = crate::history::forward::connect_options(
                f,
                &config.gateway.id,
                password.as_ref().map(Secret::expose),
            )
            .map_err(|e| {
                BuildError::Config(format!(
                    "{}: history.forward.url: {e}",
                    config.path.display()
                ))
            })?;
            Some(options)
        }
        None => None,
    };
    let web = match &config.web {
        Some(w) => {
            let password = match &w.password_file {
                Some(file) => read_password(&config, "web.password_file", Some(file), "")?,
                None => None,
            };
            let listener = crate::web::bind(w).await.map_err(|e| {
                BuildError::Other(anyhow::anyhow!(
                    "the commissioning page cannot listen on {} (web.listen): {e}",
                    w.listen
                ))
            })?;
            Some((listener, password))
        }
        None => None,
    };
    let topics = Topics::new(&config);
    let settings = mqtt_settings(&config, &topics)?;
    let (mqtt, handle, incoming) = Mqtt::new(settings)
        .map_err(|e| BuildError::Config(format!("{}: {e}", config_path.display())))?;
    Ok(Gateway {
        config,
        config_path: config_path.to_path_buf(),
        mqtt,
        handle,
        incoming,
        topics,
        signals,
        history,
        history_error,
        history_made_room,
        command_log,
        forward,
        ephemeral: false,
        web,
    })
}

/// The state directory: where the history file is (by default `/var/lib/fieldbridge`, the
/// unit's `StateDirectory=`), with the history off too.
pub fn state_dir(config: &Config) -> &Path {
    config
        .history
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The history file, opened (its folder made) and migrated; and how many old readings were
/// deleted to make room for a migration.
async fn open_history(config: &Config) -> Result<(sqlx::SqlitePool, u64), String> {
    let dir = state_dir(config);
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
    crate::history::open_counted(&config.history.path, config.history.max_size)
        .await
        .map_err(|e| e.to_string())
}

/// A password to a database that is not on this machine, over a connection that does not
/// verify the server (`sslmode` below `verify-full`), can be read or taken by anyone on the way:
/// said at every start, with the fix.
fn warn_unverified_password(f: &crate::config::ForwardConfig) {
    use crate::config::SslMode;
    let Ok(options) = f.url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return;
    };
    let host = options.get_host();
    let local = host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local || f.sslmode == SslMode::VerifyFull {
        return;
    }
    let how = match f.sslmode {
        SslMode::Disable => "in clear text",
        SslMode::Prefer => {
            "in clear text if the server offers no TLS, and never to a verified server"
        }
        SslMode::Require | SslMode::VerifyCa => "to a server whose name is not verified",
        SslMode::VerifyFull => "",
    };
    warn!(
        host = %host,
        sslmode = f.sslmode.name(),
        "history.forward: the PostgreSQL password goes to {host} {how}; set sslmode = \"verify-full\" (with ca_file for a private CA)"
    );
}

/// A password: the first line of `file` (the config key `key` names it), else the environment
/// variable `env`, else none. An unreadable file is a config error; a file every user can read
/// is warned about. The password is never logged.
fn read_password(
    config: &Config,
    key: &str,
    file: Option<&Path>,
    env: &str,
) -> Result<Option<Secret>, BuildError> {
    let Some(path) = file else {
        return Ok(std::env::var(env).ok().map(Secret::new));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        BuildError::Config(format!(
            "{}: {key}: cannot read {}: {e}",
            config.path.display(),
            path.display()
        ))
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                warn!(
                    file = %path.display(),
                    "{key} is readable by every user; chmod 600 (or 640 with group fieldbridge)"
                );
            }
        }
    }
    Ok(Some(Secret::new(
        text.lines().next().unwrap_or_default().to_string(),
    )))
}

/// The MQTT link's settings: the URL, credentials and TLS files of `[mqtt]`, and the gateway
/// status topic that carries the last will.
pub fn mqtt_settings(config: &Config, topics: &Topics) -> Result<MqttSettings, BuildError> {
    let m = &config.mqtt;
    // The state directory (where the history and the command ids are) names the installation,
    // with the machine id.
    let installation = crate::installation::installation(state_dir(config));
    let password = read_password(
        config,
        "mqtt.password_file",
        m.password_file.as_deref(),
        PASSWORD_ENV,
    )?;
    let tls = m.url.tls.then(|| TlsSettings {
        ca_file: m.ca_file.clone(),
        cert_file: m.cert_file.clone(),
        key_file: m.key_file.clone(),
        insecure: m.tls_insecure,
    });
    if m.tls_insecure {
        warn!(
            broker = %m.url,
            "mqtt.tls_insecure is set: the broker's certificate is NOT verified; anyone on the \
             path to the broker can read and change every message, and the password"
        );
    }
    Ok(MqttSettings {
        host: m.url.host.clone(),
        port: m.url.port,
        tls,
        username: m.username.clone(),
        password,
        client_id: config.client_id(),
        keep_alive: m.keep_alive,
        clean_session: m.clean_session,
        reconnect_min: m.reconnect_min,
        reconnect_max: m.reconnect_max,
        queue: m.queue,
        status_topic: topics.gateway_status(),
        online_payload: payload::gateway_status(&config.gateway.id, true, &installation),
        offline_payload: payload::gateway_status(&config.gateway.id, false, &installation),
        gateway: config.gateway.id.clone(),
        installation,
    })
}

impl Gateway {
    /// The MQTT handle, for tests that drive an in-process gateway.
    pub fn mqtt(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// The commissioning page's address, with `[web]` (its port, when `listen` gave port 0).
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Leaves nothing behind on the broker at a clean stop: the Home Assistant discovery
    /// configs and the devices' retained state and availability are removed (`fieldbridge demo`
    /// pointed at someone's broker).
    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// The broker is this process's own, new and empty (the demo's in-process one): the link
    /// does not ask it whether another gateway of this id is online.
    pub fn own_broker(mut self) -> Self {
        self.mqtt.skip_identity_check();
        self
    }

    /// Runs until SIGTERM/SIGINT (exit 0) or a core task fails (exit 1).
    pub async fn run(self) -> u8 {
        let shutdown = CancellationToken::new();
        self.run_until(shutdown).await
    }

    /// Runs until `stop` is cancelled, a signal arrives, or a core task fails; then stops in
    /// order, as for SIGTERM (`stop` is not the tasks' own token: MQTT must outlive the rest).
    /// The lifecycle of docs/design.md: start, then the supervisor's events (a message, a
    /// reload, a SunSpec walk), then the stop.
    pub async fn run_until(self, stop: CancellationToken) -> u8 {
        let (mut supervisor, mut events, winding) = self.start();
        let code = supervisor.supervise(&mut events, stop).await;
        supervisor.stop(winding).await;
        code
    }

    /// Wires and spawns every task: the history writer and forwarder, the router, buses and
    /// devices, the MQTT link, status lines, discovery, health and the commissioning page.
    fn start(self) -> (Supervisor, Events, Winding) {
        let Gateway {
            config,
            config_path,
            mqtt,
            handle,
            incoming,
            topics,
            signals,
            history: history_pool,
            history_error,
            history_made_room,
            command_log,
            forward,
            ephemeral,
            web,
        } = self;
        log_warnings(&config);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Core tasks report here when they die; the supervisor then stops everything.
        let (fatal_tx, fatal_rx) = mpsc::channel::<String>(4);
        // The link found this gateway's id online from another installation: the start is
        // refused as for an invalid config (78), before anything reached the broker.
        let (refused_tx, refused_rx) = mpsc::channel::<String>(1);

        for (topic, _) in topics.command_topics() {
            handle.subscribe(topic);
        }

        let shared_topics = Arc::new(topics.clone());
        let mut outgoing: Arc<dyn Outgoing> = Arc::new(handle.clone());
        // The commissioning page sees what the devices publish through a tee in front of the
        // link; without `[web]` there is none.
        let tap = web
            .as_ref()
            .map(|_| Arc::new(crate::web::tap::Tap::new(outgoing.clone())));
        if let Some(t) = &tap {
            outgoing = t.clone();
        }
        let web_history = history_pool.clone();
        let (history, history_writer, forwarder, forward_stats) = start_history(
            &config,
            history_pool,
            history_error,
            history_made_room,
            forward,
        );
        history.record_gateway("start", std::time::SystemTime::now());
        // Every device reports through these (`crate::output`): over the link, into the history.
        let reports = Reports::new(outgoing, shared_topics.clone(), history.clone());
        let mut router = Router::new(Arc::new(reports.clone()));
        // SunSpec devices report the points their model chain gave them; a reload asks them to
        // read it again.
        let (walked_tx, walked_rx) = mpsc::channel(crate::device::WALKED_CAP);
        let (rewalk_tx, rewalk_rx) = watch::channel(0u64);
        let links = Links {
            outputs: Arc::new(reports.clone()),
            commands: router.stats.clone(),
            command_ids: command_log
                .clone()
                .map(|l| Arc::new(l) as Arc<dyn crate::output::CommandIds>),
            fatal: fatal_tx.clone(),
            walked: walked_tx,
            rewalk: rewalk_rx,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        // Buses and devices stop first at shutdown; then history; MQTT last.
        let fleet = Fleet::start(&config, &links, &mut router);
        let health_base = health::Sources {
            mqtt: Some(handle.clone()),
            commands: Some(router.stats.clone()),
            history: history.enabled().then(|| history.stats.clone()),
            forward: forward_stats,
            ..Default::default()
        };

        // Before the link runs, so that no change is missed.
        let link_up = handle.connected();
        let mqtt_heartbeat = mqtt.heartbeat();
        spawn_link(&tracker, mqtt, shutdown.child_token(), fatal_tx, refused_tx);
        spawn_status_lines(&tracker, &handle, &history, &config, shutdown.child_token());

        // Discovery scans the broker at the first connection, then publishes.
        let discovery = ha::Publisher::new(&config, &topics, handle.clone());
        let health_token = CancellationToken::new();
        tracker.spawn(health::run(
            fleet.health_sources(&health_base),
            topics.gateway_health(),
            config.gateway.health_interval,
            health_token.clone(),
        ));

        // The commissioning page: its view of the running gateway is replaced whenever the
        // config or the buses change; its commands come to the router here. Without the page,
        // no view is made (nothing would read it).
        let (page_tx, page_rx) = mpsc::channel(crate::web::COMMANDS_CAP);
        let (view_tx, view_rx) = watch::channel(
            web.is_some()
                .then(|| view(&config, &shared_topics, &fleet, &health_base)),
        );
        let page = match (web, &config.web, tap) {
            (Some((listener, password)), Some(w), Some(tap)) => {
                let page = crate::web::Web::new(
                    w,
                    listener,
                    crate::web::Parts {
                        password,
                        gateway: config.gateway.id.clone(),
                        view: view_rx,
                        tap,
                        mqtt: handle.clone(),
                        history: web_history,
                        commands: page_tx,
                    },
                );
                let token = CancellationToken::new();
                Some((token.clone(), tokio::spawn(page.run(token))))
            }
            _ => None,
        };

        let heartbeat = systemd::Heartbeat::new("supervisor");
        let watchdog = systemd::spawn_watchdog(
            vec![heartbeat.clone(), mqtt_heartbeat],
            shutdown.child_token(),
        );

        // Config, history folder and buses are up: ready, whether or not the broker is.
        systemd::ready();
        info!(
            gateway = %config.gateway.id,
            config = %config_path.display(),
            devices = config.devices.len(),
            buses = config.buses.len(),
            broker = %config.mqtt.url,
            version = payload::VERSION,
            "fieldbridge started"
        );
        let events = Events {
            signals,
            incoming,
            walked: walked_rx,
            page: page_rx,
            refused: refused_rx,
            fatal: fatal_rx,
            link_up,
            link_open: true,
            heartbeat,
        };
        let supervisor = Supervisor {
            loaded: config.clone(),
            config,
            config_path,
            topics: shared_topics,
            reports,
            router,
            links,
            fleet,
            discovery,
            handle,
            health_base,
            health_token,
            tracker,
            view_tx,
            rewalk_tx,
        };
        let winding = Winding {
            shutdown,
            page,
            command_log,
            history,
            history_writer,
            forwarder,
            ephemeral,
            _watchdog: watchdog,
        };
        (supervisor, events, winding)
    }
}

/// The history writer and its forwarder, started when the history is on: the handle devices
/// record through, and each task with its token.
type HistoryParts = (
    HistoryHandle,
    Option<(CancellationToken, JoinHandle<Option<sqlx::SqlitePool>>)>,
    Option<(CancellationToken, JoinHandle<()>)>,
    Option<std::sync::Arc<crate::history::ForwardStats>>,
);

/// Starts the history writer (or one that says why it is unavailable, retrying) and, with
/// `[history.forward]`, the forwarder reading behind it; neither when the history is off.
fn start_history(
    config: &Config,
    pool: Option<sqlx::SqlitePool>,
    error: Option<String>,
    made_room: u64,
    forward: Option<sqlx::postgres::PgConnectOptions>,
) -> HistoryParts {
    let writer = match (pool, error) {
        (Some(pool), _) => {
            let (mut writer, handle) = History::new(pool, &config.history);
            writer.made_room(made_room);
            Some((writer, handle))
        }
        (None, Some(why)) => Some(History::unavailable(&why, &config.history)),
        (None, None) => None,
    };
    let Some((mut writer, handle)) = writer else {
        info!("history turned off (history.enabled = false): nothing is recorded");
        return (HistoryHandle::disabled(), None, None, None);
    };
    let mut forwarder = None;
    let mut stats = None;
    if let (Some(options), Some(f)) = (forward, &config.history.forward) {
        let link = ForwardLink::new(f);
        stats = Some(link.stats.clone());
        writer = writer.forward_to(link.clone());
        let task = Forwarder::new(
            config.history.path.clone(),
            &config.gateway.id,
            &f.url,
            options,
            link,
        );
        let token = CancellationToken::new();
        forwarder = Some((token.clone(), tokio::spawn(task.run(token))));
    }
    let token = CancellationToken::new();
    let writer = Some((token.clone(), tokio::spawn(writer.run(token))));
    (handle, writer, forwarder, stats)
}

/// The MQTT link's task: a fatal error stops the gateway (exit 1); this gateway's id online
/// from another installation refuses the start (exit 78).
fn spawn_link(
    tracker: &TaskTracker,
    mqtt: Mqtt,
    token: CancellationToken,
    fatal: mpsc::Sender<String>,
    refused: mpsc::Sender<String>,
) {
    tracker.spawn(async move {
        match mqtt.run(token).await {
            Ok(()) => {}
            Err(e @ crate::mqtt::Error::IdTaken { .. }) => {
                if refused.try_send(e.to_string()).is_err() {
                    error!(error = %e, "refusing to start");
                }
            }
            Err(e) => {
                if fatal.try_send(format!("mqtt: {e}")).is_err() {
                    error!(error = %e, "mqtt task failed");
                }
            }
        }
    });
}

/// Status lines for `systemctl status`: they follow the broker connection and the history.
fn spawn_status_lines(
    tracker: &TaskTracker,
    handle: &MqttHandle,
    history: &HistoryHandle,
    config: &Config,
    token: CancellationToken,
) {
    let mut connected = handle.connected();
    let devices = config.devices.len();
    let history_stats = history.enabled().then(|| history.stats.clone());
    tracker.spawn(async move {
        loop {
            let up = *connected.borrow_and_update();
            let unavailable = history_stats.as_ref().and_then(|h| h.unavailable());
            systemd::status(&status_line(up, devices, unavailable.as_deref()));
            let history_changed = async {
                match &history_stats {
                    Some(h) => h.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => break,
                changed = connected.changed() => if changed.is_err() { break },
                _ = history_changed => {}
            }
        }
    });
}

/// The commissioning page's view of the running gateway.
fn view(
    config: &Config,
    topics: &Arc<Topics>,
    fleet: &Fleet,
    health: &health::Sources,
) -> Arc<crate::web::View> {
    Arc::new(crate::web::View {
        config: Arc::new(config.clone()),
        topics: topics.clone(),
        buses: fleet.modbus_handles(),
        health: fleet.health_sources(health),
    })
}

/// What the supervisor waits on.
struct Events {
    signals: Signals,
    /// Messages from the broker.
    incoming: mpsc::Receiver<Incoming>,
    /// SunSpec devices whose model chain gave them new points.
    walked: mpsc::Receiver<crate::device::Walked>,
    /// Commands from the commissioning page, as if they came over MQTT.
    page: mpsc::Receiver<Incoming>,
    /// The start is refused (this gateway's id is online elsewhere).
    refused: mpsc::Receiver<String>,
    /// A core task failed.
    fatal: mpsc::Receiver<String>,
    link_up: watch::Receiver<bool>,
    link_open: bool,
    /// Beaten every second: the watchdog sees the supervisor's loop turn.
    heartbeat: systemd::Heartbeat,
}

/// The running gateway, as the supervisor changes it.
struct Supervisor {
    /// The config running, with what SunSpec walks added.
    config: Config,
    /// The config as the file gives it, before SunSpec walks added points: what a reload's
    /// file is compared with.
    loaded: Config,
    config_path: PathBuf,
    topics: Arc<Topics>,
    reports: Reports,
    router: Router,
    links: Links,
    fleet: Fleet,
    discovery: ha::Publisher,
    handle: MqttHandle,
    health_base: health::Sources,
    health_token: CancellationToken,
    tracker: TaskTracker,
    view_tx: watch::Sender<Option<Arc<crate::web::View>>>,
    rewalk_tx: watch::Sender<u64>,
}

/// What the stop winds down after the devices, in its order.
struct Winding {
    /// The tasks' own token (MQTT, status lines, watchdog): cancelled last.
    shutdown: CancellationToken,
    page: Option<(CancellationToken, JoinHandle<()>)>,
    command_log: Option<crate::history::CommandLog>,
    history: HistoryHandle,
    history_writer: Option<(CancellationToken, JoinHandle<Option<sqlx::SqlitePool>>)>,
    forwarder: Option<(CancellationToken, JoinHandle<()>)>,
    ephemeral: bool,
    _watchdog: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Handles events until one of them ends the run; returns the exit code.
    async fn supervise(&mut self, ev: &mut Events, stop: CancellationToken) -> u8 {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return 0,
                _ = ev.signals.term.recv() => { info!("SIGTERM: stopping"); return 0 }
                _ = ev.signals.int.recv() => { info!("SIGINT: stopping"); return 0 }
                _ = ev.signals.hup.recv() => self.on_reload().await,
                Some(walked) = ev.walked.recv() => self.on_walked(walked),
                Some(msg) = ev.page.recv() => self.on_message(&msg),
                Some(reason) = ev.refused.recv() => {
                    error!("{reason}");
                    return EXIT_CONFIG;
                }
                Some(reason) = ev.fatal.recv() => {
                    error!(error = %reason, "a core task failed; stopping");
                    return EXIT_FAILURE;
                }
                Some(msg) = ev.incoming.recv() => self.on_message(&msg),
                changed = ev.link_up.changed(), if ev.link_open => match changed {
                    Ok(()) => self.discovery.on_link(*ev.link_up.borrow_and_update()),
                    Err(_) => ev.link_open = false,
                },
                _ = sleep_until(self.discovery.deadline()) => self.discovery.on_deadline(),
                _ = beat.tick() => ev.heartbeat.beat(),
            }
        }
    }

    /// A message from the broker or the page: its topic parsed once, then to the router (a
    /// command) or to discovery (Home Assistant's); anything else is acknowledged and dropped.
    fn on_message(&mut self, msg: &Incoming) {
        match self.topics.parse(&msg.topic) {
            Some(Topic::Command { device }) => self.router.command(&device, msg),
            Some(t) => {
                self.discovery.handle(&t, &msg.topic, &msg.payload);
                if let Some(a) = msg.ack {
                    self.handle.ack(a);
                }
            }
            None => {
                debug!(topic = %msg.topic, "message on an unhandled topic");
                if let Some(a) = msg.ack {
                    self.handle.ack(a);
                }
            }
        }
    }

    /// SIGHUP: the file read again; a good one applied (only what changed restarts), a bad
    /// one refused with the running config kept. SunSpec devices read their chain again.
    async fn on_reload(&mut self) {
        if let Some(mut new_loaded) = reload(&self.config_path, &self.loaded) {
            log_warnings(&new_loaded);
            // Sections that need a restart keep their running values until then, so topics
            // and the session stay consistent.
            new_loaded.mqtt = self.config.mqtt.clone();
            new_loaded.gateway = self.config.gateway.clone();
            new_loaded.topics = self.config.topics.clone();
            new_loaded.history = self.config.history.clone();
            let mut new = new_loaded.clone();
            // A SunSpec device the file leaves as it was keeps the points its walk gave it
            // (and keeps running); it reads its chain again below.
            for (name, dev) in new.devices.iter_mut() {
                if dev.awaits_walk() && self.loaded.devices.get(name) == Some(&*dev) {
                    if let Some(running) = self.config.devices.get(name) {
                        *dev = running.clone();
                    }
                }
            }
            self.loaded = new_loaded;
            // New devices may bring new command topics.
            let new_topics = Topics::new(&new);
            for (topic, _) in new_topics.command_topics() {
                self.handle.subscribe(topic);
            }
            self.topics = Arc::new(new_topics.clone());
            let outputs = Arc::new(self.reports.with_topics(self.topics.clone()));
            self.router.set_outputs(outputs.clone());
            self.links.outputs = outputs;
            // Discovery first: an entity leaves Home Assistant before its state does.
            self.discovery.reload(&new, &new_topics);
            self.fleet
                .apply(&self.config, &new, &self.links, &mut self.router)
                .await;
            self.health_token.cancel();
            self.health_token = CancellationToken::new();
            self.tracker.spawn(health::run(
                self.fleet.health_sources(&self.health_base),
                new_topics.gateway_health(),
                new.gateway.health_interval,
                self.health_token.clone(),
            ));
            self.config = new;
            self.refresh_view();
        }
        // A firmware update may have changed a SunSpec device's models.
        self.rewalk_tx.send_modify(|generation| *generation += 1);
        systemd::ready();
    }

    /// A SunSpec device read its model chain: its new points are announced and commands are
    /// validated against them, only while the device still runs the config it walked with (a
    /// reload may have replaced it since).
    fn on_walked(&mut self, walked: crate::device::Walked) {
        if !self
            .config
            .devices
            .get(&walked.device)
            .is_some_and(|d| Arc::ptr_eq(d, &walked.from))
        {
            return;
        }
        let mut new = self.config.clone();
        new.devices
            .insert(walked.device.clone(), walked.config.clone());
        self.discovery.reload(&new, &self.topics);
        self.router.update_device(&walked.device, &walked.config);
        self.config = new;
        self.refresh_view();
    }

    /// The page's view follows the config and the buses; without the page there is none.
    fn refresh_view(&self) {
        if self.view_tx.borrow().is_some() {
            self.view_tx.send_replace(Some(view(
                &self.config,
                &self.topics,
                &self.fleet,
                &self.health_base,
            )));
        }
    }

    /// The stop, in the order and budget of README "Signals and systemd": devices and buses,
    /// then the history, then MQTT.
    async fn stop(mut self, w: Winding) {
        systemd::stopping();
        let started = tokio::time::Instant::now();
        let end = started + STOP_TOTAL;
        let history_end = started + STOP_HISTORY;
        // 1. Devices and buses: polls end, a write on the wire finishes its try, the rest of
        //    what waits is answered "stopped" (and its commands left to the broker).
        self.health_token.cancel();
        self.links
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The page asks the buses for things; it goes with them.
        if let Some((token, _)) = &w.page {
            token.cancel();
        }
        self.fleet.stop_all(started + STOP_DEVICES).await;
        if let Some((_, task)) = w.page {
            if tokio::time::timeout_at(started + STOP_DEVICES, task)
                .await
                .is_err()
            {
                warn!("shutdown: the commissioning page did not stop in time");
            }
        }
        if let Some(log) = &w.command_log {
            // Before the history writer's, which closes the file's last connection.
            if tokio::time::timeout_at(history_end, log.close())
                .await
                .is_err()
            {
                warn!("shutdown: the command log did not close in time");
            }
        }
        // 2. With nothing left to publish state: remove what an ephemeral gateway leaves.
        if w.ephemeral {
            self.discovery.remove_all();
            for (name, dev) in &self.config.devices {
                self.handle
                    .clear_retained(self.topics.state(name, &dev.location));
                self.handle
                    .clear_retained(self.topics.availability(name, &dev.location));
            }
        }
        // 3. History: everything queued goes to disk; then the forwarder sends what it can of
        //    the last rows within the history's share (the rest goes at the next start).
        w.history
            .record_gateway("stop", std::time::SystemTime::now());
        let mut pool = None;
        if let Some((token, task)) = w.history_writer {
            token.cancel();
            match tokio::time::timeout_at(history_end, task).await {
                Ok(Ok(p)) => pool = p,
                Ok(Err(e)) => warn!("shutdown: the history writer failed: {e}"),
                Err(_) => warn!("shutdown: history did not flush in time"),
            }
        }
        if let Some((token, task)) = w.forwarder {
            token.cancel();
            if tokio::time::timeout_at(history_end, task).await.is_err() {
                warn!("shutdown: history forwarding did not stop in time");
            }
        }
        // The writer's connection closes last. Closed, not just dropped with the process: the
        // last connection to close checkpoints the file and removes its WAL, so a stopped
        // gateway leaves one file that holds everything (a copy of `history.db` alone is whole).
        if let Some(pool) = pool {
            if tokio::time::timeout_at(history_end, pool.close())
                .await
                .is_err()
            {
                warn!("shutdown: the history file did not close in time");
            }
        }
        // 4. MQTT publishes `offline` and disconnects.
        w.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(end, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown: some tasks did not stop within {STOP_MQTT:?}; exiting anyway");
        }
        info!("fieldbridge stopped");
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs what the config asks for that will not work as written (once per start or reload).
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        warn!("{w}");
    }
}

/// SIGHUP: re-read the config. A bad file is refused with every error logged and the running
/// config kept. A good one is returned, and the caller applies what changed.
fn reload(path: &Path, current: &Config) -> Option<Config> {
    systemd::reloading();
    match Config::load(path) {
        Err(errors) => {
            for e in &errors.0 {
                error!("{e}");
            }
            error!(
                errors = errors.0.len(),
                "SIGHUP: the new config is invalid; keeping the running one"
            );
            None
        }
        Ok(new) if &new == current => {
            info!("SIGHUP: config unchanged");
            None
        }
        Ok(new) => {
            if new.mqtt != current.mqtt
                || new.gateway != current.gateway
                || new.topics != current.topics
                || new.history != current.history
            {
                warn!(
                    "SIGHUP: [mqtt], [gateway], [topics] and [history] changes take effect after a restart"
                );
            }
            info!("SIGHUP: config reloaded");
            Some(new)
        }
    }
}

fn status_line(connected: bool, devices: usize, history_unavailable: Option<&str>) -> String {
    let mqtt = if connected {
        "MQTT connected"
    } else {
        "MQTT disconnected (retrying)"
    };
    match history_unavailable {
        Some(why) => format!(
            "{mqtt}; {devices} devices configured; history unavailable ({why}), retried every minute"
        ),
        None => format!("{mqtt}; {devices} devices configured"),
    }
}
