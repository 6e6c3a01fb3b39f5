-- Ids of the commands executed lately (CONTRACT §4): written, and synced, before a command's
-- write goes out, so a QoS 1 command the broker delivers again after a crash is not written
-- twice. `result` is the result payload once published; NULL while the command runs (after a
-- crash: it may have been written). Rows older than the de-duplication window are deleted.
CREATE TABLE command_ids (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    result TEXT,
    PRIMARY KEY (device, id)
) WITHOUT ROWID;
CREATE INDEX command_ids_ts ON command_ids (ts);
