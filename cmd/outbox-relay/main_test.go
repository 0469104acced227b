package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

const testSecret = "sk_test_cli-SECRET-never-printed-42"

func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), args, envconfig.MapLookuper(env), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestHelpOnEveryCommand(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"migrate", "run", "status", "retry", "demo", "health", "inspect", "cancel", "purge"} {
		code, _, stderr := runCLI(t, nil, cmd, "--help")
		if code != 0 {
			t.Errorf("%s --help exited %d", cmd, code)
		}
		if !strings.Contains(stderr, "Usage: outbox-relay "+cmd) {
			t.Errorf("%s --help printed %q, want its usage", cmd, stderr)
		}
	}
	code, stdout, _ := runCLI(t, nil, "--help")
	if code != 0 || !strings.Contains(stdout, "Commands:") {
		t.Errorf("--help exited %d with %q", code, stdout)
	}
	if code, _, stderr := runCLI(t, nil, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command exited %d with %q", code, stderr)
	}
}

// Missing or invalid configuration fails fast, naming the variable, and
// never printing the secret key.
func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	valid := map[string]string{
		"DATABASE_URL":      "postgres://postgres@127.0.0.1:1/none?connect_timeout=1",
		"TALKJS_APP_ID":     "app",
		"TALKJS_SECRET_KEY": testSecret,
	}
	with := func(k, v string) map[string]string {
		env := map[string]string{}
		for key, val := range valid {
			env[key] = val
		}
		if v == "<unset>" {
			delete(env, k)
		} else {
			env[k] = v
		}
		return env
	}
	tests := []struct {
		cmd      string
		env      map[string]string
		variable string
	}{
		{"run", with("DATABASE_URL", "<unset>"), "DATABASE_URL"},
		{"run", with("TALKJS_APP_ID", "<unset>"), "TALKJS_APP_ID"},
		{"run", with("TALKJS_SECRET_KEY", "<unset>"), "TALKJS_SECRET_KEY"},
		{"run", with("TALKJS_SECRET_KEY", "   "), "TALKJS_SECRET_KEY"},
		{"run", with("TALKJS_BASE_URL", "ftp://x"), "TALKJS_BASE_URL"},
		{"run", with("OUTBOX_CONCURRENCY", "many"), "OUTBOX_CONCURRENCY"},
		{"run", with("OUTBOX_CONCURRENCY", "0"), "OUTBOX_CONCURRENCY"},
		{"run", with("OUTBOX_LEASE", "10"), "OUTBOX_LEASE"},
		{"run", with("OUTBOX_LEASE", "500ms"), "OUTBOX_LEASE"},
		{"run", with("TALKJS_TIMEOUT", "soon"), "TALKJS_TIMEOUT"},
		{"run", with("TALKJS_TIMEOUT", "0s"), "TALKJS_TIMEOUT"},
		{"run", with("TALKJS_TIMEOUT", "10s"), "OUTBOX_LEASE"}, // longer than half the default lease
		{"run", with("OUTBOX_RATE_LIMIT", "-1"), "OUTBOX_RATE_LIMIT"},
		{"run", with("OUTBOX_LOG_LEVEL", "loud"), "OUTBOX_LOG_LEVEL"},
		{"run", with("OUTBOX_MAX_AGE", "forever"), "OUTBOX_MAX_AGE"},
		{"run", with("OUTBOX_KEY_RETENTION", "-1h"), "OUTBOX_KEY_RETENTION"},
		{"run", with("OUTBOX_RETENTION_INTERVAL", "0s"), "OUTBOX_RETENTION_INTERVAL"},
		{"run", with("OUTBOX_RETENTION_BATCH_SIZE", "0"), "OUTBOX_RETENTION_BATCH_SIZE"},
		{"migrate", map[string]string{}, "DATABASE_URL"},
		{"status", map[string]string{}, "DATABASE_URL"},
		{"retry", map[string]string{}, "DATABASE_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+"/"+tt.variable, func(t *testing.T) {
			t.Parallel()
			args := []string{tt.cmd}
			if tt.cmd == "retry" {
				args = append(args, "--all-dead")
			}
			code, stdout, stderr := runCLI(t, tt.env, args...)
			if code == 0 {
				t.Fatalf("exited 0, want a configuration error")
			}
			if !strings.Contains(stderr, tt.variable) {
				t.Errorf("error %q does not name %s", stderr, tt.variable)
			}
			if strings.Contains(stdout+stderr, testSecret) {
				t.Errorf("the secret key was printed")
			}
		})
	}
}

