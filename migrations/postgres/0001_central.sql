-- The central history (CONTRACT §7): the rows every gateway forwards from its local history.
-- Plain PostgreSQL; the README shows the one statement that makes `readings` a TimescaleDB
-- hypertable.
--
-- A row is (gateway, origin, id): `origin` names the gateway's history file and `id` is the
-- row's id in it. Forwarding inserts with ON CONFLICT DO NOTHING, so a batch sent again after a
-- crash or a lost answer changes nothing: each row is here exactly once. `ts` is part of the
-- key only because a hypertable's unique keys must contain its time column.
CREATE TABLE readings (
    gateway TEXT NOT NULL,
    origin BIGINT NOT NULL,
    id BIGINT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    -- Numbers, and booleans as 0 or 1; NULL for text.
    value DOUBLE PRECISION,
    -- Text values and map labels; for an integer a double cannot hold exactly, its digits.
    value_text TEXT,
    PRIMARY KEY (gateway, origin, id, ts)
);
-- What dashboards ask: one point (of one or all gateways) over a time range.
CREATE INDEX readings_device_point_ts ON readings (device, point, ts);

-- kind: availability (detail online/offline), command (detail: JSON with the command's
-- payload and its result), gateway (detail start/stop; device NULL).
CREATE TABLE events (
    gateway TEXT NOT NULL,
    origin BIGINT NOT NULL,
    id BIGINT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    device TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (gateway, origin, id, ts)
);
CREATE INDEX events_ts ON events (ts);
