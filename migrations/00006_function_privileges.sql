-- +goose Up

-- Least privilege for the functions of schema outbox. Roles are the
-- operator's (they are global to the cluster): no migration creates one, and
-- `outbox-relay grant producer|relay|auditor ROLE` grants an existing role
-- what its party needs (migrations/privileges.go lists it, object by object).
--
-- Every function runs with a fixed search_path, so that a caller whose own
-- search_path puts a schema of its own first (with a jsonb_typeof, a "="
-- operator or a nextval of its own) cannot change what the function does.
-- pg_temp is named last: left out, it would be searched first for tables.

-- Runs as the inserting role: a producer is granted what it does (draw an
-- id from outbox.intents_id_seq, call validate_payload), so it needs no
-- more rights than its own.
ALTER FUNCTION outbox.intents_before_insert() SET search_path = pg_catalog, outbox, pg_temp;

-- SECURITY DEFINER: a producer's insert clears the relays' wake-up flag in
-- outbox.wakeup, a table of the relay's that producers are not granted (a
-- producer holding UPDATE on it could keep every relay asleep until its
-- next poll, or make every insert NOTIFY). The function only reads and
-- clears the flag and notifies; it is a statement trigger, so this costs
-- nothing per row.
ALTER FUNCTION outbox.intents_after_insert() SECURITY DEFINER SET search_path = pg_catalog, outbox, pg_temp;

ALTER FUNCTION outbox.intents_before_update() SET search_path = pg_catalog, outbox, pg_temp;
ALTER FUNCTION outbox.validate_payload(jsonb) SET search_path = pg_catalog, outbox, pg_temp;
ALTER FUNCTION outbox.custom_violation(jsonb) SET search_path = pg_catalog, outbox, pg_temp;

-- Functions are executable by PUBLIC unless revoked. Only roles granted
-- USAGE on schema outbox can reach them, but a function a party needs is
-- then granted to it by name, and a SECURITY DEFINER function is never
-- callable by every role with access to the schema. A trigger function
-- needs no EXECUTE to fire. A later migration that adds a function revokes
-- it from PUBLIC too (TestPrivilegesCoverSchema checks).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;

-- +goose Down
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA outbox TO PUBLIC;
ALTER FUNCTION outbox.custom_violation(jsonb) RESET search_path;
ALTER FUNCTION outbox.validate_payload(jsonb) RESET search_path;
ALTER FUNCTION outbox.intents_before_update() RESET search_path;
ALTER FUNCTION outbox.intents_after_insert() SECURITY INVOKER RESET search_path;
ALTER FUNCTION outbox.intents_before_insert() RESET search_path;