func TestRetryArguments(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none"}
	for _, args := range [][]string{
		{"retry"},
		{"retry", "abc"},
		{"retry", "1;DROP TABLE outbox.intents"},
		{"retry", "-5"},
		{"retry", "--all-dead", "3"},
	} {
		code, _, stderr := runCLI(t, env, args...)
		if code != 2 {
			t.Errorf("%q exited %d (%s), want 2", args, code, stderr)
		}
	}
}

// status and retry against a real database: ids that are not dead are left
// alone and reported; dead ones come back to pending.
func TestStatusAndRetry(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	env := map[string]string{"DATABASE_URL": dbURL}
	ctx := t.Context()
	pool := pgtest.Pool(t, dbURL)
	for _, stmt := range []string{
		`INSERT INTO outbox.intents (key, payload) VALUES ('k1', '{"conversation":{"id":"c1"}}'), ('k2', '{"conversation":{"id":"c2"}}')`,
		`UPDATE outbox.intents SET state = 'dead', last_error = 'attempt 1: user: permanent: status 400' WHERE key = 'k1'`,
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	var deadID, pendingID string
	if err := pool.QueryRow(ctx, `SELECT (SELECT id::text FROM outbox.intents WHERE key = 'k1'), (SELECT id::text FROM outbox.intents WHERE key = 'k2')`).Scan(&deadID, &pendingID); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runCLI(t, env, "status")
	if code != 0 {
		t.Fatalf("status exited %d: %s", code, stderr)
	}
	for _, want := range []string{"pending", "dead", "status 400", "k1"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, stdout)
		}
	}

	code, stdout, stderr = runCLI(t, env, "retry", deadID, pendingID)
	if code != 0 {
		t.Fatalf("retry exited %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "retried 1 intent(s): "+deadID) || !strings.Contains(stdout, "intent "+pendingID+" is pending: left alone") {
		t.Errorf("retry output:\n%s", stdout)
	}
	var state string
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT state, attempts FROM outbox.intents WHERE key = 'k1'`).Scan(&state, &attempts); err != nil {
		t.Fatal(err)
	}
	if state != "pending" || attempts != 0 {
		t.Errorf("retried intent is %s with %d attempts, want pending with 0", state, attempts)
	}
	if code, _, _ := runCLI(t, env, "retry", "999999"); code != 3 {
		t.Errorf("retry of a missing id exited %d, want 3", code)
	}
}

// Every lease the configuration accepts comes with a timeout that fits in
// it; a pair that does not fit is refused naming both variables.
func TestUnitLeaseAndTimeout(t *testing.T) {
	t.Parallel()
	base := map[string]string{
		"DATABASE_URL":      "postgres://postgres@127.0.0.1:1/none",
		"TALKJS_APP_ID":     "app",
		"TALKJS_SECRET_KEY": testSecret,
	}
	tests := []struct {
		lease, timeout string // "" unset
		want           time.Duration
		wantErr        []string
	}{
		{"", "", 5 * time.Second, nil},
		{"1s", "", 500 * time.Millisecond, nil},
		{"3s", "", 1500 * time.Millisecond, nil},
		{"1s", "500ms", 500 * time.Millisecond, nil},
		{"20s", "10s", 10 * time.Second, nil},
		{"", "10s", 0, []string{"TALKJS_TIMEOUT", "OUTBOX_LEASE"}},
		{"1s", "600ms", 0, []string{"TALKJS_TIMEOUT", "OUTBOX_LEASE"}},
		{"1s", "50ms", 0, []string{"TALKJS_TIMEOUT"}},
		{"999ms", "", 0, []string{"OUTBOX_LEASE"}},
	}
	for _, tt := range tests {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		if tt.lease != "" {
			env["OUTBOX_LEASE"] = tt.lease
		}
		if tt.timeout != "" {
			env["TALKJS_TIMEOUT"] = tt.timeout
		}
		var cfg runConfig
		err := loadConfig(t.Context(), envconfig.MapLookuper(env), &cfg)
		if err == nil {
			err = cfg.validate()
		}
		name := fmt.Sprintf("OUTBOX_LEASE=%q TALKJS_TIMEOUT=%q", tt.lease, tt.timeout)
		if tt.wantErr == nil {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			} else if got := cfg.talkjsConfig().Timeout; got != tt.want {
				t.Errorf("%s: client timeout %s, want %s", name, got, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted, want an error naming %v", name, tt.wantErr)
			continue
		}
		for _, v := range tt.wantErr {
			if !strings.Contains(err.Error(), v) {
				t.Errorf("%s: error %q does not name %s", name, err, v)
			}
		}
	}
}
