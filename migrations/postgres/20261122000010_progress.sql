-- The PostgreSQL progress store: the same tables as SQLite's (migrations/),
-- for daemons on several hosts sharing one database.
-- Times are RFC 3339 UTC text with millisecond precision and a trailing Z
-- (e.g. 2026-11-21T10:00:00.000Z), as in SQLite: fixed width, so they sort
-- chronologically; the "C" collation makes that byte order whatever the
-- database's locale.
CREATE TABLE progress (
    symbol               TEXT    NOT NULL,
    resolution           TEXT    NOT NULL CHECK (resolution IN ('1m', '5m', '15m', '1h', '4h', '1d')),
    status               TEXT    NOT NULL DEFAULT 'idle'
                                 CHECK (status IN ('idle', 'running', 'completed', 'failed')),
    -- every window that starts before the watermark is materialized in InfluxDB
    watermark            TEXT COLLATE "C",
    -- end of the chunk being computed right now (set before its source is read):
    -- a trade arriving before max(watermark, inflight_until) may have been missed
    inflight_until       TEXT COLLATE "C",
    -- who holds the task and until when (database clock); an expired lease may
    -- be taken over
    lease_owner          TEXT,
    lease_expires_at     TEXT COLLATE "C",
    -- who last held the lease (kept after release): how work is spread
    last_owner           TEXT,
    last_run_started_at  TEXT COLLATE "C",
    last_run_finished_at TEXT COLLATE "C",
    last_error           TEXT,
    runs                 BIGINT  NOT NULL DEFAULT 0,
    chunks               BIGINT  NOT NULL DEFAULT 0,
    rows_read            BIGINT  NOT NULL DEFAULT 0,
    candles_written      BIGINT  NOT NULL DEFAULT 0,
    created_at           TEXT COLLATE "C" NOT NULL,
    updated_at           TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (symbol, resolution)
);

-- History: one row per chunk processed (or failed).
CREATE TABLE progress_runs (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol          TEXT    NOT NULL,
    resolution      TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('chunk', 'rebuild', 'late')),
    range_start     TEXT COLLATE "C" NOT NULL,
    range_end       TEXT COLLATE "C" NOT NULL,
    started_at      TEXT COLLATE "C" NOT NULL,
    finished_at     TEXT COLLATE "C" NOT NULL,
    rows_read       BIGINT  NOT NULL,
    candles_written BIGINT  NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('ok', 'failed')),
    error           TEXT
);
CREATE INDEX progress_runs_by_task ON progress_runs (symbol, resolution, id);

-- Ranges to recompute because late trades arrived behind a task's watermark.
CREATE TABLE dirty_ranges (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol      TEXT NOT NULL,
    resolution  TEXT NOT NULL,
    range_start TEXT COLLATE "C" NOT NULL,
    range_end   TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX dirty_ranges_by_task ON dirty_ranges (symbol, resolution, id);

-- The database clock plus `offset_ms`, in the stored time format: lease
-- expiry is computed and compared with it, so every host agrees on it
-- whatever its own clock says.
CREATE FUNCTION ohlcd_db_time(offset_ms BIGINT) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT to_char((now() + offset_ms * interval '1 millisecond') AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') COLLATE "C"
$$;
