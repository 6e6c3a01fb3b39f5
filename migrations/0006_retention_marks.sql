-- Retention by elapsed time (store.rs, `retain`). A Raspberry Pi has no real-time clock: NTP
-- steps its clock after boot, by minutes or years. Retention by the readings' own times deleted
-- the whole history when the clock leapt ahead past `retention`, and kept for ever what was
-- recorded under a clock years behind. Rows are numbered in the order they are recorded, so a
-- mark (the gateway's own clock, `clock.rs`, and the newest ids at that moment) taken at each
-- retention run says which rows were recorded before then: a row goes once its mark is
-- `retention` old on that clock, whatever the wall clock did meanwhile.
CREATE TABLE retention_marks (
    at INTEGER PRIMARY KEY,
    readings INTEGER NOT NULL,
    events INTEGER NOT NULL
);

-- The gateway's clock starts at 0 in this file now. The history already here was recorded
-- under the wall clock: its marks come from the time index, taken as right this once. The
-- latest time so far in recording order keeps the marks in order across an old clock step.
INSERT OR IGNORE INTO retention_marks (at, readings, events)
    SELECT upto - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
           last,
           -- The event with the latest time not after the block's: one step down events_ts,
           -- not a walk over every older event for each block.
           coalesce((SELECT rowid FROM events WHERE ts <= upto ORDER BY ts DESC LIMIT 1), 0)
    FROM (SELECT last, max(max_ts) OVER (ORDER BY first) AS upto FROM readings_blocks)
    ORDER BY last;
