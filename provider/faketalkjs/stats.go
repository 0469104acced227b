package faketalkjs

import "maps"

// Route names used as keys of Stats.Routes.
const (
	RouteUserPut = "user_put"
	// RouteUsersPut is the batch users upsert, PUT /v1/{appId}/users.
	RouteUsersPut        = "users_put"
	RouteConversationPut = "conversation_put"
	RouteMessagePost     = "message_post"
	RouteGet             = "get"
	// RouteOther counts requests that match no API call (unknown paths,
	// unsupported methods).
	RouteOther = "other"
)

// Fault names used as keys of Stats.Faults, one per knob of Faults.
const (
	FaultDown      = "down"
	FaultHang      = "hang"
	FaultLatency   = "latency"
	FaultRateLimit = "rate_limit"
	// FaultRateQueued counts requests over RateLimit that waited in the
	// queue (Faults.QueueLength) and were then served.
	FaultRateQueued      = "rate_queued"
	FaultTooManyRequests = "too_many_requests"
	FaultFailBefore      = "fail_before"
	FaultFailAfter       = "fail_after"
	FaultDropAfter       = "drop_after"
	FaultRejectUser      = "reject_user"
	// FaultBatchUnsupported counts batch users requests answered 404 or
	// 405 by Faults.BatchUnsupported.
	FaultBatchUnsupported = "batch_unsupported"
)

// Stats counts what the fake has seen since it was created or last Reset.
// Only API requests (not the /_fake/ admin routes) are counted.
type Stats struct {
	// Requests is the number of API requests received.
	Requests int64 `json:"requests"`
	// Routes counts requests by route name (RouteUserPut, ...).
	Routes map[string]int64 `json:"routes"`
	// Statuses counts responses by HTTP status code. Connections closed
	// without a response (FaultDown, FaultDropAfter) and requests never
	// answered (FaultHang) are not counted here.
	Statuses map[int]int64 `json:"statuses"`
	// Faults counts injected faults by name (FaultFailBefore, ...).
	Faults map[string]int64 `json:"faults"`
	// DuplicatesSuppressed counts posted messages that were not stored
	// because their idempotencyKey was already stored for the conversation.
	DuplicatesSuppressed int64 `json:"duplicatesSuppressed"`
	// Rejections counts 4xx responses given by the fake's own checks
	// (authentication, paths, validation); injected faults are not counted.
	Rejections int64 `json:"rejections"`

	// Users, Conversations and Messages are the numbers of objects stored
	// at the time of the snapshot; Reset does not change them.
	Users         int `json:"users"`
	Conversations int `json:"conversations"`
	Messages      int `json:"messages"`
}

func newStats() Stats {
	return Stats{
		Routes:   map[string]int64{},
		Statuses: map[int]int64{},
		Faults:   map[string]int64{},
	}
}

func (st Stats) clone() Stats {
	st.Routes = maps.Clone(st.Routes)
	st.Statuses = maps.Clone(st.Statuses)
	st.Faults = maps.Clone(st.Faults)
	return st
}
