//! The ids of commands executed lately (README "Sending commands"): a command whose `id` was
//! executed within [`COMMAND_ID_WINDOW`] is not executed again; its first result is published
//! again. Kept in a file of its own in the state directory (`commands.db` beside the history),
//! with the history off too, so that a command the broker delivers again after a crash or a
//! power cut is never written twice.
//!
//! The window is measured on the gateway's own clock, not the wall clock a Raspberry Pi gets
//! from NTP at some point after boot (it has no real-time clock): while the gateway runs, it is
//! the monotonic clock; across a restart of the gateway in the same boot, the time since boot
//! (`CLOCK_BOOTTIME`, which counts suspend too; the kernel's boot id tells a restart from a
//! reboot); across a reboot, the wall clock's gap, between zero and the window. So a step of the wall clock, either way, neither shortens nor extends
//! the window.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sqlx::Row as _;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::millis;
use super::store::{Error, one_connection};

/// How long an executed command's id is remembered.
pub const COMMAND_ID_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The command log's file, in the state directory.
pub const COMMAND_LOG_FILE: &str = "commands.db";

/// What the command log knew of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not executed within the window: now recorded (on disk) as running.
    New,
    /// Executed; its result payload.
    Done(String),
    /// Recorded as running, with no result: the gateway stopped (a crash, power loss) while
    /// executing it. It may have been written.
    Interrupted,
}

/// Milliseconds on the gateway's clock (see the module docs).
#[derive(Debug)]
struct GatewayClock {
    base: i64,
    start: Instant,
}

