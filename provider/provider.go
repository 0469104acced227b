// Package provider defines what the relay needs from a chat API: the three
// calls that start a conversation, and a typed error that says how a failed
// call should be handled. The TalkJS implementation lives in provider/talkjs
// and its in-memory stand-in in provider/faketalkjs.
package provider

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MaxMessagesPerPost is the most messages one PostMessages call may carry
// (a TalkJS limit).
const MaxMessagesPerPost = 10

// MaxUsersPerPut is the most users one batch users upsert may carry (a
// TalkJS limit).
const MaxUsersPerPut = 100

// Message types accepted by PostMessages.
const (
	UserMessage   = "UserMessage"
	SystemMessage = "SystemMessage"
)

// User is a user upsert. ID goes in the path; the other fields are the body.
//
// TalkJS applies a PUT as a merge: a field left out keeps its stored value,
// a field sent as null is cleared. So every optional field of User,
// Conversation and Message is left out when empty, never sent as null.
type User struct {
	ID             string            `json:"-"`
	Name           string            `json:"name"`
	Email          []string          `json:"email,omitempty"`
	PhotoURL       string            `json:"photoUrl,omitempty"`
	WelcomeMessage string            `json:"welcomeMessage,omitempty"`
	Role           string            `json:"role,omitempty"`
	Custom         map[string]string `json:"custom,omitempty"`
}

// Conversation is a conversation upsert. ID goes in the path. A nil
// Participants sends no participants field.
type Conversation struct {
	ID           string            `json:"-"`
	Participants []string          `json:"participants,omitempty"`
	Subject      string            `json:"subject,omitempty"`
	Custom       map[string]string `json:"custom,omitempty"`
}

// Message is one element of a message POST. IdempotencyKey is required: it
// must be the same on every retry of the same message, by any process.
type Message struct {
	Text           string            `json:"text"`
	Sender         string            `json:"sender,omitempty"`
	Type           string            `json:"type"`
	Custom         map[string]string `json:"custom,omitempty"`
	IdempotencyKey string            `json:"idempotencyKey"`
}

// Provider makes the calls of a conversation start. Each method is one HTTP
// request; a non-nil error is an *Error (possibly wrapped) or a context
// error when ctx was cancelled first. A deadline of ctx that passes before
// the answer is the API not answering in time: a Retryable *Error.
// A RateLimited *Error with Status 0 is the provider's own rate limiter
// refusing this one call (nothing was sent), not the API's 429.
type Provider interface {
	// PutUser creates or updates a user. Idempotent.
	PutUser(ctx context.Context, u User) error
	// PutConversation creates or updates a conversation. Idempotent.
	PutConversation(ctx context.Context, c Conversation) error
	// PostMessages sends 1..MaxMessagesPerPost messages to a conversation in
	// one request. Safe to retry only because every message carries its
	// IdempotencyKey.
	PostMessages(ctx context.Context, conversationID string, msgs []Message) error
}

// BatchUserPutter is a Provider that can also upsert many users in one
// request. It is optional: check for it with a type assertion.
type BatchUserPutter interface {
	// PutUsers creates or updates 1..MaxUsersPerPut users (distinct ids)
	// in one request, all or nothing, each merged as PutUser does. An empty
	// slice sends nothing and returns nil. Idempotent.
	//
	// A failure is as for PutUser, and two cases are told apart:
	//   - the API has no batch endpoint (404 or 405): a Permanent *Error
	//     wrapping ErrBatchUnsupported (test with errors.Is), not a verdict
	//     on the users; send them one by one with PutUser instead;
	//   - the API refused the batch (400): a Permanent *Error whose
	//     InvalidIDs names the entries the answer blamed, when it could be
	//     read. Nothing was applied; an empty InvalidIDs leaves the caller to
	//     find the bad entries itself (by halves, or one by one).
	PutUsers(ctx context.Context, users []User) error
}

// ErrBatchUnsupported is wrapped by the error of a batch call the API
// does not offer (404 or 405 on its route).
var ErrBatchUnsupported = errors.New("batch endpoint not supported")

// Kind says how a failed call should be handled.
type Kind int

const (
	// Retryable failures (5xx, 408, 409, 425, network errors, timeouts) may
	// or may not have been applied; retry later with backoff.
	Retryable Kind = iota
	// Permanent failures (400, 404, 422 and other 4xx) will fail again for
	// this intent; do not retry.
	Permanent
	// RateLimited (429): wait RetryAfter (when known) and try again; the
	// failure is not the intent's fault.
	RateLimited
	// Auth (401, 403): the credentials are wrong for every request. Pause
	// delivery; do not blame the intent.
	Auth
)

func (k Kind) String() string {
	switch k {
	case Retryable:
		return "retryable"
	case Permanent:
		return "permanent"
	case RateLimited:
		return "rate_limited"
	case Auth:
		return "auth"
	default:
		return fmt.Sprintf("kind(%d)", int(k))
	}
}

// Error is a failed call. Its message never contains credentials.
type Error struct {
	Kind Kind
	// Status is the HTTP status code, 0 when no response arrived.
	Status int
	// RetryAfter is the server's Retry-After, 0 when absent.
	RetryAfter time.Duration
	// InvalidIDs are, for a batch call refused with 400, the ids of the
	// entries the answer named as invalid, in the order sent. Only ids the
	// call sent are kept; empty when the answer named none of them.
	InvalidIDs []string
	// InvalidReasons holds, index for index with InvalidIDs, what the
	// answer said of each invalid entry (its text, or its JSON when not a
	// string; at most a few hundred bytes, credentials removed).
	InvalidReasons []string
	// Err is the underlying cause (a transport error, or the response body
	// summarised as an error).
	Err error
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("%s: %v", e.Kind, e.Err)
	}
	return fmt.Sprintf("%s: status %d: %v", e.Kind, e.Status, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ClassifyStatus maps an HTTP status code of a failed call to its Kind.
func ClassifyStatus(status int) Kind {
	switch {
	case status == 401 || status == 403:
		return Auth
	case status == 429:
		return RateLimited
	case status == 408 || status == 409 || status == 425 || status >= 500:
		return Retryable
	case status >= 400:
		return Permanent
	default:
		return Retryable
	}
}

// KindOf returns the Kind of err: the Kind of the *Error in its chain, or
// Retryable for any other error.
func KindOf(err error) Kind {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Kind
	}
	return Retryable
}
