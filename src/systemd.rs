//! sd_notify for `Type=notify` (README "Signals and systemd"): READY, STATUS, RELOADING, STOPPING, and a watchdog
//! that pets systemd only while the core loops prove they make progress. All of it is a no-op
//! outside systemd (no NOTIFY_SOCKET); a failing notify is logged at debug, never fatal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1: config, history and buses are up.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// STATUS=…, shown by `systemctl status`.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// RELOADING=1 with MONOTONIC_USEC, as the reload protocol asks; `ready()` ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// EXTEND_TIMEOUT_USEC=…: start-up needs up to `by` more from now (a long migration), so
/// systemd does not kill it at `TimeoutStartSec`. At most u32::MAX µs (71 minutes) at a time.
pub fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// STOPPING=1: shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// The process-wide start, for heartbeat times.
fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Proof of progress of one core loop: it calls `beat()` every turn.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn new(name: &'static str) -> Self {
        let h = Heartbeat {
            name,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        h.beat();
        h
    }

    pub fn beat(&self) {
        let ms = epoch().elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The first heartbeat older than `limit`, if any: the loop that is stuck.
pub fn stale(heartbeats: &[Heartbeat], limit: Duration) -> Option<&'static str> {
    let now = epoch().elapsed().as_millis() as u64;
    heartbeats
        .iter()
        .find(|h| h.age(now) > limit)
        .map(Heartbeat::name)
}

/// When systemd asks for a watchdog (`WatchdogSec=`), sends WATCHDOG=1 every half period while
/// every heartbeat is fresher than the period. A stuck loop stops the petting, so systemd
/// restarts us.
pub fn spawn_watchdog(
    heartbeats: Vec<Heartbeat>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match stale(&heartbeats, period) {
                None => {
                    notify(&[NotifyState::Watchdog]);
                    warned = false;
                }
                Some(name) if !warned => {
                    warn!(
                        task = name,
                        "watchdog: a core loop made no progress; not petting systemd"
                    );
                    warned = true;
                }
                Some(_) => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_older_than_the_limit_is_reported_by_name() {
        let a = Heartbeat::new("mqtt");
        let b = Heartbeat::new("supervisor");
        assert_eq!(
            stale(&[a.clone(), b.clone()], Duration::from_secs(10)),
            None
        );
        b.last_ms.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            stale(&[a, b], Duration::from_millis(1)),
            Some("mqtt").or(Some("supervisor"))
        );
    }
}
