package relay

import (
	"errors"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// How an attempt's end changes the conversation's record and the intent's
// outcome: a permanent answer from TalkJS to the messages POST puts the
// record in doubt, and an intent that skipped the PUT is tried again.
func TestUnitConversationDoubt(t *testing.T) {
	t.Parallel()
	hash := []byte("h")
	tests := []struct {
		name    string
		conv    *convSync // the PUT's end before the failure; nil: syncs off
		attempt int
		step    callStep
		err     *provider.Error
		outcome outcome
		write   bool // the completion sends an entry for the conversation
		ok      bool // ... saying TalkJS holds the content
	}{
		{"skipped, messages 404", &convSync{skipped: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Permanent, Status: 404}, outcomeRetry, true, false},
		{"skipped, messages 404 on a later attempt", &convSync{skipped: true}, 3, stepMessages,
			&provider.Error{Kind: provider.Permanent, Status: 404}, outcomeRetry, true, false},
		{"skipped, messages 400", &convSync{skipped: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Permanent, Status: 400}, outcomeRetry, true, false},
		{"PUT 200, messages 404", &convSync{ok: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Permanent, Status: 404}, outcomeDead, true, false},
		{"skipped, messages 500", &convSync{skipped: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Retryable, Status: 500}, outcomeRetry, false, false},
		{"PUT 200, messages 500", &convSync{ok: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Retryable, Status: 500}, outcomeRetry, true, true},
		{"skipped, messages refused by the client (no status)", &convSync{skipped: true}, 1, stepMessages,
			&provider.Error{Kind: provider.Permanent}, outcomeDead, false, false},
		{"PUT 400", &convSync{ok: false}, 1, stepConversation,
			&provider.Error{Kind: provider.Permanent, Status: 400}, outcomeDead, true, false},
		{"syncs off, messages 404", nil, 1, stepMessages,
			&provider.Error{Kind: provider.Permanent, Status: 404}, outcomeDead, false, false},
	}
	r := &Relay{cfg: Config{Retry: RetryPolicy{Base: time.Millisecond, Max: time.Millisecond}}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := &result{intent: &claimedIntent{id: 1, attempt: tt.attempt}}
			if tt.conv != nil {
				c := *tt.conv
				c.id, c.hash = "c", hash
				res.conv = &c
			}
			tt.err.Err = errors.New("refused")
			r.decide(res, tt.err, tt.step)
			if res.outcome != tt.outcome {
				t.Errorf("outcome %s, want %s", res.outcome, tt.outcome)
			}
			var cols convSyncColumns
			if c := res.convRecord(); c != nil {
				cols.add(res.intent, c)
			}
			if write := len(cols.ok) == 1; write != tt.write || (write && cols.ok[0] != tt.ok) {
				t.Errorf("completion entries %v (ok %v), want one: %t, ok %t", cols.conversationID, cols.ok, tt.write, tt.ok)
			}
		})
	}
}
