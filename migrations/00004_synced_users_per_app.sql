-- User-sync records are kept per TalkJS app: a record says "app_id holds
-- exactly this content for this user", so a copy of the database pointed
-- at another app (staging) never skips a user that app has not received.
-- Rows written before have app_id '', which no relay configured with an
-- app id matches; the relays' clean-up deletes them within a day.

-- +goose Up
ALTER TABLE outbox.synced_users ADD COLUMN app_id text NOT NULL DEFAULT '';
ALTER TABLE outbox.synced_users ALTER COLUMN app_id DROP DEFAULT;
ALTER TABLE outbox.synced_users DROP CONSTRAINT synced_users_pkey;
ALTER TABLE outbox.synced_users ADD PRIMARY KEY (app_id, user_id);

-- +goose Down
-- The records are a cache: without the app they were made for, none can
-- be trusted.
DELETE FROM outbox.synced_users;
ALTER TABLE outbox.synced_users DROP CONSTRAINT synced_users_pkey;
ALTER TABLE outbox.synced_users DROP COLUMN app_id;
ALTER TABLE outbox.synced_users ADD PRIMARY KEY (user_id);
