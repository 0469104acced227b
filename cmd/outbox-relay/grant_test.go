package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// partyRole creates a login role and grants it party's privileges with
// `outbox-relay grant`, run as the owner at dbURL. It returns the role and
// a URL connecting as it.
func partyRole(t *testing.T, dbURL, party string) (role, roleURL string) {
	t.Helper()
	role, roleURL = pgtest.NewLoginRole(t, dbURL)
	code, stdout, stderr := runCLI(t, map[string]string{"DATABASE_URL": dbURL}, "grant", party, role)
	if code != 0 {
		t.Fatalf("grant %s %s exited %d: %s%s", party, role, code, stdout, stderr)
	}
	return role, roleURL
}

// refused runs each statement on its own through db and fails t unless
// Postgres refused it for lack of privilege (SQLSTATE 42501).
func refused(t *testing.T, db *pgxpool.Pool, who string, stmts ...string) {
	t.Helper()
	for _, stmt := range stmts {
		_, err := db.Exec(t.Context(), stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: %s: got %v, want permission denied (42501)", who, stmt, err)
		}
	}
}

// schemaObjects lists schema outbox's relations of the given kinds
// (pg_class.relkind), schema-qualified and quoted.
func schemaObjects(t *testing.T, db *pgxpool.Pool, kinds string) []string {
	t.Helper()
	rows, err := db.Query(t.Context(), `
SELECT format('%I.%I', 'outbox', relname) FROM pg_class
 WHERE relnamespace = 'outbox'::regnamespace AND relkind = ANY ($1::"char"[])
 ORDER BY relname`, strings.Split(kinds, ""))
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func payloadJSON(t *testing.T, in outbox.Intent) []byte {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGrantArguments(t *testing.T) {
	t.Parallel()
	noDB := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none?connect_timeout=1"}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"grant"}, "give a party"},
		{[]string{"grant", "owner", "r"}, `unknown party "owner"`},
		{[]string{"grant", "relay"}, "give the ROLE"},
		{[]string{"grant", "relay", ""}, "ROLE: role name must not be empty"},
		{[]string{"grant", "relay", "public"}, `ROLE: role name "public" is reserved`},
		{[]string{"grant", "relay", strings.Repeat("r", 64)}, "ROLE: role name"},
		{[]string{"grant", "relay", "r", "extra"}, `unexpected argument "extra"`},
		{[]string{"grant", "relay", "r", "--dry-runn"}, "flag provided but not defined"},
	} {
		code, _, stderr := runCLI(t, noDB, tt.args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%q exited %d with %q, want 2 and %q", tt.args, code, stderr, tt.want)
		}
	}

	code, _, stderr := runCLI(t, nil, "grant", "relay", "r")
	if code != 1 || !strings.Contains(stderr, "DATABASE_URL") {
		t.Errorf("grant without DATABASE_URL exited %d with %q, want 1 naming DATABASE_URL", code, stderr)
	}
	code, _, stderr = runCLI(t, nil, "grant", "--help")
	if code != 0 || !strings.Contains(stderr, "Usage: outbox-relay grant producer|relay|auditor ROLE") {
		t.Errorf("grant --help exited %d with %q", code, stderr)
	}

	// --dry-run needs no database, wherever the flag stands, and quotes
	// the role.
	for _, args := range [][]string{
		{"grant", "--dry-run", "producer", "App Producer"},
		{"grant", "producer", "App Producer", "--dry-run"},
	} {
		code, stdout, stderr := runCLI(t, nil, args...)
		if code != 0 {
			t.Fatalf("%q exited %d: %s", args, code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if lines[0] != "BEGIN;" || lines[len(lines)-1] != "COMMIT;" ||
			!strings.Contains(stdout, `GRANT INSERT (payload, key, run_after), SELECT (id) ON TABLE outbox.intents TO "App Producer";`) {
			t.Errorf("%q printed:\n%s", args, stdout)
		}
	}
	// After "--", a role may start with a dash.
	code, stdout, _ := runCLI(t, nil, "grant", "--dry-run", "--", "auditor", "-odd")
	if code != 0 || !strings.Contains(stdout, `TO "-odd";`) {
		t.Errorf("grant --dry-run -- auditor -odd exited %d:\n%s", code, stdout)
	}
}

// The role must exist, the schema must be migrated, and the grant must run
// as the schema's owner; each failure says so.
func TestGrantRefusals(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	code, _, stderr := runCLI(t, map[string]string{"DATABASE_URL": dbURL}, "grant", "relay", "no_such_role_for_outbox")
	if code != 1 || !strings.Contains(stderr, `role does not exist: "no_such_role_for_outbox"`) || !strings.Contains(stderr, "CREATE ROLE") {
		t.Errorf("grant to a missing role exited %d with %q", code, stderr)
	}

	empty := pgtest.NewEmptyDatabase(t)
	role, _ := pgtest.NewLoginRole(t, empty)
	code, _, stderr = runCLI(t, map[string]string{"DATABASE_URL": empty}, "grant", "relay", role)
	if code != 1 || !strings.Contains(stderr, "not migrated: run outbox-relay migrate first") {
		t.Errorf("grant on an empty database exited %d with %q", code, stderr)
	}

	// A relay cannot grant itself (or anyone) more.
	relayRole, relayURL := partyRole(t, dbURL, "relay")
	code, _, stderr = runCLI(t, map[string]string{"DATABASE_URL": relayURL}, "grant", "producer", relayRole)
	if code != 1 || !strings.Contains(stderr, "does not own schema outbox") {
		t.Errorf("grant as the relay role exited %d with %q", code, stderr)
	}
	// Nor migrate: run, migrations on, says what to set.
	code, _, stderr = runCLI(t, map[string]string{"DATABASE_URL": relayURL, "TALKJS_APP_ID": "app",
		"TALKJS_SECRET_KEY": testSecret}, "run")
	if code != 1 || !strings.Contains(stderr, "permission denied") || !strings.Contains(stderr, "sets OUTBOX_MIGRATE=false") {
		t.Errorf("run as the relay role with migrations on exited %d with %q", code, stderr)
	}
}

// privilegeSnapshot is every ACL on schema outbox and its objects and
// columns, as the catalog stores it.
func privilegeSnapshot(t *testing.T, db *pgxpool.Pool) string {
	t.Helper()
	rows, err := db.Query(t.Context(), `
SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '-') FROM pg_namespace WHERE nspname = 'outbox'
 UNION ALL
SELECT 'relation ' || c.oid::regclass::text || ' ' || coalesce(c.relacl::text, '-')
  FROM pg_class c WHERE c.relnamespace = 'outbox'::regnamespace
 UNION ALL
SELECT 'column ' || a.attrelid::regclass::text || '.' || a.attname || ' ' || a.attacl::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'outbox'::regnamespace AND a.attacl IS NOT NULL
 UNION ALL
SELECT 'function ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '-')
  FROM pg_proc p WHERE p.pronamespace = 'outbox'::regnamespace
 UNION ALL
SELECT 'grant ' || grantee || ' ' || privilege_type || ' ' || table_name || ' ' || is_grantable
  FROM information_schema.role_table_grants WHERE table_schema = 'outbox'
 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func TestGrantTwiceChangesNothing(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.Pool(t, dbURL)
	env := map[string]string{"DATABASE_URL": dbURL}
	before := privilegeSnapshot(t, admin)
	roles := map[string]string{}
	for _, party := range []string{"producer", "relay", "auditor"} {
		roles[party], _ = partyRole(t, dbURL, party)
	}
	once := privilegeSnapshot(t, admin)
	if once == before {
		t.Fatal("the first grants changed no privilege")
	}
	for _, party := range []string{"producer", "relay", "auditor"} {
		code, stdout, stderr := runCLI(t, env, "grant", party, roles[party])
		if code != 0 {
			t.Fatalf("second grant %s exited %d: %s%s", party, code, stdout, stderr)
		}
	}
	if twice := privilegeSnapshot(t, admin); twice != once {
		t.Errorf("the second grants changed privileges:\nafter one:\n%s\nafter two:\n%s", once, twice)
	}
}

// A producer inserts intents (plain SQL, Enqueue, EnqueueBatch, with and
// without a key) and can do nothing else: not read them, change them,
// delete them, nor touch the relay's tables. Its insert still wakes a
// waiting relay.
func TestProducerRole(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.Pool(t, dbURL)
	_, producerURL := partyRole(t, dbURL, "producer")
	producer := pgtest.Pool(t, producerURL)
	ctx := t.Context()

	// The contract's form, with and without key, with RETURNING id.
	var sqlID, sqlKeyID int64
	if err := producer.QueryRow(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb) RETURNING id`,
		payloadJSON(t, relaytest.OrderIntent("c-sql", 1))).Scan(&sqlID); err != nil {
		t.Fatalf("plain insert: %v", err)
	}
	if err := producer.QueryRow(ctx, `INSERT INTO outbox.intents (payload, key) VALUES ($1::jsonb, 'order-1') RETURNING id`,
		payloadJSON(t, relaytest.OrderIntent("c-sql", 2))).Scan(&sqlKeyID); err != nil {
		t.Fatalf("insert with key: %v", err)
	}
	if _, err := producer.Exec(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb)`,
		payloadJSON(t, relaytest.OrderIntent("c-sql", 3))); err != nil {
		t.Fatalf("insert without RETURNING: %v", err)
	}
	// The Go API, in the application's transaction.
	var goID, goKeyID int64
	var batchIDs []int64
	err := pgx.BeginFunc(ctx, producer, func(tx pgx.Tx) error {
		var err error
		if goID, err = outbox.Enqueue(ctx, tx, relaytest.OrderIntent("c-go", 1)); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
		if goKeyID, err = outbox.Enqueue(ctx, tx, relaytest.OrderIntent("c-go", 2), outbox.WithKey("order-2"),
			outbox.WithRunAfter(time.Now().Add(time.Minute))); err != nil {
			return fmt.Errorf("enqueue with key: %w", err)
		}
		batchIDs, err = outbox.EnqueueBatch(ctx, tx, []outbox.BatchItem{
			{Intent: relaytest.OrderIntent("c-batch", 1), Key: "order-3"},
			{Intent: relaytest.OrderIntent("c-batch", 2)},
		})
		if err != nil {
			return fmt.Errorf("enqueue batch: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Each id returned is the intent's.
	for id, want := range map[int64]string{sqlID: "c-sql/", sqlKeyID: "c-sql/order-1", goID: "c-go/",
		goKeyID: "c-go/order-2", batchIDs[0]: "c-batch/order-3", batchIDs[1]: "c-batch/"} {
		var got string
		if err := admin.QueryRow(ctx, `SELECT conversation_id || '/' || coalesce(key, '') FROM outbox.intents WHERE id = $1`, id).Scan(&got); err != nil {
			t.Fatalf("intent %d: %v", id, err)
		}
		if got != want {
			t.Errorf("intent %d is %s, want %s", id, got, want)
		}
	}

	// The errors an application handles keep their meaning.
	if _, err := outbox.Enqueue(ctx, producer, relaytest.OrderIntent("c-go", 3), outbox.WithKey("order-2")); !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("duplicate key: got %v, want ErrDuplicateKey", err)
	}
	// A key retention retired is refused too, though the producer cannot
	// read outbox.retired_keys: the trigger that looks runs as the owner.
	if _, err := admin.Exec(ctx, `INSERT INTO outbox.retired_keys (key, intent_id) VALUES ('order-retired', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, producer, relaytest.OrderIntent("c-go", 4), outbox.WithKey("order-retired")); !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("retired key: got %v, want ErrDuplicateKey", err)
	}
	_, err = producer.Exec(ctx, `INSERT INTO outbox.intents (payload) VALUES ('{"conversation": {}}')`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" || !strings.Contains(pgErr.Message, "conversation.id: is required") {
		t.Errorf("invalid payload: got %v, want the payload check naming conversation.id", err)
	}

	valid := `'{"conversation": {"id": "x"}}'`
	refused(t, producer, "producer",
		`SELECT payload FROM outbox.intents`,
		`SELECT key FROM outbox.intents`,
		`SELECT * FROM outbox.intents`,
		`SELECT id FROM outbox.intents WHERE payload ? 'users'`,
		`SELECT id FROM outbox.intents WHERE state = 'dead'`,
		`UPDATE outbox.intents SET state = 'dead', last_error = 'x'`,
		`UPDATE outbox.intents SET payload = payload`,
		`DELETE FROM outbox.intents`,
		`TRUNCATE outbox.intents`,
		`INSERT INTO outbox.intents (payload, state, done_at) VALUES (`+valid+`, 'done', now())`,
		`INSERT INTO outbox.intents (payload, attempts) VALUES (`+valid+`, 99)`,
		`INSERT INTO outbox.intents (payload, delivery_key) VALUES (`+valid+`, gen_random_uuid())`,
		`SELECT setval('outbox.intents_id_seq', 1)`,
		`SELECT * FROM outbox.attempts`,
		`INSERT INTO outbox.attempts (intent_id, attempt, step, target, outcome, duration_ms, relay, started_at)
		 VALUES (1, 1, 'user', 'u', 'ok', 1, 'r', now())`,
		`SELECT * FROM outbox.synced_users`,
		`DELETE FROM outbox.synced_users`,
		`SELECT * FROM outbox.synced_conversations`,
		`DELETE FROM outbox.synced_conversations`,
		`SELECT * FROM outbox.relays`,
		`INSERT INTO outbox.relays (id) VALUES ('impostor')`,
		`SELECT * FROM outbox.retired_keys`,
		`DELETE FROM outbox.retired_keys`,
		`SELECT * FROM outbox.control`,
		`UPDATE outbox.control SET paused_at = now(), paused_by = 'producer'`,
		`SELECT * FROM outbox.wakeup`,
		`UPDATE outbox.wakeup SET waiting = false`,
		`SELECT * FROM outbox.goose_db_version`,
		`CREATE TABLE outbox.mine (x int)`,
		`ALTER TABLE outbox.intents ADD COLUMN mine int`,
	)
	var views []string
	for _, v := range schemaObjects(t, admin, "vm") {
		views = append(views, `SELECT * FROM `+v)
	}
	refused(t, producer, "producer", views...)

	// The after-insert trigger clears the wake-up flag and notifies,
	// though the producer holds nothing on outbox.wakeup.
	listener, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, `LISTEN outbox_intents`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `UPDATE outbox.wakeup SET waiting = true`); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, producer, relaytest.OrderIntent("c-wake", 1)); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := listener.WaitForNotification(waitCtx); err != nil {
		t.Errorf("no notification after the producer's insert: %v", err)
	}
	var waiting bool
	if err := admin.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting); err != nil || waiting {
		t.Errorf("wake-up flag after the producer's insert: waiting=%v, err=%v; want cleared", waiting, err)
	}
}

