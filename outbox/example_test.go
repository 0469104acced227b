package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Queue a conversation start in the same transaction as the order it
// belongs to.
func ExampleEnqueue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck

	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, buyer, seller) VALUES ($1, $2, $3)`,
		"123", "u1", "u2"); err != nil {
		log.Fatal(err)
	}
	id, err := outbox.Enqueue(ctx, tx, outbox.Intent{
		Users: []outbox.User{
			{ID: "u1", Name: "Alice", Email: []string{"alice@example.com"}, Role: "buyer"},
			{ID: "u2", Name: "Bob", Email: []string{"bob@example.com"}, Role: "seller"},
		},
		Conversation: outbox.Conversation{
			ID:      "order_123",
			Subject: "Order #123",
			Custom:  map[string]string{"orderId": "123"},
		},
		Messages: []outbox.Message{
			{Sender: "u1", Text: "Hello!"},
			{Type: outbox.SystemMessage, Text: "Order placed"},
		},
	}, outbox.WithKey("order-123"))
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued intent", id)
}

// Queue many intents in one round trip.
func ExampleEnqueueBatch() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	var items []outbox.BatchItem
	for _, order := range []string{"124", "125", "126"} {
		items = append(items, outbox.BatchItem{
			Intent: outbox.Intent{
				Conversation: outbox.Conversation{ID: "order_" + order, Participants: []string{"u1", "u2"}},
				Messages:     []outbox.Message{{Type: outbox.SystemMessage, Text: "Order #" + order + " placed"}},
			},
			Key: "order-" + order,
		})
	}
	ids, err := outbox.EnqueueBatch(ctx, pool, items)
	var batchErr *outbox.BatchError
	if errors.As(err, &batchErr) {
		log.Fatalf("order %d is invalid: %v", batchErr.Index, batchErr.Err)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued intents", ids)
}

func ExampleIntent_Validate() {
	intent := outbox.Intent{
		Users: []outbox.User{
			{ID: "u1", Name: "Alice", Email: []string{"alice@example.com"}},
			{ID: "u2", Name: "Bob"},
		},
		Conversation: outbox.Conversation{ID: "order_123"},
	}
	err := intent.Validate()
	fmt.Println(err)

	var invalid *outbox.ValidationError
	if errors.As(err, &invalid) {
		fmt.Printf("field %q: %s\n", invalid.Field, invalid.Rule)
	}
	fmt.Println(errors.Is(err, outbox.ErrInvalid))
	// Output:
	// invalid intent payload: users[1].email: is required
	// field "users[1].email": is required
	// true
}
