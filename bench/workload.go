package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
)

// drainIntent is the drain workload: its own conversation, two users of its
// own and two messages. tag makes ids unique per run.
func drainIntent(tag string, i int) outbox.Intent {
	n := strconv.Itoa(i)
	buyer, seller := tag+"-u"+n+"a", tag+"-u"+n+"b"
	return outbox.Intent{
		Users: []outbox.User{
			{ID: buyer, Name: "Buyer " + n, Email: []string{buyer + "@example.com"}},
			{ID: seller, Name: "Seller " + n, Email: []string{seller + "@example.com"}, Role: "seller"},
		},
		Conversation: outbox.Conversation{
			ID:      tag + "-c" + n,
			Subject: "Order #" + n,
			Custom:  map[string]string{"orderId": n},
		},
		Messages: []outbox.Message{
			{Sender: buyer, Text: "Hello, I just placed order #" + n},
			{Sender: seller, Text: "Thanks! Order #" + n + " is confirmed."},
		},
	}
}

// economyUsers and economyConversations shape the call-economy workload:
// intents drawn from a small set of unchanged users, each conversation
// repeated (always between the same two users, with the same subject).
const (
	economyUsers         = 200
	economyConversations = 2500
)

func economyIntent(tag string, i int) outbox.Intent {
	k := i % economyConversations
	a := k % economyUsers
	b := (a + 1 + k/economyUsers) % economyUsers
	user := func(j int) outbox.User {
		id := tag + "-user" + strconv.Itoa(j)
		return outbox.User{ID: id, Name: "User " + strconv.Itoa(j), Email: []string{id + "@example.com"}}
	}
	ua, ub := user(a), user(b)
	conv := tag + "-conv" + strconv.Itoa(k)
	n := strconv.Itoa(i)
	return outbox.Intent{
		Users:        []outbox.User{ua, ub},
		Conversation: outbox.Conversation{ID: conv, Subject: "Support thread " + strconv.Itoa(k)},
		Messages: []outbox.Message{
			{Sender: ua.ID, Text: "Question " + n},
			{Type: outbox.SystemMessage, Text: "Ticket " + n + " opened"},
		},
	}
}

// caller makes one call of a delivery: callOnce (River) or
// callHonouringRetryAfter (naive).
type caller func(ctx context.Context, call func() error) error

// callOnce makes the call once; a failure is the delivery's.
func callOnce(_ context.Context, call func() error) error { return call() }

// naiveMax429 is how many 429s in a row the naive relay waits out for one
// call before it gives the row up (left unprocessed, so it is claimed
// again from its first call).
const naiveMax429 = 100

// callHonouringRetryAfter is how the naive relay meets a 429 (or its
// client's own rate limiter refusing a call): it waits the answer's
// Retry-After (1 s when there is none) and makes the same call again, the
// row's calls already made kept; at most naiveMax429 times in a row. It
// has no rate limit of its own.
func callHonouringRetryAfter(ctx context.Context, call func() error) error {
	for i := 0; ; i++ {
		err := call()
		wait, limited := retryAfterOf(err)
		if !limited || i >= naiveMax429 {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// retryAfterOf reports whether err is a 429 (or a client-side refusal),
// and how long it says to wait: its Retry-After, else 1 s.
func retryAfterOf(err error) (time.Duration, bool) {
	var pe *provider.Error
	if !errors.As(err, &pe) || pe.Kind != provider.RateLimited {
		return 0, false
	}
	if pe.RetryAfter > 0 {
		return pe.RetryAfter, true
	}
	return time.Second, true
}

// deliverSequential is how both baselines deliver an intent: the contract's
// calls one after another (each user, the conversation, the messages), the
// messages in one POST with keys derived from keyPrefix. Each call is made
// through call.
func deliverSequential(ctx context.Context, p provider.Provider, in outbox.Intent, keyPrefix string, call caller) error {
	for _, u := range in.Users {
		err := call(ctx, func() error {
			return p.PutUser(ctx, provider.User{ID: u.ID, Name: u.Name, Email: u.Email, PhotoURL: u.PhotoURL,
				WelcomeMessage: u.WelcomeMessage, Role: u.Role, Custom: u.Custom})
		})
		if err != nil {
			return fmt.Errorf("put user %s: %w", u.ID, err)
		}
	}
	conv := provider.Conversation{ID: in.Conversation.ID, Participants: in.ResolvedParticipants(),
		Subject: in.Conversation.Subject, Custom: in.Conversation.Custom}
	if err := call(ctx, func() error { return p.PutConversation(ctx, conv) }); err != nil {
		return fmt.Errorf("put conversation %s: %w", conv.ID, err)
	}
	msgs := make([]provider.Message, len(in.Messages))
	for i, m := range in.Messages {
		msgs[i] = provider.Message{Text: m.Text, Sender: m.Sender, Type: m.ResolvedType(), Custom: m.Custom,
			IdempotencyKey: keyPrefix + "-" + strconv.Itoa(i)}
	}
	for lo := 0; lo < len(msgs); lo += provider.MaxMessagesPerPost {
		hi := min(lo+provider.MaxMessagesPerPost, len(msgs))
		if err := call(ctx, func() error { return p.PostMessages(ctx, conv.ID, msgs[lo:hi]) }); err != nil {
			return fmt.Errorf("post messages %s: %w", conv.ID, err)
		}
	}
	return nil
}

// deliverPayload decodes a stored payload and delivers it as the naive
// relay does.
func deliverPayload(ctx context.Context, p provider.Provider, payload []byte, keyPrefix string) error {
	var in outbox.Intent
	if err := json.Unmarshal(payload, &in); err != nil {
		return fmt.Errorf("decode payload: %w", err)
	}
	return deliverSequential(ctx, p, in, keyPrefix, callHonouringRetryAfter)
}
