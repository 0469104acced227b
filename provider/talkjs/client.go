// Package talkjs is the TalkJS implementation of provider.Provider: an
// HTTP client for the three REST calls of a conversation start (and the
// batch users upsert, provider.BatchUserPutter), with
// app-scoped JWT authentication, a client-side rate limit, a bounded
// connection pool and classification of every failure into a
// *provider.Error.
//
// A Client is safe for concurrent use by the relay's workers; create one
// per process and share it.
package talkjs

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/outbox-relay/outbox-relay/provider"
)

// Defaults of Config.
const (
	DefaultBaseURL = "https://api.talkjs.com"
	// DefaultTimeout is half the relay's default lease: a call must end
	// inside the lease it is made under (see relay.Config.Lease).
	DefaultTimeout   = 5 * time.Second
	DefaultMaxConns  = 100
	DefaultUserAgent = "outbox-relay (+https://github.com/outbox-relay/outbox-relay)"
)

// Config configures a Client. AppID and SecretKey are required; every other
// field has a default.
type Config struct {
	// AppID is the TalkJS app id. Required.
	AppID string
	// SecretKey is the app's secret key. Required. It never appears in an
	// error, a log or the String form of a Config or Client.
	SecretKey string
	// BaseURL is the API's scheme, host and optional path prefix. Default
	// DefaultBaseURL.
	BaseURL string
	// LegacyAuth sends the secret key itself as the bearer token instead of
	// a short-lived app-scoped JWT signed with it. Off by default: a JWT
	// that leaks expires within 30 seconds, the key does not.
	LegacyAuth bool
	// Timeout bounds each HTTP request, from sending to reading the
	// response; waiting for the rate limiter is not included. A deadline
	// of the caller's context that comes sooner bounds it too. Default
	// DefaultTimeout.
	Timeout time.Duration
	// MaxConns is the size of the connection pool: the most connections,
	// idle or busy, the client keeps to the API host. Size it to the relay's
	// concurrency so workers neither queue for connections nor reconnect.
	// Default DefaultMaxConns. Ignored when HTTPClient is set.
	MaxConns int
	// RateLimit is the most requests per second this client sends, shared by
	// all its callers; 0 means unlimited. TalkJS limits per app, so divide
	// the app's allowance between relay processes. Change it at run time
	// with SetRateLimit.
	RateLimit float64
	// RateBurst is how many requests may go at once above RateLimit after
	// a quiet period. Default max(1, ceil(RateLimit)) (relay.DefaultRateBurst).
	RateBurst int
	// UserAgent is sent with every request. Default DefaultUserAgent.
	UserAgent string
	// HTTPClient replaces the client's own HTTP client (tests, proxies,
	// custom TLS). Its Timeout, if any, applies on top of Timeout; redirects
	// follow its CheckRedirect. By default the client builds one that does
	// not follow redirects, as TalkJS never sends them for API calls.
	HTTPClient *http.Client
	// Clock returns the current time, for token expiry and Retry-After
	// dates; tests may replace it. Default time.Now (the name and default
	// of relay.Config's Clock).
	Clock func() time.Time
}

// String describes c without its secret key.
func (c Config) String() string {
	return fmt.Sprintf("talkjs.Config{AppID:%q BaseURL:%q SecretKey:%s LegacyAuth:%t Timeout:%s MaxConns:%d RateLimit:%g RateBurst:%d}",
		c.AppID, c.BaseURL, redactedIfSet(c.SecretKey), c.LegacyAuth, c.Timeout, c.MaxConns, c.RateLimit, c.RateBurst)
}

// GoString is String, so %#v does not print the secret key either.
func (c Config) GoString() string { return c.String() }

// LogValue logs c without its secret key.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("app_id", c.AppID),
		slog.String("base_url", c.BaseURL),
		slog.String("secret_key", redactedIfSet(c.SecretKey)),
		slog.Bool("legacy_auth", c.LegacyAuth),
		slog.Duration("timeout", c.Timeout),
		slog.Int("max_conns", c.MaxConns),
		slog.Float64("rate_limit", c.RateLimit),
		slog.Int("rate_burst", c.RateBurst),
	)
}

