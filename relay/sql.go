package relay

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// The relay's SQL. Each statement has one job.
//
// Locking, once: a relay claims intents with FOR UPDATE SKIP LOCKED and
// commits at once, so no transaction is ever held open across an HTTP call.
// A claimed intent is protected by its lease instead: state 'delivering',
// lease_owner, lease_expires_at (the database clock) and lease_token, which
// every claim increments. Completion and renewal match on (id, lease_token)
// and state = 'delivering', so a relay whose lease expired and whose intent
// was taken over can never overwrite the new owner's result (fencing).
//
// Per-conversation order: producers take a per-conversation advisory lock
// before their intent's id is drawn (migrations/00001), so within a
// conversation id order is commit order, and a lower id can never become
// visible after a higher one. A pending intent is claimable only when no
// lower id of its conversation is pending or delivering.
//
// Statements that update several delivering intents (renewal, completion,
// the expiry sweep) lock them in id order first, so two of them never
// deadlock on each other's rows.

// planFresh is the query mode of statements over outbox.intents that run
// for the relay's lifetime (claim, completion, renewal, the expiry sweep,
// retention). They run as unnamed statements, planned afresh each time with
// the table's current size: a plan cached while the table was small (a
// relay started on an empty outbox) keeps scanning the whole table once a
// burst has grown it, until autovacuum next analyzes it. Their descriptions
// are cached, so each is still one round trip.
const planFresh = pgx.QueryExecModeCacheDescribe

