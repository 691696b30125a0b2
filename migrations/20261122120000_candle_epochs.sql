-- Per symbol, a generation of its stored candles below the watermarks: bumped
-- whenever candles already written are rewritten (a late-trade or lookback
-- repair, `ohlcd rebuild`), in the same transaction that commits the rewrite.
-- Servers cache closed candles tagged with the epoch they were read under and
-- drop them when it moves, whichever process or host did the rewrite.
CREATE TABLE candle_epochs (
    symbol TEXT    NOT NULL PRIMARY KEY,
    epoch  INTEGER NOT NULL
);

-- Every repair and rebuild step (and a failed one, which may have written part
-- of its candles) records a progress_runs row whose kind is not 'chunk', inside
-- the committing transaction: bumping from a trigger keeps the bump in that
-- transaction without the engine having to remember it.
CREATE TRIGGER candle_epochs_bump AFTER INSERT ON progress_runs
WHEN NEW.kind <> 'chunk'
BEGIN
    INSERT INTO candle_epochs (symbol, epoch) VALUES (NEW.symbol, 1)
    ON CONFLICT (symbol) DO UPDATE SET epoch = epoch + 1;
END;