func redactedIfSet(s string) string {
	if s == "" {
		return "<empty>"
	}
	return "<redacted>"
}

// withDefaults returns c with every unset field given its default.
func (c Config) withDefaults() Config {
	c.BaseURL = cmp.Or(c.BaseURL, DefaultBaseURL)
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	c.MaxConns = cmp.Or(c.MaxConns, DefaultMaxConns)
	c.RateBurst = cmp.Or(c.RateBurst, defaultBurst(c.RateLimit))
	c.UserAgent = cmp.Or(c.UserAgent, DefaultUserAgent)
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

func defaultBurst(limit float64) int {
	if limit <= 0 || math.IsInf(limit, 0) || math.IsNaN(limit) {
		return 1
	}
	return int(max(1, math.Ceil(limit)))
}

// ConfigError is an invalid field of a Config. Validate and New return
// them joined, one per invalid field; none quotes the secret key.
type ConfigError struct {
	Field  string // the field of Config: "Timeout", "BaseURL"
	Reason string // what is wrong: "must be at least 100ms, got 50ms"
}

func (e *ConfigError) Error() string { return "talkjs: " + e.Field + " " + e.Reason }

// MinTimeout is the shortest Timeout accepted: below it no call to the
// API could be expected to answer.
const MinTimeout = 100 * time.Millisecond

// Validate reports every invalid field of c as it is given: a zero field
// that has no meaning of its own (Timeout, MaxConns) is refused, while New
// gives such fields their default first. The error joins one *ConfigError
// per invalid field.
func (c Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate reports every invalid field, and parses the base URL.
func (c Config) validate() (*url.URL, error) {
	var errs []error
	check := func(ok bool, field, format string, args ...any) {
		if !ok {
			errs = append(errs, &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)})
		}
	}
	check(c.AppID != "", "AppID", "is required")
	check(c.AppID == "" || strings.TrimSpace(c.AppID) != "", "AppID", "must not be blank")
	check(c.SecretKey != "", "SecretKey", "is required")
	check(c.SecretKey == "" || strings.TrimSpace(c.SecretKey) != "", "SecretKey", "must not be blank")
	check(c.Timeout >= MinTimeout, "Timeout", "must be at least %s, got %s", MinTimeout, c.Timeout)
	check(c.MaxConns > 0, "MaxConns", "must be positive, got %d", c.MaxConns)
	check(!math.IsNaN(c.RateLimit) && !math.IsInf(c.RateLimit, 0) && c.RateLimit >= 0,
		"RateLimit", "must be a finite number >= 0, got %g", c.RateLimit)
	check(c.RateBurst >= 0, "RateBurst", "must not be negative, got %d", c.RateBurst)
	base, reason := parseBaseURL(c.BaseURL)
	check(reason == "", "BaseURL", "%s", reason)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return base, nil
}

// parseBaseURL parses the API base, or says why it cannot be one. The
// reason never quotes the URL, which could hold credentials.
func parseBaseURL(s string) (*url.URL, string) {
	base, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, "is not a valid URL"
	case base.Scheme != "http" && base.Scheme != "https":
		return nil, "must start with http:// or https://"
	case base.Host == "":
		return nil, "must have a host"
	case base.User != nil:
		return nil, "must not contain credentials"
	case base.RawQuery != "" || base.Fragment != "" || base.ForceQuery:
		return nil, "must not have a query or fragment"
	}
	return base, ""
}

// Client calls the TalkJS REST API. It implements provider.Provider.
type Client struct {
	appID     string
	origin    string // scheme://host of BaseURL
	prefix    string // escaped path prefix of BaseURL, no trailing slash
	timeout   time.Duration
	userAgent string
	now       func() time.Time
	creds     credentials
	secretKey string // kept only to scrub it from response bodies quoted in errors
	limiter   *rate.Limiter
	hc        *http.Client
	ownsHC    bool

	slotWaits   atomic.Int64 // requests that waited for the rate limiter
	slotWaitsNS atomic.Int64 // and how long, in total

	onAnswer atomic.Pointer[func(status int, latency, retryAfter time.Duration)] // nil: nobody listens

	// holdMax is the longest Retry-After held (0: none held); holdUntil
	// is when the latest held one ends, unix ns.
	holdMax   atomic.Int64
	holdUntil atomic.Int64
}

