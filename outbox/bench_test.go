package outbox_test

import (
	"fmt"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// contractIntent is the contract's example payload, for conversation conv.
func contractIntent(conv string) outbox.Intent {
	return outbox.Intent{
		Users: []outbox.User{
			{ID: "u1", Name: "Alice", Email: []string{"alice@example.com"}, PhotoURL: "https://example.com/a.png",
				WelcomeMessage: "Hi!", Role: "buyer", Custom: map[string]string{"tier": "gold"}},
			{ID: "u2", Name: "Bob", Email: []string{"bob@example.com"}},
		},
		Conversation: outbox.Conversation{ID: conv, Subject: "Order " + conv, Participants: []string{"u1", "u2"},
			Custom: map[string]string{"orderId": conv}},
		Messages: []outbox.Message{
			{Sender: "u1", Text: "Hello!", Custom: map[string]string{"k": "v"}},
			{Type: outbox.SystemMessage, Text: "Order placed"},
		},
	}
}

func BenchmarkValidate(b *testing.B) {
	in := contractIntent("order_1")
	for b.Loop() {
		if err := in.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueue inserts one intent per round trip (autocommit), the
// database validating each.
func BenchmarkEnqueue(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	ctx := b.Context()
	i := 0
	for b.Loop() {
		i++
		if _, err := outbox.Enqueue(ctx, pool, contractIntent(fmt.Sprint("order_", i))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueueBatch inserts 100 intents per round trip; ns/op is per
// batch.
func BenchmarkEnqueueBatch(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	ctx := b.Context()
	const size = 100
	items := make([]outbox.BatchItem, size)
	n := 0
	for b.Loop() {
		for j := range items {
			n++
			items[j] = outbox.BatchItem{Intent: contractIntent(fmt.Sprint("order_", n))}
		}
		if _, err := outbox.EnqueueBatch(ctx, pool, items); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/intent")
}
