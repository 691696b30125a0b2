-- Progress of the downsampling tasks: one row per (symbol, resolution).
-- Times are RFC 3339 UTC strings with millisecond precision and a trailing Z
-- (e.g. 2026-11-21T10:00:00.000Z), so they read well and sort chronologically.
CREATE TABLE progress (
    symbol               TEXT    NOT NULL,
    resolution           TEXT    NOT NULL CHECK (resolution IN ('1m', '5m', '15m', '1h', '4h', '1d')),
    status               TEXT    NOT NULL DEFAULT 'idle'
                                 CHECK (status IN ('idle', 'running', 'completed', 'failed')),
    -- every window that starts before the watermark is materialized in InfluxDB
    watermark            TEXT,
    -- end of the chunk being computed right now (set before its source is read):
    -- a trade arriving before max(watermark, inflight_until) may have been missed
    inflight_until       TEXT,
    -- who holds the task and until when; an expired lease may be taken over
    lease_owner          TEXT,
    lease_expires_at     TEXT,
    last_run_started_at  TEXT,
    last_run_finished_at TEXT,
    last_error           TEXT,
    runs                 INTEGER NOT NULL DEFAULT 0,
    chunks               INTEGER NOT NULL DEFAULT 0,
    rows_read            INTEGER NOT NULL DEFAULT 0,
    candles_written      INTEGER NOT NULL DEFAULT 0,
    created_at           TEXT    NOT NULL,
    updated_at           TEXT    NOT NULL,
    PRIMARY KEY (symbol, resolution)
);

-- History: one row per chunk processed (or failed).
CREATE TABLE progress_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol          TEXT    NOT NULL,
    resolution      TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('chunk', 'rebuild', 'late')),
    range_start     TEXT    NOT NULL,
    range_end       TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT    NOT NULL,
    rows_read       INTEGER NOT NULL,
    candles_written INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('ok', 'failed')),
    error           TEXT
);
CREATE INDEX progress_runs_by_task ON progress_runs (symbol, resolution, id);

-- Ranges to recompute because late trades arrived behind a task's watermark;
-- one row per resolution, removed once that task has recomputed the range.
CREATE TABLE dirty_ranges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol      TEXT NOT NULL,
    resolution  TEXT NOT NULL,
    range_start TEXT NOT NULL,
    range_end   TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX dirty_ranges_by_task ON dirty_ranges (symbol, resolution, id);
