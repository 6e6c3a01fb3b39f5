//! The `history` command's reads: filters, rows and their rendering as table, csv or json.
//!
//! Rows stream from SQLite to the output one at a time (sqlx hands them over through a bounded
//! channel), so memory does not grow with the result: a million rows print in the same few
//! MiB as ten (BENCHMARKS.md); readings once SQLite has sorted them by time, in bounded memory
//! (see `ordered`). The table's column widths come from a query of their own
//! beforehand, since they can't wait for the last row.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use serde_json::{Value as Json, json};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqlitePool};

use super::millis;
use crate::model::Value;

/// Which rows `fieldbridge history` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device: Option<String>,
    /// Readings only: events have no point.
    pub point: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Only the newest this many rows (still printed oldest first).
    pub limit: Option<u64>,
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

/// One event: an availability change, a command, a gateway start or stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// UNIX seconds with millisecond precision.
    pub timestamp: f64,
    /// None for the gateway's own events.
    pub device: Option<String>,
    /// `availability`, `command` or `gateway`.
    pub kind: String,
    /// `online`/`offline`, `start`/`stop`, or for a command JSON `{"payload", "result"}`.
    pub detail: String,
}

/// Why rows could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A bound value of a filter.
enum Arg {
    Text(String),
    Int(i64),
}

/// The WHERE clause (after `WHERE 1 = 1`) and its arguments for `filter`, with the column
/// names of the table read (`device`, `point` and `ts` may be qualified).
fn conditions(filter: &Filter, device: &str, point: Option<&str>, ts: &str) -> (String, Vec<Arg>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    if let Some(d) = &filter.device {
        sql += &format!(" AND {device} = ?");
        args.push(Arg::Text(d.clone()));
    }
    if let (Some(p), Some(col)) = (&filter.point, point) {
        sql += &format!(" AND {col} = ?");
        args.push(Arg::Text(p.clone()));
    }
    if let Some(t) = filter.since {
        sql += &format!(" AND {ts} >= ?");
        args.push(Arg::Int(millis(t)));
    }
    if let Some(t) = filter.until {
        sql += &format!(" AND {ts} <= ?");
        args.push(Arg::Int(millis(t)));
    }
    (sql, args)
}

/// `select` (whose last column is `id`) in the order the rows were recorded; with a limit, the
/// newest `limit` rows recorded, put back in that order.
///
/// Recording order, not time order: a Raspberry Pi has no real-time clock, and after NTP steps
/// its clock (ahead or back) the times of rows recorded one after the other may go back; their
/// order of recording is what happened. It is also the order SQLite reads the table in, so a
/// dump of any size streams out from its first row, with no sort and no temporary file.
fn ordered(select: String, limit: Option<u64>) -> String {
    match limit {
        None => format!("{select} ORDER BY id"),
        Some(n) => format!("SELECT * FROM ({select} ORDER BY id DESC LIMIT {n}) ORDER BY id"),
    }
}

/// Runs `sql` with `args` and hands each row to `each`, as SQLite steps to it.
async fn stream(
    pool: &SqlitePool,
    sql: String,
    args: Vec<Arg>,
    mut each: impl FnMut(&SqliteRow) -> Result<(), QueryError>,
) -> Result<u64, QueryError> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(i) => q.bind(i),
        };
    }
    let mut rows = q.fetch(pool);
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        each(&row)?;
        n += 1;
    }
    Ok(n)
}

/// A reading's value from its `kind` and `value` columns (see migrations/0001_history.sql).
pub(super) fn value_of(r: &SqliteRow, kind: usize, value: usize) -> Result<Value, sqlx::Error> {
    Ok(match r.try_get::<i64, _>(kind)? {
        0 => Value::Int(i128::from(r.try_get_unchecked::<i64, _>(value)?)),
        4 => {
            // Beyond i64: kept as decimal text so nothing is rounded.
            let s: String = r.try_get_unchecked(value)?;
            Value::Int(s.parse().unwrap_or_default())
        }
        1 => Value::Float(r.try_get_unchecked(value)?),
        3 => Value::Bool(r.try_get_unchecked::<i64, _>(value)? != 0),
        _ => Value::Text(r.try_get_unchecked(value)?),
    })
}

fn seconds(ts_ms: i64) -> f64 {
    ts_ms as f64 / 1000.0
}

