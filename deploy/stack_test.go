package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// dropRoles removes roles made by a test from the cluster when it ends.
func dropRoles(t *testing.T, dbURL string, roles ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Errorf("drop roles: %v", err)
			return
		}
		defer conn.Close(context.Background())
		for _, r := range roles {
			id := pgx.Identifier{r}.Sanitize()
			_, _ = conn.Exec(ctx, `DROP OWNED BY `+id+` CASCADE`)
			if _, err := conn.Exec(ctx, `DROP ROLE IF EXISTS `+id); err != nil {
				t.Errorf("drop role %s: %v", r, err)
			}
		}
	})
}

// Compose's path without Docker: the init script creates the roles (twice,
// as a re-run would), the setup service's script migrates and grants them
// with the outbox-relay binary, a relay runs with the dev relay's
// environment as the relay role, an intent inserted as the producer role is
// delivered to the fake, and the auditor reads it.
func TestComposeSetupRuns(t *testing.T) {
	t.Parallel()
	bin, remove, err := relaytest.BuildRelay("../cmd/outbox-relay")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(remove)
	services := loadCompose(t, nil)
	dbURL := pgtest.NewEmptyDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "outbox_test_compose_" + hex.EncodeToString(b[:])
	users := map[string]string{"APP_DB_USER": prefix + "_app", "RELAY_DB_USER": prefix + "_relay", "AUDITOR_DB_USER": prefix + "_auditor"}
	dropRoles(t, dbURL, users["APP_DB_USER"], users["RELAY_DB_USER"], users["AUDITOR_DB_USER"])

	env := append(os.Environ(), "PGHOST="+u.Hostname(), "PGPORT="+u.Port(),
		"POSTGRES_USER="+u.User.Username(), "POSTGRES_DB="+strings.TrimPrefix(u.Path, "/"),
		"APP_DB_PASSWORD=app", "RELAY_DB_PASSWORD=relay", "AUDITOR_DB_PASSWORD=auditor",
		"DATABASE_URL="+dbURL, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	for k, v := range users {
		env = append(env, k+"="+v)
	}
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), name, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
	}
	for range 2 {
		run("compose/initdb/10-roles.sh")
	}
	setup := services["setup"]
	if len(setup.Command) != 1 {
		t.Fatalf("setup command %q, want one script for sh -ec", setup.Command)
	}
	run("sh", "-ec", setup.Command[0])

	fake := faketalkjs.New(faketalkjs.Config{AppID: "dev-app", SecretKey: "sk_dev_not_a_real_secret"})
	api := httptest.NewServer(fake)
	t.Cleanup(api.Close)
	relay := exec.CommandContext(t.Context(), bin, "run")
	relayEnv := services["dev-relay-1"].Environment
	// The compose hostnames become the test's; the port would clash.
	relayEnv["DATABASE_URL"] = pgtest.WithUser(dbURL, users["RELAY_DB_USER"])
	relayEnv["TALKJS_BASE_URL"] = api.URL
	relayEnv["OUTBOX_HTTP_ADDR"] = "127.0.0.1:0"
	for k, v := range relayEnv {
		relay.Env = append(relay.Env, k+"="+v)
	}
	var logs relaytest.SyncBuffer
	relay.Stdout, relay.Stderr = &logs, &logs
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = relay.Process.Kill()
		_ = relay.Wait()
		if t.Failed() {
			t.Logf("relay log:\n%s", logs.String())
		}
	})

	ctx := t.Context()
	producer := pgtest.Pool(t, pgtest.WithUser(dbURL, users["APP_DB_USER"]))
	intent := relaytest.OrderIntent("compose-1", 1)
	payload, err := json.Marshal(intent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := producer.Exec(ctx, `INSERT INTO outbox.intents (key, payload) VALUES ('compose-1', $1::jsonb)`, payload); err != nil {
		t.Fatalf("insert as the producer role: %v", err)
	}

	auditor := pgtest.Pool(t, pgtest.WithUser(dbURL, users["AUDITOR_DB_USER"]))
	relaytest.WaitFor(t, 30*time.Second, "the intent to be done, as the auditor reads it", func() bool {
		var state string
		err := auditor.QueryRow(ctx, `SELECT state FROM outbox.intents WHERE key = 'compose-1'`).Scan(&state)
		return err == nil && state == "done"
	})
	relaytest.CheckDelivered(t, fake, []outbox.Intent{intent})
	if _, err := auditor.Exec(ctx, `DELETE FROM outbox.intents`); err == nil {
		t.Error("the auditor role could delete intents")
	}
}