// HoldRetryAfter makes the client honour every 429's Retry-After for all
// its requests, up to longest (0 turns it off): no request is sent before it
// has passed, including requests that already had their slot from the
// rate limiter (they would otherwise all go during the wait, each meeting
// its own 429). A request whose deadline the wait would leave less than
// half of Timeout is not sent: it fails as the limiter's refusals do, a
// RateLimited error with Status 0.
func (c *Client) HoldRetryAfter(longest time.Duration) { c.holdMax.Store(int64(max(longest, 0))) }

// waitHold waits out a held Retry-After, as waitForSlot waits for a slot.
func (c *Client) waitHold(ctx context.Context, method, path string) error {
	for {
		now := time.Now()
		wait := time.Duration(c.holdUntil.Load() - now.UnixNano())
		if wait <= 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && now.Add(wait+c.timeout/2).After(dl) {
			return &provider.Error{Kind: provider.RateLimited, RetryAfter: wait,
				Err: fmt.Errorf("%s %s: held for a 429's Retry-After for %s, leaving less than half the %s timeout before the caller's deadline",
					method, path, wait.Round(time.Millisecond), c.timeout)}
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("talkjs: %s %s: waiting for a 429's Retry-After: %w", method, path, ctx.Err())
		}
	}
}

// hold records a 429's Retry-After, when holding is on.
func (c *Client) hold(retryAfter time.Duration) {
	limit := time.Duration(c.holdMax.Load())
	if limit <= 0 || retryAfter <= 0 {
		return
	}
	until := time.Now().Add(min(retryAfter, limit)).UnixNano()
	for {
		cur := c.holdUntil.Load()
		if cur >= until || c.holdUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// OnAnswer sets the function told about every request's answer (nil to
// stop), as an adaptive rate limit needs: a 429, or answers slowing down,
// are the API's signs that requests come too fast. f is given the HTTP
// status of the answer (0 when none came: a timeout, a reset, a refused
// connection), how long after sending it came (or was given up on), and
// its Retry-After (0 when absent). Requests the client did not send
// (refused by its own limiter, invalid) and requests whose caller
// cancelled them are not reported. f runs on the request's goroutine, so
// it must be quick.
func (c *Client) OnAnswer(f func(status int, latency, retryAfter time.Duration)) {
	if f == nil {
		c.onAnswer.Store(nil)
		return
	}
	c.onAnswer.Store(&f)
}

// answered reports a sent request's end to the OnAnswer function.
func (c *Client) answered(status int, sent time.Time, retryAfter time.Duration) {
	if f := c.onAnswer.Load(); f != nil {
		(*f)(status, time.Since(sent), retryAfter)
	}
}

// RateLimitWaits reports how many requests waited for the client-side
// rate limit, and for how long in total.
func (c *Client) RateLimitWaits() (waits int64, total time.Duration) {
	return c.slotWaits.Load(), time.Duration(c.slotWaitsNS.Load())
}

var (
	_ provider.Provider        = (*Client)(nil)
	_ provider.BatchUserPutter = (*Client)(nil)
)

// New validates cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	base, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	c := &Client{
		appID:     cfg.AppID,
		origin:    base.Scheme + "://" + base.Host,
		prefix:    strings.TrimRight(base.EscapedPath(), "/"),
		timeout:   cfg.Timeout,
		userAgent: cfg.UserAgent,
		now:       cfg.Clock,
		secretKey: cfg.SecretKey,
		limiter:   rate.NewLimiter(rate.Inf, cfg.RateBurst),
		hc:        cfg.HTTPClient,
	}
	if cfg.LegacyAuth {
		c.creds = legacyCredentials{secretKey: cfg.SecretKey}
	} else {
		c.creds = newAppTokenSource(cfg.AppID, cfg.SecretKey, cfg.Clock)
	}
	c.SetRateLimit(cfg.RateLimit, cfg.RateBurst)
	if c.hc == nil {
		c.hc = &http.Client{
			Transport: newTransport(cfg.MaxConns),
			// A redirect is never a TalkJS answer, and following one would
			// turn a POST into a GET that "succeeds": hand it back as a
			// failed call instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		c.ownsHC = true
	}
	return c, nil
}

// newTransport returns a transport whose pool holds maxConns connections
// to the API host, all of which may stay idle between bursts so that a
// busy relay does not reconnect (and redo TLS) per request.
func newTransport(maxConns int) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	t.MaxConnsPerHost = maxConns
	t.MaxIdleConnsPerHost = maxConns
	t.MaxIdleConns = maxConns
	t.IdleConnTimeout = 90 * time.Second
	return t
}