/// The ids a reading from `since` to `until` (UNIX ms, inclusive) can have, as (at least, at
/// most), from the blocks of the sparse time index (0005_readings_blocks.sql); None: no bound.
///
/// A block whose times meet the range may hold such a reading; any other can't. Blocks may
/// overlap in time (the clock was stepped back), so the range runs from the first such block to
/// the last, and the exact `ts` condition beside it picks the rows. Readings above the newest
/// block (none once a batch has committed; see `store.rs`) are always in the range.
pub async fn reading_ids(
    pool: &SqlitePool,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<(Option<i64>, Option<i64>), sqlx::Error> {
    if since.is_none() && until.is_none() {
        return Ok((None, None));
    }
    let row = sqlx::query(
        "SELECT (SELECT max(last) FROM readings_blocks), \
                (SELECT min(first) FROM readings_blocks WHERE max_ts >= ?1), \
                (SELECT max(last) FROM readings_blocks WHERE min_ts <= ?2)",
    )
    .bind(since.unwrap_or(i64::MIN))
    .bind(until.unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await?;
    let get = |i: usize| row.try_get::<Option<i64>, _>(i);
    Ok(id_bounds(
        get(0)?,
        since.map(|_| get(1)).transpose()?,
        until.map(|_| get(2)).transpose()?,
    ))
}

/// [`reading_ids`] from what the blocks say: `newest`, the last id of the newest block;
/// `from_block`, with a lower time bound, the first id of the first block reaching it;
/// `to_block`, with an upper time bound, the last id of the last block starting before it (the
/// outer `Option` says whether the bound was given; the inner, whether any block qualified).
fn id_bounds(
    newest: Option<i64>,
    from_block: Option<Option<i64>>,
    to_block: Option<Option<i64>>,
) -> (Option<i64>, Option<i64>) {
    // Readings with ids above every block's are not in any: they always qualify.
    let above = newest.unwrap_or(0).saturating_add(1);
    let mut lo = from_block.map(|b| b.unwrap_or(above));
    let hi = match to_block {
        None => None,
        // The newest block qualifies: the range stays open to readings after it.
        Some(Some(h)) if h >= above - 1 => None,
        Some(Some(h)) => Some(h),
        // No block starts before the end of the range: only readings above them may.
        Some(None) => {
            lo = Some(lo.map_or(above, |l| l.max(above)));
            None
        }
    };
    (lo, hi)
}

/// Every reading matching `filter`, in recording order, handed to `each` one at a time.
pub async fn each_reading(
    pool: &SqlitePool,
    filter: &Filter,
    mut each: impl FnMut(Row) -> Result<(), QueryError>,
) -> Result<u64, QueryError> {
    let (mut cond, mut args) = conditions(filter, "s.device", Some("s.point"), "r.ts");
    // Without an index on the readings' times, a time range is an id range first.
    let (lo, hi) = reading_ids(pool, filter.since.map(millis), filter.until.map(millis)).await?;
    if let Some(lo) = lo {
        cond += " AND r.id >= ?";
        args.push(Arg::Int(lo));
    }
    if let Some(hi) = hi {
        cond += " AND r.id <= ?";
        args.push(Arg::Int(hi));
    }
    // CROSS JOIN: SQLite keeps readings the outer loop, read in id order (within the range)
    // and never once per series.
    let sql = ordered(
        format!(
            "SELECT s.device, s.point, r.kind, r.value, r.ts AS ts, r.id AS id FROM readings r CROSS JOIN series s ON s.id = r.series WHERE 1 = 1{cond}"
        ),
        filter.limit,
    );
    stream(pool, sql, args, |r| {
        each(Row {
            timestamp: seconds(r.try_get(4)?),
            device: r.try_get(0)?,
            point: r.try_get(1)?,
            value: value_of(r, 2, 3)?,
        })
    })
    .await
}

/// Every event matching `filter` (its `point` does not apply), in recording order, handed to
/// `each`.
pub async fn each_event(
    pool: &SqlitePool,
    filter: &Filter,
    mut each: impl FnMut(Event) -> Result<(), QueryError>,
) -> Result<u64, QueryError> {
    let (cond, args) = conditions(filter, "device", None, "ts");
    let sql = ordered(
        format!("SELECT device, kind, detail, ts, rowid AS id FROM events WHERE 1 = 1{cond}"),
        filter.limit,
    );
    stream(pool, sql, args, |r| {
        each(Event {
            timestamp: seconds(r.try_get(3)?),
            device: r.try_get(0)?,
            kind: r.try_get(1)?,
            detail: r.try_get(2)?,
        })
    })
    .await
}

fn sql_only(e: QueryError) -> sqlx::Error {
    match e {
        QueryError::Sql(e) => e,
        QueryError::Io(e) => sqlx::Error::Io(e),
    }
}

/// The readings matching `filter`, oldest first, all in memory (for tests and small reads).
pub async fn query(pool: &SqlitePool, filter: &Filter) -> Result<Vec<Row>, sqlx::Error> {
    let mut out = Vec::new();
    each_reading(pool, filter, |r| {
        out.push(r);
        Ok(())
    })
    .await
    .map_err(sql_only)?;
    Ok(out)
}

/// Every event (availability changes, commands, gateway start/stop), oldest first, in memory.
pub async fn events(pool: &SqlitePool) -> Result<Vec<Event>, sqlx::Error> {
    let mut out = Vec::new();
    each_event(pool, &Filter::default(), |e| {
        out.push(e);
        Ok(())
    })
    .await
    .map_err(sql_only)?;
    Ok(out)
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

fn utc(timestamp: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis((timestamp * 1000.0).round() as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A value as people read it: text bare, everything else as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        other => other.to_json().to_string(),
    }
}

/// An event's detail as JSON: a command's `{"command": <its payload, as JSON when it was>,
/// "result": <the result payload>}`, else the text (`online`, `stop`).
fn detail_json(e: &Event) -> Json {
    if e.kind != "command" {
        return Json::String(e.detail.clone());
    }
    let stored: Json = serde_json::from_str(&e.detail).unwrap_or(Json::Null);
    let parse = |key: &str| {
        let text = stored[key].as_str().unwrap_or_default();
        serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_string()))
    };
    json!({"command": parse("payload"), "result": parse("result")})
}

/// An event's detail on one line: the text, or a command's payload and result.
fn detail_line(e: &Event) -> String {
    match detail_json(e) {
        Json::String(s) => s,
        j => format!("{} -> {}", j["command"], j["result"]),
    }
}

/// Writes rows as they come: `json` is one array of `{"timestamp", "device", "point",
/// "value"}` (events: `{"timestamp", "device", "event", "detail"}`); `csv` has the header
/// `timestamp,device,point,value` (events: `timestamp,device,event,detail`); `table` is for
/// people, with columns `widths` wide (device, point or event).
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    events: bool,
    widths: (usize, usize),
    rows: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, events: bool, widths: (usize, usize)) -> Self {
        Printer {
            out,
            format,
            events,
            widths,
            rows: 0,
        }
    }

    fn begin(&mut self) -> io::Result<()> {
        let (w_dev, w_2) = self.widths;
        let second = if self.events { "event" } else { "point" };
        let last = if self.events { "detail" } else { "value" };
        match self.format {
            Format::Json => write!(self.out, "["),
            Format::Csv => writeln!(self.out, "timestamp,device,{second},{last}"),
            Format::Table => writeln!(
                self.out,
                "{:<24}  {:<w_dev$}  {:<w_2$}  {last}",
                "time (UTC)", "device", second
            ),
        }
    }

    /// One line: the time, the device, the second column and the last, each already in the
    /// format's own form where it differs (`json` gets the whole object).
    fn line(
        &mut self,
        timestamp: f64,
        device: &str,
        second: &str,
        last: &str,
        object: Json,
    ) -> io::Result<()> {
        if self.rows == 0 {
            self.begin()?;
        }
        self.rows += 1;
        let (w_dev, w_2) = self.widths;
        match self.format {
            Format::Json => {
                if self.rows > 1 {
                    write!(self.out, ",")?;
                }
                serde_json::to_writer(&mut self.out, &object).map_err(io::Error::other)
            }
            Format::Csv => writeln!(
                self.out,
                "{timestamp:.3},{},{},{last}",
                csv_field(device),
                csv_field(second)
            ),
            Format::Table => writeln!(
                self.out,
                "{:<24}  {device:<w_dev$}  {second:<w_2$}  {last}",
                utc(timestamp)
            ),
        }
    }

    pub fn reading(&mut self, r: &Row) -> io::Result<()> {
        let last = match (&r.value, self.format) {
            (Value::Text(t), Format::Csv) => csv_field(t),
            (v, _) => plain(v),
        };
        let object = json!({
            "timestamp": r.timestamp,
            "device": r.device,
            "point": r.point,
            "value": r.value.to_json(),
        });
        self.line(r.timestamp, &r.device, &r.point, &last, object)
    }

    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        let device = e.device.as_deref().unwrap_or("-");
        let detail = match self.format {
            // The command's JSON whole, quoted as CSV quotes.
            Format::Csv => csv_field(&match detail_json(e) {
                Json::String(s) => s,
                j => j.to_string(),
            }),
            _ => detail_line(e),
        };
        let object = json!({
            "timestamp": e.timestamp,
            "device": e.device,
            "event": e.kind,
            "detail": detail_json(e),
        });
        self.line(e.timestamp, device, &e.kind, &detail, object)
    }

    /// Closes the output (the header alone when there were no rows); returns the row count.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.rows == 0 {
            self.begin()?;
        }
        if self.format == Format::Json {
            writeln!(self.out, "]")?;
        }
        self.out.flush()?;
        Ok(self.rows)
    }
}

