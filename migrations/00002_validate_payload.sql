-- +goose Up

-- outbox.validate_payload enforces the payload rules of the public contract
-- (section 1) at INSERT time, so that a malformed payload fails the
-- application's own transaction instead of being queued and dead-lettered
-- later. The Go package outbox checks exactly the same rules, in the same
-- order and with the same messages, before it writes (outbox/validate.go);
-- change both together.
--
-- Limits:
--   payload        at most 262144 bytes (256 KiB) as jsonb text, that is
--                  octet_length(payload::text); checked first
--   users          at most 100 entries
--   participants   at most 100 entries, no duplicates
--   messages       at most 100 entries
--   user and conversation ids (conversation.id, users[].id,
--                  conversation.participants[], messages[].sender)
--                  at most 256 characters, no ASCII control characters;
--                  users[].id unique within the payload
--   key            (the column, not the payload) 1 to 256 characters
--
-- The first broken rule is reported, checking in this order: the size, that
-- the payload is an object with known keys; conversation (id, subject,
-- custom, participants, then each participant); each user (id, name, email,
-- photoUrl, welcomeMessage, role, custom, then the id's uniqueness); each
-- message (type, sender, text, custom). Within an object, unknown keys are
-- reported first: they are usually a misspelt field.
--
-- A JSON null counts as an absent field: it satisfies an optional field and
-- fails a required one. A required string that is empty counts as absent.
--
-- A violation raises SQLSTATE 23514 (check_violation) with the message
--   invalid intent payload: <field>: <rule>
-- for example
--   invalid intent payload: users[1].email: must be a non-empty array of strings
-- and DETAIL "field: <field>", COLUMN payload and CONSTRAINT
-- intents_payload_valid. A rule about the payload as a whole (size, not an
-- object) has no field: "invalid intent payload: <rule>".
--
-- It runs on every insert (from the insert trigger, see below), so the
-- valid path is one pass over each array with cheap built-in operators;
-- the queries that name an offending key run only when raising.

-- +goose StatementBegin
-- outbox.custom_violation judges a `custom` field, which must be absent or
-- an object of string values: NULLs when it is valid, else the path below
-- the field ('' or '.<key>') and the broken rule. Only the raising path of
-- validate_payload calls it.
CREATE FUNCTION outbox.custom_violation(val jsonb, OUT below text, OUT rule text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF coalesce(jsonb_typeof(val), 'null') = 'null' THEN
        RETURN;
    END IF;
    IF jsonb_typeof(val) <> 'object' THEN
        below := ''; rule := 'must be an object'; RETURN;
    END IF;
    below := '.' || (SELECT e.key FROM jsonb_each(val) AS e WHERE jsonb_typeof(e.value) <> 'string' LIMIT 1);
    IF below IS NOT NULL THEN
        rule := 'must be a string';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION outbox.validate_payload(p jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    max_bytes    CONSTANT integer := 262144;
    max_entries  CONSTANT integer := 100;
    max_id_chars CONSTANT integer := 256;
    -- An ASCII control character (jsonb text never holds NUL). A cached
    -- regular expression is about ten times cheaper here than translate().
    control      CONSTANT text := '[\x01-\x1f\x7f]';
    size     integer;
    conv     jsonb;
    arr      jsonb;
    obj      jsonb;
    val      jsonb;
    typ      text;
    str      text;
    sender   text;
    n        integer;
    dup      integer;
    part_ids text[] := '{}';
    user_ids text[] := '{}';
    -- Who may send a UserMessage: the participants when given, else the
    -- users when there are any, else anyone (NULL).
    members  text[];
    fld      text;
    rule     text;
    below    text;
BEGIN
    -- Each object is first judged by one expression that is true only when
    -- the object is valid (the common case, and cheap: one evaluation). When
    -- it is not true, the statements after it find the first broken rule, in
    -- the documented order, and leave the block with fld and rule set.
    <<checks>>
    BEGIN
        size := octet_length(p::text);
        IF size > max_bytes THEN
            fld := '';
            rule := format('is %s bytes as JSON text, more than the limit of %s', size, max_bytes);
            EXIT checks;
        END IF;
        IF jsonb_typeof(p) <> 'object' THEN
            fld := ''; rule := 'must be a JSON object'; EXIT checks;
        END IF;
        IF p - '{users,conversation,messages}'::text[] <> '{}'::jsonb THEN
            fld := (SELECT k FROM jsonb_object_keys(p - '{users,conversation,messages}'::text[]) AS k LIMIT 1);
            rule := 'is not a known field (expected users, conversation, messages)';
            EXIT checks;
        END IF;

        -- conversation: id, subject, custom, participants
        conv := p->'conversation';
        str := conv->>'id';
        arr := conv->'participants';
        IF NOT coalesce(CASE WHEN jsonb_typeof(conv) = 'object' THEN
                conv - '{id,subject,participants,custom}'::text[] = '{}'::jsonb
                AND jsonb_typeof(conv->'id') = 'string'
                AND str <> ''
                AND (octet_length(str) <= max_id_chars OR length(str) <= max_id_chars)
                AND str !~ control
                AND coalesce(jsonb_typeof(conv->'subject'), 'null') IN ('string', 'null')
                AND coalesce(jsonb_typeof(conv->'custom'), 'null') IN ('object', 'null')
                AND NOT coalesce(jsonb_path_exists(conv->'custom', 'strict $.* ? (@.type() != "string")', '{}', true), false)
                AND CASE WHEN jsonb_typeof(arr) = 'array'
                         THEN arr <> '[]'::jsonb AND jsonb_array_length(arr) <= max_entries
                         ELSE coalesce(jsonb_typeof(arr), 'null') = 'null'
                    END
            END, false)
        THEN
            typ := jsonb_typeof(conv);
            IF typ IS NULL OR typ = 'null' THEN
                fld := 'conversation'; rule := 'is required'; EXIT checks;
            END IF;
            IF typ <> 'object' THEN
                fld := 'conversation'; rule := 'must be an object'; EXIT checks;
            END IF;
            IF conv - '{id,subject,participants,custom}'::text[] <> '{}'::jsonb THEN
                fld := 'conversation.' || (SELECT k FROM jsonb_object_keys(conv - '{id,subject,participants,custom}'::text[]) AS k LIMIT 1);
                rule := 'is not a known field (expected id, subject, participants, custom)';
                EXIT checks;
            END IF;

            fld := 'conversation.id';
            val := conv->'id';
            typ := jsonb_typeof(val);
            IF typ IS NULL OR typ = 'null' OR val = '""'::jsonb THEN
                rule := 'is required'; EXIT checks;
            END IF;
            IF typ <> 'string' THEN
                rule := 'must be a string'; EXIT checks;
            END IF;
            IF length(str) > max_id_chars THEN
                rule := format('must be at most %s characters', max_id_chars); EXIT checks;
            END IF;
            IF str ~ control THEN
                rule := 'must not contain control characters'; EXIT checks;
            END IF;

            IF jsonb_typeof(conv->'subject') NOT IN ('string', 'null') THEN
                fld := 'conversation.subject'; rule := 'must be a string'; EXIT checks;
            END IF;

            SELECT c.below, c.rule INTO below, rule FROM outbox.custom_violation(conv->'custom') AS c;
            IF rule IS NOT NULL THEN
                fld := 'conversation.custom' || below; EXIT checks;
            END IF;

            typ := jsonb_typeof(arr);
            IF typ IS NOT NULL AND typ <> 'null' THEN
                fld := 'conversation.participants';
                IF typ <> 'array' OR arr = '[]'::jsonb THEN
                    rule := 'must be a non-empty array of strings'; EXIT checks;
                END IF;
                IF jsonb_array_length(arr) > max_entries THEN
                    rule := format('must have at most %s entries', max_entries); EXIT checks;
                END IF;
            END IF;
        END IF;

        IF jsonb_typeof(arr) = 'array' THEN
            FOR i IN 0 .. jsonb_array_length(arr) - 1 LOOP
                str := arr->>i;
                IF NOT coalesce(
                    jsonb_typeof(arr->i) = 'string'
                    AND str <> ''
                    AND (octet_length(str) <= max_id_chars OR length(str) <= max_id_chars)
                    AND str !~ control
                    AND array_position(part_ids, str) IS NULL, false)
                THEN
                    fld := format('conversation.participants[%s]', i);
                    IF jsonb_typeof(arr->i) <> 'string' THEN
                        rule := 'must be a string'; EXIT checks;
                    END IF;
                    IF str = '' THEN
                        rule := 'must not be empty'; EXIT checks;
                    END IF;
                    IF length(str) > max_id_chars THEN
                        rule := format('must be at most %s characters', max_id_chars); EXIT checks;
                    END IF;
                    IF str ~ control THEN
                        rule := 'must not contain control characters'; EXIT checks;
                    END IF;
                    dup := array_position(part_ids, str);
                    IF dup IS NOT NULL THEN
                        rule := format('duplicates conversation.participants[%s]', dup - 1); EXIT checks;
                    END IF;
                END IF;
                part_ids := part_ids || str;
            END LOOP;
            members := part_ids;
        END IF;

        -- users[i]: id, name, email, photoUrl, welcomeMessage, role, custom,
        -- then the id's uniqueness
        arr := p->'users';
        typ := jsonb_typeof(arr);
        IF typ IS NOT NULL AND typ <> 'null' THEN
            IF typ <> 'array' THEN
                fld := 'users'; rule := 'must be an array'; EXIT checks;
            END IF;
            n := jsonb_array_length(arr);
            IF n > max_entries THEN
                fld := 'users'; rule := format('must have at most %s entries', max_entries); EXIT checks;
            END IF;
            FOR i IN 0 .. n - 1 LOOP
                obj := arr->i;
                str := obj->>'id';
                IF NOT coalesce(CASE WHEN jsonb_typeof(obj) = 'object' THEN
                        obj - '{id,name,email,photoUrl,welcomeMessage,role,custom}'::text[] = '{}'::jsonb
                        AND jsonb_typeof(obj->'id') = 'string'
                        AND str <> ''
                        AND (octet_length(str) <= max_id_chars OR length(str) <= max_id_chars)
                        AND str !~ control
                        AND jsonb_typeof(obj->'name') = 'string'
                        AND obj->'name' <> '""'::jsonb
                        AND jsonb_typeof(obj->'email') = 'array'
                        AND obj->'email' <> '[]'::jsonb
                        AND NOT jsonb_path_exists(obj->'email', 'strict $[*] ? (@.type() != "string" || @ == "")', '{}', true)
                        AND coalesce(jsonb_typeof(obj->'photoUrl'), 'null') IN ('string', 'null')
                        AND coalesce(jsonb_typeof(obj->'welcomeMessage'), 'null') IN ('string', 'null')
                        AND coalesce(jsonb_typeof(obj->'role'), 'null') IN ('string', 'null')
                        AND coalesce(jsonb_typeof(obj->'custom'), 'null') IN ('object', 'null')
                        AND NOT coalesce(jsonb_path_exists(obj->'custom', 'strict $.* ? (@.type() != "string")', '{}', true), false)
                    END, false)
                THEN
                    fld := format('users[%s]', i);
                    IF jsonb_typeof(obj) <> 'object' THEN
                        rule := 'must be an object'; EXIT checks;
                    END IF;
                    IF obj - '{id,name,email,photoUrl,welcomeMessage,role,custom}'::text[] <> '{}'::jsonb THEN
                        fld := fld || '.' || (SELECT k FROM jsonb_object_keys(obj - '{id,name,email,photoUrl,welcomeMessage,role,custom}'::text[]) AS k LIMIT 1);
                        rule := 'is not a known field (expected id, name, email, photoUrl, welcomeMessage, role, custom)';
                        EXIT checks;
                    END IF;

                    val := obj->'id';
                    typ := jsonb_typeof(val);
                    IF typ IS NULL OR typ = 'null' OR val = '""'::jsonb THEN
                        fld := fld || '.id'; rule := 'is required'; EXIT checks;
                    END IF;
                    IF typ <> 'string' THEN
                        fld := fld || '.id'; rule := 'must be a string'; EXIT checks;
                    END IF;
                    IF length(str) > max_id_chars THEN
                        fld := fld || '.id'; rule := format('must be at most %s characters', max_id_chars); EXIT checks;
                    END IF;
                    IF str ~ control THEN
                        fld := fld || '.id'; rule := 'must not contain control characters'; EXIT checks;
                    END IF;

                    val := obj->'name';
                    typ := jsonb_typeof(val);
                    IF typ IS NULL OR typ = 'null' OR val = '""'::jsonb THEN
                        fld := fld || '.name'; rule := 'is required'; EXIT checks;
                    END IF;
                    IF typ <> 'string' THEN
                        fld := fld || '.name'; rule := 'must be a string'; EXIT checks;
                    END IF;

                    val := obj->'email';
                    typ := jsonb_typeof(val);
                    IF typ IS NULL OR typ = 'null' THEN
                        fld := fld || '.email'; rule := 'is required'; EXIT checks;
                    END IF;
                    IF typ <> 'array' OR val = '[]'::jsonb THEN
                        fld := fld || '.email'; rule := 'must be a non-empty array of strings'; EXIT checks;
                    END IF;
                    FOR j IN 0 .. jsonb_array_length(val) - 1 LOOP
                        IF jsonb_typeof(val->j) <> 'string' THEN
                            fld := format('%s.email[%s]', fld, j); rule := 'must be a string'; EXIT checks;
                        END IF;
                        IF val->j = '""'::jsonb THEN
                            fld := format('%s.email[%s]', fld, j); rule := 'must not be empty'; EXIT checks;
                        END IF;
                    END LOOP;

                    IF jsonb_typeof(obj->'photoUrl') NOT IN ('string', 'null') THEN
                        fld := fld || '.photoUrl'; rule := 'must be a string'; EXIT checks;
                    END IF;
                    IF jsonb_typeof(obj->'welcomeMessage') NOT IN ('string', 'null') THEN
                        fld := fld || '.welcomeMessage'; rule := 'must be a string'; EXIT checks;
                    END IF;
                    IF jsonb_typeof(obj->'role') NOT IN ('string', 'null') THEN
                        fld := fld || '.role'; rule := 'must be a string'; EXIT checks;
                    END IF;

                    SELECT c.below, c.rule INTO below, rule FROM outbox.custom_violation(obj->'custom') AS c;
                    IF rule IS NOT NULL THEN
                        fld := fld || '.custom' || below; EXIT checks;
                    END IF;
                END IF;
                dup := array_position(user_ids, str);
                IF dup IS NOT NULL THEN
                    fld := format('users[%s].id', i); rule := format('duplicates users[%s].id', dup - 1); EXIT checks;
                END IF;
                user_ids := user_ids || str;
            END LOOP;
            IF members IS NULL AND n > 0 THEN
                members := user_ids;
            END IF;
        END IF;

        -- messages[i]: type, sender, text, custom
        arr := p->'messages';
        typ := jsonb_typeof(arr);
        IF typ IS NOT NULL AND typ <> 'null' THEN
            IF typ <> 'array' THEN
                fld := 'messages'; rule := 'must be an array'; EXIT checks;
            END IF;
            n := jsonb_array_length(arr);
            IF n > max_entries THEN
                fld := 'messages'; rule := format('must have at most %s entries', max_entries); EXIT checks;
            END IF;
            FOR i IN 0 .. n - 1 LOOP
                obj := arr->i;
                sender := obj->>'sender';
                IF NOT coalesce(CASE WHEN jsonb_typeof(obj) = 'object' THEN
                        obj - '{type,sender,text,custom}'::text[] = '{}'::jsonb
                        AND CASE WHEN obj->'type' = '"SystemMessage"'::jsonb THEN
                                coalesce(jsonb_typeof(obj->'sender'), 'null') = 'null'
                            WHEN coalesce(obj->'type', 'null') IN ('null', '"UserMessage"') THEN
                                jsonb_typeof(obj->'sender') = 'string'
                                AND sender <> ''
                                AND (octet_length(sender) <= max_id_chars OR length(sender) <= max_id_chars)
                                AND sender !~ control
                                AND (members IS NULL OR array_position(members, sender) IS NOT NULL)
                            ELSE false
                            END
                        AND jsonb_typeof(obj->'text') = 'string'
                        AND obj->'text' <> '""'::jsonb
                        AND coalesce(jsonb_typeof(obj->'custom'), 'null') IN ('object', 'null')
                        AND NOT coalesce(jsonb_path_exists(obj->'custom', 'strict $.* ? (@.type() != "string")', '{}', true), false)
                    END, false)
                THEN
                    fld := format('messages[%s]', i);
                    IF jsonb_typeof(obj) <> 'object' THEN
                        rule := 'must be an object'; EXIT checks;
                    END IF;
                    IF obj - '{type,sender,text,custom}'::text[] <> '{}'::jsonb THEN
                        fld := fld || '.' || (SELECT k FROM jsonb_object_keys(obj - '{type,sender,text,custom}'::text[]) AS k LIMIT 1);
                        rule := 'is not a known field (expected type, sender, text, custom)';
                        EXIT checks;
                    END IF;

                    val := obj->'type';
                    IF val = '"SystemMessage"'::jsonb THEN
                        IF coalesce(jsonb_typeof(obj->'sender'), 'null') <> 'null' THEN
                            fld := fld || '.sender'; rule := 'must be absent for a SystemMessage'; EXIT checks;
                        END IF;
                    ELSIF coalesce(val, 'null') NOT IN ('null', '"UserMessage"') THEN
                        fld := fld || '.type'; rule := 'must be "UserMessage" or "SystemMessage"'; EXIT checks;
                    ELSE
                        val := obj->'sender';
                        typ := jsonb_typeof(val);
                        IF typ IS NULL OR typ = 'null' OR val = '""'::jsonb THEN
                            fld := fld || '.sender'; rule := 'is required for a UserMessage'; EXIT checks;
                        END IF;
                        IF typ <> 'string' THEN
                            fld := fld || '.sender'; rule := 'must be a string'; EXIT checks;
                        END IF;
                        IF length(sender) > max_id_chars THEN
                            fld := fld || '.sender'; rule := format('must be at most %s characters', max_id_chars); EXIT checks;
                        END IF;
                        IF sender ~ control THEN
                            fld := fld || '.sender'; rule := 'must not contain control characters'; EXIT checks;
                        END IF;
                        IF members IS NOT NULL AND array_position(members, sender) IS NULL THEN
                            fld := fld || '.sender'; rule := 'must be one of the conversation''s participants or users'; EXIT checks;
                        END IF;
                    END IF;

                    val := obj->'text';
                    typ := jsonb_typeof(val);
                    IF typ IS NULL OR typ = 'null' OR val = '""'::jsonb THEN
                        fld := fld || '.text'; rule := 'is required'; EXIT checks;
                    END IF;
                    IF typ <> 'string' THEN
                        fld := fld || '.text'; rule := 'must be a string'; EXIT checks;
                    END IF;

                    SELECT c.below, c.rule INTO below, rule FROM outbox.custom_violation(obj->'custom') AS c;
                    IF rule IS NOT NULL THEN
                        fld := fld || '.custom' || below; EXIT checks;
                    END IF;
                END IF;
            END LOOP;
        END IF;

        RETURN true;
    END checks;

    IF fld = '' THEN
        RAISE EXCEPTION 'invalid intent payload: %', rule
            USING ERRCODE = 'check_violation', SCHEMA = 'outbox', TABLE = 'intents',
                  COLUMN = 'payload', CONSTRAINT = 'intents_payload_valid';
    END IF;
    RAISE EXCEPTION 'invalid intent payload: %: %', fld, rule
        USING ERRCODE = 'check_violation', DETAIL = 'field: ' || fld, SCHEMA = 'outbox',
              TABLE = 'intents', COLUMN = 'payload', CONSTRAINT = 'intents_payload_valid';
END
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION outbox.validate_payload(jsonb) IS
    'True for a valid intent payload; otherwise raises check_violation naming the field and the rule.';

-- Validation runs from the insert trigger rather than as a CHECK: a CHECK is
-- re-evaluated on every UPDATE of the row, so each claim, lease renewal and
-- completion would pay for it again (about 30 us a row). The payload is
-- validated before the per-conversation order lock is taken, so a bad
-- intent fails fast; an UPDATE that changes the payload is validated too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox.validate_payload(NEW.payload);
    -- Per-conversation order lock. Two transactions inserting intents for
    -- the same conversation serialise here until the first one ends, so the
    -- id taken below orders them as they commit. Unrelated conversations do
    -- not wait on each other (a 32-bit hash collision only makes two
    -- producers take turns). The two-key form keeps clear of an
    -- application's own single-key advisory locks.
    PERFORM pg_advisory_xact_lock(1868788344, hashtext(NEW.payload #>> '{conversation,id}'));
    NEW.id := nextval('outbox.intents_id_seq');
    RETURN NEW;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION outbox.intents_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox.validate_payload(NEW.payload);
    -- Moving an intent to another conversation would bypass the order
    -- lock its insert took.
    IF OLD.payload #>> '{conversation,id}' IS DISTINCT FROM NEW.payload #>> '{conversation,id}' THEN
        RAISE EXCEPTION 'invalid intent payload: conversation.id: cannot be changed after insert'
            USING ERRCODE = 'check_violation', DETAIL = 'field: conversation.id';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER intents_before_update
    BEFORE UPDATE OF payload ON outbox.intents
    FOR EACH ROW
    WHEN (OLD.payload IS DISTINCT FROM NEW.payload)
    EXECUTE FUNCTION outbox.intents_before_update();

ALTER TABLE outbox.intents
    ADD CONSTRAINT intents_key_valid CHECK (length(key) BETWEEN 1 AND 256);

-- +goose Down
ALTER TABLE outbox.intents DROP CONSTRAINT intents_key_valid;
DROP TRIGGER intents_before_update ON outbox.intents;
DROP FUNCTION outbox.intents_before_update();
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868788344, hashtext(NEW.payload #>> '{conversation,id}'));
    NEW.id := nextval('outbox.intents_id_seq');
    RETURN NEW;
END
$$;
-- +goose StatementEnd
DROP FUNCTION outbox.validate_payload(jsonb);
DROP FUNCTION outbox.custom_violation(jsonb);
