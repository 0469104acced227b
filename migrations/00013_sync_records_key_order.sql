-- +goose Up
-- The sync records' primary keys lead with the user or conversation id,
-- not the app id. The claim and the completion look records up by
-- "app_id = $app AND id = ANY (the batch's ids)". With app_id first, a
-- planner without statistics on app_id (a table analyzed while empty, as
-- at every install and after a restore, until autovacuum analyzes it
-- again) takes app_id = $app for a selective condition, scans every
-- record of the app through the index and filters each by the batch's
-- ids: at 20,000 records that was 13 ms a statement, three statements per
-- claim and one per completion, growing with the table. Led by the id,
-- the only index condition is the batch's ids, whatever the statistics
-- say. An installation has one app, so app_id never narrowed a scan.
ALTER TABLE outbox.synced_users DROP CONSTRAINT synced_users_pkey;
ALTER TABLE outbox.synced_users ADD PRIMARY KEY (user_id, app_id);
ALTER TABLE outbox.synced_conversations DROP CONSTRAINT synced_conversations_pkey;
ALTER TABLE outbox.synced_conversations ADD PRIMARY KEY (conversation_id, app_id);

-- +goose Down
ALTER TABLE outbox.synced_conversations DROP CONSTRAINT synced_conversations_pkey;
ALTER TABLE outbox.synced_conversations ADD PRIMARY KEY (app_id, conversation_id);
ALTER TABLE outbox.synced_users DROP CONSTRAINT synced_users_pkey;
ALTER TABLE outbox.synced_users ADD PRIMARY KEY (app_id, user_id);
