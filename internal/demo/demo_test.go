package demo_test

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/demo"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The demo, as a newcomer runs it: every order delivered but the one the
// fake refuses, which is dead with its reason, and a report of what the
// fake received.
func TestDemo(t *testing.T) {
	t.Parallel()
	var out, log bytes.Buffer
	if err := demo.Run(t.Context(), demo.Options{DatabaseURL: pgtest.AdminURL(t), Out: &out, Log: &log}); err != nil {
		t.Fatalf("demo: %v\n%s", err, log.String())
	}
	report := out.String()
	for _, want := range []string{
		"Status: pending 0, delivering 0, done 4, dead 1",
		"order-1004  dead",
		"status 400",
		"4 conversations, 8 messages",
		"Where is my parcel?",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	// The intents table gives each done intent its latency, commit to done.
	var rows int
	for _, line := range strings.Split(report, "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || !strings.HasPrefix(f[1], "order-") {
			continue
		}
		rows++
		latency, err := time.ParseDuration(f[5])
		switch f[2] {
		case "done":
			if err != nil || latency <= 0 {
				t.Errorf("done intent %s has latency %q, want a duration", f[1], f[5])
			}
		case "dead":
			if f[5] != "-" {
				t.Errorf("dead intent %s has latency %q, want -", f[1], f[5])
			}
		}
	}
	if rows != 5 {
		t.Errorf("intents table has %d rows with a latency column, want 5:\n%s", rows, report)
	}
	// It reads on an 80-column terminal, the log included.
	for name, text := range map[string]string{"report": report, "log": log.String()} {
		for _, line := range strings.Split(text, "\n") {
			if n := utf8.RuneCountInString(line); n > 80 {
				t.Errorf("%s line of %d columns:\n%s", name, n, line)
			}
		}
	}
}
