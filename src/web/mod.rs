//! The commissioning page (README "The commissioning page"): a small web page served by the
//! daemon itself with `[web]` in the config — the gateway's health, each device's live values
//! and history, each bus's scan and register reader, the config as `check` sees it, and (with
//! `allow_writes`) commands and register writes.
//!
//! - Everything the page asks of a bus goes through that bus's own queue (a request waits its
//!   turn like a command; a serial port is never opened twice); commands go through the same
//!   router, validation and results as MQTT commands.
//! - Live values come from [`tap::Tap`], in front of the MQTT link, as server-sent events.
//! - Without `[web]` none of this exists: no listener, no task, no tap. With it and no browser
//!   open, nothing runs but the accept loop.
//! - [`auth`]: sessions, CSRF tokens and failed logins. The listener is bounded: connections
//!   beyond [`CONNECTIONS_CAP`] are refused with 503, a client has [`HEADER_TIMEOUT`] to send
//!   its request head, and bodies beyond [`BODY_LIMIT`] are refused with 413.

pub mod auth;
mod handlers;
pub mod tap;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bus::BusHandle;
use crate::config::{Config, WebConfig};
use crate::health;
use crate::mqtt::{Incoming, MqttHandle, Secret};
use crate::topics::Topics;

/// Open connections at most; more are answered 503 and closed (a page needs two or three).
pub const CONNECTIONS_CAP: usize = 32;
/// How long a client may take to send its request head (a slow client holds no connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a command or a register write is a few hundred bytes).
pub const BODY_LIMIT: usize = 16 * 1024;
/// Commands from the page waiting for the router at most; beyond, the page is told "busy".
pub const COMMANDS_CAP: usize = 16;

/// What the page shows of the running gateway; the supervisor replaces it when the config
/// changes (a reload, a SunSpec walk) or buses restart.
#[derive(Clone)]
pub struct View {
    pub config: Arc<Config>,
    pub topics: Arc<Topics>,
    /// The running Modbus buses' handles, for scans, reads and writes from the page.
    pub buses: BTreeMap<String, BusHandle>,
    pub health: health::Sources,
}

/// What the handlers share.
pub(crate) struct Shared {
    web: WebConfig,
    password: Option<Secret>,
    gateway: String,
    view: watch::Receiver<Option<Arc<View>>>,
    tap: Arc<tap::Tap>,
    mqtt: MqttHandle,
    history: Option<sqlx::SqlitePool>,
    commands: mpsc::Sender<Incoming>,
    sessions: Mutex<auth::Sessions>,
    logins: Mutex<auth::Logins>,
    /// Buses being scanned from the page (one scan per bus at a time).
    scanning: Mutex<std::collections::BTreeSet<String>>,
    started: std::time::Instant,
    port: u16,
}

/// The page's listener and what it serves.
pub struct Web {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What the page needs from the gateway.
pub struct Parts {
    pub password: Option<Secret>,
    pub gateway: String,
    pub view: watch::Receiver<Option<Arc<View>>>,
    pub tap: Arc<tap::Tap>,
    pub mqtt: MqttHandle,
    pub history: Option<sqlx::SqlitePool>,
    /// Commands from the page, to the command router (as if they came over MQTT).
    pub commands: mpsc::Sender<Incoming>,
}

/// Binds the page's address. Done at start-up, with the rest of what can fail: a port in use
/// stops the start with that reason.
pub async fn bind(web: &WebConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(web.listen).await
}

impl Web {
    pub fn new(web: &WebConfig, listener: TcpListener, parts: Parts) -> Web {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        Web {
            listener,
            shared: Arc::new(Shared {
                web: web.clone(),
                password: parts.password,
                gateway: parts.gateway,
                view: parts.view,
                tap: parts.tap,
                mqtt: parts.mqtt,
                history: parts.history,
                commands: parts.commands,
                sessions: Mutex::new(auth::Sessions::default()),
                logins: Mutex::new(auth::Logins::default()),
                scanning: Mutex::new(Default::default()),
                started: std::time::Instant::now(),
                port,
            }),
        }
    }

    /// The address it listens on (the port, when `listen` asked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections until `shutdown`; then every connection ends at once (an open page
    /// reconnects to the next gateway by itself).
    pub async fn run(self, shutdown: CancellationToken) {
        let router = handlers::router(self.shared.clone());
        let permits = Arc::new(Semaphore::new(CONNECTIONS_CAP));
        let mut connections = JoinSet::new();
        if let Some(a) = self.local_addr() {
            info!(url = %format!("http://{a}/"), writes = self.shared.web.allow_writes, "commissioning page listening");
        }
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                // Finished connections leave the set as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, never spin.
                        warn!(error = %e, "commissioning page: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                connections.spawn(refuse(stream));
                continue;
            };
            let app = router
                .clone()
                .layer(axum::Extension(handlers::Client(peer.ip())));
            let service = TowerToHyperService::new(app);
            let stop = shutdown.clone();
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(error = %e, "commissioning page: connection ended");
                    },
                    _ = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
        connections.abort_all();
    }
}

/// A connection beyond the cap: told so, and closed.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "too many connections to the commissioning page; try again\n";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 5\r\n\r\n{body}",
        body.len()
    );
    let written =
        tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
    if !matches!(written, Ok(Ok(()))) {
        debug!("commissioning page: a refused connection did not take its 503");
    }
}
