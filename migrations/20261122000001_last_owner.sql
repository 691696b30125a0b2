-- Who last held each task's lease (kept after the lease is released), so an
-- operator sees how work is spread over daemons.
ALTER TABLE progress ADD COLUMN last_owner TEXT;
