package relay

// State is where an intent stands, as outbox.intents.state records it.
type State string

// The states of an intent, in the order of its life.
const (
	// StatePending: waiting to be claimed (new, or put back for a retry).
	StatePending State = "pending"
	// StateDelivering: claimed by a relay, under its lease.
	StateDelivering State = "delivering"
	// StateDone: every call of the intent was answered 2xx.
	StateDone State = "done"
	// StateDead: given up; outbox-relay retry puts it back.
	StateDead State = "dead"
)

// States returns every state of an intent, in the order of its life.
func States() []State {
	return []State{StatePending, StateDelivering, StateDone, StateDead}
}

// outcome is how one delivery attempt ends, as completeBatch reads it.
type outcome string

const (
	outcomeDone    outcome = "done"    // every call answered: the intent is done
	outcomeDead    outcome = "dead"    // a permanent failure: the intent is dead
	outcomeRetry   outcome = "retry"   // a counted failure: pending again after a backoff, or dead once the budget is spent
	outcomeRelease outcome = "release" // not the intent's fault (shutdown, pause, 429): pending again, not counted
)

// callStep is a step of a delivery, as outbox.attempts.step records it.
type callStep string

const (
	stepUser         callStep = "user"
	stepConversation callStep = "conversation"
	stepMessages     callStep = "messages"
)

// callOutcome is how one call ended, as outbox.attempts.outcome records it:
// callOK, callSkipped, or what went wrong (the provider's error kind, or
// callRetryable / callCanceled when no answer came).
type callOutcome string

const (
	callOK        callOutcome = "ok"
	callSkipped   callOutcome = "skipped"
	callRetryable callOutcome = "retryable"
	callCanceled  callOutcome = "canceled"
)
