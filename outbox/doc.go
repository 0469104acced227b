// Package outbox is the write side of outbox-relay: what an application
// imports to queue a TalkJS conversation start in the same transaction as
// the business data it belongs to.
//
// Enqueue inserts an Intent into outbox.intents through the application's
// own pgx transaction. If the transaction commits, the relay daemon delivers
// the intent to TalkJS (users, then the conversation, then its messages);
// if it rolls back, nothing is sent. Intents for the same conversation are
// delivered in the order their transactions committed.
//
//	tx, err := pool.Begin(ctx)
//	if err != nil {
//		return err
//	}
//	defer tx.Rollback(ctx)
//
//	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, buyer, seller) VALUES ($1, $2, $3)`,
//		order.ID, order.Buyer.ID, order.Seller.ID); err != nil {
//		return err
//	}
//	_, err = outbox.Enqueue(ctx, tx, outbox.Intent{
//		Users: []outbox.User{
//			{ID: order.Buyer.ID, Name: order.Buyer.Name, Email: []string{order.Buyer.Email}, Role: "buyer"},
//			{ID: order.Seller.ID, Name: order.Seller.Name, Email: []string{order.Seller.Email}, Role: "seller"},
//		},
//		Conversation: outbox.Conversation{
//			ID:      "order_" + order.ID,
//			Subject: "Order #" + order.ID,
//			Custom:  map[string]string{"orderId": order.ID},
//		},
//		Messages: []outbox.Message{
//			{Sender: order.Buyer.ID, Text: order.Note},
//			{Type: outbox.SystemMessage, Text: "Order placed"},
//		},
//	}, outbox.WithKey("order-"+order.ID))
//	if errors.Is(err, outbox.ErrDuplicateKey) {
//		return nil // already queued by an earlier attempt
//	}
//	if err != nil {
//		return err
//	}
//	return tx.Commit(ctx)
//
// # Validation
//
// Enqueue validates the intent before it sends anything and returns a
// *ValidationError naming the field and the rule (errors.Is(err,
// ErrInvalid) matches it). The database applies the same rules to every
// INSERT, so applications in other languages that write the payload with
// plain SQL get the same protection and the same messages:
//
//	ERROR:  invalid intent payload: users[1].email: must be a non-empty array of strings
//
// See Intent.Validate for the rules and the Max constants for the limits.
//
// # Batches
//
// EnqueueBatch inserts many intents in one round trip, in slice order.
package outbox
