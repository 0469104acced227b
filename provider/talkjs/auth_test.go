package talkjs

import (
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestAppTokenIsReusedUntilNearExpiry(t *testing.T) {
	t.Parallel()
	// The client's clock starts at the real time, so the fake (on the real
	// clock) accepts every token it signs.
	clock := &fakeClock{now: time.Now()}
	start := clock.Now()
	b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.Clock = clock.Now })
	ctx := t.Context()

	call := func() string {
		t.Helper()
		before := len(b.rec.all())
		if err := b.client.PutUser(ctx, alice); err != nil {
			t.Fatal(err)
		}
		return b.rec.all()[before].auth
	}

	first := call()
	if second := call(); second != first {
		t.Fatal("a second call within the token's lifetime signed a new token")
	}
	clock.Advance(9 * time.Second) // 21s before expiry: still reused
	if again := call(); again != first {
		t.Fatal("token replaced 21s before expiry")
	}
	clock.Advance(2 * time.Second) // under 20s before expiry: replaced
	renewed := call()
	if renewed == first {
		t.Fatal("token reused within 20s of expiry")
	}

	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(renewed[len("Bearer "):], claims,
		func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
		jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Fatalf("parse token: %v", err)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil {
		t.Fatal(err)
	}
	wantExp := start.Add(11*time.Second + tokenLifetime)
	if claims["tokenType"] != "app" || claims["iss"] != testAppID || exp.After(wantExp) || exp.Before(wantExp.Add(-time.Second)) {
		t.Fatalf("claims = %v; want tokenType app, iss %s, exp %s", claims, testAppID, wantExp)
	}
	if len(claims) != 3 {
		t.Fatalf("claims = %v; want exactly tokenType, iss and exp", claims)
	}
}

func TestExpiredTokenIsRefused(t *testing.T) {
	t.Parallel()
	// A client clock a minute slow signs tokens that have already expired
	// by the fake's clock: the failure is Auth, as with a wrong key.
	b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.Clock = func() time.Time { return time.Now().Add(-time.Minute) } })
	wantError(t, b.client.PutUser(t.Context(), alice), provider.Auth, 401)
}

// skewedSetup serves a fake whose clock is skew ahead of the client's,
// both driven by clock.
func skewedSetup(t *testing.T, clock *fakeClock, skew time.Duration) *Client {
	t.Helper()
	fake := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: testSecret,
		Clock: func() time.Time { return clock.Now().Add(skew) }})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return newClient(t, srv.URL, func(c *Config) { c.Clock = clock.Now })
}

// A client clock 15s behind TalkJS's still works: a token is used only
// while TalkJS would accept it from a clock up to 20s slow. (Tokens used
// until 10s before expiry failed from 10s of skew.)
func TestAppTokenToleratesClockBehindTalkJS(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	c := skewedSetup(t, clock, 15*time.Second)
	start := clock.Now()
	for range 4 {
		if err := c.PutUser(t.Context(), alice); err != nil {
			t.Fatalf("at %s into the run: %v", clock.Now().Sub(start), err)
		}
		clock.Advance(8 * time.Second)
	}
}

func TestAppTokenSourceConcurrentUse(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	src := newAppTokenSource(testAppID, testSecret, clock.Now)
	var wg sync.WaitGroup
	tokens := make([]string, 16)
	for i := range tokens {
		wg.Go(func() {
			tok, err := src.bearer()
			if err != nil {
				t.Error(err)
			}
			tokens[i] = tok
		})
	}
	wg.Wait()
	for _, tok := range tokens {
		if tok != tokens[0] {
			t.Fatal("concurrent callers got different tokens within one lifetime")
		}
	}
}
