\timing on
-- 1,000,000 intents over 10,000 conversations, in 20 transactions of 50,000
-- (each transaction holds one order lock per distinct conversation, 10,000 max).
-- States: 985,000 done, 10,000 dead, 4,000 pending, 1,000 delivering; inserted
-- with their final columns (the owner may; the triggers still run).
DO $$
BEGIN
  FOR b IN 0..19 LOOP
    INSERT INTO outbox.intents (key, payload, state, attempts, done_at, last_error, lease_owner, lease_expires_at, created_at, updated_at, run_after)
    SELECT 'order-' || n,
           jsonb_build_object('users', jsonb_build_array(jsonb_build_object('id', 'u' || (n % 50000), 'name', 'U', 'email', jsonb_build_array('u@example.com'))),
                              'conversation', jsonb_build_object('id', 'c' || (n % 10000)),
                              'messages', jsonb_build_array(jsonb_build_object('type', 'SystemMessage', 'text', 'placed'))),
           CASE WHEN n > 996000 THEN (CASE WHEN n > 999000 THEN 'delivering' ELSE 'pending' END)
                WHEN n % 100 = 7 AND n <= 980000 THEN 'dead' ELSE 'done' END,
           1,
           CASE WHEN n > 996000 OR (n % 100 = 7 AND n <= 980000) THEN NULL ELSE now() - (1000000 - n) * interval '2 seconds' + interval '1 second' END,
           CASE WHEN n % 100 = 7 AND n <= 980000 THEN 'attempt 1: user: status 400: bad email' END,
           CASE WHEN n > 999000 THEN 'bench-relay' END,
           CASE WHEN n > 999000 THEN now() + interval '10 seconds' END,
           now() - (1000000 - n) * interval '2 seconds',
           now() - (1000000 - n) * interval '2 seconds',
           now() - (1000000 - n) * interval '2 seconds'
      FROM generate_series(b * 50000 + 1, (b + 1) * 50000) n;
    COMMIT;
  END LOOP;
END $$;
-- 4,000,000 attempt rows: four calls per intent (2 user PUTs, conversation, messages).
INSERT INTO outbox.attempts (intent_id, attempt, step, target, status, outcome, error, duration_ms, relay, started_at)
SELECT i.id, 1, s.step, CASE WHEN s.step = 'user' THEN 'u' || (i.id % 50000) || s.k ELSE i.conversation_id END,
       CASE WHEN i.state = 'dead' AND s.k = 'b' THEN 400 ELSE 200 END,
       CASE WHEN i.state = 'dead' AND s.k = 'b' THEN 'permanent' ELSE 'ok' END,
       CASE WHEN i.state = 'dead' AND s.k = 'b' THEN 'bad email' END,
       42, 'bench-relay', i.created_at + interval '100 ms'
  FROM outbox.intents i
 CROSS JOIN (VALUES ('user', 'a'), ('user', 'b'), ('conversation', 'c'), ('messages', 'd')) AS s(step, k);
VACUUM ANALYZE outbox.intents;
VACUUM ANALYZE outbox.attempts;
SELECT state, count(*) FROM outbox.intents GROUP BY 1;
SELECT count(*) FROM outbox.attempts;
