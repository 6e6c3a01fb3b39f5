//! The history of record in SQLite (CONTRACT §2-§3): every published value, availability
//! change, command and gateway start/stop, written by one task in batches.
//!
//! - The poll and command paths never wait for the disk: they `try_send` into a bounded queue
//!   (`HISTORY_CAP`); when it is full the row is dropped, counted, and a warning logged at most
//!   once a minute.
//! - One transaction per `flush` window (or per `BATCH` rows), opened with `BEGIN IMMEDIATE` so
//!   a read→write upgrade can't fail with SQLITE_BUSY; WAL and `synchronous = FULL`: each batch
//!   is on disk when its commit returns (one fsync of the WAL per window; `NORMAL` syncs only at
//!   checkpoints, so a power cut could lose several windows), and the file is never corrupted.
//! - [`CommandLog`]: the ids of executed commands, synced before each command's write goes
//!   out, so a command the broker delivers again after a crash is not written twice.
//! - Retention deletes old rows in small batches, so the `history` command can read meanwhile.
//! - `max_size` caps the file (SQLite's `max_page_count`): when it, or the disk, is full, the
//!   oldest tenth of the rows (at least twice the batch) is deleted to make room and the batch
//!   written again; the database works as a ring and the newest readings are always kept.
//! - A database deleted or replaced underneath the daemon is noticed before the next batch (its
//!   inode changed), logged, counted, and opened anew at the same path.
//! - Runtime queries only (no `query!` macros): the build needs no database, and
//!   `tests/history.rs` runs every statement against a freshly migrated file.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::HistoryConfig;
use crate::model::Value;

/// Rows waiting for the writer. When full, new rows are dropped and counted.
pub const HISTORY_CAP: usize = 20_000;
/// Rows per transaction at most.
pub const BATCH: usize = 2_000;
/// Rows per INSERT statement (4 binds each, far below SQLite's 32,766).
const ROWS_PER_INSERT: usize = 500;
/// Rows deleted per retention statement.
const RETENTION_BATCH: i64 = 1_000;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// The page size new databases get; `max_size` is turned into pages with it.
const PAGE_SIZE: u64 = 4096;
/// SQLite's result code for "database or disk is full".
const SQLITE_FULL: &str = "13";

/// Why the history can't be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("history database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("history database {path}: migrations: {source}")]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Counters for the health topic.
#[derive(Debug, Default)]
pub struct HistoryStats {
    pub rows: AtomicU64,
    pub pending: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Times the database was full and its oldest rows were deleted to make room.
    pub full: AtomicU64,
    /// Times the file was found deleted or replaced and opened anew.
    pub reopened: AtomicU64,
}

/// One row to write.
#[derive(Debug, Clone)]
enum Record {
    Reading {
        ts: i64,
        device: String,
        point: String,
        value: Value,
    },
    Event {
        ts: i64,
        device: Option<String>,
        kind: &'static str,
        detail: String,
    },
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub async fn open(path: &Path) -> Result<SqlitePool, Error> {
    open_with(path, None).await
}

/// As `open`, with the file capped at `max_size` bytes (`history.max_size`).
pub async fn open_with(path: &Path, max_size: Option<u64>) -> Result<SqlitePool, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Open {
            path: path.display().to_string(),
            source: sqlx::Error::Io(e),
        })?;
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Every commit synced: `flush` promises at most one window at risk on power loss.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        // The writer appends; a small page cache does (SQLite's default is 2 MiB), and only the
        // few fixed statements are kept prepared. See BENCHMARKS.md, memory.
        .pragma("cache_size", "-256")
        // No statement journals (see `try_write`): the writer takes its series ids from the
        // table inside the same transaction, so the foreign key would only cost a lookup per row
        // and make every multi-row INSERT abortable.
        .foreign_keys(false)
        .page_size(PAGE_SIZE as u32)
        .statement_cache_capacity(16);
    let opts = match max_size {
        // On every connection the pool opens; at least 16 pages, which the schema needs.
        Some(max) => opts.pragma("max_page_count", (max / PAGE_SIZE).max(16).to_string()),
        None => opts,
    };
    let pool = one_connection(path, opts).await?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|source| Error::Migrate {
            path: path.display().to_string(),
            source,
        })?;
    Ok(pool)
}

/// A pool of one connection kept for the life of its user: sqlx would otherwise close and reopen
/// it every 30 minutes (seen as file-descriptor blips in the soak, RELIABILITY.md).
async fn one_connection(path: &Path, opts: SqliteConnectOptions) -> Result<SqlitePool, Error> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(opts)
        .await
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })
}

