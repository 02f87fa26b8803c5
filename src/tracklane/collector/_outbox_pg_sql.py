"""The SQL of the PostgreSQL outbox (:mod:`tracklane.collector.outbox_pg`): tables, trigger,
and the claim and settlement statements."""

from __future__ import annotations

__all__ = ["CLAIM", "SCHEMA", "SETTLE"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracklane_route_destinations (
    destination TEXT PRIMARY KEY,
    delivered BIGINT NOT NULL DEFAULT 0,
    filtered BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,   -- failed attempts, retried or dead-lettered
    last_error TEXT,
    last_error_at TEXT,
    last_delivered_at TEXT,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- events with id <= start_event were stored before the destination was added
ALTER TABLE tracklane_route_destinations ADD COLUMN IF NOT EXISTS start_event BIGINT NOT NULL
    DEFAULT 0;
CREATE TABLE IF NOT EXISTS tracklane_outbox (
    destination TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at DOUBLE PRECISION NOT NULL,            -- unix time from which it may be (re)tried
    lease_until DOUBLE PRECISION,                -- held by lease_owner until then
    lease_owner TEXT,
    last_error TEXT,
    PRIMARY KEY (destination, event_id)
);
CREATE INDEX IF NOT EXISTS tracklane_outbox_due ON tracklane_outbox (destination, due_at, event_id);
-- Leasing a row changes no indexed column, so PostgreSQL updates it in place on its page
-- (a HOT update: no new index entries) when the page has room; each collector renews and
-- releases its leases by the event ids it holds, so no index by lease_owner is needed.
DROP INDEX IF EXISTS tracklane_outbox_owner;
ALTER TABLE tracklane_outbox SET (fillfactor = 50);
CREATE TABLE IF NOT EXISTS tracklane_outbox_dead (
    destination TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at TEXT NOT NULL,
    PRIMARY KEY (destination, event_id)
);
CREATE OR REPLACE FUNCTION tracklane_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tracklane_outbox (destination, event_id, due_at)
    SELECT d.destination, e.id, extract(epoch FROM now()) FROM tracklane_new_events e
    CROSS JOIN tracklane_route_destinations d;
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tracklane_events_enqueue'
                   AND tgrelid = 'tracklane_events'::regclass) THEN
        CREATE TRIGGER tracklane_events_enqueue AFTER INSERT ON tracklane_events
        REFERENCING NEW TABLE AS tracklane_new_events
        FOR EACH STATEMENT EXECUTE FUNCTION tracklane_enqueue();
    END IF;
END
$$;
"""
# One statement (atomic in autocommit): lock due, unleased rows nobody else is claiming,
# lease them and read their events. Rows another collector leased meanwhile fail the
# WHERE, which FOR UPDATE re-checks on a row changed since the statement began. New rows are due
# from their insert time and retries from their retry time, so ordering by due_at (the
# index order) serves both first come, first served: a backlog of new events does not
# starve retries that fell due. An event deleted from the
# store comes back without a body (LEFT JOIN) and its row is settled as delivered, as
# before. (Reading the integrations object here with ``body::json -> 'integrations'`` cost
# the server more CPU, about 30 µs per event, than the collector decoding the message.)
CLAIM = """
WITH picked AS (
    SELECT event_id FROM tracklane_outbox
    WHERE destination = %(d)s AND due_at <= %(now)s
      AND (lease_until IS NULL OR lease_until < %(now)s)
    ORDER BY due_at, event_id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE tracklane_outbox o SET lease_until = %(lease)s, lease_owner = %(owner)s
    FROM picked WHERE o.destination = %(d)s AND o.event_id = picked.event_id
    RETURNING o.event_id, o.attempts
)
SELECT l.event_id, l.attempts, e.write_key, e.message_id, e.received_at, e.timestamp,
    e.original_timestamp, e.body
FROM leased l LEFT JOIN tracklane_events e ON e.id = l.event_id
ORDER BY l.event_id
"""
# A settlement in one statement (atomic in autocommit), only for rows this collector
# still holds: delivered, filtered, skipped and dead rows are deleted, failures put back
# due at their retry time, dead letters recorded, the counters moved by what was held.
SETTLE = """
WITH gone AS (
    DELETE FROM tracklane_outbox WHERE destination = %(d)s AND lease_owner = %(owner)s
        AND event_id = ANY(%(done)s::bigint[])
    RETURNING event_id
), kept AS (
    UPDATE tracklane_outbox o SET attempts = r.attempts, due_at = r.due_at,
        last_error = r.error, lease_until = NULL, lease_owner = NULL
    FROM unnest(%(retry_ids)s::bigint[], %(retry_attempts)s::int[], %(retry_due)s::float8[],
                %(retry_errors)s::text[]) AS r(event_id, attempts, due_at, error)
    WHERE o.destination = %(d)s AND o.event_id = r.event_id AND o.lease_owner = %(owner)s
    RETURNING o.event_id
), dead AS (
    SELECT u.event_id, u.attempts, u.error, u.n
    FROM unnest(%(dead_ids)s::bigint[], %(dead_attempts)s::int[], %(dead_errors)s::text[])
        WITH ORDINALITY AS u(event_id, attempts, error, n)
    WHERE u.event_id IN (SELECT event_id FROM gone)
), buried AS (
    INSERT INTO tracklane_outbox_dead (destination, event_id, attempts, last_error, dead_at)
    SELECT %(d)s, event_id, attempts, error, %(now)s FROM dead
    ON CONFLICT (destination, event_id) DO UPDATE SET attempts = EXCLUDED.attempts,
        last_error = EXCLUDED.last_error, dead_at = EXCLUDED.dead_at
), tally AS (
    SELECT n_held, n_kept, n_dead, n_filtered, n_skipped,
        n_held - n_dead - n_filtered - n_skipped AS n_delivered,
        COALESCE(last_dead, CASE WHEN n_kept > 0 THEN %(retry_error)s::text END) AS error
    FROM (SELECT
        (SELECT count(*) FROM gone) AS n_held,
        (SELECT count(*) FROM kept) AS n_kept,
        (SELECT count(*) FROM dead) AS n_dead,
        (SELECT count(*) FROM gone WHERE event_id = ANY(%(filtered_ids)s::bigint[])) AS n_filtered,
        (SELECT count(*) FROM gone WHERE event_id = ANY(%(skipped_ids)s::bigint[])) AS n_skipped,
        (SELECT error FROM dead ORDER BY n DESC LIMIT 1) AS last_dead) AS counts
), counted AS (
    UPDATE tracklane_route_destinations SET delivered = delivered + t.n_delivered,
        filtered = filtered + t.n_filtered, skipped = skipped + t.n_skipped,
        failures = failures + t.n_kept + t.n_dead, last_error = COALESCE(t.error, last_error),
        last_error_at = CASE WHEN t.error IS NULL THEN last_error_at ELSE %(now)s END,
        last_delivered_at = CASE WHEN t.n_delivered > 0 THEN %(now)s ELSE last_delivered_at END
    FROM tally t WHERE destination = %(d)s
)
SELECT n_held, n_kept FROM tally
"""
