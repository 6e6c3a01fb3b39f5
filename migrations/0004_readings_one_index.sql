-- Issue 17: one index on readings, not two. `readings_series_ts` took 20 of the 58 bytes a
-- reading cost on disk, and its inserts land all over the file (one series after another), so
-- each batch dirtied pages across it. `fieldbridge history` finds a device's or a point's
-- rows through `readings_ts` (time order, which every query wants) and the series id; forwarding
-- reads by rowid. `readings_ts` stays: the rowids of a table with an index survive VACUUM (the
-- forward cursor relies on it, see 0003_forward.sql).
DROP INDEX IF EXISTS readings_series_ts;
