package relay_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// The repeat workload of the benchmarks (bench/, "Call economy"), scaled
// down: intents each between 2 of repeatUsers unchanged users, over
// repeatConversations conversations, each repeated with the same users and
// subject, 2 messages each.
const (
	repeatUsers         = 50
	repeatConversations = 250
	repeatPerConv       = 4
)

// repeatIntent is the i-th intent of the repeat workload, shaped as
// bench/workload.go's economyIntent.
func repeatIntent(i int) outbox.Intent {
	k := i % repeatConversations
	a := k % repeatUsers
	b := (a + 1 + k/repeatUsers) % repeatUsers
	user := func(j int) outbox.User {
		id := "user" + strconv.Itoa(j)
		return outbox.User{ID: id, Name: "User " + strconv.Itoa(j), Email: []string{id + "@example.com"}}
	}
	ua, ub := user(a), user(b)
	n := strconv.Itoa(i)
	return outbox.Intent{
		Users:        []outbox.User{ua, ub},
		Conversation: outbox.Conversation{ID: "conv" + strconv.Itoa(k), Subject: "Support thread " + strconv.Itoa(k)},
		Messages: []outbox.Message{
			{Sender: ua.ID, Text: "Question " + n},
			{Type: outbox.SystemMessage, Text: "Ticket " + n + " opened"},
		},
	}
}

// BenchmarkRepeatWorkloadCalls delivers the repeat workload (50 users,
// 250 conversations, 4 intents each) with one relay and reports the HTTP
// calls per intent the fake received, and the calls of each kind. Each
// conversation is PUT once: its later intents skip the PUT.
//
//	go test ./relay -run '^$' -bench RepeatWorkloadCalls -benchtime 1x
func BenchmarkRepeatWorkloadCalls(b *testing.B) {
	const n = repeatConversations * repeatPerConv
	for range b.N {
		b.StopTimer()
		bd := setup(b, faketalkjs.Faults{})
		intents := make([]outbox.Intent, n)
		for i := range intents {
			intents[i] = repeatIntent(i)
		}
		ids := insertChunked(b, bd, intents)
		cfg := testConfig("repeat")
		cfg.Concurrency, cfg.BatchSize = 100, 100
		cfg.Logger = slogTo(bd)
		b.StartTimer()
		r, err := relay.New(bd.pool, bd.client(b, testSecret), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 5*time.Minute, "every intent to be done", func() bool {
			var done int
			err := bd.pool.QueryRow(b.Context(),
				`SELECT count(*) FROM outbox.intents WHERE state = 'done' AND id = ANY ($1)`, ids).Scan(&done)
			return err == nil && done == n
		})
		b.StopTimer()
		r.Stop()
		st := bd.fake.Stats()
		b.ReportMetric(float64(st.Requests)/n, "calls/intent")
		b.ReportMetric(float64(st.Routes[faketalkjs.RouteUserPut]), "user_puts")
		b.ReportMetric(float64(st.Routes[faketalkjs.RouteUsersPut]), "batch_user_puts")
		b.ReportMetric(float64(st.Routes[faketalkjs.RouteConversationPut]), "conversation_puts")
		b.ReportMetric(float64(st.Routes[faketalkjs.RouteMessagePost]), "message_posts")
		if got := st.Routes[faketalkjs.RouteConversationPut]; got != repeatConversations {
			b.Errorf("%d conversation PUTs, want %d: one per conversation", got, repeatConversations)
		}
	}
}

// insertChunked inserts intents in transactions of 500.
func insertChunked(tb testing.TB, bd *bundle, intents []outbox.Intent) []int64 {
	tb.Helper()
	var ids []int64
	for lo := 0; lo < len(intents); lo += 500 {
		ids = append(ids, relaytest.InsertSQL(tb, bd.pool, intents[lo:min(lo+500, len(intents))])...)
	}
	return ids
}
