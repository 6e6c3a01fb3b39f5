//! Opening serial ports, with errors a user can act on, and the reopen backoff shared by the
//! bus tasks.

use std::time::Duration;

use tokio_serial::{
    DataBits, Parity as SerialParity, SerialPortBuilderExt, SerialStream, StopBits,
};

use crate::config::{BusConfig, Parity};

/// Opens the bus's serial port with its line settings. Exclusive, so a second fieldbridge (or
/// `screen`, ModemManager) can't interleave bytes with ours.
pub fn open_serial(config: &BusConfig) -> Result<SerialStream, String> {
    let path = config.port.clone().unwrap_or_default();
    let builder = tokio_serial::new(&path, config.baud)
        .data_bits(match config.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        })
        .parity(match config.parity {
            Parity::None => SerialParity::None,
            Parity::Even => SerialParity::Even,
            Parity::Odd => SerialParity::Odd,
        })
        .stop_bits(if config.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .timeout(Duration::from_millis(100));
    builder.open_native_async().map_err(|e| describe(&path, &e))
}

/// A serial port error in words that say what to do.
pub fn describe(path: &str, e: &tokio_serial::Error) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("exclusive") || lower.contains("busy") {
        format!(
            "{path} is held by another process (ModemManager, screen, another fieldbridge?): {text}"
        )
    } else if lower.contains("no such file") || lower.contains("not found") {
        format!("no such port {path} (unplugged? see /dev/serial/by-id/)")
    } else if lower.contains("permission") {
        format!("permission denied on {path} (is the user in the dialout group?)")
    } else {
        format!("{path}: {text}")
    }
}

/// Capped exponential backoff with jitter for reopening a port or connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            min,
            max,
            next: min,
            seed,
        }
    }

    /// The delay before the next attempt: the current step ± 20 %, then the step doubles.
    pub fn delay(&mut self) -> Duration {
        // xorshift64: cheap jitter so many gateways don't retry in lock-step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = (self.seed % 401) as f64 / 1000.0 - 0.2;
        let d = self.next.mul_f64(1.0 + jitter).min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the minimum after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[5] <= Duration::from_secs(1));
        assert!(d[5] >= Duration::from_millis(800));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(120));
    }
}
