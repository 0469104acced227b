package talkjs

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

func usersN(n int) []provider.User {
	out := make([]provider.User, n)
	for i := range out {
		id := fmt.Sprintf("u%d", i)
		out[i] = provider.User{ID: id, Name: id, Email: []string{id + "@example.com"}}
	}
	return out
}

func TestPutUsers(t *testing.T) {
	t.Parallel()
	// Ids a path would need escaped go as JSON keys, as they are.
	odd := provider.User{ID: "a/b?c#d %2F.é", Name: "Odd"}
	dot := provider.User{ID: "..", Name: "Dots"}
	b := setup(t, faketalkjs.Faults{}, nil)
	users := append(usersN(98), odd, dot)
	if err := b.client.PutUsers(t.Context(), users); err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if got, ok := b.fake.User(u.ID); !ok || got.Name != u.Name {
			t.Fatalf("user %q: stored %t, %+v", u.ID, ok, got)
		}
	}
	reqs := b.rec.all()
	if len(reqs) != 1 || reqs[0].method != "PUT" || reqs[0].requestURI != "/v1/"+testAppID+"/users" {
		t.Fatalf("requests = %+v, want one PUT /v1/%s/users", reqs, testAppID)
	}
	if st := b.fake.Stats(); st.Routes[faketalkjs.RouteUsersPut] != 1 {
		t.Fatalf("routes = %v", st.Routes)
	}
	// The merge leaves out what is empty, as PutUser does: no null email.
	if strings.Contains(reqs[0].body, "null") {
		t.Fatalf("body sends a null: %s", reqs[0].body)
	}

	if err := b.client.PutUsers(t.Context(), nil); err != nil {
		t.Fatalf("no users: %v", err)
	}
	if n := len(b.rec.all()); n != 1 {
		t.Fatalf("no users sent %d requests", n-1)
	}
}

// Calls the client refuses without sending anything.
func TestPutUsersRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, nil)
	for name, users := range map[string][]provider.User{
		"101 users": usersN(101),
		"empty id":  {alice, {Name: "Nobody"}},
		"id twice":  {alice, bob, alice},
	} {
		err := b.client.PutUsers(t.Context(), users)
		if e := wantProviderError(t, err, provider.Permanent, 0); errors.Is(e, provider.ErrBatchUnsupported) {
			t.Fatalf("%s: %v reads as batch unsupported", name, err)
		}
	}
	if n := len(b.rec.all()); n != 0 {
		t.Fatalf("%d requests sent", n)
	}
}

func TestPutUsersFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		faults      faketalkjs.Faults
		users       []provider.User
		kind        provider.Kind
		status      int
		unsupported bool
		invalid     []string
	}{
		{name: "route absent", faults: faketalkjs.Faults{BatchUnsupported: 404}, users: []provider.User{alice, bob},
			kind: provider.Permanent, status: 404, unsupported: true},
		{name: "method absent", faults: faketalkjs.Faults{BatchUnsupported: 405}, users: []provider.User{alice, bob},
			kind: provider.Permanent, status: 405, unsupported: true},
		{name: "entries refused", faults: faketalkjs.Faults{RejectUserIDs: []string{"u3", "u1"}}, users: usersN(5),
			kind: provider.Permanent, status: 400, invalid: []string{"u1", "u3"}},
		{name: "entry invalid", users: []provider.User{alice, {ID: "u9"}, bob}, // no name
			kind: provider.Permanent, status: 400, invalid: []string{"u9"}},
		{name: "rate limited", faults: faketalkjs.Faults{TooManyRequests: 1}, users: usersN(2), kind: provider.RateLimited, status: 429},
		{name: "server error", faults: faketalkjs.Faults{FailBefore: 1}, users: usersN(2), kind: provider.Retryable, status: 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.faults, nil)
			err := b.client.PutUsers(t.Context(), tt.users)
			e := wantProviderError(t, err, tt.kind, tt.status)
			if got := errors.Is(err, provider.ErrBatchUnsupported); got != tt.unsupported {
				t.Fatalf("errors.Is(ErrBatchUnsupported) = %t, want %t: %v", got, tt.unsupported, err)
			}
			if !slices.Equal(e.InvalidIDs, tt.invalid) {
				t.Fatalf("InvalidIDs = %q, want %q", e.InvalidIDs, tt.invalid)
			}
			if len(e.InvalidReasons) != len(e.InvalidIDs) || slices.Contains(e.InvalidReasons, "") {
				t.Fatalf("InvalidReasons = %q for InvalidIDs %q: want a message for each", e.InvalidReasons, e.InvalidIDs)
			}
			if tt.status == 400 && b.fake.UserCount() != 0 {
				t.Fatal("a refused batch stored users")
			}
		})
	}
}

// A 400 whose body names no user sent (an error code and reason, text, a
// truncated object, ids not sent) gives no InvalidIDs: the caller must
// find the bad entries itself. Nothing is judged by the body beyond that.
func TestPutUsersUnreadable400(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`{"errorCode":"BAD_REQUEST","reason":"u1 is invalid"}`,
		`u1: invalid`,
		`{"u1": "name is req`,
		`{"someone_else":"invalid"}`,
		`["u1"]`,
		``,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(body))
		}))
		c := newClient(t, srv.URL, nil)
		err := c.PutUsers(t.Context(), []provider.User{alice, bob})
		srv.Close()
		e := wantProviderError(t, err, provider.Permanent, 400)
		if len(e.InvalidIDs) != 0 || errors.Is(err, provider.ErrBatchUnsupported) {
			t.Fatalf("body %q: InvalidIDs %q, unsupported %t", body, e.InvalidIDs, errors.Is(err, provider.ErrBatchUnsupported))
		}
	}
}

func TestUnitInvalidEntries(t *testing.T) {
	t.Parallel()
	sent := []provider.User{{ID: "u1"}, {ID: "u2"}, {ID: "u3"}}
	long := strings.Repeat("é", 400)
	tests := []struct {
		body        string
		ids, reason []string
	}{
		{body: `{"u3": "name is required", "u1": {"code": "bad_email"}}`,
			ids: []string{"u1", "u3"}, reason: []string{`{"code": "bad_email"}`, "name is required"}},
		{body: `{"u2": "` + long + `"}`, ids: []string{"u2"}, reason: []string{long[:300] + "…"}},
		{body: `{"errorCode": "INVALID", "reason": "bad"}`},
		{body: `not json`},
	}
	for _, tt := range tests {
		ids, reasons := invalidEntries([]byte(tt.body), sent)
		if !slices.Equal(ids, tt.ids) || !slices.Equal(reasons, tt.reason) {
			t.Errorf("body %.40q: got %q %q, want %q %q", tt.body, ids, reasons, tt.ids, tt.reason)
		}
	}
}
