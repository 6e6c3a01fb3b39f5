//! Forwarding to a central PostgreSQL (README "Central history (PostgreSQL)"): every row recorded locally is also written
//! there, in order, and exactly once.
//!
//! - The local SQLite file is the store-and-forward buffer: the forwarder reads the rows above
//!   its cursor (kept in the file, per database: `forward_cursor`), sends them in one
//!   transaction, and moves the cursor only after PostgreSQL has committed. While the database
//!   is away nothing is lost: the rows simply wait in the file (bounded by `history.max_size`;
//!   rows the writer has to delete before they were sent are counted as `forward.dropped`).
//! - Exactly once: a row's key in PostgreSQL is (gateway, origin, id) — the gateway id, the
//!   random id of the history file, the row's rowid in it — and rows are inserted with
//!   `ON CONFLICT DO NOTHING`. A batch sent again (the gateway crashed after the commit and
//!   before the cursor moved, or the commit's answer was lost with the connection) changes
//!   nothing. Rowids are never reused (`store.rs`, `KEEP_NEWEST`).
//! - The poll path never waits for PostgreSQL: the forwarder is a task of its own, reading the
//!   file on its own connection; the writer wakes it after each batch.
//! - The central schema comes from `migrations/postgres/`, applied on every connect (under
//!   sqlx's advisory lock, so gateways starting together take turns). Migrations applied by a
//!   newer gateway are tolerated, so gateways can be upgraded one at a time: central migrations
//!   only ever add.
//! - One log line per change of state (reachable / not), never per retry; `forward.errors`
//!   counts every failed attempt.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection as _, Row as _, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::millis;
use super::query::value_of;
use crate::bus::port::Backoff;
use crate::config::{ForwardConfig, SslMode};
use crate::model::Value;

/// Rows of each table per transaction at most. 10,000 readings are about a megabyte in flight.
pub const FORWARD_BATCH: i64 = 10_000;
/// How long connecting (TCP, TLS, authentication, migrations) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one batch may take; a connection that hangs longer is dropped and the batch sent
/// again on a new one.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle forwarder looks at the file although the writer did not wake it.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// At a stop, how long the forwarder may go on sending what the writer flushed last, so that a
/// clean stop leaves the central database complete (the whole stop has 2 s: README "Signals and systemd").
const DRAIN: Duration = Duration::from_millis(400);
/// Backoff between attempts while the database is away.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Counters for the health topic (`forward`).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Whether the last attempt reached the database.
    pub connected: AtomicBool,
    /// Rows the database committed (a row sent again after a crash counts again).
    pub rows: AtomicU64,
    /// Rows recorded locally and not yet in the database (from the row ids above the cursor).
    pub pending: AtomicU64,
    /// When the oldest row not yet in the database was recorded (UNIX ms); 0 when none waits.
    pub oldest_ms: AtomicU64,
    /// Failed attempts: connecting, sending, reading the local file.
    pub errors: AtomicU64,
    /// Rows deleted locally (retention, a full database) before they were sent.
    pub dropped: AtomicU64,
}

impl ForwardStats {
    /// How far the database is behind: the age of the oldest row it does not have yet.
    pub fn lag(&self) -> Duration {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            oldest => {
                Duration::from_millis((millis(SystemTime::now()) as u64).saturating_sub(oldest))
            }
        }
    }
}

/// What the writer and the forwarder share: which database the cursor is for, the counters,
/// and the wake-up the writer gives after each batch.
#[derive(Debug, Clone)]
pub struct ForwardLink {
    pub(super) target: String,
    pub stats: Arc<ForwardStats>,
    pub(super) wake: Arc<Notify>,
}

impl ForwardLink {
    pub fn new(config: &ForwardConfig) -> ForwardLink {
        ForwardLink {
            target: target(&config.url),
            stats: Arc::new(ForwardStats::default()),
            wake: Arc::new(Notify::new()),
        }
    }
}

