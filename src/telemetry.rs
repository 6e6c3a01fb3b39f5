//! Logging (README "Logs"): under journald (`JOURNAL_STREAM` set) native journal entries with
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
    let registry = tracing_subscriber::registry().with(filter).with(Warnings);
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

/// Warnings kept for the commissioning page's gateway view.
pub const WARNINGS_CAP: usize = 50;

static WARNINGS: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last warnings and errors logged, oldest first (at most [`WARNINGS_CAP`], a few
/// kilobytes, whether or not anything shows them).
pub fn recent_warnings() -> Vec<String> {
    WARNINGS
        .lock()
        .map(|w| w.iter().cloned().collect())
        .unwrap_or_default()
}

/// Keeps each warning and error as one line: time, level, message and fields.
struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        struct Line(String, String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.1 += &format!(" {}={value:?}", field.name());
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0 = value.to_string();
                } else {
                    self.1 += &format!(" {}={value}", field.name());
                }
            }
        }
        let mut line = Line(String::new(), String::new());
        event.record(&mut line);
        let text = format!(
            "{} {level} {}{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            line.0,
            line.1
        );
        if let Ok(mut w) = WARNINGS.lock() {
            if w.len() >= WARNINGS_CAP {
                w.pop_front();
            }
            w.push_back(text);
        }
    }
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

/// A log message as a rate-limiting reason: its numbers and quoted values taken out, so
/// `brightness: 120 is above max 100` and `brightness: 130 is above max 100` are one reason,
/// and a flood of different values costs one line, not one each.
pub fn reason(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        let next_digit = chars.peek().is_some_and(char::is_ascii_digit);
        match c {
            '"' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("\"…\"");
                }
            }
            _ if quoted => {}
            // A number: digits, with a sign or a decimal point before a digit.
            '0'..='9' | '-' | '.' if c.is_ascii_digit() || next_digit => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Keys [`RateLimits`] holds at most; past that, the ones whose period has passed are forgotten
/// (and if none has, all are: a line may then repeat sooner, never be lost).
pub const RATE_LIMIT_KEYS: usize = 1024;

/// One [`RateLimit`] per key (a device and a reason): every distinct key gets its first line
/// logged, and a repeat at most once per period, with the count of those held back.
#[derive(Debug)]
pub struct RateLimits {
    every: Duration,
    keys: std::collections::HashMap<String, RateLimit>,
}

impl RateLimits {
    pub fn new(every: Duration) -> Self {
        RateLimits {
            every,
            keys: std::collections::HashMap::new(),
        }
    }

    /// `Some(suppressed since the last one)` when a line for `key` may be logged now.
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        if !self.keys.contains_key(key) && self.keys.len() >= RATE_LIMIT_KEYS {
            let every = self.every;
            self.keys
                .retain(|_, r| r.last.is_some_and(|t| now.duration_since(t) < every));
            if self.keys.len() >= RATE_LIMIT_KEYS {
                self.keys.clear();
            }
        }
        self.keys
            .entry(key.to_string())
            .or_insert_with(|| RateLimit::new(self.every))
            .check(now)
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
    fn a_reason_is_its_message_without_numbers_and_quoted_values() {
        assert_eq!(
            reason("brightness: 120 is above max 100"),
            reason("brightness: -13.5 is above max 100")
        );
        assert_eq!(
            reason("brightness: 120 is above max 100"),
            "brightness: # is above max #"
        );
        assert_eq!(
            reason("state: unknown label \"dim\"; expected off or on"),
            "state: unknown label \"…\"; expected off or on"
        );
        assert_ne!(reason("a: not writable"), reason("b: not writable"));
    }

    #[test]
    fn rate_limits_are_per_key_so_every_distinct_line_is_logged_once_at_least() {
        let mut r = RateLimits::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.check("boiler\0device offline", t0), Some(0));
        assert_eq!(r.check("lamp\0device offline", t0), Some(0));
        assert_eq!(r.check("boiler\0device offline", t0), None);
        assert_eq!(r.check("boiler\0x: unknown point", t0), Some(0));
        // Many more keys than it holds: each still logs its first line.
        for i in 0..3 * RATE_LIMIT_KEYS {
            assert_eq!(r.check(&format!("d{i}"), t0), Some(0));
        }
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