/// Column widths for the table: the longest device name and point (or event kind) among the
/// rows `filter` may show, at least as wide as the headers.
async fn widths(
    pool: &SqlitePool,
    filter: &Filter,
    events: bool,
) -> Result<(usize, usize), sqlx::Error> {
    let (sql, args) = if events {
        let (cond, args) = conditions(filter, "device", None, "ts");
        (
            format!("SELECT max(length(device)), max(length(kind)) FROM events WHERE 1 = 1{cond}"),
            args,
        )
    } else {
        // From the series: a handful of rows, where the readings may be millions.
        let f = Filter {
            since: None,
            until: None,
            ..filter.clone()
        };
        let (cond, args) = conditions(&f, "device", Some("point"), "ts");
        (
            format!("SELECT max(length(device)), max(length(point)) FROM series WHERE 1 = 1{cond}"),
            args,
        )
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(i) => q.bind(i),
        };
    }
    let row = q.fetch_one(pool).await?;
    let w = |i: usize, min: usize| {
        row.try_get::<Option<i64>, _>(i)
            .ok()
            .flatten()
            .map_or(min, |n| (n as usize).max(min))
    };
    // The headers: "device", and "point" or "event".
    Ok((w(0, 6), w(1, 5)))
}

/// `fieldbridge history`: the readings (or with `events`, the events) matching `filter`,
/// written to `out` as they are read. Returns how many.
pub async fn print(
    pool: &SqlitePool,
    filter: &Filter,
    events: bool,
    format: Format,
    out: impl Write,
) -> Result<u64, QueryError> {
    let widths = match format {
        Format::Table => widths(pool, filter, events).await?,
        _ => (0, 0),
    };
    let mut printer = Printer::new(out, format, events, widths);
    if events {
        each_event(pool, filter, |e| Ok(printer.event(&e)?)).await?;
    } else {
        each_reading(pool, filter, |r| Ok(printer.reading(&r)?)).await?;
    }
    Ok(printer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::id_bounds;

    /// Blocks (ids 1-100, 101-200, 201-300); `newest` is 300.
    #[test]
    fn a_time_range_becomes_the_id_range_of_the_blocks_that_meet_it() {
        // No bound: no range.
        assert_eq!(id_bounds(Some(300), None, None), (None, None));
        // From the second block on, up to the newest: open above, for readings after it.
        assert_eq!(
            id_bounds(Some(300), Some(Some(101)), None),
            (Some(101), None)
        );
        assert_eq!(
            id_bounds(Some(300), Some(Some(101)), Some(Some(300))),
            (Some(101), None)
        );
        // Up to the second block.
        assert_eq!(
            id_bounds(Some(300), Some(Some(1)), Some(Some(200))),
            (Some(1), Some(200))
        );
        assert_eq!(
            id_bounds(Some(300), None, Some(Some(100))),
            (None, Some(100))
        );
        // No block reaches the start, or none starts before the end: only readings above the
        // newest block could be in range.
        assert_eq!(id_bounds(Some(300), Some(None), None), (Some(301), None));
        assert_eq!(id_bounds(Some(300), None, Some(None)), (Some(301), None));
        assert_eq!(
            id_bounds(Some(300), Some(Some(101)), Some(None)),
            (Some(301), None)
        );
        // No blocks at all (no readings): everything from id 1.
        assert_eq!(id_bounds(None, Some(None), Some(None)), (Some(1), None));
    }
}
