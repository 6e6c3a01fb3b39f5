//! The writer: one task takes rows from a bounded queue and writes them to SQLite in batches.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::clock::GatewayClock;
use super::forward::ForwardLink;
use super::{file_id, millis};
use crate::config::HistoryConfig;
use crate::model::Value;

/// Rows waiting for the writer. When full, new rows are dropped and counted.
pub const HISTORY_CAP: usize = 20_000;
/// Rows per transaction at most.
pub const BATCH: usize = 2_000;
/// Rows per INSERT statement of events (4 binds each, far below SQLite's 32,766).
const ROWS_PER_INSERT: usize = 500;
/// The row counts of the prepared INSERTs of readings, largest first: a batch is written with
/// the largest that fit, so at most 9 statements, each parsed and planned once per connection.
const READING_INSERTS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];
/// Rows deleted per retention statement.
const RETENTION_BATCH: i64 = 1_000;
/// Readings per block of the sparse time index (`readings_blocks`, 0005_readings_blocks.sql): a
/// block is closed once it spans this many ids. Small enough that a query needing one block
/// only in part reads ~1.4 MB of table (22 B a reading): 5-7 ms on an x86 server
/// (BENCHMARKS.md), a few times that on a Pi. Large enough that a busy gateway (100 readings/s)
/// makes ~130 blocks a day, ~4,000 in 30 days of retention: ~30 pages, which every
/// time-bounded query and every retention run read whole.
pub const BLOCK_IDS: i64 = 65_536;
/// How often retention runs, and so how finely it measures a row's age: each run marks the
/// newest ids (migrations/0006_retention_marks.sql).
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// A gap between the wall clock's and the gateway's clock over one retention period beyond
/// this is a step of the wall clock, logged once.
const CLOCK_STEP: i64 = 60_000;
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
    /// Why the history cannot be written now (it cannot be opened: a full or read-only disk, a
    /// corrupt file); empty while it works. The gateway bridges on meanwhile.
    pub unavailable: std::sync::Mutex<String>,
    /// Notified when the history becomes unavailable or available again.
    pub changed: tokio::sync::Notify,
}

impl HistoryStats {
    /// Why the history is unavailable, if it is.
    pub fn unavailable(&self) -> Option<String> {
        self.unavailable
            .lock()
            .ok()
            .map(|s| s.clone())
            .filter(|s| !s.is_empty())
    }

    fn set_unavailable(&self, why: Option<&str>) {
        if let Ok(mut s) = self.unavailable.lock() {
            let why = why.unwrap_or_default();
            if s.as_str() != why {
                *s = why.to_string();
                // One watcher (the status line); a permit is kept if it is busy.
                self.changed.notify_one();
            }
        }
    }
}

/// The most a WAL file keeps after a checkpoint, in bytes.
pub const JOURNAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// How often a history that cannot be opened is tried again.
pub const HISTORY_RETRY: Duration = Duration::from_secs(60);

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

/// Opens (creating if needed) the database and brings its schema up to date.
pub async fn open(path: &Path) -> Result<SqlitePool, Error> {
    open_with(path, None).await
}

/// As `open`, with the file capped at `max_size` bytes (`history.max_size`).
pub async fn open_with(path: &Path, max_size: Option<u64>) -> Result<SqlitePool, Error> {
    open_counted(path, max_size).await.map(|(pool, _)| pool)
}

/// As `open_with`; also how many of the oldest readings were deleted to make room for a
/// migration in a capped file.
pub async fn open_counted(path: &Path, max_size: Option<u64>) -> Result<(SqlitePool, u64), Error> {
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
        // After a checkpoint the WAL is cut back to this: a burst (a backlog, a migration) does
        // not leave a file of its size on a small SD card for good.
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
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
    let made_room = if before_rebuilding_readings(&pool).await {
        match max_size {
            Some(max) => room_for_rebuilding_readings(&pool, (max / PAGE_SIZE).max(16))
                .await
                .map_err(|source| Error::Open {
                    path: path.display().to_string(),
                    source,
                })?,
            None => 0,
        }
    } else {
        0
    };
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|source| Error::Migrate {
            path: path.display().to_string(),
            source,
        })?;
    Ok((pool, made_room))
}

