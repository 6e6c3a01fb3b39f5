//! `[history]`: the local SQLite history.

use std::path::PathBuf;
use std::time::Duration;

use super::load::{Cx, Sec};
use super::*;

impl Cx<'_> {
    pub(super) fn history(&mut self, s: &Sec) -> HistoryConfig {
        self.keys(s, &["path", "retention", "flush", "max_size"]);
        HistoryConfig {
            path: self
                .text(s, "path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HISTORY_PATH)),
            retention: self
                .duration(s, "retention")
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            flush: self.duration(s, "flush").unwrap_or(Duration::from_secs(1)),
            max_size: self.size(s, "max_size"),
        }
    }
}
