package deploy

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// block is a fenced code block of README.md.
type block struct {
	lang   string
	runBy  string // the test named in a "<!-- run by TestX" comment just above, if any
	text   string
	lineNo int
}

func readmeBlocks(t *testing.T) []block {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := regexp.MustCompile(`^<!-- run by (Test\w+)`)
	var out []block
	var cur *block
	var runBy string
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "```"):
			cur = &block{lang: strings.TrimPrefix(line, "```"), runBy: runBy, lineNo: i + 1}
			runBy = ""
		case marker.MatchString(line):
			runBy = marker.FindStringSubmatch(line)[1]
		case strings.TrimSpace(line) != "":
			runBy = ""
		}
	}
	return out
}

// commands are a shell block's lines, comments and blank lines dropped.
func commands(b block) []string {
	var out []string
	for _, line := range strings.Split(b.text, "\n") {
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

// exports collects the VAR=value pairs of a block's export lines.
func exports(lines []string) map[string]string {
	env := map[string]string{}
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "export "); ok {
			for _, kv := range strings.Fields(rest) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
		}
	}
	return env
}

func shell(t *testing.T, env []string, line string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "sh", "-c", line)
	cmd.Dir = repoRoot
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README command %q: %v\n%s", line, err, out)
	}
	return string(out)
}

// A reader who follows "From psql to TalkJS, step by step" with nothing
// else gets an intent from psql delivered, and sees it in status and
// inspect --key. Every command of those blocks runs as written; the export
// lines stand for the reader's own values, so the database is the test's
// and the base URL the fake's, with the app id and key the README exports.
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	var steps [][]string
	for _, b := range readmeBlocks(t) {
		if b.runBy == "TestReadmeWalkthrough" {
			steps = append(steps, commands(b))
		}
	}
	if len(steps) != 3 {
		t.Fatalf("README has %d walkthrough blocks, want 3 (set up, run, look)", len(steps))
	}
	dbURL := pgtest.NewEmptyDatabase(t)
	bin := t.TempDir()
	env := append(os.Environ(), "DATABASE_URL="+dbURL, "GOBIN="+bin, "PATH="+bin+":"+os.Getenv("PATH"))

	for _, line := range steps[0] {
		if !strings.HasPrefix(line, "export ") {
			shell(t, env, line)
		}
	}

	creds := exports(steps[1])
	if creds["TALKJS_APP_ID"] == "" || creds["TALKJS_SECRET_KEY"] == "" {
		t.Fatalf("the run block exports no TalkJS app id and key: %q", steps[1])
	}
	fake := faketalkjs.New(faketalkjs.Config{AppID: creds["TALKJS_APP_ID"], SecretKey: creds["TALKJS_SECRET_KEY"]})
	api := httptest.NewServer(fake)
	t.Cleanup(api.Close)
	runEnv := slices.Concat(env, []string{"TALKJS_APP_ID=" + creds["TALKJS_APP_ID"], "TALKJS_SECRET_KEY=" + creds["TALKJS_SECRET_KEY"], "TALKJS_BASE_URL=" + api.URL})
	for _, line := range steps[1] {
		if strings.HasPrefix(line, "export ") {
			continue
		}
		relay := exec.CommandContext(t.Context(), "sh", "-c", "exec "+line)
		relay.Dir, relay.Env = repoRoot, runEnv
		var logs relaytest.SyncBuffer
		relay.Stdout, relay.Stderr = &logs, &logs
		if err := relay.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = relay.Process.Kill()
			_ = relay.Wait()
			if t.Failed() {
				t.Logf("%s:\n%s", line, logs.String())
			}
		})
	}
	pool := pgtest.Pool(t, dbURL)
	relaytest.WaitFor(t, 30*time.Second, "order-1 to be done", func() bool {
		var state string
		err := pool.QueryRow(t.Context(), `SELECT state FROM outbox.intents WHERE key = 'order-1'`).Scan(&state)
		return err == nil && state == "done"
	})
	if _, ok := fake.Conversation("order_1"); !ok {
		t.Fatal("the fake has no conversation order_1")
	}

	var look strings.Builder
	for _, line := range steps[2] {
		look.WriteString(shell(t, env, line))
	}
	for _, want := range []string{"done", "order-1", "order_1"} {
		if !strings.Contains(look.String(), want) {
			t.Errorf("status and inspect output lacks %q:\n%s", want, look.String())
		}
	}
}

// The README's SQL runs as pasted, in psql, in a database set up by the
// walkthrough's script.
func TestReadmeSQL(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	env := append(os.Environ(), "DATABASE_URL="+dbURL)
	shell(t, env, `psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -f examples/sql/order.sql`)
	var n int
	for _, b := range readmeBlocks(t) {
		if b.runBy != "TestReadmeSQL" {
			continue
		}
		if b.lang != "sql" {
			t.Errorf("README line %d: a %q block marked for TestReadmeSQL", b.lineNo, b.lang)
		}
		n++
		cmd := exec.CommandContext(t.Context(), "psql", dbURL, "-X", "-v", "ON_ERROR_STOP=1")
		cmd.Stdin = strings.NewReader(b.text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("README SQL at line %d: %v\n%s", b.lineNo, err, out)
		}
	}
	if n < 2 {
		t.Fatalf("%d README SQL blocks marked for TestReadmeSQL, want the insert and the audit query", n)
	}
	pool := pgtest.Pool(t, dbURL)
	var state string
	if err := pool.QueryRow(t.Context(), `SELECT state FROM outbox.intents WHERE key = 'order-123'`).Scan(&state); err != nil || state != "pending" {
		t.Fatalf("the README's intent order-123: state %q, %v", state, err)
	}
}

// Every command in the README's shell blocks is run: by the walkthrough
// test above, or by .ci/run (the set-up commands, and Compose, validated
// with docker-compose config for both profiles since CI has no Docker
// daemon), or it names a file this repository has.
func TestReadmeCommandsAreRun(t *testing.T) {
	t.Parallel()
	ci, err := os.ReadFile(filepath.Join(repoRoot, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	inCI := func(s string) func() bool { return func() bool { return strings.Contains(string(ci), s) } }
	exists := func(path string) func() bool {
		return func() bool { _, err := os.Stat(filepath.Join(repoRoot, path)); return err == nil }
	}
	covered := map[string]func() bool{
		"go run ./cmd/outbox-relay demo":                     inCI("\ngo run ./cmd/outbox-relay demo"),
		"go test ./...":                                      inCI("go test -race -count=1 -timeout 18m ./..."),
		"docker compose --profile dev up --build":            inCI("docker-compose --profile dev config -q"),
		"docker compose up --build":                          inCI("docker-compose --env-file .env.example config -q"),
		"cp .env.example .env":                               exists(".env.example"),
		"go get github.com/outbox-relay/outbox-relay/outbox": exists("outbox/enqueue.go"),
	}
	walked := map[string]bool{}
	var other []block
	for _, b := range readmeBlocks(t) {
		if b.lang != "sh" {
			continue
		}
		if b.runBy == "TestReadmeWalkthrough" {
			for _, c := range commands(b) {
				walked[c] = true
			}
			continue
		}
		other = append(other, b)
	}
	for _, b := range other {
		for _, c := range commands(b) {
			if strings.HasPrefix(c, "export ") || walked[c] {
				continue
			}
			check, ok := covered[c]
			if !ok {
				t.Errorf("README line %d: %q is run by no test and not by .ci/run", b.lineNo, c)
			} else if !check() {
				t.Errorf("README line %d: %q: what should run it (.ci/run or the file it names) does not", b.lineNo, c)
			}
		}
	}
}