/// Bytes a reading takes in the table migration 5 makes, with a margin (22 measured,
/// BENCHMARKS.md).
const REBUILT_READING: i64 = 26;
/// Bytes an old reading gives back when deleted before migration 5, with a margin (38
/// measured: 22 of table, 16 of its time index).
const OLD_READING: i64 = 30;

/// Migration 5 copies the readings into a new table before it drops the old one: in a file
/// capped by `history.max_size` the copy needs room beside the old table, and a file near its
/// cap would fail the migration at every start. So the oldest readings are deleted first until
/// the copy fits in the pages the cap leaves (free ones included), as the ring would delete them
/// anyway; how many is logged and returned (counted as the history being full). Never the
/// newest reading (the ids go on from it).
async fn room_for_rebuilding_readings(
    pool: &SqlitePool,
    max_pages: u64,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0u64;
    loop {
        let (pages, free): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT page_count FROM pragma_page_count()), (SELECT freelist_count FROM pragma_freelist_count())",
        )
        .fetch_one(pool)
        .await?;
        let readings: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(pool)
            .await?;
        // A few pages for the blocks and the migrations' own bookkeeping.
        let room = (max_pages as i64 - pages + free - 16).max(0) * PAGE_SIZE as i64;
        let need = readings * REBUILT_READING;
        if need <= room || readings <= 1 {
            break;
        }
        let n = ((need - room) / (REBUILT_READING + OLD_READING) + 1).min(readings - 1);
        let gone = sqlx::query(
            "DELETE FROM readings WHERE rowid IN \
               (SELECT rowid FROM readings WHERE rowid < (SELECT max(rowid) FROM readings) ORDER BY rowid LIMIT ?)",
        )
        .bind(n)
        .execute(pool)
        .await?
        .rows_affected();
        if gone == 0 {
            break;
        }
        deleted += gone;
    }
    if deleted > 0 {
        let forwarded_up_to: i64 =
            sqlx::query_scalar("SELECT coalesce((SELECT min(readings) FROM forward_cursor), -1)")
                .fetch_one(pool)
                .await
                .unwrap_or(-1);
        warn!(
            readings = deleted,
            forwarded_up_to,
            "history: the file is near history.max_size; its oldest readings were deleted to make room for moving the rest to their new table (migration 5)"
        );
    }
    Ok(deleted)
}

/// Migration 5 copies every reading into a new table before READY=1: about a second per
/// million readings here (measured), likely several on a Pi, and its WAL grows by the table's
/// size. A large history would outlast systemd's start timeout (90 s by default), be killed
/// mid-way and rolled back, and again at every restart. So when it is still to run, says so
/// in the log and asks systemd for 30 s plus 20 s per million readings more (ids above the
/// lowest: an upper bound of the count, read without counting). Whether it is still to run.
async fn before_rebuilding_readings(pool: &SqlitePool) -> bool {
    // Fails (and does nothing) on a new file: no `_sqlx_migrations` yet, nothing to copy.
    let readings: Option<Option<Option<i64>>> = sqlx::query_scalar(
        "SELECT (SELECT max(rowid) - min(rowid) + 1 FROM readings) \
         WHERE NOT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 5)",
    )
    .fetch_optional(pool)
    .await
    .ok();
    let Some(Some(Some(readings))) = readings else {
        return false;
    };
    info!(
        readings,
        "history: moving the readings to their new table (migration 5, once); on a large history this takes a while"
    );
    let usec = 30_000_000u64.saturating_add(20u64.saturating_mul(readings.max(0) as u64));
    crate::systemd::extend_timeout(Duration::from_micros(usec));
    true
}

