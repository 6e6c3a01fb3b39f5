-- Issue 17: a reading in at most 32 bytes of file. `readings_ts` took about 16 of the 38 bytes a
-- reading cost; the table row itself is about 22. This migration drops the index and puts a
-- sparse time index in its place, one row per block of about 65,536 readings.
--
-- `readings` gets an explicit `id INTEGER PRIMARY KEY`: an alias of the rowid, so it costs no
-- byte, and VACUUM keeps the ids of such a table (it may renumber the rowids of a table with
-- neither an INTEGER PRIMARY KEY nor an index, which is why `readings_ts` had been kept). The
-- ids are the old rowids, copied: a forward cursor taken before this migration (0003_forward.sql)
-- still says exactly which rows a central database has. No AUTOINCREMENT: deletions never take
-- the newest row (store.rs, KEEP_NEWEST), so max(id) + 1 is never an id handed out before.
-- `forward.rs` reads `rowid`, which is `id` now.
CREATE TABLE readings_new (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    series INTEGER NOT NULL REFERENCES series (id),
    kind INTEGER NOT NULL,
    value
);
INSERT INTO readings_new (id, ts, series, kind, value)
    SELECT rowid, ts, series, kind, value FROM readings ORDER BY rowid;
-- Takes `readings_ts` with it.
DROP TABLE readings;
ALTER TABLE readings_new RENAME TO readings;

-- The sparse time index (like PostgreSQL's BRIN): the readings with ids `first` to `last` all
-- have `min_ts` <= ts <= `max_ts`. Blocks never overlap in ids and cover every reading: the
-- writer extends the newest block (or starts the next once it spans 65,536 ids) in the same
-- transaction as each batch, so no committed reading is ever outside a block. Their times may
-- overlap (a Pi without a real-time clock steps its clock at boot, forwards or back): each
-- block keeps its own bounds, so a query stays exact; it just reads more blocks.
-- A query with a time bound reads only the id range of the blocks whose bounds meet it, plus
-- its exact `ts` condition (query.rs); retention deletes whole blocks by id range (store.rs).
CREATE TABLE readings_blocks (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL
);
INSERT INTO readings_blocks (first, last, min_ts, max_ts)
    SELECT min(id), max(id), min(ts), max(ts) FROM readings GROUP BY id / 65536;