/// Names a central database for the cursor: `host:port/database`. Another user, TLS setting or
/// password reaches the same rows; another database gets every row still in the file.
pub fn target(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or(o.get_username())
        ),
        Err(_) => url.to_string(),
    }
}

/// The driver's options for `config`, with the password (never logged) when there is one.
pub fn connect_options(
    config: &ForwardConfig,
    gateway: &str,
    password: Option<&str>,
) -> Result<PgConnectOptions, sqlx::Error> {
    let mut o = PgConnectOptions::from_str(&config.url)?
        .ssl_mode(match config.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        })
        // Shows in pg_stat_activity: which gateway holds a connection.
        .application_name(&format!("fieldbridge-{gateway}"));
    if let Some(ca) = &config.ca_file {
        o = o.ssl_root_cert(ca);
    }
    if let Some(p) = password {
        o = o.password(p);
    }
    Ok(o)
}

/// Rows read from the file, column by column as PostgreSQL's UNNEST takes them.
#[derive(Debug, Default)]
struct Batch {
    r_id: Vec<i64>,
    r_ts: Vec<i64>,
    r_device: Vec<String>,
    r_point: Vec<String>,
    r_value: Vec<Option<f64>>,
    r_text: Vec<Option<String>>,
    e_id: Vec<i64>,
    e_ts: Vec<i64>,
    e_device: Vec<Option<String>>,
    e_kind: Vec<String>,
    e_detail: Vec<String>,
}

impl Batch {
    fn len(&self) -> usize {
        self.r_id.len() + self.e_id.len()
    }
}

/// A reading's value as the central table holds it: (value, value_text).
fn central_value(v: Value) -> (Option<f64>, Option<String>) {
    match v {
        // Doubles hold integers exactly up to 2^53; beyond, the digits go along.
        Value::Int(i) if i.unsigned_abs() > 1 << 53 => (Some(i as f64), Some(i.to_string())),
        Value::Int(i) => (Some(i as f64), None),
        Value::Float(f) => (Some(f), None),
        Value::Bool(b) => (Some(if b { 1.0 } else { 0.0 }), None),
        Value::Text(t) => (None, Some(t)),
    }
}