// String describes the client without its secret key.
func (c *Client) String() string {
	return fmt.Sprintf("talkjs.Client{AppID:%q BaseURL:%q}", c.appID, c.origin+c.prefix)
}

// GoString is String, so %#v does not print the secret key either.
func (c *Client) GoString() string { return c.String() }

// SetRateLimit changes the client-side rate limit at run time: limit
// requests per second (<= 0 or +Inf for unlimited) with bursts of burst
// (<= 0 for max(1, ceil(limit))). Requests already waiting keep their
// reserved slot.
func (c *Client) SetRateLimit(limit float64, burst int) {
	if burst <= 0 {
		burst = defaultBurst(limit)
	}
	// Burst first: SetLimit refills the bucket up to the burst when leaving
	// rate.Inf.
	c.limiter.SetBurst(burst)
	if limit <= 0 || math.IsNaN(limit) || math.IsInf(limit, 0) {
		c.limiter.SetLimit(rate.Inf)
		return
	}
	c.limiter.SetLimit(rate.Limit(limit))
}

// RateLimit returns the client's current rate limit in requests per
// second, 0 when it has none.
func (c *Client) RateLimit() float64 {
	l := c.limiter.Limit()
	if l == rate.Inf || l <= 0 {
		return 0
	}
	return float64(l)
}

// Close closes the client's idle connections. The client stays usable; a
// later request opens a new connection. A caller-supplied HTTPClient is
// left alone.
func (c *Client) Close() error {
	if c.ownsHC {
		c.hc.CloseIdleConnections()
	}
	return nil
}

// Timeout returns the bound on one request (Config.Timeout): the longest
// the client waits for an answer once a request is sent.
func (c *Client) Timeout() time.Duration { return c.timeout }

// PutUser creates or updates a user: PUT /v1/{appId}/users/{userId}.
func (c *Client) PutUser(ctx context.Context, u provider.User) error {
	path, err := c.resourcePath("users", "user", u.ID)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, path, u)
}

// PutUsers creates or updates 1..provider.MaxUsersPerPut users in one
// request, all or nothing: PUT /v1/{appId}/users with a body keyed by user
// id. An empty slice sends nothing. More than provider.MaxUsersPerPut
// users, an empty id or an id given twice is a Permanent error and nothing
// is sent. See provider.BatchUserPutter for how its failures read.
func (c *Client) PutUsers(ctx context.Context, users []provider.User) error {
	switch n := len(users); {
	case n == 0:
		return nil
	case n > provider.MaxUsersPerPut:
		return permanentf("talkjs: put users: got %d users, want at most %d", n, provider.MaxUsersPerPut)
	}
	// Ids are keys of the JSON body, escaped by the encoder: no path
	// escaping, and "." or ".." are ids like any other.
	body := make(map[string]provider.User, len(users))
	for i, u := range users {
		if u.ID == "" {
			return permanentf("talkjs: put users: user %d has no id", i)
		}
		if _, dup := body[u.ID]; dup {
			return permanentf("talkjs: put users: user id %q is given twice", u.ID)
		}
		body[u.ID] = u
	}
	path := c.prefix + "/v1/" + escapeComponent(c.appID) + "/users"
	return c.doInspect(ctx, http.MethodPut, path, body, func(e *provider.Error, raw []byte) {
		switch e.Status {
		case http.StatusNotFound, http.StatusMethodNotAllowed:
			e.Err = fmt.Errorf("%w: %w", provider.ErrBatchUnsupported, e.Err)
		case http.StatusBadRequest:
			e.InvalidIDs, e.InvalidReasons = invalidEntries(raw, users)
		}
	})
}

