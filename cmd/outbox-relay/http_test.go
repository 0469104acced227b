package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// defaultRelay is an `outbox-relay run` child started with only the
// required variables, so every other setting is at its default.
type defaultRelay struct {
	name   string
	cmd    *exec.Cmd
	logs   *relaytest.SyncBuffer
	exited chan error // receives the result of Wait, then is closed
	addrs  chan string
}

func startDefaultRelay(t *testing.T, name string, env ...string) *defaultRelay {
	t.Helper()
	// Killed when the test ends, as its cleanup does anyway.
	cmd := exec.CommandContext(t.Context(), binary, "run")
	for _, kv := range os.Environ() {
		// Nothing from the test's own environment may stand in for a default.
		if !strings.HasPrefix(kv, "OUTBOX_") && !strings.HasPrefix(kv, "TALKJS_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Env = append(cmd.Env, "OUTBOX_RELAY_NAME="+name, "OUTBOX_LOG_FORMAT=json")
	r := &defaultRelay{name: name, cmd: cmd, logs: &relaytest.SyncBuffer{}, exited: make(chan error, 1), addrs: make(chan string, 1)}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Copy the log, and pick out the address the listener reports.
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(r.logs, line)
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics and health" {
				r.addrs <- rec.Addr
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		r.exited <- cmd.Wait()
		_ = pw.Close()
		close(r.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		exitErr := <-r.exited
		if t.Failed() {
			t.Logf("%s log (exit: %v):\n%s", name, exitErr, r.logs.String())
		}
	})
	return r
}

// Several relays share a host with the default settings: each listens on
// loopback at a port of its own, none exits, and together they deliver.
func TestRelaysShareAHostWithDefaults(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	const secret = "sk_test_share_host"
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: secret})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	env := []string{"DATABASE_URL=" + dbURL, "TALKJS_APP_ID=app", "TALKJS_SECRET_KEY=" + secret, "TALKJS_BASE_URL=" + srv.URL}

	relays := make([]*defaultRelay, 3)
	addrs := map[string]string{}
	for i := range relays {
		relays[i] = startDefaultRelay(t, fmt.Sprintf("host-relay-%d", i+1), env...)
	}
	for _, r := range relays {
		select {
		case addr := <-r.addrs:
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host != "127.0.0.1" || port == "0" {
				t.Fatalf("%s listens on %q, want loopback with a port of its own", r.name, addr)
			}
			if other, dup := addrs[addr]; dup {
				t.Fatalf("%s and %s both report %s", r.name, other, addr)
			}
			addrs[addr] = r.name
		case err := <-r.exited:
			t.Fatalf("%s exited (%v) instead of serving", r.name, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s reported no listen address within 30s", r.name)
		}
	}
	for addr, name := range addrs {
		// The check a container runs: the binary asking its own relay.
		health := exec.CommandContext(t.Context(), binary, "health")
		health.Env = []string{"OUTBOX_HTTP_ADDR=" + addr}
		if out, err := health.CombinedOutput(); err != nil {
			t.Fatalf("%s: outbox-relay health: %v\n%s", name, err, out)
		}
	}

	var intents []outbox.Intent
	for i := range 90 {
		intents = append(intents, relaytest.OrderIntent(fmt.Sprintf("conv-%d", i%30), i))
	}
	relaytest.InsertSQL(t, pool, intents)
	c := relaytest.WaitSettled(t, pool, 60*time.Second)
	if c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	relaytest.CheckDelivered(t, fake, intents)

	// Every relay is still running and registered.
	for _, r := range relays {
		select {
		case err := <-r.exited:
			t.Fatalf("%s exited (%v)", r.name, err)
		default:
		}
	}
	want := binaryVersion(t, binary)
	var live int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.relays WHERE id LIKE 'host-relay-%' AND version = $1`, want).Scan(&live); err != nil {
		t.Fatal(err)
	}
	if live != len(relays) {
		t.Fatalf("%d relays registered in outbox.relays with version %q, want %d", live, want, len(relays))
	}
}
