-- +goose Up
-- Operator controls every relay obeys: one row. `outbox-relay pause` sets
-- paused_at (and who and why); `outbox-relay resume` clears it. The claim
-- statement reads the row itself, so no relay claims once a pause has
-- committed, and a pause takes the table's ACCESS EXCLUSIVE lock to
-- commit, so it waits for claims already reading the row and no claim
-- starts reading it until the pause is visible (see relay/control.go).
CREATE TABLE outbox.control (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Set while delivery is paused by an operator; NULL otherwise.
    paused_at timestamptz,
    -- The database role that paused, and the reason it gave.
    paused_by text,
    reason    text,
    CONSTRAINT control_pause_complete CHECK ((paused_at IS NULL) = (paused_by IS NULL))
);
INSERT INTO outbox.control DEFAULT VALUES;

COMMENT ON TABLE outbox.control IS
    'Operator controls shared by every relay: paused_at is set while `outbox-relay pause` holds delivery.';

-- +goose Down
DROP TABLE outbox.control;
