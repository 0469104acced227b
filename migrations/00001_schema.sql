-- +goose Up
-- The outbox schema itself is created by the migrator before goose runs, so
-- that goose's version table (outbox.goose_db_version) can live inside it.

CREATE SEQUENCE outbox.intents_id_seq AS bigint;

CREATE TABLE outbox.intents (
    -- Assigned by outbox.intents_before_insert after it takes the
    -- conversation's order lock, so that within a conversation id order is
    -- commit order. Never supply it.
    id               bigint      PRIMARY KEY,
    key              text        UNIQUE,
    -- Namespaces the message idempotency keys of this intent
    -- ({delivery_key}-{message index}): the same on every retry by any
    -- relay, and new for every insert, even in a database restored from a
    -- backup or cloned into staging, whose ids repeat.
    delivery_key     uuid        NOT NULL DEFAULT gen_random_uuid(),
    payload          jsonb       NOT NULL,
    conversation_id  text        GENERATED ALWAYS AS (payload #>> '{conversation,id}') STORED,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'delivering', 'done', 'dead')),
    -- Delivery attempts so far; a rate-limited or paused attempt is given back.
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Not delivered before this time (backoff; or an application's delay).
    run_after        timestamptz NOT NULL DEFAULT now(),
    -- The relay process holding the intent, and until when (database clock).
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Incremented by every claim; completion is fenced on it.
    lease_token      bigint      NOT NULL DEFAULT 0,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    -- Set by `outbox-relay retry`: the retry budget's max age counts from here.
    retried_at       timestamptz,
    CONSTRAINT intents_lease_matches_state
        CHECK ((state = 'delivering') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT intents_done_at_matches_state
        CHECK ((state = 'done') = (done_at IS NOT NULL))
)
-- Room on each page for the row's next versions (the claim, the
-- completion), so they stay beside it instead of joining the last page,
-- where producers are inserting.
WITH (fillfactor = 70);

COMMENT ON TABLE outbox.intents IS
    'Conversation-start intents written by applications and delivered to TalkJS by outbox-relay.';

-- The claim scan: due pending intents, oldest first. Keyed on run_after so
-- that intents waiting out a backoff (an API outage can put a whole backlog
-- there) are never walked by the claim.
CREATE INDEX intents_pending_idx ON outbox.intents (run_after, id) WHERE state = 'pending';
-- "Is an earlier intent of this conversation still pending or delivering?"
CREATE INDEX intents_active_conversation_idx ON outbox.intents (conversation_id, id)
    WHERE state IN ('pending', 'delivering');
-- Lease expiry sweep and lease renewal. Keyed on id, not on
-- lease_expires_at, so that renewing a lease changes no indexed column and
-- stays a HOT update.
CREATE INDEX intents_delivering_idx ON outbox.intents (id) WHERE state = 'delivering';
-- Auditors: everything about one conversation.
CREATE INDEX intents_conversation_idx ON outbox.intents (conversation_id);

-- Every HTTP call made for an intent (and every user PUT skipped because the
-- same content was synchronised recently). intent_id has no foreign key on
-- purpose: checking one takes a share lock on the intent row for every
-- attempt row, which was most of the cost of recording a batch; attempts
-- are only ever written by the relay for intents it holds.
CREATE TABLE outbox.attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    intent_id   bigint      NOT NULL,
    attempt     integer     NOT NULL,
    step        text        NOT NULL CHECK (step IN ('user', 'conversation', 'messages')),
    target      text        NOT NULL,
    status      integer,
    outcome     text        NOT NULL
                            CHECK (outcome IN ('ok', 'skipped', 'retryable', 'permanent',
                                               'rate_limited', 'auth', 'canceled')),
    error       text,
    duration_ms real        NOT NULL,
    relay       text        NOT NULL,
    started_at  timestamptz NOT NULL,
    -- An intent's calls in the order they were recorded: the key auditors
    -- and retention look attempts up by (no separate index on id).
    PRIMARY KEY (intent_id, id)
);
-- Time ranges ("failed calls in the last hour"). A B-tree, not BRIN:
-- retention frees old pages and new rows fill them, which would widen
-- every BRIN range until it matched any query.
CREATE INDEX attempts_started_at_idx ON outbox.attempts (started_at);

COMMENT ON TABLE outbox.attempts IS
    'One row per TalkJS call made (or skipped) while delivering an intent.';

-- Users whose current content TalkJS already has, so an unchanged user is
-- not PUT again within the configured TTL.
CREATE TABLE outbox.synced_users (
    user_id      text        PRIMARY KEY,
    content_hash bytea       NOT NULL,
    synced_at    timestamptz NOT NULL
);

-- Live relay processes (heartbeats). Used to share the rate limit and shown
-- by `outbox-relay status`.
CREATE TABLE outbox.relays (
    id           text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    version      text        NOT NULL DEFAULT ''
);

-- Wake-up flag. A relay that found no work sets waiting before it sleeps; the
-- first insert that sees it clears it and sends one NOTIFY. Under load no
-- relay is waiting, so producers never NOTIFY (a NOTIFY takes a cluster-wide
-- lock at commit and would serialise their commits).
CREATE TABLE outbox.wakeup (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    waiting   boolean NOT NULL DEFAULT false
);
INSERT INTO outbox.wakeup DEFAULT VALUES;

-- +goose StatementBegin
CREATE FUNCTION outbox.intents_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

CREATE TRIGGER intents_before_insert
    BEFORE INSERT ON outbox.intents
    FOR EACH ROW EXECUTE FUNCTION outbox.intents_before_insert();

-- +goose StatementBegin
CREATE FUNCTION outbox.intents_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Cheap read in the common case (no relay idle). When one waits, clear
    -- the flag (skipping the row if another producer is clearing it) and
    -- notify. Every producer that saw the flag set notifies, not only the
    -- one that cleared it: the other may still roll back.
    IF EXISTS (SELECT 1 FROM outbox.wakeup WHERE waiting) THEN
        UPDATE outbox.wakeup SET waiting = false
         WHERE ctid = (SELECT ctid FROM outbox.wakeup WHERE waiting FOR UPDATE SKIP LOCKED);
        PERFORM pg_notify('outbox_intents', '');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER intents_after_insert
    AFTER INSERT ON outbox.intents
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.intents_after_insert();

-- +goose Down
DROP TABLE outbox.wakeup;
DROP TABLE outbox.relays;
DROP TABLE outbox.synced_users;
DROP TABLE outbox.attempts;
DROP TABLE outbox.intents;
DROP FUNCTION outbox.intents_after_insert();
DROP FUNCTION outbox.intents_before_insert();
DROP SEQUENCE outbox.intents_id_seq;