/// Opens the database for reading, as `fieldbridge history` does while the daemon writes.
pub async fn open_read_only(path: &Path) -> Result<SqlitePool, Error> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })
}

/// The cheap side: record rows without ever waiting.
#[derive(Debug, Clone)]
pub struct HistoryHandle {
    tx: mpsc::Sender<Record>,
    pub stats: Arc<HistoryStats>,
    warned: Arc<AtomicU64>,
}

impl HistoryHandle {
    fn send(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {
                self.stats.pending.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // At most one warning a minute.
                let now = millis(SystemTime::now()) as u64 / 60_000;
                if self.warned.swap(now, Ordering::Relaxed) != now {
                    warn!(dropped, "history queue full; rows dropped (disk too slow?)");
                }
            }
        }
    }

    pub fn record_reading(&self, device: &str, point: &str, at: SystemTime, value: &Value) {
        self.send(Record::Reading {
            ts: millis(at),
            device: device.to_string(),
            point: point.to_string(),
            value: value.clone(),
        });
    }

    pub fn record_availability(&self, device: &str, online: bool, at: SystemTime) {
        self.send(Record::Event {
            ts: millis(at),
            device: Some(device.to_string()),
            kind: "availability",
            detail: if online { "online" } else { "offline" }.to_string(),
        });
    }

    /// A command: its payload and the result published for it.
    pub fn record_command(&self, device: &str, payload: &str, result: &str, at: SystemTime) {
        let detail = serde_json::json!({"payload": payload, "result": result}).to_string();
        self.send(Record::Event {
            ts: millis(at),
            device: Some(device.to_string()),
            kind: "command",
            detail,
        });
    }

    pub fn record_gateway(&self, what: &str, at: SystemTime) {
        self.send(Record::Event {
            ts: millis(at),
            device: None,
            kind: "gateway",
            detail: what.to_string(),
        });
    }
}

/// The writer task.
pub struct History {
    pool: SqlitePool,
    rx: mpsc::Receiver<Record>,
    config: HistoryConfig,
    stats: Arc<HistoryStats>,
    series: HashMap<(String, String), i64>,
    last_error_log: Option<Instant>,
    last_full_log: Option<Instant>,
    /// (device, inode) of the file when it was opened.
    file_id: Option<(u64, u64)>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn is_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == SQLITE_FULL)
}

/// True at most once a minute per `last`.
fn due(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
    if due {
        *last = Some(Instant::now());
    }
    due
}

impl History {
    pub fn new(pool: SqlitePool, config: &HistoryConfig) -> (History, HistoryHandle) {
        Self::with_capacity(pool, config, HISTORY_CAP)
    }

