-- +goose Up
-- The insert trigger judges the payload with outbox.payload_ok first, and
-- calls outbox.validate_payload only when it says no. validate_payload is
-- PL/pgSQL: each of its few dozen statements on the valid path is an
-- expression that PL/pgSQL sets up again in every transaction, which cost
-- more than evaluating them. payload_ok is one SQL expression, inlined
-- into the trigger's condition when that is planned: a few jsonb
-- operators and one jsonpath, set up in a few steps.
--
-- payload_ok is true only for a payload validate_payload accepts; false
-- means "not judged here". It says false for every invalid payload and
-- also, to stay one cheap pass, for some valid ones, which validate_payload
-- then accepts as before:
--   more than 8 users or 8 participants (their uniqueness is checked pair
--   by pair),
--   user ids, or participants, longer than 256 bytes of JSON text in all
--   (each id's limit is then certain without measuring it),
--   a UserMessage when the payload names neither participants nor users
--   (its sender's limits come from the members otherwise).
-- A refused payload is therefore always reported by validate_payload, with
-- its messages unchanged. outbox's TestPayloadFastPathAgrees runs the
-- validation test table and seeded mutations of valid payloads through
-- both and fails on any payload payload_ok accepts and validate_payload
-- refuses. A migration that makes a rule stricter replaces payload_ok too.
--
-- jsonpath in lax mode: a missing member is an empty sequence, so every
-- rule is written as "no item breaks it" or as a comparison that is false
-- when the item is absent. Lax mode also unwraps arrays in filters and
-- comparisons but not in .type() and .size(), so every item's type is
-- checked with .type() on its own (a filter would look into an array
-- nested in users, messages or participants).
-- +goose StatementBegin
CREATE FUNCTION outbox.payload_ok(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN pg_catalog.jsonb_typeof(p) = 'object'
                 AND pg_catalog.jsonb_typeof(p -> 'conversation') = 'object' THEN
        pg_catalog.octet_length(p::text) <= 262144
        AND p - '{users,conversation,messages}'::text[] = '{}'::jsonb
        AND (p -> 'conversation') - '{id,subject,participants,custom}'::text[] = '{}'::jsonb
        AND pg_catalog.length(p #>> '{conversation,id}') <= 256
        AND pg_catalog.octet_length(coalesce(p #> '{conversation,participants}', 'null')::text) <= 256
        AND pg_catalog.octet_length(pg_catalog.jsonb_path_query_array(p, 'lax $.users[*].id')::text) <= 256
        AND pg_catalog.jsonb_path_match(p, 'lax
 $.conversation.id.type() == "string"
 && !($.conversation.id == "" || $.conversation.id like_regex "[\u0001-\u001f\u007f]")
 && !exists($.conversation.subject.type() ? (@ != "string" && @ != "null"))
 && !exists($.conversation.custom.type() ? (@ != "object" && @ != "null"))
 && !exists($.conversation.custom.*.type() ? (@ != "string"))
 && !exists($.conversation.participants.type() ? (@ != "array" && @ != "null"))
 && !exists($.conversation.participants.size() ? (@ == 0 || @ > 8))
 && !exists($.conversation.participants[*].type() ? (@ != "string" && $.conversation.participants.type() == "array"))
 && !exists($.conversation.participants[*] ? (@.type() == "string"
      && (@ == "" || @ like_regex "[\u0001-\u001f\u007f]")))
 && !exists($.users.type() ? (@ != "array" && @ != "null"))
 && !exists($.users.size() ? (@ > 8))
 && !exists($.users[*].type() ? (@ != "object" && $.users.type() == "array"))
 && !exists($.users[*] ? (@.type() == "object" && (
         exists(@.keyvalue() ? (@.key != "id" && @.key != "name" && @.key != "email" && @.key != "photoUrl"
                                && @.key != "welcomeMessage" && @.key != "role" && @.key != "custom"))
      || !(@.id.type() == "string") || @.id == "" || @.id like_regex "[\u0001-\u001f\u007f]"
      || !(@.name.type() == "string") || @.name == ""
      || !(@.email.type() == "array") || @.email.size() == 0
      || exists(@.email[*].type() ? (@ != "string")) || exists(@.email[*] ? (@ == ""))
      || exists(@.photoUrl.type() ? (@ != "string" && @ != "null"))
      || exists(@.welcomeMessage.type() ? (@ != "string" && @ != "null"))
      || exists(@.role.type() ? (@ != "string" && @ != "null"))
      || exists(@.custom.type() ? (@ != "object" && @ != "null"))
      || exists(@.custom.*.type() ? (@ != "string")))))
 && !exists($.messages.type() ? (@ != "array" && @ != "null"))
 && !exists($.messages.size() ? (@ > 100))
 && !exists($.messages[*].type() ? (@ != "object" && $.messages.type() == "array"))
 && !exists($.messages[*] ? (@.type() == "object" && (
         exists(@.keyvalue() ? (@.key != "type" && @.key != "sender" && @.key != "text" && @.key != "custom"))
      || !(@.text.type() == "string") || @.text == ""
      || exists(@.custom.type() ? (@ != "object" && @ != "null"))
      || exists(@.custom.*.type() ? (@ != "string"))
      || exists(@."type".type() ? (@ != "string" && @ != "null"))
      || exists(@."type" ? (@.type() == "string" && @ != "UserMessage" && @ != "SystemMessage"))
      || (@."type" == "SystemMessage" && exists(@.sender.type() ? (@ != "null")))
      || (!(@."type" == "SystemMessage") && (!(@.sender.type() == "string")
          || ($.conversation.participants.type() == "array" && !(@.sender == $.conversation.participants[*]))
          || (!($.conversation.participants.type() == "array") && !($.users.type() == "array" && $.users.size() > 0))
          || (!($.conversation.participants.type() == "array") && !(@.sender == $.users[*].id)))))))
 && !($.users[0].id == $.users[1 to last].id
      || ($.users.size() > 2 && ($.users[1].id == $.users[2 to last].id
      || ($.users.size() > 3 && ($.users[2].id == $.users[3 to last].id
      || ($.users.size() > 4 && ($.users[3].id == $.users[4 to last].id
      || ($.users.size() > 5 && ($.users[4].id == $.users[5 to last].id
      || ($.users.size() > 6 && ($.users[5].id == $.users[6 to last].id
      || ($.users.size() > 7 && $.users[6].id == $.users[7 to last].id))))))))))))
 && !($.conversation.participants[0] == $.conversation.participants[1 to last]
      || ($.conversation.participants.size() > 2 && ($.conversation.participants[1] == $.conversation.participants[2 to last]
      || ($.conversation.participants.size() > 3 && ($.conversation.participants[2] == $.conversation.participants[3 to last]
      || ($.conversation.participants.size() > 4 && ($.conversation.participants[3] == $.conversation.participants[4 to last]
      || ($.conversation.participants.size() > 5 && ($.conversation.participants[4] == $.conversation.participants[5 to last]
      || ($.conversation.participants.size() > 6 && ($.conversation.participants[5] == $.conversation.participants[6 to last]
      || ($.conversation.participants.size() > 7 && $.conversation.participants[6] == $.conversation.participants[7 to last]))))))))))))',
            '{}', true)
    END IS TRUE;
-- +goose StatementEnd
-- Called by the insert trigger, as the inserting role (granted to the
-- producer, like validate_payload; inlining needs EXECUTE too).
REVOKE EXECUTE ON FUNCTION outbox.payload_ok(jsonb) FROM PUBLIC;
-- Producers granted before this version may call payload_ok at once: the
-- trigger calls it as the inserting role, and their inserts (in the
-- application's own transactions) must not fail between this migration
-- and the next `outbox-relay grant`. Every role that may call
-- validate_payload may call payload_ok.
-- +goose StatementBegin
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole
          FROM pg_catalog.pg_proc p,
               pg_catalog.aclexplode(p.proacl) AS a
         WHERE p.oid = 'outbox.validate_payload(jsonb)'::regprocedure
           AND a.privilege_type = 'EXECUTE'
           AND a.grantee <> 0            -- PUBLIC: revoked (00006)
           AND a.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION outbox.payload_ok(jsonb) TO %s', grantee);
    END LOOP;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION outbox.payload_ok(jsonb) IS
    'True only for a valid intent payload of a common shape; false for every invalid one. The insert trigger calls validate_payload when it is false.';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, outbox, pg_temp
AS $$
BEGIN
    -- Valid when payload_ok says so, else validate_payload judges and
    -- raises on a bad payload (it never returns false). Then the
    -- per-conversation order lock, and only then the id (00011 explains
    -- the lock; OR and AND evaluate left to right and stop when decided).
    IF (outbox.payload_ok(NEW.payload) OR outbox.validate_payload(NEW.payload))
       AND pg_advisory_xact_lock(1868788344, hashtext(NEW.payload #>> '{conversation,id}')) IS NOT NULL THEN
        NEW.id := nextval('outbox.intents_id_seq');
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION outbox.intents_before_insert() FROM PUBLIC;

-- +goose Down
-- 00011's trigger function.
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
DROP FUNCTION outbox.payload_ok(jsonb);
