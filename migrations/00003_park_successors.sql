-- +goose Up
-- A pending intent behind an earlier pending or delivering intent of its
-- conversation cannot be claimed. The claim marks such an intent parked the
-- first time it walks past it, and leaves parked intents out of its scan;
-- the completion (or expiry) that ends its predecessor clears the mark of
-- that predecessor's next intent only. A head failing again and again thus
-- writes nothing but its own row, however long the queue behind it, and
-- the claim never walks that queue twice.
ALTER TABLE outbox.intents ADD COLUMN parked boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN outbox.intents.parked IS
    'Set by the relay while the intent waits behind an earlier intent of its conversation; the claim skips it.';

-- The claim scan: due pending intents not parked, oldest first. Keyed on
-- run_after so that intents waiting out a backoff are never walked.
CREATE INDEX intents_claimable_idx ON outbox.intents (run_after, id)
    WHERE state = 'pending' AND NOT parked;
DROP INDEX outbox.intents_pending_idx;

-- +goose Down
CREATE INDEX intents_pending_idx ON outbox.intents (run_after, id) WHERE state = 'pending';
DROP INDEX outbox.intents_claimable_idx;
ALTER TABLE outbox.intents DROP COLUMN parked;