// PutConversation creates or updates a conversation:
// PUT /v1/{appId}/conversations/{conversationId}.
func (c *Client) PutConversation(ctx context.Context, conv provider.Conversation) error {
	path, err := c.resourcePath("conversations", "conversation", conv.ID)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, path, conv)
}

// PostMessages sends 1..provider.MaxMessagesPerPost messages in one
// request: POST /v1/{appId}/conversations/{conversationId}/messages. Every
// message must carry an IdempotencyKey, so that a retry after a lost
// response cannot duplicate it; a message with an empty Type is sent as a
// provider.UserMessage. Breaking these rules is a Permanent error and
// nothing is sent.
func (c *Client) PostMessages(ctx context.Context, conversationID string, msgs []provider.Message) error {
	if n := len(msgs); n == 0 || n > provider.MaxMessagesPerPost {
		return permanentf("talkjs: post messages: got %d messages, want 1 to %d", n, provider.MaxMessagesPerPost)
	}
	body := make([]provider.Message, len(msgs))
	for i, m := range msgs {
		if m.IdempotencyKey == "" {
			return permanentf("talkjs: post messages: message %d has no IdempotencyKey", i)
		}
		if m.Type == "" {
			m.Type = provider.UserMessage
		}
		body[i] = m
	}
	path, err := c.resourcePath("conversations", "conversation", conversationID)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path+"/messages", body)
}

// resourcePath returns the escaped path of /v1/{appId}/{collection}/{id}.
// Each id is escaped as one path segment, as JavaScript's
// encodeURIComponent does (TalkJS's own examples use it), so ids holding
// "/", "?", "#", "%", "+", "@", spaces or any other byte reach TalkJS
// intact. "." and ".." are refused: servers and proxies resolve them as
// path navigation.
func (c *Client) resourcePath(collection, what, id string) (string, error) {
	switch id {
	case "":
		return "", permanentf("talkjs: %s id is required", what)
	case ".", "..":
		return "", permanentf("talkjs: %s id %q cannot be used in a URL path", what, id)
	}
	return c.prefix + "/v1/" + escapeComponent(c.appID) + "/" + collection + "/" + escapeComponent(id), nil
}

// escapeComponent escapes s as encodeURIComponent does: every byte of its
// UTF-8 form except A-Z a-z 0-9 - _ . ! ~ * ' ( ) becomes %XX.
// url.PathEscape would leave + $ & : = @ as they are, and a server may read
// some of them (a "+" as a space) differently.
func escapeComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-_.!~*'()", c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

func permanentf(format string, args ...any) *provider.Error {
	return &provider.Error{Kind: provider.Permanent, Err: fmt.Errorf(format, args...)}
}

// do sends one JSON request and turns every failure into a *provider.Error,
// or into an error wrapping ctx.Err() when ctx was cancelled. A deadline
// of ctx is a time budget, not a cancellation: a request still unanswered
// when it passes is a Retryable "no answer", like one that outlives
// Timeout. path is already escaped; errors quote it as sent, which names
// the ids but never a secret.
func (c *Client) do(ctx context.Context, method, path string, body any) error {
	return c.doInspect(ctx, method, path, body, nil)
}

