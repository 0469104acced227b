package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

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
	if err := demo.Run(context.Background(), demo.Options{DatabaseURL: pgtest.AdminURL(t), Out: &out, Log: &log}); err != nil {
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
}