/// PostgreSQL's text can't hold NUL, which a serial line or a malformed command can bring: such a
/// row would fail its batch again and again and hold up everything after it. NUL becomes U+FFFD.
fn text_for_postgres(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

macro_rules! insert_readings {
    () => {
        "INSERT INTO readings (gateway, origin, id, ts, device, point, value, value_text) \
         SELECT $1, $2, t.id, timestamptz 'epoch' + t.ms * interval '1 millisecond', t.device, t.point, t.value, t.value_text \
         FROM UNNEST($3::int8[], $4::int8[], $5::text[], $6::text[], $7::float8[], $8::text[]) \
           AS t (id, ms, device, point, value, value_text)"
    };
}

macro_rules! insert_events {
    () => {
        "INSERT INTO events (gateway, origin, id, ts, device, kind, detail) \
         SELECT $1, $2, t.id, timestamptz 'epoch' + t.ms * interval '1 millisecond', t.device, t.kind, t.detail \
         FROM UNNEST($3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[]) \
           AS t (id, ms, device, kind, detail)"
    };
}

/// The INSERTs of a batch: (readings, events), first as sent the first time, then as sent again.
const INSERTS: (&str, &str) = (insert_readings!(), insert_events!());
const INSERTS_AGAIN: (&str, &str) = (
    concat!(insert_readings!(), " ON CONFLICT DO NOTHING"),
    concat!(insert_events!(), " ON CONFLICT DO NOTHING"),
);

/// The local side: the file, on a connection of the forwarder's own.
struct Local {
    pool: SqlitePool,
    file_id: Option<(u64, u64)>,
    origin: i64,
    /// Rowids of the last reading and event the database committed.
    cursor: (i64, i64),
    /// The batch after the one in flight, read while the database inserted that one, with the
    /// cursor it starts after.
    next: Option<((i64, i64), Batch)>,
}

/// The forwarder task.
pub struct Forwarder {
    path: PathBuf,
    gateway: String,
    /// The URL as configured (it has no password), for log lines.
    url: String,
    options: PgConnectOptions,
    link: ForwardLink,
    local: Option<Local>,
}

impl Forwarder {
    /// Forwards the history file at `path` (already created and migrated by the writer) as
    /// gateway `gateway`.
    pub fn new(
        path: PathBuf,
        gateway: &str,
        url: &str,
        options: PgConnectOptions,
        link: ForwardLink,
    ) -> Forwarder {
        Forwarder {
            path,
            gateway: gateway.to_string(),
            url: url.to_string(),
            options,
            link,
            local: None,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let Forwarder {
            path,
            gateway,
            url,
            options,
            link,
            mut local,
        } = self;
        let stats = link.stats.clone();
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut central: Option<PgConnection> = None;
        // The state last logged: None at start, then whether the database was reachable.
        let mut reachable: Option<bool> = None;
        // Whether the local file could be read last time (its failures are logged once too).
        let mut readable = true;
        // Once `shutdown` is cancelled: until when the last rows may still be sent.
        let mut drain_until: Option<tokio::time::Instant> = None;
        let drain = || tokio::time::Instant::now() + DRAIN;
        loop {
            let outcome = {
                let step = step(&mut local, &mut central, &path, &gateway, &options, &link);
                tokio::pin!(step);
                match drain_until {
                    Some(until) => tokio::time::timeout_at(until, &mut step).await.ok(),
                    None => tokio::select! {
                        o = &mut step => Some(o),
                        _ = shutdown.cancelled() => {
                            // The batch in flight is finished, not abandoned.
                            let until = *drain_until.insert(drain());
                            tokio::time::timeout_at(until, &mut step).await.ok()
                        }
                    },
                }
            };
            if drain_until.is_some() {
                // Stopping: on as long as rows go out, then done.
                match outcome {
                    Some(Ok(Progress::Sent(n))) => {
                        debug!(rows = n, "history forwarded while stopping");
                        continue;
                    }
                    _ => break,
                }
            }
            let Some(outcome) = outcome else { break };
            let wait = match outcome {
                Ok(progress) => {
                    readable = true;
                    stats.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                    if reachable != Some(true) {
                        info!(url = %url, "forwarding history to the central database");
                        reachable = Some(true);
                    }
                    match progress {
                        Progress::Sent(n) => {
                            debug!(rows = n, "history forwarded");
                            continue;
                        }
                        Progress::Idle => None,
                    }
                }
                Err(Failure::Central(e)) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.connected.store(false, Ordering::Relaxed);
                    // A connection that failed once is not trusted again.
                    central = None;
                    if reachable != Some(false) {
                        warn!(url = %url, error = %e, "central database unreachable; history rows wait in the local file");
                        reachable = Some(false);
                    } else {
                        debug!(error = %e, "central database still unreachable");
                    }
                    Some(backoff.delay())
                }
                Err(Failure::Local(e)) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if std::mem::replace(&mut readable, false) {
                        warn!(path = %path.display(), error = %e, "cannot read the history file to forward it");
                    } else {
                        debug!(error = %e, "history file still unreadable");
                    }
                    // Opened anew next time.
                    local = None;
                    Some(backoff.delay())
                }
            };
            match wait {
                // Idle: until the writer has new rows (or a while, in case it had some anyway).
                None => tokio::select! {
                    _ = shutdown.cancelled() => drain_until = Some(drain()),
                    _ = link.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                },
                // After a failure: the backoff, whatever the writer does meanwhile.
                Some(delay) => tokio::select! {
                    _ = shutdown.cancelled() => drain_until = Some(drain()),
                    _ = tokio::time::sleep(delay) => {}
                },
            }
        }
        if let Some(conn) = central {
            // Politely, but never holding up the shutdown.
            let _closed = tokio::time::timeout(Duration::from_millis(200), conn.close()).await;
        }
        // Closed, not dropped with the process: the writer's connection closes after this one
        // and checkpoints the file (app.rs, the stop).
        if let Some(local) = local {
            local.pool.close().await;
        }
    }
}

