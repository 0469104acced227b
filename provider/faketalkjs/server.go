// Package faketalkjs is an in-memory TalkJS REST API: the calls the relay
// makes (user and conversation upserts, message posts) and the reads that
// let tests check what arrived, with knobs to inject the failures a real
// API has (errors, rate limiting, latency, lost responses, outages).
//
// It is an http.Handler, so tests serve it with httptest.NewServer and the
// demo and Docker Compose run it with cmd/fake-talkjs. It is strict on
// purpose: it accepts only the fields the TalkJS reference documents for
// the relay's calls and enforces the ordering rules of a conversation start
// (a message needs its conversation, a sender must be synchronised and a
// participant), so a relay that passes against it sends well-formed calls.
//
// PUTs are upserts as in TalkJS: fields given replace the stored ones,
// custom fields are merged key by key (null removes a key), and
// participants given are added to a conversation, never removed. The batch
// users PUT takes a body keyed by user id, 1 to provider.MaxUsersPerPut
// users merged as the single PUT does, all or nothing: a batch with any
// invalid entry stores none and is answered 400 with an object keyed by
// the invalid entries' ids, each holding its error message. A message
// whose idempotencyKey is already stored for its conversation is not
// stored again. Everything is kept in memory until Clear.
//
// Routes (TalkJS, authenticated with the app's secret key):
//
//	PUT  /v1/{appId}/users              (batch: {"u1": {...}, "u2": {...}})
//	PUT  /v1/{appId}/users/{userId}
//	GET  /v1/{appId}/users/{userId}
//	PUT  /v1/{appId}/conversations/{conversationId}
//	GET  /v1/{appId}/conversations/{conversationId}
//	POST /v1/{appId}/conversations/{conversationId}/messages
//	GET  /v1/{appId}/conversations/{conversationId}/messages?limit=&startingAfter=
//
// Admin routes (no authentication, never faulted):
//
//	GET   /_fake/stats    the Stats as JSON
//	GET   /_fake/faults   the current Faults as JSON
//	PUT   /_fake/faults   replace the Faults (absent fields become zero)
//	PATCH /_fake/faults   change only the Faults fields given
//	POST  /_fake/reset    zero the Stats; ?data=true also drops all users,
//	                      conversations and messages
package faketalkjs

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// Config configures a Server.
type Config struct {
	// AppID is the app served; requests for any other app id get 404.
	AppID string
	// SecretKey verifies app-scoped JWTs and is itself accepted as a legacy
	// bearer token. An empty key accepts nothing. Change it at run time with
	// SetSecretKey.
	SecretKey string
	// Faults are the initial fault knobs; none by default.
	Faults Faults
	// Seed seeds the generator that decides which requests are faulted.
	Seed uint64
	// Clock is the clock used for token expiry, the rate limiter and
	// StoredAt. Default time.Now. Latency always waits in real time.
	Clock func() time.Time
}

// Server is the fake TalkJS API. Create it with New; it is safe for
// concurrent use.
type Server struct {
	appID string
	now   func() time.Time
	// verified remembers the tokens whose signature and claims have been
	// checked, as an API gateway would: a client reuses one token for
	// minutes, and checking it on every request made the fake the
	// costliest part of a benchmark. Only the expiry is checked again.
	verified tokenCache

	// mu guards everything below. Requests validate and apply under it, so
	// a message post is all-or-nothing and concurrent requests see each
	// other's effects in a single order, as with a real database.
	mu      sync.Mutex
	secret  string
	faults  Faults
	limiter *rate.Limiter // nil when faults.RateLimit is 0
	queued  int           // requests waiting in the rate limit's queue
	// after times a queued request's wait (time.After); tests replace it
	// to release the queue when they choose.
	after    func(time.Duration) <-chan time.Time
	rng      *rand.Rand
	users    map[string]*User
	convs    map[string]*Conversation
	messages []StoredMessage              // every message, in stored order
	byConv   map[string][]int             // conversation id → indexes into messages
	keys     map[string]map[string]string // conversation id → idempotencyKey → message id
	nextMsg  uint64
	stats    Stats
}

// New returns a Server with no data.
func New(cfg Config) *Server {
	now := cfg.Clock
	if now == nil {
		now = time.Now
	}
	s := &Server{
		appID:  cfg.AppID,
		now:    now,
		after:  time.After,
		secret: cfg.SecretKey,
		// Two words of state from one seed; the constant only decorrelates them.
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		users:  map[string]*User{},
		convs:  map[string]*Conversation{},
		byConv: map[string][]int{},
		keys:   map[string]map[string]string{},
		stats:  newStats(),
	}
	s.setFaultsLocked(cfg.Faults)
	return s
}