    pub fn with_capacity(
        pool: SqlitePool,
        config: &HistoryConfig,
        cap: usize,
    ) -> (History, HistoryHandle) {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let stats = Arc::new(HistoryStats::default());
        (
            History {
                pool,
                rx,
                config: config.clone(),
                stats: stats.clone(),
                series: HashMap::new(),
                last_error_log: None,
                last_full_log: None,
                file_id: file_id(&config.path),
            },
            HistoryHandle {
                tx,
                stats,
                warned: Arc::new(AtomicU64::new(0)),
            },
        )
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut buf: Vec<Record> = Vec::new();
        let mut flush = tokio::time::interval(self.config.flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.rx.recv() => match r {
                    Some(r) => {
                        buf.push(r);
                        if buf.len() >= BATCH {
                            self.write(&mut buf).await;
                        }
                    }
                    None => break,
                },
                _ = flush.tick() => self.write(&mut buf).await,
                _ = retention.tick() => self.retain().await,
            }
        }
        // Everything queued goes to disk before we stop.
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            buf.push(r);
            if buf.len() >= BATCH {
                self.write(&mut buf).await;
            }
        }
        self.write(&mut buf).await;
    }

    async fn write(&mut self, buf: &mut Vec<Record>) {
        if buf.is_empty() {
            return;
        }
        self.check_file().await;
        let n = buf.len() as u64;
        let mut result = self.try_write(buf).await;
        // Twice more at most, each after its remedy; then the batch is dropped.
        for _ in 0..2 {
            let Err(e) = &result else { break };
            if is_full(e) {
                let readings = buf
                    .iter()
                    .filter(|r| matches!(r, Record::Reading { .. }))
                    .count();
                self.make_room([readings, buf.len() - readings]).await;
            } else if matches!(e, sqlx::Error::InvalidSavePointStatement) {
                // SQLite rolled the failed transaction back by itself (it does on a full
                // database or disk, an I/O error, out of memory), sqlx's ROLLBACK then failed
                // and its connection believes a transaction is still open: every BEGIN on it
                // would fail from now on. Only a new connection gets out of that.
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!("history connection left in a transaction SQLite rolled back; reconnecting");
                self.reopen().await;
            }
            // Anything else (a locked file): simply once more.
            result = self.try_write(buf).await;
        }
        match result {
            Ok(()) => {
                self.stats.rows.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                // The cache may hold ids of a database that is gone.
                self.series.clear();
                if due(&mut self.last_error_log) {
                    warn!(error = %e, rows = n, "cannot write history; rows dropped");
                }
            }
        }
        self.stats.pending.fetch_sub(
            n.min(self.stats.pending.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        buf.clear();
    }

    /// Opens the database anew when its file was deleted or replaced: SQLite would go on
    /// writing into the unlinked inode, and every row would be lost when we stop.
    async fn check_file(&mut self) {
        if self.file_changed() {
            self.reopen().await;
        }
    }

    fn file_changed(&self) -> bool {
        let now = file_id(&self.config.path);
        now.is_none() || now != self.file_id
    }

    /// Opens the database at its path on a new connection, and closes the old one. A file
    /// deleted or replaced meanwhile is counted and logged here, whichever path noticed it.
    async fn reopen(&mut self) {
        if self.file_changed() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.stats.reopened.fetch_add(1, Ordering::Relaxed);
            warn!(
                path = %self.config.path.display(),
                "history database was deleted or replaced; creating it again"
            );
        }
        match open_with(&self.config.path, self.config.max_size).await {
            Ok(pool) => {
                let old = std::mem::replace(&mut self.pool, pool);
                old.close().await;
                self.series.clear();
                self.file_id = file_id(&self.config.path);
            }
            Err(e) => {
                // Tried again before the next batch; until then batches fail and are counted.
                if due(&mut self.last_error_log) {
                    warn!(error = %e, "cannot open the history database again");
                }
            }
        }
    }

    /// The database (or the disk) is full: deletes the oldest tenth of each table's rows, and
    /// at least twice what the batch brings to it (`batch`: readings, events), so it works as
    /// a ring that always keeps the newest even when a batch is large beside the cap.
    async fn make_room(&mut self, batch: [usize; 2]) {
        self.stats.full.fetch_add(1, Ordering::Relaxed);
        let mut deleted = 0;
        for (table, n) in ["readings", "events"].into_iter().zip(batch) {
            let at_least = (2 * n).max(100);
            let sql = format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY ts LIMIT max({at_least}, (SELECT count(*) FROM {table}) / 10))"
            );
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&self.pool)
                .await
            {
                Ok(r) => deleted += r.rows_affected(),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, table, "history database full; cannot delete old rows");
                }
            }
        }
        if due(&mut self.last_full_log) {
            warn!(
                deleted,
                max_size = ?self.config.max_size,
                "history database full; oldest rows deleted to make room"
            );
        }
    }

    async fn series_id(
        &mut self,
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        device: &str,
        point: &str,
    ) -> Result<i64, sqlx::Error> {
        let key = (device.to_string(), point.to_string());
        if let Some(id) = self.series.get(&key) {
            return Ok(*id);
        }
        sqlx::query("INSERT OR IGNORE INTO series (device, point) VALUES (?, ?)")
            .bind(device)
            .bind(point)
            .execute(&mut **tx)
            .await?;
        let id: i64 = sqlx::query("SELECT id FROM series WHERE device = ? AND point = ?")
            .bind(device)
            .bind(point)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
        self.series.insert(key, id);
        Ok(id)
    }

    async fn try_write(&mut self, buf: &[Record]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut readings: Vec<(i64, i64, i64, &Value)> = Vec::new();
        let mut events: Vec<(i64, Option<&str>, &str, &str)> = Vec::new();
        for r in buf {
            match r {
                Record::Reading {
                    ts,
                    device,
                    point,
                    value,
                } => {
                    let id = self.series_id(&mut tx, device, point).await?;
                    let kind = match value {
                        Value::Int(i) if i64::try_from(*i).is_err() => 4,
                        Value::Int(_) => 0,
                        Value::Float(_) => 1,
                        Value::Text(_) => 2,
                        Value::Bool(_) => 3,
                    };
                    readings.push((*ts, id, kind, value));
                }
                Record::Event {
                    ts,
                    device,
                    kind,
                    detail,
                } => events.push((*ts, device.as_deref(), kind, detail.as_str())),
            }
        }
        // `OR FAIL` (and no foreign-key checks) spares SQLite a statement journal per INSERT,
        // which spilled to a temporary file in /var/tmp now and then: one more write to the SD
        // card, and a file descriptor coming and going. Nothing is lost by it: any error drops
        // the whole transaction, and the batch is written again or counted as dropped.
        for chunk in readings.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT OR FAIL INTO readings (ts, series, kind, value) ");
            q.push_values(chunk, |mut b, (ts, id, kind, v)| {
                b.push_bind(*ts).push_bind(*id).push_bind(*kind);
                match v {
                    Value::Int(i) => match i64::try_from(*i) {
                        Ok(i) => b.push_bind(i),
                        Err(_) => b.push_bind(i.to_string()),
                    },
                    Value::Float(f) => b.push_bind(*f),
                    Value::Text(t) => b.push_bind(t.clone()),
                    Value::Bool(x) => b.push_bind(i64::from(*x)),
                };
            });
            // Batch sizes vary: don't keep a prepared statement per size.
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT OR FAIL INTO events (ts, device, kind, detail) ");
            q.push_values(chunk, |mut b, (ts, device, kind, detail)| {
                b.push_bind(*ts)
                    .push_bind(device.map(str::to_string))
                    .push_bind(kind.to_string())
                    .push_bind(detail.to_string());
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Deletes rows older than `retention`, a batch at a time.
    pub async fn retain(&mut self) {
        let cutoff = millis(SystemTime::now()) - self.config.retention.as_millis() as i64;
        match retain(&self.pool, cutoff).await {
            Ok(n) if n > 0 => debug!(rows = n, "history retention"),
            Ok(_) => {}
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "history retention failed");
            }
        }
    }
}

