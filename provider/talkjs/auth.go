package talkjs

import (
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// tokenLifetime is the exp of an app-scoped token: short, so a leaked
	// token is worth little.
	tokenLifetime = 30 * time.Second
	// tokenRefreshMargin is how long before expiry a cached token is
	// replaced, so a token never expires between signing and arrival: a
	// slow request, a rate limiter wait, and above all a clock running
	// behind TalkJS's, which makes a token expire early by TalkJS's clock.
	// Tokens are used for their first 10 s, so a clock up to 20 s behind
	// still works (less a request's time); signing one takes microseconds.
	tokenRefreshMargin = 20 * time.Second
)

// credentials produce the bearer token of a request.
type credentials interface {
	bearer() (string, error)
}

// legacyCredentials send the secret key itself, as older TalkJS
// integrations do.
type legacyCredentials struct{ secretKey string }

func (c legacyCredentials) bearer() (string, error) { return c.secretKey, nil }

// appTokenSource signs app-scoped HS256 JWTs with the secret key and
// caches each one until it nears expiry, so a busy relay signs about one
// token every 10 seconds rather than one per request. Safe for concurrent
// use.
type appTokenSource struct {
	appID string
	key   []byte
	now   func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
}

func newAppTokenSource(appID, secretKey string, now func() time.Time) *appTokenSource {
	return &appTokenSource{appID: appID, key: []byte(secretKey), now: now}
}

func (s *appTokenSource) bearer() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.token != "" && now.Before(s.expires.Add(-tokenRefreshMargin)) {
		return s.token, nil
	}
	// exp is whole seconds on the wire; keep the truncated value so the
	// cache never outlives the token.
	exp := now.Add(tokenLifetime).Truncate(time.Second)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"tokenType": "app",
		"iss":       s.appID,
		"exp":       exp.Unix(),
	}).SignedString(s.key)
	if err != nil {
		// The jwt library's errors never include the key.
		return "", fmt.Errorf("sign app token: %w", err)
	}
	s.token, s.expires = tok, exp
	return tok, nil
}
