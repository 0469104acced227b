-- +goose Up

-- Conversation-sync records, as outbox.synced_users is for users: a row
-- says "TalkJS app app_id holds exactly this content for this
-- conversation" (the participants, subject and custom data its PUT sends),
-- because a PUT of that content was answered 200 at synced_at. An intent
-- whose conversation content matches a record younger than the relay's
-- OUTBOX_USER_SYNC_TTL skips the conversation PUT. The claim deletes the
-- record of a conversation it is about to PUT, before the PUT; the
-- completion writes it only after a 200 for that content, and deletes it
-- after a PUT that failed or got no answer, or a permanent answer to the
-- messages POST (a 404: TalkJS no longer has the conversation). Keyed per
-- app, so a copy of the database pointed at another app never skips.
CREATE TABLE outbox.synced_conversations (
    app_id          text        NOT NULL,
    conversation_id text        NOT NULL,
    content_hash    bytea       NOT NULL,
    synced_at       timestamptz NOT NULL,
    PRIMARY KEY (app_id, conversation_id)
);

COMMENT ON TABLE outbox.synced_conversations IS
    'Conversations whose content TalkJS app app_id answered 200 for at synced_at; an unchanged conversation is not PUT again within the TTL.';

-- +goose Down
-- The records are a cache: dropping them costs one PUT per conversation.
DROP TABLE outbox.synced_conversations;
