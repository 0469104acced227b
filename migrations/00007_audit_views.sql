-- +goose Up
-- Views for operators and auditors. Their column names are part of the
-- public surface (docs/auditing.md queries them): add columns, never rename
-- or drop one. Durations are in seconds (`*_s`), except the per-call
-- `duration_ms` already in outbox.attempts.

-- Dead letters by the time they died ("what failed today"): a small partial
-- index, since dead intents are kept until an operator retries or purges them.
CREATE INDEX intents_dead_idx ON outbox.intents (updated_at) WHERE state = 'dead';

-- Per-user history: the user PUTs (made or skipped) of one user id.
CREATE INDEX attempts_user_target_idx ON outbox.attempts (target, started_at) WHERE step = 'user';

-- Each intent's delivery status with its calls summarised. Filter it by id,
-- key or conversation_id: the summary is computed per intent row, through
-- the attempts' primary key.
CREATE VIEW outbox.intent_status AS
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
        SELECT count(*) FILTER (WHERE a.outcome <> 'skipped') AS calls,
               count(*) FILTER (WHERE a.outcome NOT IN ('ok', 'skipped')) AS failed_calls,
               max(a.started_at) AS last_call_at
          FROM outbox.attempts a
         WHERE a.intent_id = i.id) c ON true;

COMMENT ON VIEW outbox.intent_status IS
    'One row per intent: state, attempts, call counts, last error, latency (insert to done) in seconds.';

-- Intents that need a look: pending and due for over a minute without being
-- claimed (with the earlier intent of their conversation they wait for, if
-- any), or delivering past their lease (the relay holding them stopped
-- renewing; the sweep takes them back within a second).
CREATE VIEW outbox.stuck_intents AS
SELECT i.id,
       i.key,
       i.conversation_id,
       i.state,
       CASE
         WHEN i.state = 'delivering' THEN 'lease expired'
         WHEN b.id IS NOT NULL THEN 'waiting for an earlier intent of its conversation'
         ELSE 'due but not claimed'
       END AS reason,
       b.id AS waits_for,
       b.state AS waits_for_state,
       i.attempts,
       i.run_after,
       i.lease_owner,
       i.lease_expires_at,
       i.last_error,
       extract(epoch FROM now() - i.created_at)::double precision AS age_s
  FROM outbox.intents i
  LEFT JOIN LATERAL (
        SELECT e.id, e.state
          FROM outbox.intents e
         WHERE e.conversation_id = i.conversation_id
           AND e.id < i.id
           AND e.state IN ('pending', 'delivering')
         ORDER BY e.id
         LIMIT 1) b ON i.state = 'pending'
 WHERE (i.state = 'pending' AND i.run_after < now() - interval '1 minute')
    OR (i.state = 'delivering' AND i.lease_expires_at < now());

COMMENT ON VIEW outbox.stuck_intents IS
    'Pending intents due for over a minute, and delivering intents past their lease, with why.';

-- Dead letters with their reason and the call that failed last.
CREATE VIEW outbox.dead_letters AS
SELECT i.id,
       i.key,
       i.conversation_id,
       i.attempts,
       i.updated_at AS died_at,
       i.last_error,
       f.step AS failed_step,
       f.target AS failed_target,
       f.status AS failed_status,
       f.outcome AS failed_outcome,
       i.created_at,
       i.retried_at
  FROM outbox.intents i
  LEFT JOIN LATERAL (
        SELECT a.step, a.target, a.status, a.outcome
          FROM outbox.attempts a
         WHERE a.intent_id = i.id
           AND a.outcome NOT IN ('ok', 'skipped')
         ORDER BY a.id DESC
         LIMIT 1) f ON true
 WHERE i.state = 'dead';

COMMENT ON VIEW outbox.dead_letters IS
    'Dead intents: why they died (last_error) and the last failed call.';

-- Calls per minute over the last hour, by step and outcome class, with
-- their latency: what is happening now. Bounded in the view itself, since a
-- filter on "minute" cannot narrow the scan (date_trunc hides started_at):
-- it reads an hour of the started_at index, not the day's or the whole
-- history. For longer ranges, group outbox.attempts by started_at directly.
CREATE VIEW outbox.calls_per_minute AS
SELECT date_trunc('minute', a.started_at) AS minute,
       a.step,
       a.outcome,
       count(*) AS calls,
       (avg(a.duration_ms) / 1000)::double precision AS avg_s,
       (max(a.duration_ms) / 1000)::double precision AS max_s
  FROM outbox.attempts a
 WHERE a.started_at > now() - interval '1 hour'
 GROUP BY 1, 2, 3;

COMMENT ON VIEW outbox.calls_per_minute IS
    'TalkJS calls per minute in the last hour, by step and outcome, with latency in seconds.';

-- Lag: how far behind delivery is. The oldest intent a relay could claim
-- now (pending, due, first of its conversation), taken in the claim's own
-- order, so it reads the claim's index (intents_claimable_idx).
CREATE VIEW outbox.lag AS
SELECT (SELECT count(*) FROM outbox.intents WHERE state = 'pending') AS pending,
       (SELECT count(*) FROM outbox.intents WHERE state = 'delivering') AS delivering,
       n.id AS next_id,
       coalesce(extract(epoch FROM now() - n.created_at), 0)::double precision AS lag_s
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (
        SELECT i.id, i.created_at
          FROM outbox.intents i
         WHERE i.state = 'pending'
           AND NOT i.parked -- parked: behind an earlier intent (see the claim)
           AND i.run_after <= now()
           AND NOT EXISTS (
               SELECT 1
                 FROM outbox.intents earlier
                WHERE earlier.conversation_id = i.conversation_id
                  AND earlier.id < i.id
                  AND earlier.state IN ('pending', 'delivering'))
         ORDER BY i.run_after, i.id
         LIMIT 1) n ON true;

COMMENT ON VIEW outbox.lag IS
    'Pending and delivering counts, and the age in seconds of the next deliverable intent.';

-- One conversation's history: its intents in order, each with its calls to
-- that conversation. Filter by conversation_id.
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

-- One user's history: every PUT of that user (made or skipped), with the
-- intent it was made for. Filter by user_id.
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

-- +goose Down
DROP VIEW outbox.user_history;
DROP VIEW outbox.conversation_history;
DROP VIEW outbox.lag;
DROP VIEW outbox.calls_per_minute;
DROP VIEW outbox.dead_letters;
DROP VIEW outbox.stuck_intents;
DROP VIEW outbox.intent_status;
DROP INDEX outbox.attempts_user_target_idx;
DROP INDEX outbox.intents_dead_idx;