/// A pool of one connection kept for the life of its user: sqlx would otherwise close and reopen
/// it every 30 minutes (seen as file-descriptor blips in the soak, RELIABILITY.md).
pub(super) async fn one_connection(
    path: &Path,
    opts: SqliteConnectOptions,
) -> Result<SqlitePool, Error> {
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
        .busy_timeout(Duration::from_secs(5))
        // Rows are read once, in order: a small page cache does, and keeps the resident set of
        // `fieldbridge history` the same for ten rows or a million (BENCHMARKS.md).
        .pragma("cache_size", "-256");
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
    /// None: the history is turned off (`history.enabled = false`) and nothing is recorded.
    tx: Option<mpsc::Sender<Record>>,
    pub stats: Arc<HistoryStats>,
    warned: Arc<AtomicU64>,
}

impl HistoryHandle {
    /// A handle that records nothing, for `history.enabled = false`.
    pub fn disabled() -> HistoryHandle {
        HistoryHandle {
            tx: None,
            stats: Arc::new(HistoryStats::default()),
            warned: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether rows are recorded at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    fn send(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(r) {
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
    /// `None` while the file cannot be opened: rows are counted and dropped, and the file is
    /// tried again every [`HISTORY_RETRY`].
    pool: Option<SqlitePool>,
    last_retry: Option<Instant>,
    rx: mpsc::Receiver<Record>,
    config: HistoryConfig,
    stats: Arc<HistoryStats>,
    /// Series ids by device, then point: looked up per row without building a key.
    series: HashMap<String, HashMap<String, i64>>,
    /// The SQL of each of `READING_INSERTS`, made once.
    reading_inserts: Vec<String>,
    last_error_log: Option<Instant>,
    last_full_log: Option<Instant>,
    /// (device, inode) of the file when it was opened.
    file_id: Option<(u64, u64)>,
    /// Set when the rows are also forwarded to a central database.
    forward: Option<ForwardLink>,
    last_forward_drop_log: Option<Instant>,
    /// The file's own elapsed-time clock, which retention goes by (loaded at the first run on
    /// each file opened).
    clock: Option<GatewayClock>,
    /// The wall clock and the gateway's clock at the last retention run, to see a step.
    last_clocks: Option<(i64, i64)>,
}

fn is_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == SQLITE_FULL)
}

/// True at most once a minute per `last`.
fn due(last: &mut Option<Instant>) -> bool {
    due_every(last, Duration::from_secs(60))
}

/// True at most once per `every` per `last`.
fn due_every(last: &mut Option<Instant>, every: Duration) -> bool {
    let due = last.is_none_or(|t| t.elapsed() >= every);
    if due {
        *last = Some(Instant::now());
    }
    due
}

impl History {
    pub fn new(pool: SqlitePool, config: &HistoryConfig) -> (History, HistoryHandle) {
        Self::with_capacity(pool, config, HISTORY_CAP)
    }

    /// A writer for a history that could not be opened at start (`why`): the gateway runs on
    /// without it, and the file is tried again every [`HISTORY_RETRY`].
    pub fn unavailable(why: &str, config: &HistoryConfig) -> (History, HistoryHandle) {
        Self::make(Err(why), config, HISTORY_CAP)
    }

    pub fn with_capacity(
        pool: SqlitePool,
        config: &HistoryConfig,
        cap: usize,
    ) -> (History, HistoryHandle) {
        Self::make(Ok(pool), config, cap)
    }

    fn make(
        pool: Result<SqlitePool, &str>,
        config: &HistoryConfig,
        cap: usize,
    ) -> (History, HistoryHandle) {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let stats = Arc::new(HistoryStats::default());
        let pool = match pool {
            Ok(p) => Some(p),
            Err(why) => {
                stats.set_unavailable(Some(why));
                None
            }
        };
        (
            History {
                pool,
                last_retry: Some(Instant::now()),
                rx,
                config: config.clone(),
                stats: stats.clone(),
                series: HashMap::new(),
                reading_inserts: READING_INSERTS
                    .iter()
                    .map(|n| insert_readings_sql(*n))
                    .collect(),
                last_error_log: None,
                last_full_log: None,
                file_id: file_id(&config.path),
                forward: None,
                last_forward_drop_log: None,
                clock: None,
                last_clocks: None,
            },
            HistoryHandle {
                tx: Some(tx),
                stats,
                warned: Arc::new(AtomicU64::new(0)),
            },
        )
    }

    /// Wakes the forwarder after each batch, and counts the rows deleted (retention, a full
    /// database) before they reached the central database.
    pub fn forward_to(mut self, link: ForwardLink) -> History {
        self.forward = Some(link);
        self
    }

    /// Writes until `shutdown`, then what is still queued. Returns the pool it wrote through
    /// last (a replaced file is reopened on a new one), for the owner to close; none when the
    /// file could not be opened.
    pub async fn run(mut self, shutdown: CancellationToken) -> Option<SqlitePool> {
        let mut buf: Vec<Record> = Vec::new();
        let mut flush = tokio::time::interval(self.config.flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(HISTORY_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                // A file that could not be opened is tried again every minute, rows or none.
                _ = retry.tick(), if self.pool.is_none() => {
                    if due_every(&mut self.last_retry, HISTORY_RETRY) {
                        self.reopen().await;
                    }
                }
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
        if let (Some(pool), Some(clock)) = (&self.pool, &self.clock) {
            if let Err(e) = clock.save(pool).await {
                debug!(error = %e, "history: the clock was not saved at the stop");
            }
        }
        self.pool
    }

    async fn write(&mut self, buf: &mut Vec<Record>) {
        if buf.is_empty() {
            return;
        }
        if self.pool.is_none() {
            if due_every(&mut self.last_retry, HISTORY_RETRY) {
                self.reopen().await;
            }
            if self.pool.is_none() {
                let n = buf.len() as u64;
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                self.stats.pending.fetch_sub(
                    n.min(self.stats.pending.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
                buf.clear();
                return;
            }
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
                if let Some(f) = &self.forward {
                    f.wake.notify_one();
                }
                if self.stats.unavailable().is_some() {
                    info!(path = %self.config.path.display(), "history available again; recording");
                    self.stats.set_unavailable(None);
                }
            }
            Err(e) => {
                self.stats
                    .set_unavailable(Some(&format!("cannot write: {e}")));
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
        match open_counted(&self.config.path, self.config.max_size).await {
            Ok((pool, made_room)) => {
                self.made_room(made_room);
                if let Some(old) = self.pool.replace(pool) {
                    old.close().await;
                }
                self.series.clear();
                self.clock = None;
                self.last_clocks = None;
                self.file_id = file_id(&self.config.path);
                if self.stats.unavailable().is_some() {
                    info!(path = %self.config.path.display(), "history available again; recording");
                    self.stats.set_unavailable(None);
                }
            }
            Err(e) => {
                // Tried again before the next batch; until then batches fail and are counted.
                let first = self.stats.unavailable().is_none() && self.pool.is_none();
                if first || due(&mut self.last_error_log) {
                    warn!(error = %e, "cannot open the history database again");
                }
                if self.pool.is_none() {
                    self.stats.set_unavailable(Some(&e.to_string()));
                }
            }
        }
    }

    /// The database (or the disk) is full: deletes the oldest tenth of each table's rows, and
    /// at least twice what the batch brings to it (`batch`: readings, events), so it works as
    /// a ring that always keeps the newest even when a batch is large beside the cap. "Oldest"
    /// is the first recorded.
    async fn make_room(&mut self, batch: [usize; 2]) {
        self.stats.full.fetch_add(1, Ordering::Relaxed);
        let mut deleted = 0;
        for (table, n) in ["readings", "events"].into_iter().zip(batch) {
            let at_least = (2 * n).max(100) as i64;
            // The first recorded (by id, which the blocks follow; after a clock step the times
            // say nothing of age). A tenth of the ids' span, not of a count: counting walks the
            // whole table while this statement holds the write lock; the span is two lookups,
            // and at least the count.
            let pick = format!(
                "SELECT rowid AS id FROM {table} WHERE {KEEP_NEWEST} ORDER BY rowid \
                 LIMIT max(?1, ((SELECT max(rowid) FROM {table}) - (SELECT min(rowid) FROM {table}) + 1) / 10)"
            );
            let Some(pool) = self.pool.clone() else {
                return;
            };
            let result = delete_rows(&pool, table, &pick, &[at_least], self.forward_target()).await;
            let result = match result {
                // The blocks whose readings are all gone go too; a block deleted in part keeps
                // its bounds, which still hold for the readings it has left.
                Ok(d) if table == "readings" => sqlx::query(
                    "DELETE FROM readings_blocks WHERE last < (SELECT min(id) FROM readings)",
                )
                .execute(&pool)
                .await
                .map(|_| d),
                other => other,
            };
            match result {
                Ok(d) => {
                    deleted += d.rows;
                    self.count_forward_drops(d.unforwarded);
                }
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

    /// Counts readings deleted at open to make room for a migration, as the database being
    /// full once.
    pub fn made_room(&mut self, readings: u64) {
        if readings > 0 {
            self.stats.full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forward_target(&self) -> Option<&str> {
        self.forward.as_ref().map(|f| f.target.as_str())
    }

    /// Rows deleted before the central database had them: counted, and a warning at most once
    /// a minute.
    fn count_forward_drops(&mut self, n: u64) {
        let Some(f) = &self.forward else { return };
        if n == 0 {
            return;
        }
        let dropped = f.stats.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if due(&mut self.last_forward_drop_log) {
            warn!(
                rows = n,
                dropped,
                "history rows deleted before they reached the central database (it has been away longer than the local history holds)"
            );
        }
    }

    async fn series_id(
        &mut self,
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        device: &str,
        point: &str,
    ) -> Result<i64, sqlx::Error> {
        if let Some(id) = self.series.get(device).and_then(|p| p.get(point)) {
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
        self.series
            .entry(device.to_string())
            .or_default()
            .insert(point.to_string(), id);
        Ok(id)
    }

    async fn try_write(&mut self, buf: &[Record]) -> Result<(), sqlx::Error> {
        let Some(pool) = &self.pool else {
            return Err(sqlx::Error::PoolClosed);
        };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
        // Prepared statements of fixed sizes (kept by the connection): a batch's SQL is neither
        // built nor parsed again, only bound.
        let mut rest = &readings[..];
        for (n, sql) in READING_INSERTS.iter().zip(&self.reading_inserts) {
            while rest.len() >= *n {
                let (chunk, tail) = rest.split_at(*n);
                rest = tail;
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for (ts, id, kind, v) in chunk {
                    q = q.bind(*ts).bind(*id).bind(*kind);
                    q = match v {
                        Value::Int(i) => match i64::try_from(*i) {
                            Ok(i) => q.bind(i),
                            Err(_) => q.bind(i.to_string()),
                        },
                        Value::Float(f) => q.bind(*f),
                        Value::Text(t) => q.bind(t.as_str()),
                        Value::Bool(x) => q.bind(i64::from(*x)),
                    };
                }
                q.execute(&mut *tx).await?;
            }
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
        if !readings.is_empty() {
            let min_ts = readings.iter().map(|r| r.0).min().unwrap_or_default();
            let max_ts = readings.iter().map(|r| r.0).max().unwrap_or_default();
            let batch = Batch {
                rows: readings.len() as i64,
                min_ts,
                max_ts,
            };
            cover_new_readings(&mut tx, batch).await?;
        }
        tx.commit().await
    }

    /// Deletes the rows recorded more than `retention` ago on the file's own clock, a batch at
    /// a time (README "History": retention goes by elapsed time, not by the wall clock).
    pub async fn retain(&mut self) {
        let Some(pool) = &self.pool else { return };
        if self.clock.is_none() {
            match GatewayClock::load(pool, self.config.retention).await {
                Ok(c) => self.clock = Some(c),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "history retention failed");
                    return;
                }
            }
        }
        let (Some(pool), Some(clock)) = (&self.pool, &self.clock) else {
            return;
        };
        let (wall, now) = (millis(SystemTime::now()), clock.now());
        if let Some((wall_then, then)) = self.last_clocks.replace((wall, now)) {
            let step = (wall - wall_then) - (now - then);
            if step.abs() > CLOCK_STEP {
                info!(
                    by = %format_step(step),
                    "the wall clock was stepped; history retention goes by elapsed time, not by it"
                );
            }
        }
        let done = async {
            clock.save(pool).await?;
            let upto = mark(pool, now, self.config.retention).await?;
            match upto {
                Some(upto) => retain(pool, upto, self.forward_target()).await,
                None => Ok(Deleted::default()),
            }
        };
        match done.await {
            Ok(d) => {
                if d.rows > 0 {
                    debug!(rows = d.rows, "history retention");
                }
                self.count_forward_drops(d.unforwarded);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "history retention failed");
            }
        }
    }
}

/// A clock step for people: `+20y 3d`, `-1d`, `+1h 0m`.
fn format_step(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let d = Duration::from_millis(ms.unsigned_abs());
    let rounded = Duration::from_secs(d.as_secs() / 60 * 60);
    format!("{sign}{}", humantime::format_duration(rounded))
}

/// Where retention stands: the newest ids of each table recorded before a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upto {
    pub readings: i64,
    pub events: i64,
}

impl Upto {
    /// Every row (but each table's newest).
    pub const ALL: Upto = Upto {
        readings: i64::MAX,
        events: i64::MAX,
    };
}

/// Marks the newest ids at `now` on the file's clock (`retention_marks`), and returns those of
/// the newest mark at least `retention` old, if any: the rows retention may delete. Older marks
/// go; that one stays for the next run.
pub async fn mark(
    pool: &SqlitePool,
    now: i64,
    retention: Duration,
) -> Result<Option<Upto>, sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO retention_marks (at, readings, events) VALUES (?1, \
           coalesce((SELECT max(id) FROM readings), 0), coalesce((SELECT max(rowid) FROM events), 0))",
    )
    .bind(now)
    .execute(pool)
    .await?;
    let due = now.saturating_sub(retention.as_millis() as i64);
    let Some(row) = sqlx::query(
        "SELECT at, readings, events FROM retention_marks WHERE at <= ? ORDER BY at DESC LIMIT 1",
    )
    .bind(due)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let at: i64 = row.try_get(0)?;
    sqlx::query("DELETE FROM retention_marks WHERE at < ?")
        .bind(at)
        .execute(pool)
        .await?;
    Ok(Some(Upto {
        readings: row.try_get(1)?,
        events: row.try_get(2)?,
    }))
}

/// The readings a batch inserted: how many, and their time range.
#[derive(Debug, Clone, Copy)]
struct Batch {
    rows: i64,
    min_ts: i64,
    max_ts: i64,
}

/// Puts the readings above the newest block of `readings_blocks` into it, or into a new block
/// once it spans [`BLOCK_IDS`] ids: in the transaction that inserted them, so no committed
/// reading is ever outside a block. When the ids above the newest block are exactly the
/// `batch` just inserted, its bounds are the batch's; otherwise (readings that came some other
/// way, a `sqlite3` shell) they come from the rows themselves, so those are taken in too.
async fn cover_new_readings(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    batch: Batch,
) -> Result<(), sqlx::Error> {
    let newest = sqlx::query("SELECT first, last FROM readings_blocks ORDER BY first DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let newest: Option<(i64, i64)> = match newest {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
        None => None,
    };
    let above = newest.map_or(0, |(_, last)| last);
    // The largest id: one step down the table's b-tree, where the min/max of the new rows
    // would read them all again (a twentieth of the writer's work per reading).
    let max_id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM readings")
        .fetch_one(&mut **tx)
        .await?;
    let Some(max_id) = max_id.filter(|m| *m > above) else {
        return Ok(());
    };
    let (first, last, min_ts, max_ts) = if newest.is_some() && max_id - above == batch.rows {
        (above + 1, max_id, batch.min_ts, batch.max_ts)
    } else {
        let new =
            sqlx::query("SELECT min(id), max(id), min(ts), max(ts) FROM readings WHERE id > ?")
                .bind(above)
                .fetch_one(&mut **tx)
                .await?;
        let (Some(first), Some(last), Some(min_ts), Some(max_ts)) = (
            new.try_get::<Option<i64>, _>(0)?,
            new.try_get::<Option<i64>, _>(1)?,
            new.try_get::<Option<i64>, _>(2)?,
            new.try_get::<Option<i64>, _>(3)?,
        ) else {
            return Ok(());
        };
        (first, last, min_ts, max_ts)
    };
    // The newest block grows while it spans fewer than BLOCK_IDS ids; then a new one starts.
    let (sql, block) = match newest {
        Some((block, end)) if end - block + 1 < BLOCK_IDS => (
            "UPDATE readings_blocks SET last = ?2, min_ts = min(min_ts, ?3), max_ts = max(max_ts, ?4) WHERE first = ?1",
            block,
        ),
        _ => (
            "INSERT INTO readings_blocks (first, last, min_ts, max_ts) VALUES (?1, ?2, ?3, ?4)",
            first,
        ),
    };
    sqlx::query(sql)
        .bind(block)
        .bind(last)
        .bind(min_ts)
        .bind(max_ts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `INSERT OR FAIL INTO readings … VALUES (?, ?, ?, ?), …` for `rows` rows.
fn insert_readings_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT OR FAIL INTO readings (ts, series, kind, value) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?)");
    }
    sql
}

/// What a deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub rows: u64,
    /// Of those, rows the central database did not have yet.
    pub unforwarded: u64,
}

/// The condition every deletion keeps: a table's newest row stays. SQLite gives a new row the
/// largest rowid plus one, so as long as the largest stays, no rowid is ever handed out twice
/// and a forward cursor on rowids stays true.
const KEEP_NEWEST: &str = "rowid < (SELECT max(rowid) FROM {table})";

/// Deletes from `table` the rows `pick` selects (`SELECT rowid AS id ... ?1 ...`, `args` bound
/// to ?1, ?2, …), and counts those above `target`'s forward cursor first.
///
/// Two statements, no transaction: this runs when the database is full, right after SQLite
/// rolled a batch back by itself, when sqlx's connection can't begin one. Only
/// the forwarder moves the cursor meanwhile, so the count can only be high by the rows it sent
/// in between.
async fn delete_rows(
    pool: &SqlitePool,
    table: &str,
    pick: &str,
    args: &[i64],
    target: Option<&str>,
) -> Result<Deleted, sqlx::Error> {
    let pick = pick.replace("{table}", table);
    let unforwarded = match target {
        Some(target) => {
            let sql = format!(
                "SELECT count(*) FROM ({pick}) WHERE id > coalesce((SELECT {table} FROM forward_cursor WHERE target = ?{}), 0)",
                args.len() + 1
            );
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
            for a in args {
                q = q.bind(*a);
            }
            q.bind(target).fetch_one(pool).await? as u64
        }
        None => 0,
    };
    let sql = format!("DELETE FROM {table} WHERE rowid IN (SELECT id FROM ({pick}))");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for a in args {
        q = q.bind(*a);
    }
    let rows = q.execute(pool).await?.rows_affected();
    Ok(Deleted {
        rows,
        unforwarded: unforwarded.min(rows),
    })
}

/// Deletes what `pick` selects in statements of at most [`RETENTION_BATCH`] rows (`pick` ends
/// in that LIMIT), yielding in between so readers and the writer get their turn.
async fn delete_in_batches(
    pool: &SqlitePool,
    table: &str,
    pick: &str,
    args: &[i64],
    target: Option<&str>,
) -> Result<Deleted, sqlx::Error> {
    let mut total = Deleted::default();
    loop {
        let d = delete_rows(pool, table, pick, args, target).await?;
        total.rows += d.rows;
        total.unforwarded += d.unforwarded;
        if d.rows < RETENTION_BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Deletes the rows up to `upto` (ids, recording order) in small batches, never a table's
/// newest row, and never a row `target`, the central database forwarded to, does not have yet
/// (only the size cap may drop those, counted).
///
/// Readings go by id range, block by block (`readings_blocks`): each block touched is then
/// given the bounds of the rows it has left, or deleted when it has none.
pub async fn retain(
    pool: &SqlitePool,
    upto: Upto,
    target: Option<&str>,
) -> Result<Deleted, sqlx::Error> {
    let mut total = Deleted::default();
    // The cursor is read once; the forwarder only moves it on.
    let (sent_readings, sent_events) = match target {
        Some(t) => {
            let row = sqlx::query("SELECT readings, events FROM forward_cursor WHERE target = ?")
                .bind(t)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?),
                None => (0, 0),
            }
        }
        None => (i64::MAX, i64::MAX),
    };
    let readings = upto.readings.min(sent_readings);
    let blocks =
        sqlx::query("SELECT first, last FROM readings_blocks WHERE first <= ? ORDER BY first")
            .bind(readings)
            .fetch_all(pool)
            .await?;
    for b in blocks {
        let (first, last): (i64, i64) = (b.try_get(0)?, b.try_get(1)?);
        let pick = format!(
            "SELECT rowid AS id FROM {{table}} WHERE rowid >= ?1 AND rowid <= ?2 AND {KEEP_NEWEST} LIMIT {RETENTION_BATCH}"
        );
        let d = delete_in_batches(
            pool,
            "readings",
            &pick,
            &[first, last.min(readings)],
            target,
        )
        .await?;
        total.rows += d.rows;
        total.unforwarded += d.unforwarded;
        refresh_block(pool, first).await?;
    }
    let pick = format!(
        "SELECT rowid AS id FROM {{table}} WHERE rowid <= ?1 AND {KEEP_NEWEST} LIMIT {RETENTION_BATCH}"
    );
    let events = upto.events.min(sent_events);
    let d = delete_in_batches(pool, "events", &pick, &[events], target).await?;
    total.rows += d.rows;
    total.unforwarded += d.unforwarded;
    Ok(total)
}

/// Gives the block starting at id `first` the time bounds of the readings it has left, or
/// deletes it when it has none. Its ids stay as they are (its `last` as the writer left it): a
/// block only ever covers less.
async fn refresh_block(pool: &SqlitePool, first: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE readings_blocks SET (min_ts, max_ts) = \
           (SELECT min(ts), max(ts) FROM readings WHERE id >= first AND id <= last) \
         WHERE first = ?1 AND EXISTS (SELECT 1 FROM readings WHERE id >= first AND id <= last)",
    )
    .bind(first)
    .execute(pool)
    .await?;
    sqlx::query(
        "DELETE FROM readings_blocks WHERE first = ?1 \
         AND NOT EXISTS (SELECT 1 FROM readings WHERE id >= first AND id <= last)",
    )
    .bind(first)
    .execute(pool)
    .await?;
    Ok(())
}
