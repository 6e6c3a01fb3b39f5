//! Logging (README "Logs"): under journald (`JOURNAL_STREAM` set) native journal entries with
//! priorities and flat fields (`journalctl -u fieldbridge DEVICE=boiler`); otherwise readable
//! lines on stderr, coloured only on a terminal. `--log-level` or `RUST_LOG` filters.

use std::io::IsTerminal;

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

#[cfg(test)]
mod tests {
    use super::*;

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
