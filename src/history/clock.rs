//! The gateway's own clock: elapsed time that a step of the wall clock does not move.
//!
//! A Raspberry Pi has no real-time clock. It boots with the time it was shut down at (or 1970),
//! and NTP steps the clock at some point after boot, by minutes or by years, either way. What
//! must run on elapsed time — how long a command id is remembered, how long a reading is kept —
//! runs on this clock instead: while the gateway runs, the monotonic clock; across a restart of
//! the gateway in the same boot, the time since boot (`CLOCK_BOOTTIME`, which counts suspend
//! too; the kernel's boot id tells a restart from a reboot); across a reboot, the wall clock's
//! gap, between zero and a bound the caller names. A checkpoint (wall clock, this clock, time
//! since boot, boot id) saved in the file the clock serves carries it from one start to the
//! next.

use std::time::{Duration, Instant, SystemTime};

use sqlx::Row as _;

use super::millis;

/// Milliseconds on the gateway's clock.
#[derive(Debug)]
pub struct GatewayClock {
    base: i64,
    start: Instant,
    boot: String,
}

/// A checkpoint of the clock: the wall clock, the gateway's clock and the time since boot
/// (milliseconds), and the boot's id.
type Checkpoint = (i64, i64, i64, String);

const CREATE: &str = "CREATE TABLE IF NOT EXISTS clock (one INTEGER PRIMARY KEY CHECK (one = 1), \
     wall INTEGER NOT NULL, gateway INTEGER NOT NULL, boottime INTEGER NOT NULL, boot_id TEXT NOT NULL)";

impl GatewayClock {
    /// The clock resumed from the checkpoint in `pool` (the `clock` table, made when missing),
    /// counting at most `max_gap` for a reboot.
    pub async fn load(pool: &sqlx::SqlitePool, max_gap: Duration) -> Result<Self, sqlx::Error> {
        sqlx::query(CREATE).execute(pool).await?;
        let checkpoint = sqlx::query("SELECT wall, gateway, boottime, boot_id FROM clock")
            .fetch_optional(pool)
            .await?
            .map(|r| -> Result<Checkpoint, sqlx::Error> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            })
            .transpose()?;
        let boot = boot_id();
        Ok(GatewayClock {
            base: resume(
                checkpoint,
                millis(SystemTime::now()),
                boottime_ms(),
                &boot,
                max_gap,
            ),
            start: Instant::now(),
            boot,
        })
    }

    /// A clock at `at` now, for tests that need time to have passed.
    #[cfg(test)]
    pub(crate) fn at(at: i64) -> Self {
        GatewayClock {
            base: at,
            start: Instant::now(),
            boot: boot_id(),
        }
    }

    pub fn now(&self) -> i64 {
        self.base
            .saturating_add(self.start.elapsed().as_millis() as i64)
    }

    /// Saves where the clock stands, for the next start.
    pub async fn save<'c, E>(&self, on: E) -> Result<(), sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        sqlx::query(
            "INSERT INTO clock (one, wall, gateway, boottime, boot_id) VALUES (1, ?, ?, ?, ?) \
             ON CONFLICT (one) DO UPDATE SET wall = excluded.wall, gateway = excluded.gateway, \
             boottime = excluded.boottime, boot_id = excluded.boot_id",
        )
        .bind(millis(SystemTime::now()))
        .bind(self.now())
        .bind(boottime_ms())
        .bind(&self.boot)
        .execute(on)
        .await
        .map(|_| ())
    }
}

/// Milliseconds since boot, suspend included.
fn boottime_ms() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000)
        .unwrap_or(0)
}

/// This boot's id (random, new at every boot); empty where the kernel does not say.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where the gateway's clock stands now, from its last checkpoint and now's wall clock, time
/// since boot and boot id; a reboot counts the wall clock's gap, at most `max_gap`.
fn resume(
    checkpoint: Option<Checkpoint>,
    wall_now: i64,
    boot_now: i64,
    boot: &str,
    max_gap: Duration,
) -> i64 {
    let Some((wall, gateway, boot_then, boot_id_then)) = checkpoint else {
        return 0;
    };
    let same_boot = !boot.is_empty() && boot == boot_id_then && boot_now >= boot_then;
    let gap = if same_boot {
        // The same boot: the time since boot has gone on, whatever the wall clock did.
        boot_now - boot_then
    } else {
        // A reboot: only the wall clock spans it, and it may have been stepped meanwhile.
        (wall_now - wall).clamp(0, max_gap.as_millis() as i64)
    };
    gateway.saturating_add(gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn the_gateway_clock_ignores_wall_steps_within_a_boot_and_bounds_them_across_one() {
        // No checkpoint: a new clock.
        assert_eq!(resume(None, 5, 5, "b1", DAY), 0);
        // Restarted in the same boot 10 minutes later, the wall clock stepped 20 years ahead
        // meanwhile: 10 minutes passed.
        let ck = Some((1_000 * H, 50 * H, 2 * H, "b1".to_string()));
        let twenty_years = 20 * 365 * 24 * H;
        let ten_minutes = 600_000;
        assert_eq!(
            resume(
                ck.clone(),
                1_000 * H + twenty_years,
                2 * H + ten_minutes,
                "b1",
                DAY
            ),
            50 * H + ten_minutes
        );
        // ... or a day back: still 10 minutes.
        assert_eq!(
            resume(
                ck.clone(),
                1_000 * H - 24 * H,
                2 * H + ten_minutes,
                "b1",
                DAY
            ),
            50 * H + ten_minutes
        );
        // Rebooted (another boot id, even with a longer time since boot): the wall clock's
        // gap, 2 h ...
        assert_eq!(resume(ck.clone(), 1_002 * H, 3 * H, "b2", DAY), 52 * H);
        // ... never negative (a Pi without a real-time clock boots in the past) ...
        assert_eq!(resume(ck.clone(), 990 * H, H / 2, "b2", DAY), 50 * H);
        // ... and at most the bound (a clock stepped 20 years ahead across the reboot).
        assert_eq!(
            resume(ck, 1_000 * H + twenty_years, H / 2, "b2", DAY),
            50 * H + 24 * H
        );
    }
}