/// One round: the backlog counted, the database connected if it was not, and the next batch
/// sent, after which the cursor moves.
async fn step(
    local: &mut Option<Local>,
    central: &mut Option<PgConnection>,
    path: &std::path::Path,
    gateway: &str,
    options: &PgConnectOptions,
    link: &ForwardLink,
) -> Result<Progress, Failure> {
    let stats = &link.stats;
    let local = open_if_needed(local, path, &link.target).await?;
    let (pending, oldest) = backlog(local).await?;
    stats.pending.store(pending, Ordering::Relaxed);
    stats.oldest_ms.store(oldest, Ordering::Relaxed);
    let conn = match central {
        Some(c) => c,
        None => {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, connect(options))
                .await
                .map_err(|_| Failure::Central("connecting timed out".into()))?
                .map_err(|e| Failure::Central(e.to_string()))?;
            reconcile(&mut conn, local, gateway, &link.target).await?;
            central.insert(conn)
        }
    };
    let batch = match local.next.take() {
        Some((after, b)) if after == local.cursor => b,
        _ => read_batch(local, local.cursor).await?,
    };
    if batch.len() == 0 {
        return Ok(Progress::Idle);
    }
    let last = (
        batch.r_id.last().copied().unwrap_or(local.cursor.0),
        batch.e_id.last().copied().unwrap_or(local.cursor.1),
    );
    // A full batch has more behind it: the next one is read from the file while the database
    // inserts this one (a backlog goes out about a third faster, BENCHMARKS.md).
    let more = batch.r_id.len() as i64 == FORWARD_BATCH || batch.e_id.len() as i64 == FORWARD_BATCH;
    let reading_next = async {
        if more {
            read_batch(local, last).await.ok()
        } else {
            None
        }
    };
    let (sent, next) = tokio::join!(
        tokio::time::timeout(SEND_TIMEOUT, send(conn, gateway, local.origin, &batch)),
        reading_next
    );
    sent.map_err(|_| Failure::Central("sending timed out".into()))?
        .map_err(|e| Failure::Central(e.to_string()))?;
    stats.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
    // In memory at once: the next batch starts after these rows even if the file can't take
    // the cursor right now (a crash then sends them once more, and the database ignores them).
    local.cursor = last;
    // (A failed read ahead is not an error: the next step reads again.)
    local.next = next.filter(|b| b.len() > 0).map(|b| (last, b));
    save_cursor(&local.pool, &link.target, last).await?;
    Ok(Progress::Sent(batch.len()))
}

/// On every connection: what the database holds of this gateway's rows from this file (the
/// highest id of each table). A database restored from an older dump, or made anew, holds less
/// than the cursor says: the cursor goes back, and the rows the file still has are sent again
/// (the database ignores those it has). The cursor never hides a gap.
async fn reconcile(
    conn: &mut PgConnection,
    local: &mut Local,
    gateway: &str,
    target: &str,
) -> Result<(), Failure> {
    let mut held = [0i64; 2];
    for (i, table) in ["readings", "events"].into_iter().enumerate() {
        let sql =
            format!("SELECT coalesce(max(id), 0) FROM {table} WHERE gateway = $1 AND origin = $2");
        held[i] = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(gateway)
            .bind(local.origin)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| Failure::Central(e.to_string()))?;
    }
    let cursor = (local.cursor.0.min(held[0]), local.cursor.1.min(held[1]));
    if cursor != local.cursor {
        warn!(
            readings = local.cursor.0 - cursor.0,
            events = local.cursor.1 - cursor.1,
            "the central database holds fewer of this gateway's rows than were sent (restored from an older dump, or made anew); sending them again from the local file"
        );
        local.cursor = cursor;
        local.next = None;
        save_cursor(&local.pool, target, cursor).await?;
    }
    Ok(())
}

