-- Forwarding to a central PostgreSQL (CONTRACT §7): this file is the store-and-forward buffer.
-- `origin` names this file among all the history files forwarding to a database: a row is
-- (gateway, origin, rowid) everywhere. The rowids of `readings` and `events` are never reused
-- (the writer never deletes a table's newest row, and VACUUM keeps the rowids of tables with
-- an index), so a cursor on them says exactly which rows a database has.
CREATE TABLE forward_origin (
    origin INTEGER NOT NULL
);
INSERT INTO forward_origin (origin) VALUES (random() & 9223372036854775807);

-- Per central database (`host:port/database`): the rowid of the last reading and event it
-- has committed. A database forwarded to for the first time gets every row still here.
CREATE TABLE forward_cursor (
    target TEXT PRIMARY KEY,
    readings INTEGER NOT NULL DEFAULT 0,
    events INTEGER NOT NULL DEFAULT 0
);
