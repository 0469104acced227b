package relay

import (
	"context"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// Conversation syncs follow the rules of user syncs (see claimBatch and
// completeBatch): a row of outbox.synced_conversations says the TalkJS app
// holds exactly the content of a conversation PUT it answered 200 for. The
// claim decides the skip from the database alone and deletes the record
// of a conversation it will PUT before the PUT; the relay keeps nothing in
// memory. Two intents of one conversation are never delivered at once
// (per-conversation order), so no PUT of a conversation is ever shared.

// convSync is the end of a conversation PUT, for
// outbox.synced_conversations: ok when TalkJS answered 200 for the content
// hashing to hash. Anything else (no answer, an error, a 200 that a
// permanent answer to the messages POST put in doubt) leaves TalkJS's copy
// unknown, and the record goes. A skipped PUT leaves the record as it is,
// unless put in doubt the same way.
type convSync struct {
	id      string
	hash    []byte
	ok      bool
	skipped bool // not PUT: nothing to record
}

// putConversation upserts the intent's conversation, unless the claim
// found TalkJS holding exactly this content within the TTL: the skip is
// then recorded in outbox.attempts as a skipped user PUT is.
func (r *Relay) putConversation(ctx context.Context, j *claimedIntent, res *result, conv provider.Conversation) error {
	if j.convSkip {
		res.record(callRecord{step: stepConversation, target: conv.ID, outcome: callSkipped,
			err: "unchanged since last synchronised", started: time.Now()})
		res.conv = &convSync{id: conv.ID, hash: j.convHash, skipped: true}
		r.metrics.calls.WithLabelValues(string(stepConversation), string(callSkipped)).Inc()
		return nil
	}
	err := r.call(ctx, j, res, stepConversation, conv.ID, func(ctx context.Context) error {
		return r.provider.PutConversation(ctx, conv)
	})
	if j.convHash != nil {
		res.conv = &convSync{id: conv.ID, hash: j.convHash, ok: err == nil}
	}
	return err
}

// doubtConversation handles an attempt that ended with a permanent answer
// at step. A permanent answer from TalkJS to the messages POST (a 404: the
// conversation is gone; a 400: its participants may not be what the record
// says) means TalkJS may not hold the conversation the record names, so
// the record goes, whether this attempt PUT the conversation or skipped
// it. It reports whether the PUT was skipped: the intent then deserves an
// attempt that PUTs the conversation before it is judged.
func doubtConversation(res *result, step callStep, pe *provider.Error) bool {
	if step != stepMessages || pe.Status == 0 || res.conv == nil {
		return false
	}
	skipped := res.conv.skipped
	res.conv.ok, res.conv.skipped = false, false
	return skipped
}

// convRecord is what the completion is to record of the attempt's
// conversation PUT, nil for nothing: syncs off, the PUT not reached, or
// skipped and not put in doubt.
func (res *result) convRecord() *convSync {
	if res.conv == nil || res.conv.skipped {
		return nil
	}
	return res.conv
}