/// Deletes rows older than `cutoff_ms` in small batches; returns how many.
pub async fn retain(pool: &SqlitePool, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for table in ["readings", "events"] {
        let sql = format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts < ? LIMIT {RETENTION_BATCH})"
        );
        loop {
            let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(cutoff_ms)
                .execute(pool)
                .await?
                .rows_affected();
            total += n;
            if n < RETENTION_BATCH as u64 {
                break;
            }
            // Let readers and the writer in between batches.
            tokio::task::yield_now().await;
        }
    }
    Ok(total)
}

/// How long an executed command's id is remembered: the same id again within this window is
/// not executed again; its first result is published again (CONTRACT §4).
pub const COMMAND_ID_WINDOW: Duration = Duration::from_secs(60);

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

/// The ids of commands executed lately, in the history file (table `command_ids`), on a
/// connection of its own so a command never waits behind a batch of readings. Each call is one
/// transaction synced at commit (`synchronous = FULL`): one fsync when a command starts and one
/// when it ends, only for commands that carry an `id`.
#[derive(Debug, Clone)]
pub struct CommandLog {
    pool: SqlitePool,
}

impl CommandLog {
    /// Opens the command log in the history file at `path` (created and migrated by [`open`]).
    pub async fn open(path: &Path) -> Result<CommandLog, Error> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .pragma("cache_size", "-64")
            .statement_cache_capacity(8);
        Ok(CommandLog {
            pool: one_connection(path, opts).await?,
        })
    }

    /// Looks `id` of `device` up; when it was not executed within [`COMMAND_ID_WINDOW`],
    /// records it as running, on disk before this returns. Older ids are forgotten here.
    pub async fn begin(&self, device: &str, id: &str) -> Result<Seen, sqlx::Error> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM command_ids WHERE ts < ?")
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
                sqlx::query("INSERT INTO command_ids (device, id, ts) VALUES (?, ?, ?)")
                    .bind(device)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Seen::New
            }
        };
        tx.commit().await?;
        Ok(seen)
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

    /// Forgets `id`: the command was not executed after all (the gateway was stopping), so the
    /// broker's next delivery of it must run it.
    pub async fn forget(&self, device: &str, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM command_ids WHERE device = ? AND id = ?")
            .bind(device)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// Which rows `fieldbridge history` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device: Option<String>,
    pub point: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// UNIX seconds with millisecond precision.
    pub timestamp: f64,
    pub device: String,
    pub point: String,
    pub value: Value,
}

