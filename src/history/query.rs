//! The `history` command's reads: filters, rows and their rendering as table, csv or json.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};

use super::millis;
use crate::model::Value;

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
