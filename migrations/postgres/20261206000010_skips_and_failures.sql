-- Rows read that could not make a trade (no price, an unknown side, a value
-- out of bounds...): skipped, never aggregated, and counted here on the
-- symbol's 1m task, whose candles are the ones read from raw trades.
ALTER TABLE progress ADD COLUMN rows_skipped BIGINT NOT NULL DEFAULT 0;
-- Failed runs in a row; 0 after a run that succeeds. A failed task is retried
-- after a backoff that grows with it.
ALTER TABLE progress ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
