-- +goose Up
-- The insert trigger validates, takes the conversation's order lock and
-- draws the id in one PL/pgSQL expression. PERFORM runs its expression as a
-- query: an executor start, a snapshot and an executor end per statement,
-- twice per inserted row. A condition is a simple expression, evaluated
-- directly. The order is the same as before: validate_payload raises on a
-- bad payload (it never returns false), then the lock, and only then the
-- id (AND evaluates left to right and stops at the first false).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, outbox, pg_temp
AS $$
BEGIN
    -- Per-conversation order lock. Two transactions inserting intents for
    -- the same conversation serialise here until the first one ends, so the
    -- id taken below orders them as they commit. Unrelated conversations do
    -- not wait on each other (a 32-bit hash collision only makes two
    -- producers take turns). The two-key form keeps clear of an
    -- application's own single-key advisory locks. pg_advisory_xact_lock
    -- returns void, which is not NULL.
    IF outbox.validate_payload(NEW.payload)
       AND pg_advisory_xact_lock(1868788344, hashtext(NEW.payload #>> '{conversation,id}')) IS NOT NULL THEN
        NEW.id := nextval('outbox.intents_id_seq');
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
-- A trigger function needs no EXECUTE to fire (CREATE OR REPLACE keeps the
-- revocation of 00006; repeated here so this file stands alone).
REVOKE EXECUTE ON FUNCTION outbox.intents_before_insert() FROM PUBLIC;

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, outbox, pg_temp
AS $$
BEGIN
    PERFORM outbox.validate_payload(NEW.payload);
    PERFORM pg_advisory_xact_lock(1868788344, hashtext(NEW.payload #>> '{conversation,id}'));
    NEW.id := nextval('outbox.intents_id_seq');
    RETURN NEW;
END
$$;
-- +goose StatementEnd
