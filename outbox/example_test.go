package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Queue a conversation start in the same transaction as the order it
// belongs to.
func ExampleEnqueue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		panic(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit

	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, buyer, seller) VALUES ($1, $2, $3)`,
		"123", "u1", "u2"); err != nil {
		panic(err)
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
		panic(err)
	}
	if err := tx.Commit(ctx); err != nil {
		panic(err)
	}
	fmt.Println("queued intent", id > 0)

	// The relay delivers it; until then it is pending.
	var state string
	if err := pool.QueryRow(ctx, `SELECT state FROM outbox.intents WHERE key = 'order-123'`).Scan(&state); err != nil {
		panic(err)
	}
	fmt.Println(state)
	// Output:
	// queued intent true
	// pending
}

// An application retry cannot queue a second conversation start: the key
// is taken, and the transaction that tried is rolled back with its order.
func ExampleErrDuplicateKey() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	placeOrder := func(order string) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO orders (id, buyer, seller) VALUES ($1, 'u1', 'u2')
			                           ON CONFLICT (id) DO NOTHING`, order); err != nil {
				return err
			}
			_, err := outbox.Enqueue(ctx, tx, outbox.Intent{
				Conversation: outbox.Conversation{ID: "order_" + order, Participants: []string{"u1", "u2"}},
				Messages:     []outbox.Message{{Type: outbox.SystemMessage, Text: "Order #" + order + " placed"}},
			}, outbox.WithKey("order-"+order))
			return err
		})
	}
	fmt.Println(placeOrder("200"))
	err = placeOrder("200") // the client retried
	fmt.Println(errors.Is(err, outbox.ErrDuplicateKey))
	// Output:
	// <nil>
	// true
}

// Queue many intents in one round trip.
func ExampleEnqueueBatch() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
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
		panic(fmt.Sprintf("order %d is invalid: %v", batchErr.Index, batchErr.Err))
	}
	if err != nil {
		panic(err)
	}
	fmt.Println("queued", len(ids), "intents")
	// Output:
	// queued 3 intents
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
