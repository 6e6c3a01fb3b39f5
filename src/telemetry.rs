//! Logging (CONTRACT §5): under journald (`JOURNAL_STREAM` set) native journal entries with
//! priorities and flat fields (`journalctl -u fieldbridge DEVICE=boiler`); otherwise readable
//! lines on stderr, coloured only on a terminal. `--log-level` or `RUST_LOG` filters.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter in force: `--log-level`, else `RUST_LOG`, else `info`.
pub fn filter_directives(cli: Option<&str>, env: Option<&str>) -> String {
    cli.or(env)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info")
        .to_string()
}

/// Installs the global subscriber. Safe to call twice (the second call changes nothing).
pub fn init(log_level: Option<&str>) -> anyhow::Result<()> {
    let env = std::env::var("RUST_LOG").ok();
    let directives = filter_directives(log_level, env.as_deref());
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| anyhow::anyhow!("invalid log filter \"{directives}\": {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            // Flat field names, so `journalctl DEVICE=boiler` works.
            let journald = journald.with_field_prefix(None);
            return registry.with(journald).try_init().or(Ok(()));
        }
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    registry.with(fmt).try_init().or(Ok(()))
}

/// At most one log line per `every`; the rest are counted and reported with the next one.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when a line may be logged now.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn the_command_line_beats_rust_log_which_beats_the_default() {
        assert_eq!(filter_directives(Some("debug"), Some("warn")), "debug");
        assert_eq!(
            filter_directives(None, Some("warn,fieldbridge=debug")),
            "warn,fieldbridge=debug"
        );
        assert_eq!(filter_directives(None, None), "info");
        assert_eq!(filter_directives(Some(" "), None), "info");
    }
}
