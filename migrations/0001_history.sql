-- History of record: every published value, availability change, command and gateway start/stop.
-- Compact: integer ids and epoch-millisecond times. `value` has no declared type, so integers
-- stay INTEGER, floats REAL and text TEXT; `kind` says how to give it back (0 integer, 1 float,
-- 2 text, 3 bool, 4 an integer beyond i64 stored as decimal text).
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    UNIQUE (device, point)
);

CREATE TABLE readings (
    ts INTEGER NOT NULL,
    series INTEGER NOT NULL REFERENCES series (id),
    kind INTEGER NOT NULL,
    value
);
CREATE INDEX readings_series_ts ON readings (series, ts);
CREATE INDEX readings_ts ON readings (ts);

-- kind: availability | command | gateway; detail: JSON (the status; the command's payload,
-- result and error; start or stop).
CREATE TABLE events (
    ts INTEGER NOT NULL,
    device TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);
