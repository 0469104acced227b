package relay_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// A relay whose clock runs behind TalkJS's signs tokens TalkJS finds
// expired, with the right secret. The pause must name the clock as a
// possible cause, not only the credentials.
func TestClockBehindTalkJSNamedInAuthPause(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ahead := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: testSecret,
		Clock: func() time.Time { return time.Now().Add(time.Minute) }}) // app tokens live 30s
	srv := httptest.NewServer(ahead)
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.insertSQL(t, []outbox.Intent{orderIntent("skewed", 1)})
	r := b.startRelay(t, testConfig("skewed"), testSecret)
	waitFor(t, 10*time.Second, "the relay to pause on auth", func() bool { return r.Health().Paused == "auth" })
	logs := b.logs.String()
	var pause string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "refused the credentials") {
			pause = line
		}
	}
	if pause == "" {
		t.Fatalf("no pause logged:\n%s", logs)
	}
	if !strings.Contains(pause, "clock") {
		t.Errorf("the pause does not name the clock as a possible cause: %s", pause)
	}
	if c := relaytest.Counts(t, b.pool); c["dead"] != 0 {
		t.Errorf("states = %v, want nothing dead", c)
	}
}