// doInspect is do, handing the *provider.Error of a non-2xx answer and
// the answer's body (up to maxDrain bytes) to inspect, when not nil,
// before returning it.
func (c *Client) doInspect(ctx context.Context, method, path string, body any, inspect func(e *provider.Error, raw []byte)) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return permanentf("%s %s: encode body: %w", method, path, err)
	}
	if err := c.waitForSlot(ctx, method, path); err != nil {
		return err
	}
	if err := c.waitHold(ctx, method, path); err != nil {
		return err
	}
	token, err := c.creds.bearer()
	if err != nil {
		return &provider.Error{Kind: provider.Auth, Err: fmt.Errorf("%s %s: %w", method, path, err)}
	}

	sent := time.Now()
	reqCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// origin+path parses back with RawPath set, so the escaping chosen by
	// resourcePath is what goes on the wire.
	req, err := http.NewRequestWithContext(reqCtx, method, c.origin+path, bytes.NewReader(payload))
	if err != nil {
		return permanentf("%s %s: build request: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)

	// A process frozen (or starved) after its caller checked the deadline
	// must not send once it has passed: the caller's deadline may protect
	// a lease another process owns by now. Checked against the clock, as
	// the context's own timer may not have fired yet on resume.
	if dl, ok := reqCtx.Deadline(); ok && !time.Now().Before(dl) {
		return c.transportError(ctx, reqCtx, method, path, sent, context.DeadlineExceeded)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() == nil || !errors.Is(ctx.Err(), context.Canceled) {
			c.answered(0, sent, 0)
		}
		return c.transportError(ctx, reqCtx, method, path, sent, err)
	}
	defer drainAndClose(resp)
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		c.answered(resp.StatusCode, sent, 0)
		return nil // judged by status only: the body is not read
	}
	e, raw := c.statusError(method, path, resp, token)
	if resp.StatusCode == http.StatusTooManyRequests {
		c.hold(e.RetryAfter)
	}
	c.answered(resp.StatusCode, sent, e.RetryAfter)
	if inspect != nil {
		inspect(e, raw)
	}
	return e
}

// waitForSlot waits for the rate limiter. When ctx has a deadline and the
// slot would leave less than half of Timeout before it, it gives the slot
// back at once and returns a RateLimited error with Status 0 (no request
// was sent) and the wait in RetryAfter, instead of waiting for a slot
// whose request would likely be cut short. Only this caller is refused:
// other requests go on taking their slots. (Half, not all of Timeout: a
// caller whose deadline leaves its requests little more than Timeout,
// as the relay's lease does, would otherwise be refused whenever the
// limiter has a queue at all.)
func (c *Client) waitForSlot(ctx context.Context, method, path string) error {
	now := time.Now()
	r := c.limiter.ReserveN(now, 1)
	if !r.OK() {
		return &provider.Error{Kind: provider.RateLimited,
			Err: fmt.Errorf("%s %s: client-side rate limit: burst too small", method, path)}
	}
	delay := r.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && now.Add(delay+c.timeout/2).After(dl) {
		r.CancelAt(now)
		return &provider.Error{Kind: provider.RateLimited, RetryAfter: delay,
			Err: fmt.Errorf("%s %s: client-side rate limit: next slot in %s leaves less than half the %s timeout before the caller's deadline",
				method, path, delay.Round(time.Millisecond), c.timeout)}
	}
	c.slotWaits.Add(1)
	c.slotWaitsNS.Add(int64(delay))
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return fmt.Errorf("talkjs: %s %s: waiting for rate limit: %w", method, path, ctx.Err())
	}
}

// transportError classifies a request that got no response. Only a
// cancelled ctx is the caller giving up; a deadline that passed (the
// caller's or Timeout) is the API not answering in time.
func (c *Client) transportError(ctx, reqCtx context.Context, method, path string, sent time.Time, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up; that is not the API's failure.
		return fmt.Errorf("talkjs: %s %s: %w", method, path, ctx.Err())
	}
	if reqCtx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		// Deliberately not wrapping the context error: errors.Is(err,
		// context.DeadlineExceeded) would read as "the caller gave up",
		// and this is a failure of the API to answer.
		budget := c.timeout
		if dl, ok := reqCtx.Deadline(); ok {
			budget = dl.Sub(sent)
		}
		return &provider.Error{Kind: provider.Retryable,
			Err: fmt.Errorf("%s %s: no answer within %s", method, path, max(budget, 0).Round(time.Millisecond))}
	}
	// url.Error repeats the method and URL; keep its cause for errors.Is
	// (syscall.ECONNREFUSED, io.EOF, ...).
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return &provider.Error{Kind: provider.Retryable, Err: fmt.Errorf("%s %s: %w", method, path, err)}
}
