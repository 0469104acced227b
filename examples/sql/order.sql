-- Place an order and queue its TalkJS conversation start in one
-- transaction, from plain SQL (any language does the same), then see the
-- idempotency key at work and ask where the intent is.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f examples/sql/order.sql
--
-- Needs the outbox schema (`outbox-relay migrate`); creates the orders table
-- of examples/orderapp if it is missing.

CREATE TABLE IF NOT EXISTS orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    buyer_id   text NOT NULL,
    seller_id  text NOT NULL,
    item       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- 1. The order and its intent commit together, or not at all.
BEGIN;
WITH o AS (
    INSERT INTO orders (buyer_id, seller_id, item)
    VALUES ('u1', 'u2', 'A blue scarf')
    RETURNING id
)
INSERT INTO outbox.intents (key, payload)
SELECT 'order-' || o.id, jsonb_build_object(
    'users', '[{"id": "u1", "name": "Alice", "email": ["alice@example.com"]},
               {"id": "u2", "name": "Bob", "email": ["bob@example.com"]}]'::jsonb,
    'conversation', jsonb_build_object(
        'id', 'order_' || o.id,
        'subject', 'Order #' || o.id),
    'messages', jsonb_build_array(jsonb_build_object(
        'type', 'SystemMessage',
        'text', 'Order #' || o.id || ' placed')))
  FROM o
RETURNING id AS intent_id, key AS intent_key \gset
COMMIT;

-- 2. An application retry for the same order cannot queue a second
-- conversation start: the key is taken (SQLSTATE 23505).
\set ON_ERROR_STOP off
INSERT INTO outbox.intents (key, payload)
SELECT key, payload FROM outbox.intents WHERE key = :'intent_key';
\set ON_ERROR_STOP on

-- 3. Where is it? pending until a relay delivers it, then done.
SELECT id, key, state, attempts, last_error
  FROM outbox.intents
 WHERE key = :'intent_key';
