-- +goose Up

-- Retention's scan: done intents, oldest done first. Partial, so it holds
-- only the history retention may delete, and a batch reads its rows in
-- done_at order and stops after the batch instead of walking the table.
CREATE INDEX intents_done_at_idx ON outbox.intents (done_at) WHERE state = 'done';

-- Idempotency keys of intents that retention deleted. A key stays taken
-- after its intent is gone, so an application retry long after delivery is
-- still refused as a duplicate instead of posting the messages again. Kept
-- for the relay's key retention (OUTBOX_KEY_RETENTION), far longer than
-- done intents are.
CREATE TABLE outbox.retired_keys (
    key        text        PRIMARY KEY,
    -- The deleted intent that held the key, for auditors.
    intent_id  bigint      NOT NULL,
    retired_at timestamptz NOT NULL DEFAULT now()
);
-- The horizon's scan: oldest retirements first.
CREATE INDEX retired_keys_retired_at_idx ON outbox.retired_keys (retired_at);

COMMENT ON TABLE outbox.retired_keys IS
    'Idempotency keys of intents deleted by retention; an insert with one of them is refused as a duplicate.';

-- +goose StatementBegin
-- Refuses a key that is retired, with the error a live duplicate gets
-- (SQLSTATE 23505 on intents_key_key), so applications keep one error path.
--
-- Locking: retention deletes an intent and retires its key in one
-- transaction. A producer inserting that key while retention runs first
-- passes the unique index on intents.key, which waits for the deleting
-- transaction to end (a live duplicate fails there already). This trigger
-- runs after that index insert:
-- * under READ COMMITTED each query here takes a fresh snapshot, taken
--   after the wait, so it sees the retired key retention committed;
-- * under REPEATABLE READ or SERIALIZABLE the snapshot is the
--   transaction's: if it began before retention committed, the deleted
--   intent is still visible in it (the second test), otherwise the retired
--   key is (the first).
-- Both lookups are single index probes, and the trigger's WHEN clause
-- skips rows without a key. SECURITY DEFINER: a producer role needs to
-- read neither retired keys nor other applications' intents.
CREATE FUNCTION outbox.intents_refuse_retired_key() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, outbox, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox.retired_keys r WHERE r.key = NEW.key)
       OR EXISTS (SELECT 1 FROM outbox.intents i WHERE i.key = NEW.key AND i.id <> NEW.id) THEN
        RAISE EXCEPTION 'duplicate key value violates unique constraint "intents_key_key"'
            USING ERRCODE = 'unique_violation',
                  DETAIL = format('Key (key)=(%s) already exists.', NEW.key),
                  HINT = 'An intent with this key was delivered and then deleted by retention; '
                         'the key stays taken (see outbox.retired_keys).',
                  CONSTRAINT = 'intents_key_key',
                  TABLE = 'intents',
                  SCHEMA = 'outbox';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
-- A trigger function needs no EXECUTE to fire.
REVOKE EXECUTE ON FUNCTION outbox.intents_refuse_retired_key() FROM PUBLIC;

CREATE TRIGGER intents_refuse_retired_key
    AFTER INSERT OR UPDATE OF key ON outbox.intents
    FOR EACH ROW
    WHEN (NEW.key IS NOT NULL)
    EXECUTE FUNCTION outbox.intents_refuse_retired_key();

-- The retry budget's age (OUTBOX_MAX_AGE) counts from an intent's first
-- counted failure, not from its creation: time spent waiting behind an
-- earlier intent of its conversation, or while delivery was paused, before
-- it ever failed, spends nothing. Set by the relay on the first failure,
-- cleared by `outbox-relay retry`. Intents already failing keep the clock
-- they had.
ALTER TABLE outbox.intents ADD COLUMN failing_since timestamptz;
UPDATE outbox.intents SET failing_since = greatest(created_at, retried_at)
 WHERE state IN ('pending', 'delivering') AND attempts > 0;

-- +goose StatementBegin
-- Guards an intent's payload once delivery may have used it. While the
-- intent is delivering nothing may change: the relay holding it is
-- sending what it read. Once it has ever been claimed (lease_token > 0),
-- its messages may be in TalkJS under the idempotency keys
-- {delivery_key}-{index}: changing, removing or reordering one would send
-- a different message under a key TalkJS already holds, which TalkJS
-- drops silently, so only appending is allowed. Users and the
-- conversation may still be corrected (their PUTs are upserts), e.g.
-- before `outbox-relay retry` of a dead intent.
CREATE FUNCTION outbox.intents_guard_payload() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, outbox, pg_temp
AS $$
DECLARE
    old_messages jsonb := coalesce(OLD.payload -> 'messages', '[]');
    new_messages jsonb := coalesce(NEW.payload -> 'messages', '[]');
BEGIN
    IF OLD.state = 'delivering' THEN
        RAISE EXCEPTION 'intent %: its payload cannot change while it is being delivered', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Change it once it is pending, done or dead again, or insert a new intent.';
    END IF;
    IF OLD.lease_token > 0 AND old_messages IS DISTINCT FROM new_messages
       AND (jsonb_array_length(new_messages) < jsonb_array_length(old_messages)
            OR EXISTS (SELECT 1
                         FROM generate_series(0, jsonb_array_length(old_messages) - 1) AS g(i)
                        WHERE new_messages -> g.i IS DISTINCT FROM old_messages -> g.i)) THEN
        RAISE EXCEPTION 'intent %: messages cannot be changed, removed or reordered once delivery has started', OLD.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'TalkJS may already hold them under the idempotency keys {delivery_key}-{index}, '
                           'and would drop a different message sent under the same key without an error.',
                  HINT = 'Only appending messages is allowed; to send other messages, insert a new intent.';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION outbox.intents_guard_payload() FROM PUBLIC;

-- Runs after intents_before_update (names fire in order), so a payload
-- that breaks a rule is reported as such first.
CREATE TRIGGER intents_guard_payload
    BEFORE UPDATE OF payload ON outbox.intents
    FOR EACH ROW
    WHEN (OLD.payload IS DISTINCT FROM NEW.payload)
    EXECUTE FUNCTION outbox.intents_guard_payload();

-- +goose Down
DROP TRIGGER intents_guard_payload ON outbox.intents;
DROP FUNCTION outbox.intents_guard_payload();
ALTER TABLE outbox.intents DROP COLUMN failing_since;
DROP TRIGGER intents_refuse_retired_key ON outbox.intents;
DROP FUNCTION outbox.intents_refuse_retired_key();
DROP TABLE outbox.retired_keys;
DROP INDEX outbox.intents_done_at_idx;