/// The local file on the forwarder's connection, opened (again) when needed: at start, after
/// an error, or when the writer has replaced the file (which brings a new origin and cursor).
async fn open_if_needed<'a>(
    local: &'a mut Option<Local>,
    path: &std::path::Path,
    target: &str,
) -> Result<&'a mut Local, Failure> {
    let now = super::file_id(path);
    if local.as_ref().is_some_and(|l| l.file_id != now) {
        *local = None;
    }
    match local {
        Some(l) => Ok(l),
        None => Ok(local.insert(open_local(path, target).await?)),
    }
}

enum Progress {
    Sent(usize),
    Idle,
}

enum Failure {
    /// The database: unreachable, refused, timed out, or an error inside the transaction.
    Central(String),
    /// The local file.
    Local(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Local(e)
    }
}

async fn open_local(path: &std::path::Path, target: &str) -> Result<Local, sqlx::Error> {
    let file_id = super::file_id(path);
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("cache_size", "-256")
        .statement_cache_capacity(8);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(opts)
        .await?;
    let origin: i64 = sqlx::query_scalar("SELECT origin FROM forward_origin")
        .fetch_one(&pool)
        .await?;
    sqlx::query("INSERT OR IGNORE INTO forward_cursor (target) VALUES (?)")
        .bind(target)
        .execute(&pool)
        .await?;
    let row = sqlx::query("SELECT readings, events FROM forward_cursor WHERE target = ?")
        .bind(target)
        .fetch_one(&pool)
        .await?;
    Ok(Local {
        cursor: (row.try_get(0)?, row.try_get(1)?),
        next: None,
        pool,
        file_id,
        origin,
    })
}

/// Rows not yet in the database, and when the oldest of them was recorded (UNIX ms; 0: none).
async fn backlog(local: &Local) -> Result<(u64, u64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT max(rowid) FROM readings), (SELECT min(rowid) FROM readings), \
                (SELECT ts FROM readings WHERE rowid > ?1 ORDER BY rowid LIMIT 1), \
                (SELECT max(rowid) FROM events), (SELECT min(rowid) FROM events), \
                (SELECT ts FROM events WHERE rowid > ?2 ORDER BY rowid LIMIT 1)",
    )
    .bind(local.cursor.0)
    .bind(local.cursor.1)
    .fetch_one(&local.pool)
    .await?;
    let get = |i: usize| row.try_get::<Option<i64>, _>(i).ok().flatten();
    // Row ids are handed out one after the other, so the ids above the cursor count the rows
    // waiting (the oldest rows, below, may have been deleted: start from the first one left).
    let waiting = |max: Option<i64>, min: Option<i64>, cursor: i64| match (max, min) {
        (Some(max), Some(min)) => (max - cursor.max(min - 1)).max(0) as u64,
        _ => 0,
    };
    let pending = waiting(get(0), get(1), local.cursor.0) + waiting(get(3), get(4), local.cursor.1);
    let oldest = [get(2), get(5)].into_iter().flatten().min();
    Ok((pending, oldest.map_or(0, |ts| ts.max(1) as u64)))
}

/// The next rows above `after` (a cursor), oldest first.
async fn read_batch(local: &Local, after: (i64, i64)) -> Result<Batch, sqlx::Error> {
    let mut b = Batch::default();
    let readings = sqlx::query(
        "SELECT r.rowid, r.ts, s.device, s.point, r.kind, r.value FROM readings r \
         JOIN series s ON s.id = r.series WHERE r.rowid > ? ORDER BY r.rowid LIMIT ?",
    )
    .bind(after.0)
    .bind(FORWARD_BATCH)
    .fetch_all(&local.pool)
    .await?;
    for r in &readings {
        // A value that can't be read back is sent as NULL rather than holding up every row
        // after it.
        let (value, text) = value_of(r, 4, 5).map_or((None, None), central_value);
        b.r_id.push(r.try_get(0)?);
        b.r_ts.push(r.try_get(1)?);
        b.r_device.push(r.try_get(2)?);
        b.r_point.push(r.try_get(3)?);
        b.r_value.push(value);
        b.r_text.push(text.map(text_for_postgres));
    }
    let events = sqlx::query(
        "SELECT rowid, ts, device, kind, detail FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
    )
    .bind(after.1)
    .bind(FORWARD_BATCH)
    .fetch_all(&local.pool)
    .await?;
    for e in &events {
        b.e_id.push(e.try_get(0)?);
        b.e_ts.push(e.try_get(1)?);
        b.e_device.push(e.try_get(2)?);
        b.e_kind.push(e.try_get(3)?);
        b.e_detail.push(text_for_postgres(e.try_get(4)?));
    }
    Ok(b)
}