/// The readings matching `filter`, oldest first.
pub async fn query(pool: &SqlitePool, filter: &Filter) -> Result<Vec<Row>, sqlx::Error> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT r.ts, s.device, s.point, r.kind, r.value FROM readings r JOIN series s ON s.id = r.series WHERE 1 = 1",
    );
    if let Some(d) = &filter.device {
        q.push(" AND s.device = ").push_bind(d.clone());
    }
    if let Some(p) = &filter.point {
        q.push(" AND s.point = ").push_bind(p.clone());
    }
    if let Some(t) = filter.since {
        q.push(" AND r.ts >= ").push_bind(millis(t));
    }
    if let Some(t) = filter.until {
        q.push(" AND r.ts <= ").push_bind(millis(t));
    }
    q.push(" ORDER BY r.ts, r.rowid");
    let rows = q.build().fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ts: i64 = r.try_get(0)?;
        let kind: i64 = r.try_get(3)?;
        let value = match kind {
            0 => Value::Int(i128::from(r.try_get_unchecked::<i64, _>(4)?)),
            4 => {
                // Beyond i64: kept as decimal text so nothing is rounded.
                let s: String = r.try_get_unchecked(4)?;
                Value::Int(s.parse().unwrap_or_default())
            }
            1 => Value::Float(r.try_get_unchecked(4)?),
            3 => Value::Bool(r.try_get_unchecked::<i64, _>(4)? != 0),
            _ => Value::Text(r.try_get_unchecked(4)?),
        };
        out.push(Row {
            timestamp: ts as f64 / 1000.0,
            device: r.try_get(1)?,
            point: r.try_get(2)?,
            value,
        });
    }
    Ok(out)
}

/// One event: (UNIX seconds, device, kind, detail), oldest first.
pub type Event = (f64, Option<String>, String, String);

/// Every event (availability changes, commands, gateway start/stop), oldest first.
pub async fn events(pool: &SqlitePool) -> Result<Vec<Event>, sqlx::Error> {
    let rows = sqlx::query("SELECT ts, device, kind, detail FROM events ORDER BY ts, rowid")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>(0)? as f64 / 1000.0,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
            ))
        })
        .collect()
}

/// `--since`/`--until`: a duration ago (`1h`, `30m`) or an RFC 3339 time.
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return now
            .checked_sub(d)
            .ok_or_else(|| format!("{s} ago is before 1970"));
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("invalid time \"{s}\"; expected a duration ago (1h, 30m) or an RFC 3339 time (2026-11-24T10:00:00Z)")
    })
}

/// Output formats of `fieldbridge history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Renders rows: `json` is one array of `{"timestamp", "device", "point", "value"}`; `csv` has
/// the header `timestamp,device,point,value`; `table` is for people.
pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Json => {
            let arr: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "timestamp": r.timestamp,
                        "device": r.device,
                        "point": r.point,
                        "value": r.value.to_json(),
                    })
                })
                .collect();
            serde_json::Value::Array(arr).to_string() + "\n"
        }
        Format::Csv => {
            let mut out = String::from("timestamp,device,point,value\n");
            for r in rows {
                let v = match &r.value {
                    Value::Text(t) => csv_field(t),
                    other => other.to_json().to_string(),
                };
                out += &format!(
                    "{:.3},{},{},{}\n",
                    r.timestamp,
                    csv_field(&r.device),
                    csv_field(&r.point),
                    v
                );
            }
            out
        }
        Format::Table => {
            let w_dev = rows
                .iter()
                .map(|r| r.device.len())
                .max()
                .unwrap_or(6)
                .max(6);
            let w_pt = rows.iter().map(|r| r.point.len()).max().unwrap_or(5).max(5);
            let mut out = format!(
                "{:<24}  {:<w_dev$}  {:<w_pt$}  value\n",
                "time (UTC)", "device", "point"
            );
            for r in rows {
                let t = UNIX_EPOCH + Duration::from_millis((r.timestamp * 1000.0).round() as u64);
                let when = humantime::format_rfc3339_millis(t).to_string();
                let v = match &r.value {
                    Value::Text(t) => t.clone(),
                    other => other.to_json().to_string(),
                };
                out += &format!(
                    "{when:<24}  {:<w_dev$}  {:<w_pt$}  {v}\n",
                    r.device, r.point
                );
            }
            out
        }
    }
}
