package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// readyz is one answer of /readyz.
type readyz struct {
	status int
	Ready  bool `json:"ready"`
	// Draining is true once the relay was told to stop.
	Draining bool `json:"draining"`
}

func getReadyz(ctx context.Context, addr string) (readyz, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return readyz{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return readyz{}, err
	}
	defer resp.Body.Close()
	var rz readyz
	err = json.NewDecoder(resp.Body).Decode(&rz)
	rz.status = resp.StatusCode
	return rz, err
}

// SIGTERM under load, on the real binary: /readyz turns 503 (draining)
// while the relay still runs; the deliveries under way that can finish
// within OUTBOX_SHUTDOWN_TIMEOUT do; those that cannot are released the
// moment it passes (pending again, their attempt given back, not left
// leased); the process exits 0; and a second relay delivers the released
// intents long before the first relay's leases (60s) would have expired.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	ctx := t.Context()
	const secret = "sk_test_sigterm"
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: secret})
	direct := httptest.NewServer(fake)
	t.Cleanup(direct.Close)

	// The first relay reaches the fake through a proxy that answers calls
	// for "quick-" conversations after a second, and holds those for
	// "slow-" ones until the caller gives up: at the signal, the quick
	// intents can finish within the grace period and the slow ones cannot.
	target, _ := url.Parse(direct.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var slowHeld, quickCalls atomic.Int64
	slowed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// Read the body first: only then does the server notice a caller
		// that gives up (and end the request's context).
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		switch {
		case strings.Contains(req.URL.Path, "slow-"):
			slowHeld.Add(1)
			<-req.Context().Done()
			return
		case strings.Contains(req.URL.Path, "quick-"):
			quickCalls.Add(1)
			select {
			case <-time.After(time.Second):
			case <-req.Context().Done():
				return
			}
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(slowed.Close)

	const grace = 8 * time.Second
	common := []string{"DATABASE_URL=" + dbURL, "TALKJS_APP_ID=app", "TALKJS_SECRET_KEY=" + secret,
		"OUTBOX_RATE_LIMIT=0", "OUTBOX_LEASE=60s", "OUTBOX_CONCURRENCY=20",
		"OUTBOX_SHUTDOWN_TIMEOUT=" + grace.String()}
	var quick, slow []outbox.Intent
	for i := range 10 {
		quick = append(quick, relaytest.OrderIntent(fmt.Sprintf("quick-%d", i), i))
		slow = append(slow, relaytest.OrderIntent(fmt.Sprintf("slow-%d", i), 100+i))
	}
	relaytest.InsertSQL(t, pool, append(append([]outbox.Intent{}, quick...), slow...))

	a := startDefaultRelay(t, "sigterm-a", append(common, "TALKJS_BASE_URL="+slowed.URL)...)
	var addr string
	select {
	case addr = <-a.addrs:
	case err := <-a.exited:
		t.Fatalf("relay exited early: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("relay reported no listen address within 30s")
	}
	relaytest.WaitFor(t, 30*time.Second, "the relay to hold every intent, all under way", func() bool {
		var held int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE state = 'delivering' AND lease_owner = 'sigterm-a'`).Scan(&held)
		return err == nil && held == 20 && slowHeld.Load() >= 10 && quickCalls.Load() >= 10
	})
	if rz, err := getReadyz(t.Context(), addr); err != nil || rz.status != http.StatusOK || !rz.Ready || rz.Draining {
		t.Fatalf("/readyz before the signal = %+v, %v; want 200, ready", rz, err)
	}

	signalled := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var drainingSeen bool
	relaytest.WaitFor(t, 5*time.Second, "/readyz to answer 503 draining", func() bool {
		rz, err := getReadyz(t.Context(), addr)
		drainingSeen = err == nil && rz.status == http.StatusServiceUnavailable && rz.Draining && !rz.Ready
		return drainingSeen
	})
	select {
	case err := <-a.exited:
		t.Fatalf("the relay exited (%v) while /readyz was being checked", err)
	default:
	}

	select {
	case err := <-a.exited:
		if err != nil {
			t.Fatalf("relay exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(grace + 15*time.Second):
		t.Fatalf("relay still running %s after SIGTERM (grace %s)", time.Since(signalled).Round(time.Second), grace)
	}
	exitedAfter := time.Since(signalled)

	// At exit, nothing is left leased: the quick intents are done by the
	// first relay, the slow ones pending again with their attempt given
	// back.
	type row struct {
		conv, state string
		attempts    int
		owner       *string
	}
	rows, err := pool.Query(ctx, `SELECT conversation_id, state, attempts, lease_owner FROM outbox.intents ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var quickDone, slowReleased int
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.conv, &r.state, &r.attempts, &r.owner); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(r.conv, "quick-") && r.state == "done":
			quickDone++
		case strings.HasPrefix(r.conv, "slow-") && r.state == "pending" && r.attempts == 0 && r.owner == nil:
			slowReleased++
		default:
			t.Errorf("after the first relay exited, %s is %s (attempts %d, owner %v)", r.conv, r.state, r.attempts, r.owner)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if quickDone != len(quick) || slowReleased != len(slow) {
		t.Fatalf("after exit: %d of %d quick intents done, %d of %d slow ones released", quickDone, len(quick), slowReleased, len(slow))
	}

	// A second relay, straight to TalkJS, finishes the released intents
	// without waiting for any lease (60s) to expire.
	exited := time.Now()
	startDefaultRelay(t, "sigterm-b", append(common, "TALKJS_BASE_URL="+direct.URL)...)
	c := relaytest.WaitSettled(t, pool, 20*time.Second)
	if c["done"] != len(quick)+len(slow) {
		t.Fatalf("states = %v, want all done", c)
	}
	relaytest.CheckDelivered(t, fake, append(quick, slow...))
	t.Logf("figures: exited %s after SIGTERM (grace %s); the second relay finished the %d released intents %s after the exit (lease 60s)",
		exitedAfter.Round(100*time.Millisecond), grace, len(slow), time.Since(exited).Round(100*time.Millisecond))
}
