//! The ids of commands executed lately (README "Sending commands"): a command whose `id` was
//! executed within [`COMMAND_ID_WINDOW`] is not executed again; its first result is published
//! again. Kept in a file of its own in the state directory (`commands.db` beside the history),
//! with the history off too, so that a command the broker delivers again after a crash or a
//! power cut is never written twice.
//!
//! The window is measured on the gateway's own clock (`clock.rs`), not on the wall clock a
//! Raspberry Pi gets from NTP at some point after boot: a step of the wall clock, either way,
//! neither shortens nor extends it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Row as _;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::clock::GatewayClock;
use super::file_id;
use super::store::{Error, one_connection};
use crate::output::{COMMAND_ID_WINDOW, CommandIds, Seen};
use tracing::warn;

/// The command log's file, in the state directory.
pub const COMMAND_LOG_FILE: &str = "commands.db";

/// The command log: one connection of its own (a command never waits behind a batch of
/// readings); each call one transaction, synced at commit — one fsync when a command starts
/// and one when it ends, only for commands that carry an `id`. A file deleted or replaced
/// underneath (a restore, a cleanup) is noticed at the next command and opened anew, so ids go
/// on being kept on disk.
#[derive(Debug, Clone)]
pub struct CommandLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

/// The file the log writes now.
#[derive(Debug, Clone)]
struct File {
    pool: SqlitePool,
    clock: Arc<GatewayClock>,
    /// (device, inode) when it was opened.
    id: Option<(u64, u64)>,
}

impl File {
    async fn open(path: &Path) -> Result<File, Error> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .pragma("cache_size", "-64")
            .pragma("journal_size_limit", "1048576")
            .statement_cache_capacity(8);
        let pool = one_connection(path, opts).await?;
        let sql = |e: sqlx::Error| Error::Open {
            path: path.display().to_string(),
            source: e,
        };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS command_ids (device TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL, result TEXT, PRIMARY KEY (device, id))",
        )
        .execute(&pool)
        .await
        .map_err(sql)?;
        let clock = GatewayClock::load(&pool, COMMAND_ID_WINDOW)
            .await
            .map_err(sql)?;
        clock.save(&pool).await.map_err(sql)?;
        Ok(File {
            pool,
            clock: Arc::new(clock),
            id: file_id(path),
        })
    }
}

impl CommandLog {
    /// Opens (or makes) the command log in the state directory `dir`.
    pub async fn open(dir: &Path) -> Result<CommandLog, Error> {
        let path = dir.join(COMMAND_LOG_FILE);
        let file = File::open(&path).await?;
        Ok(CommandLog {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file to write: the one open, or, when it was deleted or replaced, the file now at
    /// the path, opened anew.
    async fn file(&self) -> Result<File, sqlx::Error> {
        let current = match self.file.lock() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if current.id.is_some() && file_id(&self.path) == current.id {
            return Ok(current);
        }
        warn!(
            path = %self.path.display(),
            "the command log was deleted or replaced; opening it anew (ids recorded since its last copy are gone)"
        );
        let fresh = File::open(&self.path).await.map_err(|e| match e {
            Error::Open { source, .. } | Error::Sql(source) => source,
            Error::Migrate { source, .. } => sqlx::Error::Migrate(Box::new(source)),
        })?;
        match self.file.lock() {
            Ok(mut f) => *f = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        current.pool.close().await;
        Ok(fresh)
    }

    /// Looks `id` of `device` up; when it was not executed within [`COMMAND_ID_WINDOW`],
    /// records it as running, on disk before this returns. Older ids are forgotten here.
    pub async fn begin(&self, device: &str, id: &str) -> Result<Seen, sqlx::Error> {
        let file = self.file().await?;
        let now = file.clock.now();
        let mut tx = file.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        // Where the clock stands, for the next start.
        file.clock.save(&mut *tx).await?;
        tx.commit().await?;
        Ok(seen)
    }

    /// Closes the log's connection, once no command is left to record (at shutdown), with the
    /// clock saved.
    pub async fn close(&self) {
        let file = match self.file.lock() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Err(e) = file.clock.save(&file.pool).await {
            tracing::debug!(error = %e, "command log: the clock was not saved at the stop");
        }
        file.pool.close().await;
    }

    /// Records the result published for `id`.
    pub async fn finish(&self, device: &str, id: &str, result: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE command_ids SET result = ? WHERE device = ? AND id = ?")
            .bind(result)
            .bind(device)
            .bind(id)
            .execute(&self.file().await?.pool)
            .await
            .map(|_| ())
    }

    /// Forgets `id`: the command was not executed after all, so a later delivery of it runs.
    pub async fn forget(&self, device: &str, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM command_ids WHERE device = ? AND id = ?")
            .bind(device)
            .bind(id)
            .execute(&self.file().await?.pool)
            .await
            .map(|_| ())
    }
}

/// The device layer reaches the log through the output seam (`crate::output`).
impl CommandIds for CommandLog {
    fn begin<'a>(&'a self, device: &'a str, id: &'a str) -> BoxFuture<'a, Result<Seen, String>> {
        Box::pin(async move {
            CommandLog::begin(self, device, id)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn finish<'a>(
        &'a self,
        device: &'a str,
        id: &'a str,
        result: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            CommandLog::finish(self, device, id, result)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn forget<'a>(&'a self, device: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            CommandLog::forget(self, device, id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut file = log.file().await.unwrap();
        file.clock = Arc::new(GatewayClock::at(
            file.clock.now() + COMMAND_ID_WINDOW.as_millis() as i64 + 1_000,
        ));
        let later = CommandLog {
            path: log.path.clone(),
            file: Arc::new(Mutex::new(file)),
        };
        assert_eq!(later.begin("d", "a").await.unwrap(), Seen::New);
    }

    /// A command log deleted underneath (a cleanup, a restore of the state directory) is made
    /// anew at the next command: ids recorded after it are on disk, not in an unlinked file.
    #[tokio::test]
    async fn a_deleted_command_log_is_made_anew_and_keeps_the_ids_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = CommandLog::open(dir.path()).await.unwrap();
        assert_eq!(log.begin("d", "a").await.unwrap(), Seen::New);
        for f in ["commands.db", "commands.db-wal", "commands.db-shm"] {
            std::fs::remove_file(dir.path().join(f)).ok();
        }
        assert_eq!(log.begin("d", "b").await.unwrap(), Seen::New);
        assert!(dir.path().join(COMMAND_LOG_FILE).exists());
        log.close().await;
        let log = CommandLog::open(dir.path()).await.unwrap();
        assert_eq!(log.begin("d", "b").await.unwrap(), Seen::Interrupted);
        // What went with the old file is gone.
        assert_eq!(log.begin("d", "a").await.unwrap(), Seen::New);
    }
}
