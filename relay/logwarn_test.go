package relay_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// An API failing every call: each of the many retryable failures is
// counted, but only the first of its class reaches the log at warn within
// the minute; every intent that goes dead does, with its reason; every
// state change is logged at debug.
func TestRetryableFailuresWarnOncePerClass(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{FailBefore: 1})
	reg := prometheus.NewRegistry()
	cfg := testConfig("warns")
	cfg.Registerer = reg
	cfg.MaxAttempts = 6
	cfg.BreakerThreshold = 1000 // let every attempt call
	b.startRelay(t, cfg, testSecret)
	var intents []outbox.Intent
	for i := range 10 {
		intents = append(intents, orderIntent(fmt.Sprintf("warn-%d", i), i))
	}
	b.insertSQL(t, intents)
	c := b.waitSettled(t, 60*time.Second)
	if c["dead"] != 10 {
		t.Fatalf("states = %v, want 10 dead", c)
	}
	waitFor(t, 10*time.Second, "every dead letter to be logged", func() bool {
		return strings.Count(b.logs.String(), `msg="intent dead"`) == 10
	})
	// 5 retries per intent before the sixth attempt spends the budget.
	if n := relaytest.MetricValue(t, reg, "outbox_relay_retryable_failures_total", "class", "user 500"); n != 50 {
		t.Errorf("retryable failures counted = %v, want 50", n)
	}
	logs := b.logs.String()
	var warns, deads, changes int
	for _, line := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(line, "level=WARN") && strings.Contains(line, "retryable failures"):
			warns++
			if !strings.Contains(line, `class="user 500"`) || !strings.Contains(line, "failures=1") {
				t.Errorf("warn line lacks its class or count: %s", line)
			}
		case strings.Contains(line, "level=WARN") && strings.Contains(line, `msg="intent dead"`):
			deads++
			if !strings.Contains(line, `reason="retry budget spent"`) || !strings.Contains(line, "status 500") {
				t.Errorf("dead letter line lacks its reason: %s", line)
			}
		case strings.Contains(line, "level=DEBUG") && strings.Contains(line, `msg="intent state"`):
			changes++
		}
	}
	if warns != 1 {
		t.Errorf("%d warn lines for 50 retryable failures of one class within a minute, want 1", warns)
	}
	if deads != 10 {
		t.Errorf("%d dead-letter warn lines, want 10", deads)
	}
	// Each of 60 attempts: a claim and a completion.
	if changes != 120 {
		t.Errorf("%d state changes logged at debug, want 120", changes)
	}
}
