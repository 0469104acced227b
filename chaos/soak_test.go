package chaos_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// sample is one relay process's footprint at a point of the soak.
type sample struct {
	rssKiB     int
	goroutines int
	sockets    int
}

func (s sample) String() string {
	return fmt.Sprintf("rss=%.1fMiB goroutines=%d sockets=%d", float64(s.rssKiB)/1024, s.goroutines, s.sockets)
}

// Fault 10, soak. Intents flow through three relay processes while the API
// answers 5% of calls with 500, 2% with 429 and drops 2% of connections
// after applying the call. Every intent ends done, no message is
// duplicated or lost, and each relay's memory and goroutines stay flat:
// they are sampled at rest after a warm-up (start), after the first half
// (middle) and after the second half (end), and the end may not exceed
// the middle by more than the tolerance.
func TestSoak(t *testing.T) {
	t.Parallel()
	// Each 429 carries Retry-After: 1, which pauses that relay's calls for
	// a second: throughput here is bounded by those pauses. The relays run
	// with the defaults' adaptive limit, which must learn that these 429s
	// do not follow the rate rather than be held down by them.
	b := setup(t, faketalkjs.Faults{FailBefore: 0.05, TooManyRequests: 0.02, DropAfter: 0.02})
	const concurrency = 25
	env := b.relayEnv(fmt.Sprintf("OUTBOX_CONCURRENCY=%d", concurrency), "OUTBOX_BATCH_SIZE=25", "OUTBOX_LEASE=5s")
	procs := make([]*proc, 3)
	for i := range procs {
		procs[i] = startProc(t, fmt.Sprintf("soak-r%d", i), env)
	}
	n := params.soakIntents
	warm := max(150, n/20)
	half := (n - warm) / 2
	intents := orderIntents("soak", n, max(1, n/5))
	phases := []struct {
		name   string
		lo, hi int
	}{{"start", 0, warm}, {"middle", warm, warm + half}, {"end", warm + half, n}}

	samples := make([][]sample, len(procs))
	start := time.Now()
	for _, ph := range phases {
		insertChunks(t, b.pool, intents[ph.lo:ph.hi], 1000)
		waitUntil(t, 30*time.Minute, ph.name+": intents done", func() bool {
			return countDone(b.pool) >= ph.hi
		})
		for i, p := range procs {
			waitUntil(t, 10*time.Second, p.name+" to be idle", func() bool {
				v, ok := p.metric(t, "outbox_relay_intents_in_flight")
				return ok && v == 0
			})
			g, _ := p.metric(t, "go_goroutines")
			samples[i] = append(samples[i], sample{rssKiB: p.rssKiB(t), goroutines: int(g), sockets: p.sockets()})
		}
	}
	elapsed := time.Since(start)
	c := counts(t, b.pool)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead", c["dead"])
	}
	lost, dup := checkExactlyOnce(t, b, intents)

	var report []string
	for i, p := range procs {
		s := samples[i]
		mid, end := s[1], s[2]
		// Memory: the second half may not cost much more than the first.
		rssTolerance := max(mid.rssKiB/4, 16*1024)
		if end.rssKiB > mid.rssKiB+rssTolerance {
			t.Errorf("%s RSS grew from %.1f MiB (middle) to %.1f MiB (end), tolerance %.1f MiB",
				p.name, float64(mid.rssKiB)/1024, float64(end.rssKiB)/1024, float64(rssTolerance)/1024)
		}
		// Goroutines: each open HTTP connection has two; the rest must not grow.
		own := func(s sample) int { return s.goroutines - 2*s.sockets }
		if own(end) > own(mid)+20 {
			t.Errorf("%s goroutines not owned by connections grew from %d (middle) to %d (end)", p.name, own(mid), own(end))
		}
		if end.goroutines > mid.goroutines+4*concurrency+20 {
			t.Errorf("%s goroutines grew from %d (middle) to %d (end)", p.name, mid.goroutines, end.goroutines)
		}
		report = append(report, fmt.Sprintf("%s: start %v; middle %v; end %v", p.name, s[0], mid, end))
	}
	st := b.fake.Stats()
	t.Logf("figures: intents=%d relays=3 api_requests=%d injected_500=%d injected_429=%d dropped_after_apply=%d "+
		"duplicate_posts_suppressed=%d dead=%d lost=%d duplicates=%d run=%s (%.0f intents/s)\n  %s",
		n, st.Requests, st.Faults[faketalkjs.FaultFailBefore], st.Faults[faketalkjs.FaultTooManyRequests],
		st.Faults[faketalkjs.FaultDropAfter], st.DuplicatesSuppressed, c["dead"], lost, dup,
		elapsed.Round(100*time.Millisecond), float64(n)/elapsed.Seconds(), strings.Join(report, "\n  "))
}
