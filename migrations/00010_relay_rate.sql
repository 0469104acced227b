-- +goose Up
-- Each relay publishes the request rate its adaptive limit has found, so
-- that a relay joining starts from its share of what the others found, and
-- the relays that remain when one leaves rescale to keep the app's total
-- (relay/rate.go). 0: nothing published yet, or a fixed limit.
ALTER TABLE outbox.relays
    ADD COLUMN rate double precision NOT NULL DEFAULT 0
        CONSTRAINT relays_rate_valid CHECK (rate >= 0 AND rate < 'Infinity');

COMMENT ON COLUMN outbox.relays.rate IS
    'Requests per second this relay currently allows itself (its adaptive limit); 0 when none is published.';

-- +goose Down
ALTER TABLE outbox.relays DROP COLUMN rate;
