-- +goose Up
-- A batch users PUT serves several intents and users in one call: it is
-- recorded once per intent and user it served (step 'user', target the
-- user id), and those rows share call_id, so "which call synced this
-- intent's users and how did it end" stays a lookup by intent_id, and the
-- intents one call served a lookup by call_id. NULL for a call that served
-- one intent (every other call, and rows recorded before this column).
ALTER TABLE outbox.attempts ADD COLUMN call_id uuid;

COMMENT ON COLUMN outbox.attempts.call_id IS
    'Shared by the rows of one batch call (one row per intent and user it served); NULL for a call of one intent.';

-- The views count calls, not rows: the rows of one batch call are one call.
-- Same columns as in 00007, in the same order.
CREATE OR REPLACE VIEW outbox.intent_status AS
SELECT i.id,
       i.key,
       i.conversation_id,
       i.state,
       i.attempts,
       c.calls,
       c.failed_calls,
       c.last_call_at,
       i.last_error,
       i.created_at,
       i.done_at,
       -- Insert (the producer's transaction) to done.
       extract(epoch FROM i.done_at - i.created_at)::double precision AS latency_s,
       i.run_after,
       i.lease_owner,
       i.lease_expires_at
  FROM outbox.intents i
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE a.outcome <> 'skipped' AND a.call_id IS NULL)
                 + count(DISTINCT a.call_id) FILTER (WHERE a.outcome <> 'skipped') AS calls,
               count(*) FILTER (WHERE a.outcome NOT IN ('ok', 'skipped') AND a.call_id IS NULL)
                 + count(DISTINCT a.call_id) FILTER (WHERE a.outcome NOT IN ('ok', 'skipped')) AS failed_calls,
               max(a.started_at) AS last_call_at
          FROM outbox.attempts a
         WHERE a.intent_id = i.id) c ON true;

CREATE OR REPLACE VIEW outbox.calls_per_minute AS
SELECT date_trunc('minute', a.started_at) AS minute,
       a.step,
       a.outcome,
       count(*) FILTER (WHERE a.call_id IS NULL) + count(DISTINCT a.call_id) AS calls,
       (avg(a.duration_ms) / 1000)::double precision AS avg_s,
       (max(a.duration_ms) / 1000)::double precision AS max_s
  FROM outbox.attempts a
 WHERE a.started_at > now() - interval '1 hour'
 GROUP BY 1, 2, 3;

-- The histories show which rows are one batch call.
CREATE OR REPLACE VIEW outbox.conversation_history AS
SELECT i.conversation_id,
       i.id AS intent_id,
       i.key,
       i.state,
       i.created_at,
       i.done_at,
       a.attempt,
       a.step,
       a.target,
       a.status,
       a.outcome,
       a.error,
       a.started_at,
       a.call_id
  FROM outbox.intents i
  LEFT JOIN outbox.attempts a ON a.intent_id = i.id;

CREATE OR REPLACE VIEW outbox.user_history AS
SELECT a.target AS user_id,
       a.intent_id,
       i.conversation_id,
       a.attempt,
       a.status,
       a.outcome,
       a.error,
       a.started_at,
       a.relay,
       a.call_id
  FROM outbox.attempts a
  LEFT JOIN outbox.intents i ON i.id = a.intent_id
 WHERE a.step = 'user';

-- +goose Down
-- A view's columns cannot be dropped by CREATE OR REPLACE: the histories
-- are made again as 00007 made them.
DROP VIEW outbox.user_history;
DROP VIEW outbox.conversation_history;
CREATE VIEW outbox.conversation_history AS
SELECT i.conversation_id,
       i.id AS intent_id,
       i.key,
       i.state,
       i.created_at,
       i.done_at,
       a.attempt,
       a.step,
       a.target,
       a.status,
       a.outcome,
       a.error,
       a.started_at
  FROM outbox.intents i
  LEFT JOIN outbox.attempts a ON a.intent_id = i.id;

COMMENT ON VIEW outbox.conversation_history IS
    'Every intent of a conversation with every call made for it; filter by conversation_id.';

CREATE VIEW outbox.user_history AS
SELECT a.target AS user_id,
       a.intent_id,
       i.conversation_id,
       a.attempt,
       a.status,
       a.outcome,
       a.error,
       a.started_at,
       a.relay
  FROM outbox.attempts a
  LEFT JOIN outbox.intents i ON i.id = a.intent_id
 WHERE a.step = 'user';

COMMENT ON VIEW outbox.user_history IS
    'Every PUT (made or skipped) of a user, with its intent; filter by user_id.';

CREATE OR REPLACE VIEW outbox.calls_per_minute AS
SELECT date_trunc('minute', a.started_at) AS minute,
       a.step,
       a.outcome,
       count(*) AS calls,
       (avg(a.duration_ms) / 1000)::double precision AS avg_s,
       (max(a.duration_ms) / 1000)::double precision AS max_s
  FROM outbox.attempts a
 WHERE a.started_at > now() - interval '1 hour'
 GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW outbox.intent_status AS
SELECT i.id,
       i.key,
       i.conversation_id,
       i.state,
       i.attempts,
       c.calls,
       c.failed_calls,
       c.last_call_at,
       i.last_error,
       i.created_at,
       i.done_at,
       extract(epoch FROM i.done_at - i.created_at)::double precision AS latency_s,
       i.run_after,
       i.lease_owner,
       i.lease_expires_at
  FROM outbox.intents i
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE a.outcome <> 'skipped') AS calls,
               count(*) FILTER (WHERE a.outcome NOT IN ('ok', 'skipped')) AS failed_calls,
               max(a.started_at) AS last_call_at
          FROM outbox.attempts a
         WHERE a.intent_id = i.id) c ON true;

ALTER TABLE outbox.attempts DROP COLUMN call_id;
