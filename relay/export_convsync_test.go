package relay

import (
	"context"
	"encoding/json"
)

// ConversationContentHashSQL is the claim's conversation content hash, an
// expression over c.payload.
const ConversationContentHashSQL = conversationContentHash

// ConvSkip reports whether the claim found the intent's conversation synced
// with its content.
func (j *claimedIntent) ConvSkip() bool { return j.convSkip }

// CompleteConversationPuts records the claimed intents done, each having
// PUT its conversation unless the claim skipped it, answered 200 unless
// failed[intent id]. No call is made.
func (r *Relay) CompleteConversationPuts(ctx context.Context, jobs []*ClaimedIntent, failed map[int64]bool) error {
	batch := make([]*result, len(jobs))
	for i, j := range jobs {
		res := &result{intent: j, outcome: outcomeDone}
		if j.convHash != nil && !j.convSkip {
			res.conv = &convSync{id: conversationOf(j), hash: j.convHash, ok: !failed[j.id]}
		}
		batch[i] = res
	}
	return r.completer.completeBatch(ctx, batch)
}

func conversationOf(j *claimedIntent) string {
	var p struct {
		Conversation struct {
			ID string `json:"id"`
		} `json:"conversation"`
	}
	_ = json.Unmarshal(j.payload, &p)
	return p.Conversation.ID
}