impl GatewayClock {
    fn now(&self) -> i64 {
        self.base
            .saturating_add(self.start.elapsed().as_millis() as i64)
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

/// A checkpoint of the gateway's clock: the wall clock, the gateway's clock and the time since
/// boot (milliseconds), and the boot's id.
type Checkpoint = (i64, i64, i64, String);

/// Where the gateway's clock stands now, from its last checkpoint and now's wall clock, time
/// since boot and boot id.
fn resume(checkpoint: Option<Checkpoint>, wall_now: i64, boot_now: i64, boot: &str) -> i64 {
    let Some((wall, gateway, boot_then, boot_id_then)) = checkpoint else {
        return 0;
    };
    let same_boot = !boot.is_empty() && boot == boot_id_then && boot_now >= boot_then;
    let gap = if same_boot {
        // The same boot: the time since boot has gone on, whatever the wall clock did.
        boot_now - boot_then
    } else {
        // A reboot: only the wall clock spans it, and it may have been stepped meanwhile.
        (wall_now - wall).clamp(0, COMMAND_ID_WINDOW.as_millis() as i64)
    };
    gateway.saturating_add(gap)
}

/// The command log: one connection of its own (a command never waits behind a batch of
/// readings); each call one transaction, synced at commit — one fsync when a command starts
/// and one when it ends, only for commands that carry an `id`.
#[derive(Debug, Clone)]
pub struct CommandLog {
    pool: SqlitePool,
    clock: Arc<GatewayClock>,
    boot: Arc<str>,
}

impl CommandLog {
    /// Opens (or makes) the command log in the state directory `dir`.
    pub async fn open(dir: &Path) -> Result<CommandLog, Error> {
        let path = dir.join(COMMAND_LOG_FILE);
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .pragma("cache_size", "-64")
            .pragma("journal_size_limit", "1048576")
            .statement_cache_capacity(8);
        let pool = one_connection(&path, opts).await?;
        let sql = |e: sqlx::Error| Error::Open {
            path: path.display().to_string(),
            source: e,
        };
        for ddl in [
            "CREATE TABLE IF NOT EXISTS command_ids (device TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL, result TEXT, PRIMARY KEY (device, id))",
            "CREATE TABLE IF NOT EXISTS clock (one INTEGER PRIMARY KEY CHECK (one = 1), wall INTEGER NOT NULL, gateway INTEGER NOT NULL, boottime INTEGER NOT NULL, boot_id TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await.map_err(sql)?;
        }
        let checkpoint = sqlx::query("SELECT wall, gateway, boottime, boot_id FROM clock")
            .fetch_optional(&pool)
            .await
            .map_err(sql)?
            .map(|r| -> Result<Checkpoint, sqlx::Error> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            })
            .transpose()
            .map_err(sql)?;
        let clock = GatewayClock {
            base: resume(
                checkpoint,
                millis(SystemTime::now()),
                boottime_ms(),
                &boot_id(),
            ),
            start: Instant::now(),
        };
        let log = CommandLog {
            pool,
            clock: Arc::new(clock),
            boot: boot_id().into(),
        };
        log.checkpoint(&log.pool).await.map_err(sql)?;
        Ok(log)
    }

    /// Where the gateway's clock stands, saved for the next start.
    async fn checkpoint<'c, E>(&self, on: E) -> Result<(), sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        sqlx::query(
            "INSERT INTO clock (one, wall, gateway, boottime, boot_id) VALUES (1, ?, ?, ?, ?) \
             ON CONFLICT (one) DO UPDATE SET wall = excluded.wall, gateway = excluded.gateway, \
             boottime = excluded.boottime, boot_id = excluded.boot_id",
        )
        .bind(millis(SystemTime::now()))
        .bind(self.clock.now())
        .bind(boottime_ms())
        .bind(&self.boot)
        .execute(on)
        .await
        .map(|_| ())
    }

    /// Looks `id` of `device` up; when it was not executed within [`COMMAND_ID_WINDOW`],
    /// records it as running, on disk before this returns. Older ids are forgotten here.
    pub async fn begin(&self, device: &str, id: &str) -> Result<Seen, sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM command_ids WHERE at < ?")
            .bind(now - COMMAND_ID_WINDOW.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT result FROM command_ids WHERE device = ? AND id = ?")
            .bind(device)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let seen = match row {
            Some(r) => match r.try_get::<Option<String>, _>(0)? {
                Some(result) => Seen::Done(result),
                None => Seen::Interrupted,
            },
            None => {
                sqlx::query("INSERT INTO command_ids (device, id, at) VALUES (?, ?, ?)")
                    .bind(device)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Seen::New
            }
        };
        self.checkpoint(&mut *tx).await?;
        tx.commit().await?;
        Ok(seen)
    }

    /// Closes the log's connection, once no command is left to record (at shutdown), with the
    /// clock saved.
    pub async fn close(&self) {
        if let Err(e) = self.checkpoint(&self.pool).await {
            tracing::debug!(error = %e, "command log: the clock was not saved at the stop");
        }
        self.pool.close().await;
    }

    /// Records the result published for `id`.
    pub async fn finish(&self, device: &str, id: &str, result: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE command_ids SET result = ? WHERE device = ? AND id = ?")
            .bind(result)
            .bind(device)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Forgets `id`: the command was not executed after all, so a later delivery of it runs.
    pub async fn forget(&self, device: &str, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM command_ids WHERE device = ? AND id = ?")
            .bind(device)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn the_gateway_clock_ignores_wall_steps_within_a_boot_and_bounds_them_across_one() {
        // No checkpoint: a new clock.
        assert_eq!(resume(None, 5, 5, "b1"), 0);
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
                "b1"
            ),
            50 * H + ten_minutes
        );
        // ... or a day back: still 10 minutes.
        assert_eq!(
            resume(ck.clone(), 1_000 * H - 24 * H, 2 * H + ten_minutes, "b1"),
            50 * H + ten_minutes
        );
        // Rebooted (another boot id, even with a longer time since boot): the wall clock's
        // gap, 2 h ...
        assert_eq!(resume(ck.clone(), 1_002 * H, 3 * H, "b2"), 52 * H);
        // ... never negative (a Pi without a real-time clock boots in the past) ...
        assert_eq!(resume(ck.clone(), 990 * H, H / 2, "b2"), 50 * H);
        // ... and at most the window (a clock stepped 20 years ahead across the reboot).
        assert_eq!(
            resume(ck, 1_000 * H + twenty_years, H / 2, "b2"),
            50 * H + 24 * H
        );
    }

    #[tokio::test]
    async fn an_id_is_remembered_across_a_reopen_and_forgotten_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let log = CommandLog::open(dir.path()).await.unwrap();
        assert_eq!(log.begin("d", "a").await.unwrap(), Seen::New);
        log.finish("d", "a", "{\"ok\":true}").await.unwrap();
        assert_eq!(log.begin("d", "b").await.unwrap(), Seen::New);
        log.close().await;
        // Reopened (a restart): a is done, b was interrupted.
        let log = CommandLog::open(dir.path()).await.unwrap();
        assert_eq!(
            log.begin("d", "a").await.unwrap(),
            Seen::Done("{\"ok\":true}".into())
        );
        assert_eq!(log.begin("d", "b").await.unwrap(), Seen::Interrupted);
        // A day and a bit later on the gateway's clock: forgotten.
        let later = CommandLog {
            pool: log.pool.clone(),
            boot: log.boot.clone(),
            clock: Arc::new(GatewayClock {
                base: log.clock.now() + COMMAND_ID_WINDOW.as_millis() as i64 + 1_000,
                start: Instant::now(),
            }),
        };
        assert_eq!(later.begin("d", "a").await.unwrap(), Seen::New);
    }
}