// An auditor reads every view and the tables that record what happened,
// can run `status`, and is refused every write.
func TestAuditorRole(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.Pool(t, dbURL)
	_, auditorURL := partyRole(t, dbURL, "auditor")
	auditor := pgtest.Pool(t, auditorURL)
	ctx := t.Context()
	ids := relaytest.InsertSQL(t, admin, []outbox.Intent{relaytest.OrderIntent("c1", 1), relaytest.OrderIntent("c2", 2)})
	for _, stmt := range []string{
		`UPDATE outbox.intents SET state = 'dead', attempts = 1, last_error = 'attempt 1: user: permanent: status 400' WHERE id = ` + fmt.Sprint(ids[0]),
		`INSERT INTO outbox.attempts (intent_id, attempt, step, target, status, outcome, error, duration_ms, relay, started_at)
		 VALUES (` + fmt.Sprint(ids[0]) + `, 1, 'user', 'u1', 400, 'permanent', 'status 400', 12, 'relay-a', now())`,
		`INSERT INTO outbox.relays (id) VALUES ('relay-a')`,
		`INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at) VALUES ('app', 'u1', '\x00', now())`,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}

	reads := []string{"outbox.intents", "outbox.attempts", "outbox.synced_users", "outbox.synced_conversations", "outbox.relays", "outbox.retired_keys", "outbox.control"}
	reads = append(reads, schemaObjects(t, admin, "vm")...)
	for _, rel := range reads {
		var n int
		if err := auditor.QueryRow(ctx, `SELECT count(*) FROM (SELECT * FROM `+rel+`) r`).Scan(&n); err != nil {
			t.Errorf("auditor: read %s: %v", rel, err)
		}
	}
	var lastError string
	if err := auditor.QueryRow(ctx, `SELECT i.last_error FROM outbox.intents i JOIN outbox.attempts a ON a.intent_id = i.id WHERE i.id = $1`, ids[0]).Scan(&lastError); err != nil || !strings.Contains(lastError, "status 400") {
		t.Errorf("auditor: dead intent's error = %q, %v", lastError, err)
	}

	var writes []string
	for _, table := range schemaObjects(t, admin, "rp") {
		writes = append(writes,
			`INSERT INTO `+table+` DEFAULT VALUES`,
			`DELETE FROM `+table,
			`TRUNCATE `+table)
	}
	for _, col := range []string{"outbox.intents.state", "outbox.attempts.error", "outbox.relays.heartbeat_at", "outbox.synced_users.synced_at", "outbox.wakeup.waiting"} {
		table, column := col[:strings.LastIndex(col, ".")], col[strings.LastIndex(col, ".")+1:]
		writes = append(writes, fmt.Sprintf(`UPDATE %s SET %s = %[2]s`, table, column))
	}
	for _, seq := range schemaObjects(t, admin, "S") {
		writes = append(writes, fmt.Sprintf(`SELECT nextval('%s')`, seq))
	}
	writes = append(writes,
		`SELECT outbox.validate_payload('{}')`,
		`CREATE TABLE outbox.mine (x int)`,
	)
	refused(t, auditor, "auditor", writes...)
	// Views are not writable for anyone.
	for _, v := range schemaObjects(t, admin, "v") {
		if _, err := auditor.Exec(ctx, `DELETE FROM `+v); err == nil {
			t.Errorf("auditor: DELETE FROM %s succeeded", v)
		}
	}

	env := map[string]string{"DATABASE_URL": auditorURL}
	code, stdout, stderr := runCLI(t, env, "status")
	if code != 0 || !strings.Contains(stdout, "status 400") {
		t.Errorf("status as the auditor exited %d:\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, env, "inspect", fmt.Sprint(ids[0]))
	if code != 0 || !strings.Contains(stdout, "status 400") {
		t.Errorf("inspect as the auditor exited %d:\n%s%s", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, env, "retry", "--all-dead")
	if code != 1 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("retry as the auditor exited %d with %q, want permission denied", code, stderr)
	}
}

// A relay running as the relay role, with the migrations applied by the
// owner (OUTBOX_MIGRATE=false), does all of its work: claims, renews its
// leases, takes back an expired lease, completes, records attempts and
// synced users, heartbeats, waits for a NOTIFY, and deregisters; status
// and retry work too. It cannot do DDL or insert intents.
func TestRelayRole(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.Pool(t, dbURL)
	_, relayURL := partyRole(t, dbURL, "relay")
	_, producerURL := partyRole(t, dbURL, "producer")
	producer := pgtest.Pool(t, producerURL)
	ctx := t.Context()

	// Each call takes a fifth of the lease: a delivery (users, then the
	// conversation, then the messages) spans at least one renewal.
	const secret = "sk_test_roles"
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: secret, Faults: faketalkjs.Faults{Latency: 600 * time.Millisecond}})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	var intents []outbox.Intent
	for i := range 20 {
		intents = append(intents, relaytest.OrderIntent(fmt.Sprintf("conv-%d", i%10), i))
	}
	relaytest.InsertSQL(t, producer, intents[:10])
	// An intent whose relay died holding it.
	orphan := relaytest.InsertSQL(t, admin, intents[10:11])[0]
	if _, err := admin.Exec(ctx, `UPDATE outbox.intents SET state = 'delivering', attempts = 1, lease_token = 1,
	       lease_owner = 'crashed-relay', lease_expires_at = now() - interval '1 second' WHERE id = $1`, orphan); err != nil {
		t.Fatal(err)
	}

	// Killed when the test ends, as its cleanup does anyway.
	cmd := exec.CommandContext(t.Context(), binary, "run")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+relayURL, "OUTBOX_MIGRATE=false",
		"TALKJS_APP_ID=app", "TALKJS_SECRET_KEY="+secret, "TALKJS_BASE_URL="+srv.URL,
		"OUTBOX_LEASE=3s", "OUTBOX_RATE_LIMIT=0", "OUTBOX_RELAY_NAME=relay-role",
		"OUTBOX_HTTP_ADDR=127.0.0.1:0", "OUTBOX_LOG_LEVEL=warn")
	logPath := filepath.Join(t.TempDir(), "relay.log")
	logs, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		exitErr := <-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("relay log (exit: %v):\n%s", exitErr, b)
		}
	})

	// A lease renewed: the same claim (id, token) with a later expiry.
	type claim struct{ id, token int64 }
	firstExpiry := map[claim]time.Time{}
	relaytest.WaitFor(t, 30*time.Second, "a lease renewal", func() bool {
		rows, err := admin.Query(ctx, `SELECT id, lease_token, lease_expires_at FROM outbox.intents WHERE state = 'delivering' AND lease_owner = 'relay-role'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var c claim
			var exp time.Time
			if err := rows.Scan(&c.id, &c.token, &exp); err != nil {
				t.Fatal(err)
			}
			if first, ok := firstExpiry[c]; !ok {
				firstExpiry[c] = exp
			} else if exp.After(first) {
				return true
			}
		}
		return false
	})

	c := relaytest.WaitSettled(t, admin, 60*time.Second)
	if c["done"] != 11 {
		t.Fatalf("states = %v, want 11 done", c)
	}
	var attempts int
	if err := admin.QueryRow(ctx, `SELECT attempts FROM outbox.intents WHERE id = $1`, orphan).Scan(&attempts); err != nil || attempts != 2 {
		t.Errorf("the orphaned intent took %d attempts (%v), want 2: its expired one and the relay's", attempts, err)
	}

	// Idle, the relay asks for a NOTIFY; a producer's insert wakes it.
	relaytest.WaitFor(t, 30*time.Second, "the idle relay to set the wake-up flag", func() bool {
		var waiting bool
		return admin.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting) == nil && waiting
	})
	relaytest.InsertSQL(t, producer, intents[11:])
	if c := relaytest.WaitSettled(t, admin, 60*time.Second); c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	relaytest.CheckDelivered(t, fake, intents)

	var relayRows, attemptRows, syncRows, convSyncRows int
	if err := admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.relays WHERE id = 'relay-role'),
	        (SELECT count(*) FROM outbox.attempts WHERE relay = 'relay-role'),
	        (SELECT count(*) FROM outbox.synced_users),
	        (SELECT count(*) FROM outbox.synced_conversations)`).Scan(&relayRows, &attemptRows, &syncRows, &convSyncRows); err != nil {
		t.Fatal(err)
	}
	if relayRows != 1 || attemptRows == 0 || syncRows == 0 || convSyncRows == 0 {
		t.Errorf("relays row %d, attempts %d, synced users %d, synced conversations %d: want 1 and some of each",
			relayRows, attemptRows, syncRows, convSyncRows)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("relay exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not stop within 30s of SIGTERM")
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM outbox.relays WHERE id = 'relay-role'`).Scan(&relayRows); err != nil || relayRows != 0 {
		t.Errorf("relay row left after shutdown: %d (%v)", relayRows, err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "permission denied") || strings.Contains(string(b), "42501") {
		t.Errorf("the relay was refused something:\n%s", b)
	}

	// status and retry as the relay role.
	env := map[string]string{"DATABASE_URL": relayURL}
	if _, err := admin.Exec(ctx, `UPDATE outbox.intents SET state = 'dead', done_at = NULL, last_error = 'attempt 1: status 400' WHERE id = $1`, orphan); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, env, "status")
	if code != 0 || !strings.Contains(stdout, "attempt 1: status 400") {
		t.Errorf("status as the relay exited %d:\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, env, "retry", fmt.Sprint(orphan))
	if code != 0 || !strings.Contains(stdout, "retried 1 intent(s)") {
		t.Errorf("retry as the relay exited %d:\n%s%s", code, stdout, stderr)
	}
	// The other operator commands run as the relay role too.
	code, stdout, stderr = runCLI(t, env, "status", "--json")
	if code != 0 || !strings.Contains(stdout, `"pending"`) {
		t.Errorf("status --json as the relay exited %d:\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, env, "inspect", fmt.Sprint(orphan))
	if code != 0 || !strings.Contains(stdout, "conv-0") {
		t.Errorf("inspect as the relay exited %d:\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr = runCLI(t, env, "cancel", fmt.Sprint(orphan)); code != 0 {
		t.Errorf("cancel as the relay exited %d:\n%s%s", code, stdout, stderr)
	}
	if _, err := admin.Exec(ctx, `UPDATE outbox.intents SET updated_at = now() - interval '2 days' WHERE id = $1 AND state = 'dead'`, orphan); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLI(t, env, "purge", "--dead", "--older-than", "24h")
	var left int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE id = $1`, orphan).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if code != 0 || left != 0 {
		t.Errorf("purge as the relay exited %d and left %d of the cancelled intent:\n%s%s", code, left, stdout, stderr)
	}

	relay := pgtest.Pool(t, relayURL)
	refused(t, relay, "relay",
		`INSERT INTO outbox.intents (payload) VALUES ('{"conversation": {"id": "x"}}')`,
		`TRUNCATE outbox.attempts`,
		`CREATE TABLE outbox.mine (x int)`,
		`ALTER TABLE outbox.intents ADD COLUMN mine int`,
		`DROP TABLE outbox.relays`,
		`SELECT * FROM outbox.goose_db_version`,
	)
}

// A producer whose search_path puts a schema of its own before pg_catalog,
// holding look-alikes of what the outbox's functions use (octet_length,
// jsonb_typeof, jsonb_path_match, the jsonb = and <> operators, nextval,
// the advisory lock, pg_notify, the outbox's own function names, a wakeup
// table, also in pg_temp), still gets the outbox's behaviour: the payload rules, an id
// from the outbox's sequence, the conversation's order lock, the wake-up.
func TestFunctionsIgnoreCallerSearchPath(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.Pool(t, dbURL)
	role, producerURL := partyRole(t, dbURL, "producer")
	ctx := t.Context()
	if _, err := admin.Exec(ctx, `CREATE SCHEMA shadow AUTHORIZATION `+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	producer, err := pgx.Connect(ctx, producerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close(ctx)
	for _, stmt := range []string{
		`CREATE FUNCTION shadow.octet_length(text) RETURNS integer LANGUAGE sql AS 'SELECT 0'`,
		`CREATE FUNCTION shadow.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$SELECT 'object'$$`,
		`CREATE FUNCTION shadow.always(jsonb, jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT true'`,
		`CREATE FUNCTION shadow.never(jsonb, jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT false'`,
		`CREATE OPERATOR shadow.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = shadow.always)`,
		`CREATE OPERATOR shadow.<> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = shadow.never)`,
		`CREATE FUNCTION shadow.nextval(regclass) RETURNS bigint LANGUAGE sql AS 'SELECT -1::bigint'`,
		`CREATE FUNCTION shadow.pg_advisory_xact_lock(integer, integer) RETURNS void LANGUAGE sql AS 'SELECT NULL::void'`,
		`CREATE FUNCTION shadow.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT NULL::void'`,
		`CREATE FUNCTION shadow.validate_payload(jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT true'`,
		`CREATE FUNCTION shadow.payload_ok(jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT true'`,
		`CREATE FUNCTION shadow.jsonb_path_match(jsonb, jsonpath, jsonb, boolean) RETURNS boolean LANGUAGE sql AS 'SELECT true'`,
		`CREATE FUNCTION shadow.custom_violation(val jsonb, OUT below text, OUT rule text) LANGUAGE sql AS 'SELECT NULL::text, NULL::text'`,
		`CREATE TABLE shadow.wakeup (singleton boolean, waiting boolean)`,
		`INSERT INTO shadow.wakeup VALUES (true, false)`,
		`CREATE TEMP TABLE wakeup (singleton boolean, waiting boolean)`,
		`CREATE TEMP TABLE intents (id bigint, payload jsonb)`,
		`SET search_path = shadow, pg_catalog, outbox`,
	} {
		if _, err := producer.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	// The look-alikes are in force for the producer's own statements.
	var shadowed int
	if err := producer.QueryRow(ctx, `SELECT octet_length('abc')`).Scan(&shadowed); err != nil || shadowed != 0 {
		t.Fatalf("shadow.octet_length not in force: %d, %v", shadowed, err)
	}

	for _, tt := range []struct {
		payload, message string
	}{
		{`{"conversation": {"id": "c1"}, "extra": 1}`, "invalid intent payload: extra: is not a known field"},
		{`{"conversation": {"id": "c1", "subject": 5}}`, "invalid intent payload: conversation.subject: must be a string"},
		{`{"conversation": {"id": "c1", "custom": {"k": 1}}}`, "invalid intent payload: conversation.custom.k: must be a string"},
		{`{"conversation": {"id": "c1", "subject": "` + strings.Repeat("x", 300000) + `"}}`, "more than the limit of 262144"},
	} {
		_, err := producer.Exec(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb)`, tt.payload)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23514" || !strings.Contains(pgErr.Message, tt.message) {
			t.Errorf("payload %.60s: got %v, want %q", tt.payload, err, tt.message)
		}
	}

	if _, err := admin.Exec(ctx, `UPDATE outbox.wakeup SET waiting = true`); err != nil {
		t.Fatal(err)
	}
	listener, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, `LISTEN outbox_intents`); err != nil {
		t.Fatal(err)
	}
	tx, err := producer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO outbox.intents (payload) VALUES ('{"conversation": {"id": "c1"}}') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if id <= 0 {
		t.Errorf("id %d: not drawn from outbox.intents_id_seq", id)
	}
	// The order lock, keyed on the real hash of the conversation id.
	var lockHeld bool
	if err := tx.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
                WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()
                  AND classid = 1868788344 AND objsubid = 2
                  AND objid::text::bigint = (pg_catalog.hashtext('c1')::bigint & 4294967295))`).Scan(&lockHeld); err != nil {
		t.Fatal(err)
	}
	if !lockHeld {
		t.Error("the conversation's order lock was not taken")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := listener.WaitForNotification(waitCtx); err != nil {
		t.Errorf("no notification after the insert: %v", err)
	}
	var waiting bool
	if err := admin.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting); err != nil || waiting {
		t.Errorf("outbox.wakeup after the insert: waiting=%v (%v), want cleared", waiting, err)
	}
	var seqID int64
	if err := admin.QueryRow(ctx, `SELECT last_value FROM outbox.intents_id_seq`).Scan(&seqID); err != nil || seqID != id {
		t.Errorf("sequence at %d (%v), the intent's id is %d", seqID, err, id)
	}
}

// A schema owner that is not a superuser migrates and grants on its own;
// the SECURITY DEFINER trigger then runs with the owner's rights. Granting
// to a role that has the owner's or a superuser's rights warns.
func TestGrantAsPlainOwner(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewEmptyDatabase(t)
	owner, ownerURL := pgtest.NewLoginRole(t, dbURL)
	admin := pgtest.Pool(t, dbURL)
	ctx := t.Context()
	var dbName string
	if err := admin.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `GRANT CREATE ON DATABASE `+pgx.Identifier{dbName}.Sanitize()+` TO `+pgx.Identifier{owner}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": ownerURL}
	if code, stdout, stderr := runCLI(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate as the owner exited %d: %s%s", code, stdout, stderr)
	}
	producerRole, producerURL := pgtest.NewLoginRole(t, dbURL)
	code, stdout, stderr := runCLI(t, env, "grant", "producer", producerRole)
	if code != 0 || stderr != "" || !strings.Contains(stdout, "holds the producer privileges") {
		t.Fatalf("grant as the owner exited %d: %s%s", code, stdout, stderr)
	}
	if _, err := admin.Exec(ctx, `UPDATE outbox.wakeup SET waiting = true`); err != nil {
		t.Fatal(err)
	}
	producer := pgtest.Pool(t, producerURL)
	if _, err := outbox.Enqueue(ctx, producer, relaytest.OrderIntent("c1", 1)); err != nil {
		t.Fatalf("enqueue as the producer: %v", err)
	}
	var waiting bool
	if err := admin.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting); err != nil || waiting {
		t.Errorf("wake-up flag after the insert: waiting=%v (%v), want cleared", waiting, err)
	}

	member, _ := pgtest.NewLoginRole(t, dbURL)
	if _, err := admin.Exec(ctx, `GRANT `+pgx.Identifier{owner}.Sanitize()+` TO `+pgx.Identifier{member}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, env, "grant", "auditor", member)
	if code != 0 || !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, "do not limit it") {
		t.Errorf("grant to a member of the owner exited %d with %q, want a warning", code, stderr)
	}
}
