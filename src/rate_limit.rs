//! Rate limits for log lines: a flood of one warning (a device gone, a stream of refused
//! commands) costs one line per period with a count of those held back, never one per event
//! (README "Logs").

use std::time::{Duration, Instant};

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
}
