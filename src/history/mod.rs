//! The history of record in SQLite (README "History"): every published value, availability
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
//!   out, so a command the broker delivers again after a crash is not written twice; in a file
//!   of its own (`commands.db`), kept with the history off too.
//! - Retention goes by elapsed time on the file's own clock (`clock.rs`), not by the rows'
//!   times: a mark of the newest ids at each run says what was recorded before then
//!   (migrations/0006_retention_marks.sql). It deletes in small batches, so the `history`
//!   command can read meanwhile.
//! - `max_size` caps the file (SQLite's `max_page_count`): when it, or the disk, is full, the
//!   oldest tenth of the rows (at least twice the batch) is deleted to make room and the batch
//!   written again; the database works as a ring and the newest readings are always kept.
//! - A database deleted or replaced underneath the daemon is noticed before the next batch (its
//!   inode changed), logged, counted, and opened anew at the same path.
//! - Deletions (retention, a full database) never take a table's newest row, so rowids are
//!   never handed out twice: `forward.rs` keeps its cursor on them.
//! - Readings have no index (a reading in ~22 bytes of file, BENCHMARKS.md). `readings_blocks`, a
//!   sparse time index of one row per 65,536 ids, is kept up to date in each batch's own
//!   transaction; a time-bounded query reads the id range of the blocks whose times meet it
//!   (migrations/0005_readings_blocks.sql).
//! - `history.enabled = false`: no file, no writer; the handle records nothing.
//! - Runtime queries only (no `query!` macros): the build needs no database, and
//!   `tests/history.rs` runs every statement against a freshly migrated file.
//!
//! `store.rs` is the writer and everything that opens the file; `query.rs` the reads of
//! `fieldbridge history`, streamed; `forward.rs` the store-and-forward to a central
//! PostgreSQL (README "Central history (PostgreSQL)").

mod clock;
mod command_log;
pub mod forward;
mod query;
mod store;

use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::output::{COMMAND_ID_WINDOW, Seen};
pub use command_log::{COMMAND_LOG_FILE, CommandLog};
pub use forward::{ForwardLink, ForwardStats, Forwarder};
pub use query::*;
pub use store::*;

/// The (device, inode) of a file: a file deleted or replaced underneath the daemon shows as a
/// new one.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// UNIX milliseconds, as the history stores times.
fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