// SetSecretKey replaces the secret key: tokens signed with the old key, and
// the old key itself, are refused from now on.
func (s *Server) SetSecretKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secret = key
}

// SetFaults replaces the fault knobs, clamping values out of range (see
// Faults.Validate). Changing RateLimit or Burst starts a full bucket.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setFaultsLocked(f)
}

func (s *Server) setFaultsLocked(f Faults) {
	f = f.normalized()
	old := s.faults
	s.faults = f
	switch {
	case f.RateLimit == 0:
		s.limiter = nil
	case s.limiter == nil || f.RateLimit != old.RateLimit || f.burst() != old.burst():
		s.limiter = rate.NewLimiter(rate.Limit(f.RateLimit), f.burst())
	}
}

// Faults returns a copy of the current fault knobs.
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.normalized()
}

// ServeHTTP serves the admin routes under /_fake/ and the API everywhere
// else.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isAdminPath(r.URL.Path) {
		s.serveAdmin(w, r)
		return
	}
	s.serveAPI(w, r)
}

// APIHandler returns a handler serving only the TalkJS API, for serving it
// apart from the admin routes (the admin paths then get 404).
func (s *Server) APIHandler() http.Handler { return http.HandlerFunc(s.serveAPI) }

// AdminHandler returns a handler serving only the /_fake/ admin routes.
func (s *Server) AdminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isAdminPath(r.URL.Path) {
			writeError(w, http.StatusNotFound, "not an admin route")
			return
		}
		s.serveAdmin(w, r)
	})
}

func isAdminPath(p string) bool { return p == "/_fake" || strings.HasPrefix(p, "/_fake/") }

// result is the answer to an API request, written by finish.
type result struct {
	status int
	body   any    // JSON-encoded; nil writes {}
	fault  string // the Fault* name when the answer is injected
	header http.Header
	users  []string // ids of the users a successful PUT stored
}

func ok(body any) result { return result{status: http.StatusOK, body: body} }

func reject(status int, format string, args ...any) result {
	return result{status: status, body: errorBody(status, fmt.Sprintf(format, args...))}
}

func injected(status int, fault string) result {
	return result{status: status, body: errorBody(status, "injected fault: "+fault), fault: fault}
}

// serveAPI runs one API request through the fault pipeline documented on
// Faults around process.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r)

	s.mu.Lock()
	s.stats.Requests++
	s.stats.Routes[rt.statsName(r.Method)]++
	f := s.faults // the id lists are only read under mu, so sharing them is fine
	if rt.api && f.Down {
		s.stats.Faults[FaultDown]++
	}
	s.mu.Unlock()

	if !rt.api {
		s.finish(w, reject(http.StatusNotFound, "no such route: %s", r.URL.Path))
		return
	}
	if f.Down {
		dropConnection(w)
		return
	}
	// Read the body before waiting: net/http notices a client hanging up
	// (and cancels r.Context()) only once the body has been read.
	body, bodyErr := readBody(r)
	if f.Hang {
		s.count(FaultHang)
		<-r.Context().Done()
		return // never answered, never applied
	}
	if f.Latency > 0 {
		s.count(FaultLatency)
		t := time.NewTimer(f.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client is gone: nobody to answer, nothing applied
		}
	}
	if res, refused, gone := s.admit(r.Context()); gone {
		return // left the queue: nobody to answer, nothing applied
	} else if refused {
		s.finish(w, res)
		return
	}
	if res, faulted := s.faultBefore(); faulted {
		s.finish(w, res)
		return
	}

	res := s.process(r, rt, body, bodyErr)

	if res.status == http.StatusOK {
		s.mu.Lock()
		failAfter := slices.ContainsFunc(res.users, func(id string) bool { return slices.Contains(s.faults.FailAfterUserIDs, id) }) ||
			s.chance(s.faults.FailAfter)
		drop := !failAfter && s.chance(s.faults.DropAfter)
		if drop {
			s.stats.Faults[FaultDropAfter]++
		}
		s.mu.Unlock()
		switch {
		case failAfter:
			res = injected(http.StatusInternalServerError, FaultFailAfter)
		case drop:
			dropConnection(w)
			return
		}
	}
	s.finish(w, res)
}