/// Connects and brings the central schema up to date.
async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    // Beside other applications' migrations, in a database shared with them.
    migrator.dangerous_set_table_name("fieldbridge_migrations");
    // A newer gateway may have added to the schema; an older one keeps working with it.
    migrator.set_ignore_missing(true);
    // What `run` does once it has a connection; `run` itself takes an `Acquire` whose future is
    // Send for one lifetime only ("not general enough" in a spawned task).
    migrator.run_direct(None, &mut conn, false).await?;
    Ok(conn)
}

/// One transaction: the batch's readings and events, each row once however often it is sent.
///
/// Plain INSERTs first: a batch almost always holds rows the database has never seen, and
/// `ON CONFLICT DO NOTHING` makes PostgreSQL insert every row speculatively, which costs about
/// 40 % of the insert (BENCHMARKS.md, forwarding). A batch that was sent before (a crash or a
/// lost commit answer) hits the primary key; it is rolled back and sent again with
/// `ON CONFLICT DO NOTHING`, so the rows already there are skipped and the rest go in.
async fn send(
    conn: &mut PgConnection,
    gateway: &str,
    origin: i64,
    b: &Batch,
) -> Result<(), sqlx::Error> {
    match send_once(conn, gateway, origin, b, INSERTS).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            send_once(conn, gateway, origin, b, INSERTS_AGAIN).await
        }
        r => r,
    }
}

async fn send_once(
    conn: &mut PgConnection,
    gateway: &str,
    origin: i64,
    b: &Batch,
    (readings, events): (&'static str, &'static str),
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    if !b.r_id.is_empty() {
        sqlx::query(readings)
            .bind(gateway)
            .bind(origin)
            .bind(&b.r_id)
            .bind(&b.r_ts)
            .bind(&b.r_device)
            .bind(&b.r_point)
            .bind(&b.r_value)
            .bind(&b.r_text)
            .execute(&mut *tx)
            .await?;
    }
    if !b.e_id.is_empty() {
        sqlx::query(events)
            .bind(gateway)
            .bind(origin)
            .bind(&b.e_id)
            .bind(&b.e_ts)
            .bind(&b.e_device)
            .bind(&b.e_kind)
            .bind(&b.e_detail)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

async fn save_cursor(
    pool: &SqlitePool,
    target: &str,
    (r, e): (i64, i64),
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE forward_cursor SET readings = ?, events = ? WHERE target = ?")
        .bind(r)
        .bind(e)
        .bind(target)
        .execute(pool)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_names_host_port_and_database() {
        assert_eq!(target("postgres://u@db.lan/home"), "db.lan:5432/home");
        assert_eq!(
            target("postgresql://u@10.0.0.2:5433/h?application_name=x"),
            "10.0.0.2:5433/h"
        );
    }

    #[test]
    fn values_keep_their_digits_beyond_what_a_double_holds() {
        assert_eq!(central_value(Value::Int(-5)), (Some(-5.0), None));
        assert_eq!(
            central_value(Value::Int(i128::from(u64::MAX))),
            (Some(u64::MAX as f64), Some(u64::MAX.to_string()))
        );
        assert_eq!(central_value(Value::Bool(true)), (Some(1.0), None));
        assert_eq!(
            central_value(Value::Text("on".into())),
            (None, Some("on".into()))
        );
    }
}
