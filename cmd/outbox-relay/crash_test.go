package main

import (
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// binary is the outbox-relay executable built by TestMain.
var binary string

func TestMain(m *testing.M) {
	bin, remove, err := relaytest.BuildRelay(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = bin
	code := pgtest.Run(m)
	remove()
	os.Exit(code)
}

// startProcess runs `outbox-relay run` as a child process.
func startProcess(t *testing.T, name string, env ...string) *exec.Cmd {
	t.Helper()
	// Killed when the test ends, as the cleanup below does anyway.
	cmd := exec.CommandContext(t.Context(), binary, "run")
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "OUTBOX_RELAY_NAME="+name, "OUTBOX_HTTP_ADDR=127.0.0.1:0", "OUTBOX_LOG_LEVEL=warn")
	logs, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return cmd
}

// Killing a relay with SIGKILL mid-batch loses nothing and duplicates
// nothing: a new relay takes over the dead one's intents once their lease
// (10s by default) expires, within 15s, and delivers every intent once.
func TestSIGKILLMidBatchTakeover(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	const secret = "sk_test_crash"
	// Latency keeps many intents in flight at the moment of the kill.
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: secret, Faults: faketalkjs.Faults{Latency: 30 * time.Millisecond}})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	env := []string{"DATABASE_URL=" + dbURL, "TALKJS_APP_ID=app", "TALKJS_SECRET_KEY=" + secret,
		"TALKJS_BASE_URL=" + srv.URL, "OUTBOX_RATE_LIMIT=0", "OUTBOX_RETRY_BASE=50ms"}

	var intents []outbox.Intent
	for i := range 600 {
		intents = append(intents, relaytest.OrderIntent(fmt.Sprintf("conv-%d", i%200), i))
	}
	relaytest.InsertSQL(t, pool, intents)

	first := startProcess(t, "relay-a", env...)
	ctx := t.Context()
	relaytest.WaitFor(t, 30*time.Second, "relay-a to be mid-batch", func() bool {
		var done, held int
		err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'done'),
		                                  count(*) FILTER (WHERE state = 'delivering' AND lease_owner = 'relay-a')
		                             FROM outbox.intents`).Scan(&done, &held)
		return err == nil && done >= 50 && held >= 20
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	var orphaned int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE state = 'delivering' AND lease_owner = 'relay-a'`).Scan(&orphaned); err != nil {
		t.Fatal(err)
	}
	if orphaned == 0 {
		t.Fatal("the killed relay held no intents: the test did not kill it mid-batch")
	}

	startProcess(t, "relay-b", env...)
	started := time.Now()
	relaytest.WaitFor(t, 15*time.Second, "relay-b to take over relay-a's intents", func() bool {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE lease_owner = 'relay-a'`).Scan(&left)
		return err == nil && left == 0
	})
	t.Logf("relay-b took over %d orphaned intents %s after starting", orphaned, time.Since(started).Round(100*time.Millisecond))

	c := relaytest.WaitSettled(t, pool, 60*time.Second)
	if c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	relaytest.CheckDelivered(t, fake, intents)
}