// admit applies RateLimit and QueueLength. A request within the rate
// goes on at once; one over it waits for its token in the queue when the
// queue has room, else it is refused with a 429 result. gone reports a
// client that went away while queued (its token is given back).
func (s *Server) admit(ctx context.Context) (res result, refused, gone bool) {
	s.mu.Lock()
	if s.limiter == nil {
		s.mu.Unlock()
		return result{}, false, false
	}
	now := s.now()
	rv := s.limiter.ReserveN(now, 1)
	delay := rv.DelayFrom(now)
	switch {
	case delay == 0:
		s.mu.Unlock()
		return result{}, false, false
	case s.queued >= s.faults.QueueLength:
		rv.CancelAt(now) // a refused request must not use up a token
		s.mu.Unlock()
		res := injected(http.StatusTooManyRequests, FaultRateLimit)
		res.header = http.Header{"Retry-After": {retryAfterSeconds(delay)}}
		return res, true, false
	}
	s.queued++
	after := s.after
	s.mu.Unlock()

	select {
	case <-after(delay):
	case <-ctx.Done():
		gone = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued--
	if gone {
		rv.CancelAt(s.now())
		return result{}, false, true
	}
	s.stats.Faults[FaultRateQueued]++
	return result{}, false, false
}

// faultBefore decides the faults that answer instead of processing.
func (s *Server) faultBefore() (result, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chance(s.faults.TooManyRequests) {
		res := injected(http.StatusTooManyRequests, FaultTooManyRequests)
		switch ra := s.faults.RetryAfter; {
		case ra == 0:
			res.header = http.Header{"Retry-After": {retryAfterSeconds(DefaultRetryAfter)}}
		case ra > 0:
			res.header = http.Header{"Retry-After": {retryAfterSeconds(ra)}}
		}
		return res, true
	}
	if s.chance(s.faults.FailBefore) {
		return injected(http.StatusInternalServerError, FaultFailBefore), true
	}
	return result{}, false
}

// chance draws true with probability p. Certain outcomes draw nothing, so
// a knob at 0 does not shift the sequence of the others. Caller holds mu.
func (s *Server) chance(p float64) bool {
	switch {
	case p <= 0:
		return false
	case p >= 1:
		return true
	default:
		return s.rng.Float64() < p
	}
}

func (s *Server) count(fault string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Faults[fault]++
}

// finish records res in the stats and writes it.
func (s *Server) finish(w http.ResponseWriter, res result) {
	s.mu.Lock()
	s.stats.Statuses[res.status]++
	switch {
	case res.fault != "":
		s.stats.Faults[res.fault]++
	case res.status >= 400 && res.status < 500:
		s.stats.Rejections++
	}
	s.mu.Unlock()

	for k, v := range res.header {
		w.Header()[k] = v
	}
	body := res.body
	if body == nil {
		body = struct{}{}
	}
	writeJSON(w, res.status, body)
}

// process authenticates and answers an API request that met no fault.
func (s *Server) process(r *http.Request, rt route, body []byte, bodyErr error) result {
	if rt.app != s.appID {
		return reject(http.StatusNotFound, "unknown app id")
	}
	if err := s.authenticate(r); err != nil {
		return reject(http.StatusUnauthorized, "%v", err)
	}
	if rt.res == resNone {
		return reject(http.StatusNotFound, "no such route: %s", r.URL.EscapedPath())
	}
	if rt.res == resUsers {
		return s.serveUsersBatch(r, rt, body, bodyErr)
	}
	switch r.Method {
	case http.MethodGet:
		return s.get(r, rt)
	case http.MethodPut, http.MethodPost:
		want := http.MethodPut
		if rt.res == resMessages {
			want = http.MethodPost
		}
		if r.Method != want {
			return methodNotAllowed(rt)
		}
		if res, bad := checkJSONBody(r, body, bodyErr); bad {
			return res
		}
		switch rt.res {
		case resUser:
			return s.putUser(rt.id, body)
		case resConversation:
			return s.putConversation(rt.id, body)
		default:
			return s.postMessages(rt.id, body)
		}
	default:
		return methodNotAllowed(rt)
	}
}

// serveUsersBatch answers the batch users route, or plays an API without
// it (Faults.BatchUnsupported).
func (s *Server) serveUsersBatch(r *http.Request, rt route, body []byte, bodyErr error) result {
	s.mu.Lock()
	unsupported := s.faults.BatchUnsupported
	s.mu.Unlock()
	switch {
	case unsupported == http.StatusMethodNotAllowed:
		res := reject(unsupported, "method not allowed; allowed: GET")
		res.header = http.Header{"Allow": {"GET"}}
		res.fault = FaultBatchUnsupported
		return res
	case unsupported != 0:
		res := reject(unsupported, "no such route: %s", r.URL.EscapedPath())
		res.fault = FaultBatchUnsupported
		return res
	case r.Method != http.MethodPut:
		return methodNotAllowed(rt)
	}
	if res, bad := checkJSONBody(r, body, bodyErr); bad {
		return res
	}
	return s.putUsers(body)
}

func methodNotAllowed(rt route) result {
	allow := "GET, PUT"
	switch rt.res {
	case resMessages:
		allow = "GET, POST"
	case resUsers:
		allow = "PUT"
	}
	res := reject(http.StatusMethodNotAllowed, "method not allowed; allowed: %s", allow)
	res.header = http.Header{"Allow": {allow}}
	return res
}

// authenticate accepts "Bearer <secret key>" (legacy) or "Bearer <JWT>"
// where the JWT is HS256-signed with the secret key and carries
// tokenType "app", iss = the app id and an exp in the future.
func (s *Server) authenticate(r *http.Request) error {
	token, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !found || token == "" {
		return errors.New("missing bearer token")
	}
	s.mu.Lock()
	secret := s.secret
	s.mu.Unlock()
	if secret == "" {
		return errors.New("no secret key configured")
	}
	if subtle.ConstantTimeCompare([]byte(token), []byte(secret)) == 1 {
		return nil
	}
	if s.verified.valid(secret, token, s.now()) {
		return nil
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims,
		func(*jwt.Token) (any, error) { return []byte(secret), nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(s.appID),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(s.now),
	)
	if err != nil {
		// jwt's messages describe the failed check, never the key.
		return fmt.Errorf("invalid token: %w", err)
	}
	if tt, _ := claims["tokenType"].(string); tt != "app" {
		return errors.New(`invalid token: tokenType must be "app"`)
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		s.verified.add(secret, token, exp.Time)
	}
	return nil
}

// tokenCache holds verified tokens with their expiry, for the secret they
// were verified with (a secret changed at run time invalidates them).
type tokenCache struct {
	mu sync.Mutex
	m  map[tokenKey]time.Time
}

type tokenKey struct{ secret, token string }

// maxCachedTokens bounds the cache; it is emptied when full.
const maxCachedTokens = 1024

func (c *tokenCache) valid(secret, token string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m[tokenKey{secret, token}]
	return ok && now.Before(exp)
}

func (c *tokenCache) add(secret, token string, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = make(map[tokenKey]time.Time)
	}
	c.m[tokenKey{secret, token}] = exp
}

type resource int

const (
	resNone resource = iota
	resUser
	resConversation
	resMessages
	resUsers // the batch users route
)

// route is a parsed API path. Ids are unescaped per segment from the
// escaped path, so an id containing "/" (sent as %2F) stays one segment.
type route struct {
	api bool   // under /v1/: faults apply
	app string // the {appId} segment
	res resource
	id  string // user id, or conversation id for resConversation and resMessages
}

func parseRoute(r *http.Request) route {
	rest, found := strings.CutPrefix(r.URL.EscapedPath(), "/v1/")
	if !found {
		return route{}
	}
	segs := strings.Split(rest, "/")
	for i, seg := range segs {
		u, err := url.PathUnescape(seg)
		if err != nil {
			return route{api: true}
		}
		segs[i] = u
	}
	rt := route{api: true, app: segs[0]}
	switch {
	case len(segs) == 2 && segs[1] == "users":
		rt.res = resUsers
	case len(segs) == 3 && segs[1] == "users" && segs[2] != "":
		rt.res, rt.id = resUser, segs[2]
	case len(segs) == 3 && segs[1] == "conversations" && segs[2] != "":
		rt.res, rt.id = resConversation, segs[2]
	case len(segs) == 4 && segs[1] == "conversations" && segs[2] != "" && segs[3] == "messages":
		rt.res, rt.id = resMessages, segs[2]
	}
	return rt
}

func (rt route) statsName(method string) string {
	switch {
	case rt.res == resNone:
		return RouteOther
	case method == http.MethodGet:
		return RouteGet
	case rt.res == resUser && method == http.MethodPut:
		return RouteUserPut
	case rt.res == resUsers && method == http.MethodPut:
		return RouteUsersPut
	case rt.res == resConversation && method == http.MethodPut:
		return RouteConversationPut
	case rt.res == resMessages && method == http.MethodPost:
		return RouteMessagePost
	default:
		return RouteOther
	}
}

type errorJSON struct {
	ErrorCode string `json:"errorCode"`
	Reason    string `json:"reason"`
}

// errorBody is the JSON body of a failed request, e.g.
// {"errorCode":"BAD_REQUEST","reason":"name is required"}.
func errorBody(status int, reason string) errorJSON {
	code := strings.ToUpper(strings.ReplaceAll(http.StatusText(status), " ", "_"))
	return errorJSON{ErrorCode: code, Reason: reason}
}

func writeError(w http.ResponseWriter, status int, reason string) {
	writeJSON(w, status, errorBody(status, reason))
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody(status, "encode response"))
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