const (
	// claimBatch leases up to $1 deliverable intents to relay $2 for $3.
	// With a user-sync TTL $4 above zero it also returns, with each intent,
	// the content hash of each of its users (a JSON object user id -> hex
	// sha256) and the users TalkJS app $5 holds with exactly that content,
	// synchronised within $4: their PUTs are skipped. Every other user of
	// the batch is about to be PUT, so its record is deleted here, before
	// any call: a PUT that lands but whose result is never recorded (a
	// crash, a 500 after applying, a result that cannot be written) then
	// leaves no record claiming the old content. With $4 zero no record is
	// read or written.
	//
	// A user's hash is that of its object in the payload, in jsonb's
	// canonical text form: the body the relay PUTs is made from it alone.
	// Change the 'user-v1:' prefix when that mapping changes, so records of
	// bodies sent before are not trusted.
	//
	// The same goes for each intent's conversation, through
	// outbox.synced_conversations: its content hash (see
	// conversationContentHash) is returned with the intent, with whether
	// the app holds exactly that content, synchronised within $4 (its PUT
	// is skipped); otherwise its record is deleted here, before the PUT.
	// A claim holds at most one intent of a conversation (the NOT EXISTS
	// below), so its conversations are distinct.
	//
	// Locks: the claimed intents (SKIP LOCKED, never waited for), then the
	// user records to delete in user id order, then the conversation
	// records to delete in conversation id order, the order
	// completeBatch locks them in too.
	//
	// It also parks (at most $6 of) the pending intents its scan walked past
	// because an earlier intent of their conversation is pending or
	// delivering, so that no later claim walks them again: the claim scan
	// (intents_claimable_idx) leaves parked intents out. Parking locks the
	// blocking predecessor FOR KEY SHARE first and gives up when it cannot:
	// a predecessor ending right now would miss the mark. Every statement
	// that ends an intent (completion, expiry, cancel) rewrites the next
	// intent whatever its mark, so one that reaches it after this
	// statement locked it waits and clears the mark; one that got there
	// first holds the row, which is skipped; one that committed since this
	// statement's snapshot left a predecessor that fails the recheck of
	// its state under the lock. (KEY SHARE lets renewals and claims of the
	// predecessor go on.) Parking takes every lock SKIP LOCKED: it never
	// makes a claim wait. One case escapes all three: an ending statement
	// whose snapshot predates the intent finds no next intent to rewrite
	// (KEY SHARE does not conflict with its update); unparkHeads, run by
	// the sweep, clears the mark of such an intent.
	//
	// Order does not depend on parking: the NOT EXISTS below is what keeps
	// a successor behind its predecessor.
	claimBatch = `
WITH candidates AS (
    SELECT i.id, i.run_after
      FROM outbox.intents i
     WHERE i.state = 'pending'
       AND NOT i.parked
       AND i.run_after <= now()
       AND NOT EXISTS (
           SELECT 1
             FROM outbox.intents earlier
            WHERE earlier.conversation_id = i.conversation_id
              AND earlier.id < i.id
              AND earlier.state IN ('pending', 'delivering'))
       AND NOT EXISTS (SELECT 1 FROM outbox.control WHERE paused_at IS NOT NULL) -- operator pause: control.go
     ORDER BY i.run_after, i.id
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), walked AS (
    -- How far the candidate scan went: to its last candidate, or through
    -- every due intent when it found fewer than it was asked for.
    SELECT coalesce(l.run_after, 'infinity') AS run_after, coalesce(l.id, 0) AS id
      FROM (SELECT) one
      LEFT JOIN (SELECT run_after, id FROM candidates ORDER BY run_after DESC, id DESC LIMIT 1) l
        ON (SELECT count(*) FROM candidates) >= $1
), blocked AS (
    SELECT i.id, p.id AS behind
      FROM outbox.intents i
     CROSS JOIN LATERAL (
           SELECT earlier.id
             FROM outbox.intents earlier
            WHERE earlier.conversation_id = i.conversation_id
              AND earlier.id < i.id
              AND earlier.state IN ('pending', 'delivering')
            ORDER BY earlier.conversation_id DESC, earlier.id DESC -- intents_active_conversation_idx
            LIMIT 1) p
     WHERE i.state = 'pending'
       AND NOT i.parked
       AND i.run_after <= now()
       AND (i.run_after, i.id) < ((SELECT run_after FROM walked), (SELECT id FROM walked))
       AND i.id <> ALL (ARRAY(SELECT id FROM candidates))
     ORDER BY i.run_after, i.id
     LIMIT $6
       FOR UPDATE OF i SKIP LOCKED
), predecessors AS (
    SELECT p.id
      FROM outbox.intents p
     WHERE p.id = ANY (ARRAY(SELECT behind FROM blocked)) -- by primary key, whatever the estimates
       AND p.state IN ('pending', 'delivering')
       FOR KEY SHARE SKIP LOCKED
), parked AS (
    UPDATE outbox.intents i
       SET parked = true
     WHERE i.id = ANY (ARRAY(SELECT b.id FROM blocked b JOIN predecessors p ON p.id = b.behind))
), claimed AS (
    UPDATE outbox.intents i
       SET state = 'delivering',
           attempts = i.attempts + 1,
           lease_owner = $2,
           lease_expires_at = now() + $3::interval,
           lease_token = i.lease_token + 1,
           updated_at = now()
     WHERE i.id = ANY (ARRAY(SELECT id FROM candidates)) -- by primary key, whatever the estimates
    RETURNING i.id, i.lease_token, i.attempts, i.payload, i.delivery_key
), users AS (
    SELECT c.id AS intent_id, u ->> 'id' AS user_id,
           sha256(convert_to('user-v1:' || u::text, 'UTF8')) AS hash
      FROM claimed c, jsonb_array_elements(c.payload -> 'users') u
     WHERE $4::interval > interval '0'
), records AS (
    -- By primary key, whatever the estimates (a join or IN here may be
    -- planned as a scan of the whole table).
    SELECT s.user_id, s.content_hash
      FROM outbox.synced_users s
     WHERE s.app_id = $5
       AND s.user_id = ANY (ARRAY(SELECT user_id FROM users))
       AND s.synced_at > now() - $4::interval
), skips AS (
    SELECT x.intent_id, x.user_id
      FROM users x
      JOIN records s ON s.user_id = x.user_id AND s.content_hash = x.hash
), doubted AS (
    SELECT s.user_id
      FROM outbox.synced_users s
     WHERE s.app_id = $5
       AND s.user_id = ANY (ARRAY(
               SELECT x.user_id FROM users x
                WHERE NOT EXISTS (SELECT 1 FROM skips k
                                   WHERE k.intent_id = x.intent_id AND k.user_id = x.user_id)))
     ORDER BY s.user_id
       FOR UPDATE
), unsynced AS (
    DELETE FROM outbox.synced_users s
     WHERE s.app_id = $5
       AND s.user_id = ANY (ARRAY(SELECT user_id FROM doubted))
), convs AS (
    SELECT c.id AS intent_id, c.payload -> 'conversation' ->> 'id' AS conversation_id,
           ` + conversationContentHash + ` AS hash
      FROM claimed c
     WHERE $4::interval > interval '0'
), conv_records AS (
    SELECT s.conversation_id, s.content_hash
      FROM outbox.synced_conversations s
     WHERE s.app_id = $5
       AND s.conversation_id = ANY (ARRAY(SELECT conversation_id FROM convs)) -- by primary key
       AND s.synced_at > now() - $4::interval
), conv_skips AS (
    SELECT x.intent_id
      FROM convs x
      JOIN conv_records s ON s.conversation_id = x.conversation_id AND s.content_hash = x.hash
), conv_doubted AS (
    SELECT s.conversation_id
      FROM outbox.synced_conversations s
     WHERE s.app_id = $5
       AND s.conversation_id = ANY (ARRAY(
               SELECT x.conversation_id FROM convs x
                WHERE x.intent_id <> ALL (ARRAY(SELECT intent_id FROM conv_skips))))
       AND (SELECT count(*) FROM doubted) >= 0 -- after the user records: see above
     ORDER BY s.conversation_id
       FOR UPDATE
), conv_unsynced AS (
    DELETE FROM outbox.synced_conversations s
     WHERE s.app_id = $5
       AND s.conversation_id = ANY (ARRAY(SELECT conversation_id FROM conv_doubted))
)
SELECT c.id, c.lease_token, c.attempts, c.payload, c.delivery_key::text,
       (SELECT jsonb_object_agg(x.user_id, encode(x.hash, 'hex')) FROM users x WHERE x.intent_id = c.id),
       ARRAY(SELECT k.user_id FROM skips k WHERE k.intent_id = c.id),
       (SELECT x.hash FROM convs x WHERE x.intent_id = c.id),
       c.id = ANY (ARRAY(SELECT intent_id FROM conv_skips))
  FROM claimed c
 ORDER BY c.id`

	// conversationContentHash is the content hash of the conversation PUT
	// that the intent c.payload makes (deliver.go): the participants as
	// resolved (the conversation's when it names any, else the users'
	// ids), the subject and custom data. Canonical, so that bodies TalkJS
	// applies alike hash alike: participants sorted and distinct (a PUT
	// adds them as a set), an empty or null subject, participant list or
	// custom object the same as one left out (the PUT leaves out empty
	// fields), custom in jsonb's canonical text form (key order does not
	// count). Change the 'conversation-v1:' prefix when the PUT's body
	// changes, so that records of bodies sent before are not trusted.
	conversationContentHash = `sha256(convert_to('conversation-v1:' || jsonb_build_object(
               'participants', to_jsonb(ARRAY(
                   SELECT DISTINCT p.id COLLATE "C"
                     FROM jsonb_array_elements_text(CASE
                            WHEN jsonb_typeof(c.payload -> 'conversation' -> 'participants') = 'array'
                                 AND jsonb_array_length(c.payload -> 'conversation' -> 'participants') > 0
                              THEN c.payload -> 'conversation' -> 'participants'
                            WHEN jsonb_typeof(c.payload -> 'users') = 'array'
                              THEN jsonb_path_query_array(c.payload -> 'users', '$[*].id')
                            ELSE '[]' END) AS p(id)
                    ORDER BY 1)),
               'subject', coalesce(c.payload -> 'conversation' ->> 'subject', ''),
               'custom', CASE WHEN jsonb_typeof(c.payload -> 'conversation' -> 'custom') = 'object'
                              THEN c.payload -> 'conversation' -> 'custom' ELSE '{}' END)::text, 'UTF8'))`

	// renewLeases extends the leases this relay still holds. It returns
	// every intent of ($1, $2) still held, with whether its lease was
	// extended: a held intent whose row another session has locked is
	// skipped, not waited for, so one locked row cannot hold up the
	// renewal of every other lease. An intent not returned is no longer
	// held.
	renewLeases = `
WITH asked AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS h(id, token)
), held AS (
    SELECT i.id
      FROM outbox.intents i
      JOIN asked h ON i.id = h.id AND i.lease_token = h.token
     WHERE i.state = 'delivering'
     ORDER BY i.id
       FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE outbox.intents i
       SET lease_expires_at = now() + $3::interval
      FROM held
     WHERE i.id = held.id
    RETURNING i.id
)
SELECT i.id, EXISTS (SELECT 1 FROM renewed r WHERE r.id = i.id)
  FROM outbox.intents i
  JOIN asked h ON i.id = h.id AND i.lease_token = h.token
 WHERE i.state = 'delivering'`

	// expireLeases puts intents whose lease ran out (their relay crashed,
	// hung or lost the database) back to pending, in their place in the
	// queue (run_after unchanged: the lease already spaced the attempts),
	// or dead when the attempt that was lost was the last of the budget
	// ($1 attempts, $2 since its first failure). An intent that goes dead stays delivering
	// until its lease is $3 (the longest call) past its end: a call its
	// frozen holder sent before the lease ended may still land until then,
	// and its conversation's next intent must not overtake it. (An intent
	// put back to pending is delivered again before its successors, and
	// its messages are deduplicated by key.)
	expireLeases = `
WITH expired AS (
    SELECT id
      FROM outbox.intents
     WHERE state = 'delivering'
       AND lease_expires_at < now()
       AND (lease_expires_at < now() - $3::interval
            OR (attempts < $1 AND coalesce(failing_since, now()) >= now() - $2::interval))
     ORDER BY id
       FOR UPDATE SKIP LOCKED -- a relay completing it now wins
), taken AS (
    UPDATE outbox.intents
       SET state = CASE WHEN attempts >= $1 OR coalesce(failing_since, now()) < now() - $2::interval
                        THEN 'dead' ELSE 'pending' END,
           last_error = format('attempt %s: lease held by %s expired at %s without a result',
                               attempts, lease_owner, lease_expires_at),
           failing_since = coalesce(failing_since, now()), -- a lost lease counts as a failure
           lease_owner = NULL,
           lease_expires_at = NULL,
           updated_at = now()
     WHERE id IN (SELECT id FROM expired)
       AND state = 'delivering'
       AND lease_expires_at < now()
       AND (lease_expires_at < now() - $3::interval
            OR (attempts < $1 AND coalesce(failing_since, now()) >= now() - $2::interval))
    RETURNING id, state, conversation_id
), unparked AS (
    -- A dead intent lets its next intent be claimed (see unparkNextOf).
    UPDATE outbox.intents s
       SET parked = false
      FROM taken c` + unparkNextOf + `
       AND c.state = 'dead'
)
SELECT id, state FROM taken`

	// unparkHeads clears the parked mark of conversations' heads: a parked
	// intent no pending or delivering intent of its conversation precedes.
	// Unparking is normally done by the statement that ends the
	// predecessor, but that statement finds the next intent in its own
	// snapshot, which misses a successor committed while it ran and parked
	// by a claim that still saw the predecessor active; an operator's
	// change of a payload's conversation strands one too. This sweep is
	// the backstop: it visits the heads of at most $2 conversations after
	// conversation $1 (one probe of intents_active_conversation_idx each,
	// however long their queues) and returns the last one visited, how
	// many it visited and how many heads it unparked. Unparking is always
	// safe: the claim's NOT EXISTS decides order, and parks again.
	unparkHeads = `
WITH RECURSIVE heads(conversation_id, id, n) AS (
    (SELECT i.conversation_id, i.id, 1
       FROM outbox.intents i
      WHERE i.state IN ('pending', 'delivering')
        AND i.conversation_id > $1
      ORDER BY i.conversation_id, i.id
      LIMIT 1)
    UNION ALL
    SELECT nx.conversation_id, nx.id, h.n + 1
      FROM heads h
     CROSS JOIN LATERAL (
           SELECT i.conversation_id, i.id
             FROM outbox.intents i
            WHERE i.state IN ('pending', 'delivering')
              AND i.conversation_id > h.conversation_id
            ORDER BY i.conversation_id, i.id
            LIMIT 1) nx
     WHERE h.n < $2
), stranded AS (
    -- A head whose row another session holds is left to the next pass:
    -- the sweep never waits on a lock.
    SELECT i.id
      FROM outbox.intents i
     WHERE i.id = ANY (ARRAY(SELECT id FROM heads)) -- by primary key
       AND i.state = 'pending'
       AND i.parked
       FOR UPDATE SKIP LOCKED
), unparked AS (
    UPDATE outbox.intents i
       SET parked = false
     WHERE i.id = ANY (ARRAY(SELECT id FROM stranded))
    RETURNING i.id
)
SELECT coalesce((SELECT conversation_id FROM heads ORDER BY n DESC LIMIT 1), ''),
       (SELECT count(*) FROM heads),
       (SELECT count(*) FROM unparked)`

	// unparkNextOf completes "UPDATE outbox.intents s SET parked = false
	// FROM <ended> c", where <ended> holds intents (id, conversation_id)
	// that just left pending or delivering: it clears the parked mark of
	// each one's next active intent, if pending. Only that one: the
	// intents behind it are still behind it. Chosen from the rows as they
	// were, whatever its mark then, since a claim may have parked it
	// since (see claimBatch). Completion, the expiry sweep and an
	// operator's cancel end intents; each adds its own condition with AND.
	unparkNextOf = `
     CROSS JOIN LATERAL (
           SELECT n.id
             FROM outbox.intents n
            WHERE n.conversation_id = c.conversation_id
              AND n.id > c.id
              AND n.state IN ('pending', 'delivering')
            ORDER BY n.conversation_id, n.id -- intents_active_conversation_idx
            LIMIT 1) nx
     WHERE s.id = nx.id
       AND s.state = 'pending'`

	// wakeRelays wakes every relay's claimer (they all LISTEN), after the
	// sweep made intents claimable: takeover must not wait for a poll.
	wakeRelays = `SELECT pg_notify('` + notifyChannel + `', '')`

	// completeBatch records the outcome of delivered intents in one
	// statement (one round trip, one commit), fenced by lease token.
	// Outcomes: done; dead (permanent failure); retry (a counted failure:
	// pending after a backoff, or dead when the budget is spent); release
	// (not the intent's fault: pending after a delay, the attempt given
	// back). The same statement records the attempts, clears the parked
	// mark of the next intent of each conversation whose intent ended (see
	// claimBatch; an intent put back to wait changes no other row: its
	// successors stay parked, or are parked by the next claim that walks
	// past them), and keeps outbox.synced_users true for app @app_id: a user
	// gets a record only when every PUT of it in the batch was answered 200
	// for one content and its intent's result was recorded here (not
	// fenced: a relay that lost its lease may have PUT after the new
	// owner). Any other PUT of it (no answer, an error, two contents), or a
	// skipped PUT that a later permanent failure put in doubt, deletes its
	// record. outbox.synced_conversations is kept by the same rule from
	// the conv_ arrays, one entry per conversation PUT made, or skipped and then
	// put in doubt by a permanent answer to the messages POST.
	//
	// Locks, in this order in every relay: the batch's intents in id order
	// (locked, read by the main query), the next intents of those that
	// ended (unparked), then the existing records of the batch's users in
	// user id order (sync_locked), then those of its conversations in
	// conversation id order (conv_locked), before any record is deleted or
	// inserted. Sub-statements the main query does not read run after it,
	// in an order Postgres does not promise, so each waits for what must
	// come first explicitly.
	completeBatch = `
WITH r AS (
    SELECT *
      FROM unnest(@ids::bigint[], @tokens::bigint[], @outcomes::text[], @errors::text[], @delays_s::double precision[])
           AS r(id, token, outcome, error, delay_s)
), locked AS (
    SELECT i.id FROM outbox.intents i WHERE i.id IN (SELECT id FROM r) ORDER BY i.id FOR UPDATE
), decided AS (
    SELECT r.*, i.attempts,
           CASE
             WHEN r.outcome = 'retry'
                  AND (i.attempts >= @max_attempts OR coalesce(i.failing_since, now()) < now() - @max_age::interval) THEN 'dead'
             WHEN r.outcome = 'retry' THEN 'pending'
             WHEN r.outcome = 'release' THEN 'pending'
             ELSE r.outcome
           END AS next_state
      FROM r
      JOIN locked l ON l.id = r.id
      JOIN outbox.intents i ON i.id = r.id
), completed AS (
    UPDATE outbox.intents i
       SET state = d.next_state,
           attempts = CASE WHEN d.outcome = 'release' THEN greatest(i.attempts - 1, 0) ELSE i.attempts END,
           run_after = CASE WHEN d.next_state = 'pending'
                            THEN now() + make_interval(secs => d.delay_s) ELSE i.run_after END,
           last_error = CASE
                          WHEN d.outcome = 'done' THEN NULL
                          WHEN d.outcome = 'retry' AND d.next_state = 'dead'
                            THEN format('retry budget spent (%s attempts, max %s; max age %s): %s',
                                        i.attempts, @max_attempts::int, @max_age::interval, d.error)
                          ELSE d.error
                        END,
           failing_since = CASE WHEN d.outcome = 'retry' THEN coalesce(i.failing_since, now()) ELSE i.failing_since END,
           lease_owner = NULL,
           lease_expires_at = NULL,
           done_at = CASE WHEN d.next_state = 'done' THEN now() END,
           updated_at = now()
      FROM decided d
     WHERE i.id = d.id
       AND i.lease_token = d.token
       AND i.state = 'delivering'
    RETURNING i.id, i.state, i.conversation_id, i.created_at
), unparked AS (
    -- An intent that ended (done or dead) lets its conversation's next
    -- intent be claimed (see unparkNextOf).
    UPDATE outbox.intents s
       SET parked = false
      FROM completed c` + unparkNextOf + `
       AND c.state IN ('done', 'dead')
    RETURNING s.id
), recorded AS (
    INSERT INTO outbox.attempts (intent_id, attempt, step, target, status, outcome, error, duration_ms, relay, started_at, call_id)
    SELECT a.intent_id, a.attempt, a.step, a.target, a.status, a.outcome, a.error, a.duration_ms, @relay, a.started_at, a.call_id
      FROM unnest(@attempt_intent_ids::bigint[], @attempt_numbers::int[], @attempt_steps::text[], @attempt_targets::text[], @attempt_statuses::int[], @attempt_outcomes::text[], @attempt_errors::text[],
                  @attempt_duration_ms::real[], @attempt_started::timestamptz[], @attempt_call_ids::uuid[])
           AS a(intent_id, attempt, step, target, status, outcome, error, duration_ms, started_at, call_id)
), sync_verdict AS (
    SELECT u.user_id,
           (array_agg(u.hash))[1] AS hash,
           bool_and(u.ok AND c.id IS NOT NULL) AND count(DISTINCT u.hash) = 1 AS trusted
      FROM unnest(@sync_user_ids::text[], @sync_intent_ids::bigint[], @sync_hashes::bytea[], @sync_ok::boolean[]) AS u(user_id, intent_id, hash, ok)
      LEFT JOIN completed c ON c.id = u.intent_id
     GROUP BY u.user_id
), sync_locked AS (
    SELECT s.user_id
      FROM outbox.synced_users s
     WHERE s.app_id = @app_id
       AND s.user_id = ANY (ARRAY(SELECT user_id FROM sync_verdict)) -- by primary key
       AND (SELECT count(*) FROM unparked) >= 0 -- after unparked: see above
     ORDER BY s.user_id
       FOR UPDATE
), conv_verdict AS (
    SELECT v.conversation_id,
           (array_agg(v.hash))[1] AS hash,
           bool_and(v.ok AND c.id IS NOT NULL) AND count(DISTINCT v.hash) = 1 AS trusted
      FROM unnest(@conv_ids::text[], @conv_intent_ids::bigint[], @conv_hashes::bytea[], @conv_ok::boolean[]) AS v(conversation_id, intent_id, hash, ok)
      LEFT JOIN completed c ON c.id = v.intent_id
     GROUP BY v.conversation_id
), conv_locked AS (
    SELECT s.conversation_id
      FROM outbox.synced_conversations s
     WHERE s.app_id = @app_id
       AND s.conversation_id = ANY (ARRAY(SELECT conversation_id FROM conv_verdict)) -- by primary key
       AND (SELECT count(*) FROM sync_locked) >= 0 -- after the users' records: see above
     ORDER BY s.conversation_id
       FOR UPDATE
), unsynced AS (
    DELETE FROM outbox.synced_users s
     WHERE s.app_id = @app_id
       AND s.user_id = ANY (ARRAY(SELECT v.user_id FROM sync_verdict v
                                   WHERE NOT v.trusted
                                     AND v.user_id IN (SELECT user_id FROM sync_locked)))
       AND (SELECT count(*) FROM conv_locked) >= 0 -- after every existing record is locked
), synced AS (
    INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at)
    SELECT @app_id, v.user_id, v.hash, now()
      FROM sync_verdict v
     WHERE v.trusted
       AND (SELECT count(*) FROM conv_locked) >= 0 -- after every existing record is locked
     ORDER BY v.user_id
    ON CONFLICT (app_id, user_id) DO UPDATE
       SET content_hash = excluded.content_hash,
           synced_at = excluded.synced_at
), conv_unsynced AS (
    DELETE FROM outbox.synced_conversations s
     WHERE s.app_id = @app_id
       AND s.conversation_id = ANY (ARRAY(SELECT v.conversation_id FROM conv_verdict v
                                           WHERE NOT v.trusted
                                             AND v.conversation_id IN (SELECT conversation_id FROM conv_locked)))
), conv_synced AS (
    INSERT INTO outbox.synced_conversations (app_id, conversation_id, content_hash, synced_at)
    SELECT @app_id, v.conversation_id, v.hash, now()
      FROM conv_verdict v
     WHERE v.trusted
       AND (SELECT count(*) FROM conv_locked) >= 0 -- after every existing record is locked
     ORDER BY v.conversation_id
    ON CONFLICT (app_id, conversation_id) DO UPDATE
       SET content_hash = excluded.content_hash,
           synced_at = excluded.synced_at
)
SELECT c.id, c.state, extract(epoch FROM now() - c.created_at)::double precision AS age_s -- insert to done, when done
  FROM completed c`

	// setWaiting tells producers this relay is idle: the next insert sends a
	// NOTIFY. The row is locked only while it needs changing, and skipped
	// when a producer holds it (that producer notifies at its commit).
	setWaiting = `
UPDATE outbox.wakeup
   SET waiting = true
 WHERE ctid = (SELECT ctid FROM outbox.wakeup WHERE NOT waiting FOR UPDATE SKIP LOCKED)`

	// heartbeat registers this relay as live with its current request
	// rate $4 (0: none yet) and returns how many relays are live
	// (heartbeat within $2), itself included, and the sum of the others'
	// published rates.
	heartbeat = `
WITH me AS (
    INSERT INTO outbox.relays (id, started_at, heartbeat_at, version, rate)
    VALUES ($1, now(), now(), $3, $4)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), rate = $4
)
SELECT count(*) + 1, coalesce(sum(rate), 0)::float8
  FROM outbox.relays
 WHERE id <> $1
   AND ` + relayIsLive

	// relayIsLive is what makes a relay live: a heartbeat within $2 (the
	// lease, Config.liveWithin). The heartbeat, the sweep and the name
	// check all count relays by it.
	relayIsLive = `heartbeat_at > now() - $2::interval`

	// liveRelays counts the live relays, this one ($1) included whatever
	// its own heartbeat, as the heartbeat does: the sweep's look for a
	// relay that stopped heartbeating (a crash).
	liveRelays = `
SELECT count(*) + 1
  FROM outbox.relays
 WHERE id <> $1
   AND ` + relayIsLive

	// forgetRelays removes this relay's row (at shutdown).
	forgetRelays = `DELETE FROM outbox.relays WHERE id = $1`

	// relaysChanged tells the other relays that one came or went, so they
	// share the rate limit again at once (rate.go).
	relaysChanged = `SELECT pg_notify('` + notifyChannel + `', '` + relaysPayload + `')`

	// Retention (retention.go). Each statement deletes one bounded batch
	// and returns how many rows it deleted. Locking: every batch selects
	// its rows FOR UPDATE SKIP LOCKED, so it never waits on a row lock:
	// not on a relay (done intents, retired keys and old syncs are rows a
	// relay has finished with), nor on another relay's retention, whose
	// rows it skips.

	// forgetSilentRelays removes relays silent for $1: relays that crashed
	// or were killed and never removed their own row.
	forgetSilentRelays = `
WITH gone AS (
    DELETE FROM outbox.relays WHERE heartbeat_at < now() - $1::interval RETURNING 1
)
SELECT count(*) FROM gone`

	// deleteDone deletes up to $2 of the intents done longest ago, before
	// $1 ago, with their attempts, and retires their keys in the same
	// transaction: a producer inserting such a key waits on the unique
	// index for this transaction, then finds the key retired (see
	// migrations/00005_retention.sql). The done_at index serves the scan.
	deleteDone = `
WITH doomed AS (
    SELECT id
      FROM outbox.intents
     WHERE state = 'done'
       AND done_at < now() - $1::interval
     ORDER BY done_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM outbox.intents
     WHERE id = ANY (ARRAY(SELECT id FROM doomed)) -- by primary key, whatever the estimates
    RETURNING id, key
), retired AS (
    INSERT INTO outbox.retired_keys (key, intent_id, retired_at)
    SELECT key, id, now() FROM gone WHERE key IS NOT NULL
    ON CONFLICT (key) DO UPDATE
       SET intent_id = excluded.intent_id,
           retired_at = excluded.retired_at
), attempts AS (
    DELETE FROM outbox.attempts
     WHERE intent_id = ANY (ARRAY(SELECT id FROM gone))
)
SELECT count(*) FROM gone`

	// deleteRetiredKeys forgets up to $2 retired keys retired before $1
	// ago: from then on an intent may use the key again.
	deleteRetiredKeys = `
WITH gone AS (
    DELETE FROM outbox.retired_keys
     WHERE key = ANY (ARRAY(SELECT key
                              FROM outbox.retired_keys
                             WHERE retired_at < now() - $1::interval
                             ORDER BY retired_at
                             LIMIT $2
                               FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM gone`

	// deleteStaleSyncs deletes up to $3 user-sync records: those of app
	// $2 older than the skip window $1 (all of them when it is zero:
	// skipping is off), and those of other apps (a database cloned from
	// another installation) older than a day or the window, whichever is
	// longer.
	deleteStaleSyncs = `
WITH gone AS (
    DELETE FROM outbox.synced_users
     WHERE ctid = ANY (ARRAY(SELECT ctid
                               FROM outbox.synced_users
                              WHERE synced_at < now() - CASE WHEN app_id = $2 THEN $1::interval
                                                             ELSE greatest($1::interval, interval '1 day') END
                              LIMIT $3
                                FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM gone`

	// sessionTimeouts reads the statement and lock timeouts of a session.
	sessionTimeouts = `SELECT current_setting('statement_timeout'), current_setting('lock_timeout')`

	// schemaCheck fails unless the outbox schema is migrated.
	schemaCheck = `SELECT waiting FROM outbox.wakeup`

	// liveRelayNamed reports whether a live relay already uses a name.
	liveRelayNamed = `
SELECT EXISTS (SELECT 1 FROM outbox.relays WHERE id = $1 AND ` + relayIsLive + `)`
)

// notifyChannel is the channel producers NOTIFY when a relay is waiting.
const notifyChannel = "outbox_intents"

// deleteStaleConversationSyncs is deleteStaleSyncs for the
// conversation-sync records: the same rules over the other table.
var deleteStaleConversationSyncs = strings.ReplaceAll(deleteStaleSyncs, "outbox.synced_users", "outbox.synced_conversations")
