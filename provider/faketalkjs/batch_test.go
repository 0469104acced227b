package faketalkjs

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
)

const usersPath = "/v1/" + testAppID + "/users"

// batchOf returns a batch body of n valid users u0..u{n-1}.
func batchOf(n int) string {
	m := map[string]any{}
	for i := range n {
		id := fmt.Sprintf("u%d", i)
		m[id] = map[string]any{"name": id, "email": []string{id + "@example.com"}}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// invalidIDs reads the ids a batch 400 names.
func invalidIDs(t *testing.T, body string) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("400 body %q is not an object: %v", body, err)
	}
	return slices.Sorted(maps.Keys(m))
}

func TestUsersBatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		faults      Faults
		method      string // default PUT
		body        string
		wantStatus  int
		wantInvalid []string // ids the 400 body names; nil: a plain error body
		wantStored  []string // users stored after the call
		wantFault   string
	}{
		{name: "two users", body: `{"u1":{"name":"One","email":["1@example.com"]},"u2":{"name":"Two"}}`,
			wantStatus: 200, wantStored: []string{"u1", "u2"}},
		{name: "100 users", body: batchOf(100), wantStatus: 200, wantStored: []string{"u0", "u99"}},
		{name: "101 users", body: batchOf(101), wantStatus: 400},
		{name: "no users", body: `{}`, wantStatus: 400},
		{name: "not an object", body: `[{"name":"One"}]`, wantStatus: 400},
		{name: "id given twice", body: `{"u1":{"name":"One"},"u1":{"name":"Uno"}}`, wantStatus: 400},
		{name: "data after the object", body: `{"u1":{"name":"One"}} {}`, wantStatus: 400},
		{name: "one entry without a name", body: `{"u1":{"name":"One"},"u2":{"email":["2@example.com"]}}`,
			wantStatus: 400, wantInvalid: []string{"u2"}},
		{name: "null email refused", body: `{"u1":{"name":"One","email":null},"u2":{"name":"Two"}}`,
			wantStatus: 400, wantInvalid: []string{"u1"}},
		{name: "unknown field and empty id", body: `{"u1":{"name":"One","nick":"o"},"":{"name":"Anon"},"u3":{"name":"Three"}}`,
			wantStatus: 400, wantInvalid: []string{"", "u1"}},
		{name: "entry not an object", body: `{"u1":"One"}`, wantStatus: 400, wantInvalid: []string{"u1"}},
		{name: "rejected user", faults: Faults{RejectUserIDs: []string{"u2"}}, body: batchOf(3),
			wantStatus: 400, wantInvalid: []string{"u2"}, wantFault: FaultRejectUser},
		{name: "applied then 500", faults: Faults{FailAfterUserIDs: []string{"u2"}}, body: batchOf(3),
			wantStatus: 500, wantStored: []string{"u0", "u1", "u2"}, wantFault: FaultFailAfter},
		{name: "fail before", faults: Faults{FailBefore: 1}, body: batchOf(3), wantStatus: 500, wantFault: FaultFailBefore},
		{name: "too many requests", faults: Faults{TooManyRequests: 1}, body: batchOf(3), wantStatus: 429, wantFault: FaultTooManyRequests},
		{name: "route absent", faults: Faults{BatchUnsupported: 404}, body: batchOf(3), wantStatus: 404, wantFault: FaultBatchUnsupported},
		{name: "method absent", faults: Faults{BatchUnsupported: 405}, body: batchOf(3), wantStatus: 405, wantFault: FaultBatchUnsupported},
		{name: "GET", method: "GET", wantStatus: 405},
		{name: "POST", method: "POST", body: batchOf(1), wantStatus: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{Faults: tt.faults})
			method := tt.method
			if method == "" {
				method = "PUT"
			}
			rep := b.do(t, method, usersPath, tt.body)
			if rep.status != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rep.status, tt.wantStatus, rep.body)
			}
			if tt.wantStatus == 400 {
				if tt.wantInvalid != nil {
					if got := invalidIDs(t, rep.body); !slices.Equal(got, tt.wantInvalid) {
						t.Fatalf("400 names %q, want %q (body %s)", got, tt.wantInvalid, rep.body)
					}
				} else if !strings.Contains(rep.body, `"errorCode":"BAD_REQUEST"`) {
					t.Fatalf("400 body %s, want an error body", rep.body)
				}
			}
			if got := b.fake.UserCount(); tt.wantStored == nil && got != 0 {
				t.Fatalf("%d users stored, want none (all or nothing)", got)
			}
			for _, id := range tt.wantStored {
				if _, ok := b.fake.User(id); !ok {
					t.Fatalf("user %s not stored", id)
				}
			}
			st := b.fake.Stats()
			if st.Requests != 1 {
				t.Fatalf("Requests = %d, want 1", st.Requests)
			}
			if method == "PUT" && st.Routes[RouteUsersPut] != 1 {
				t.Fatalf("Routes = %v, want one %s", st.Routes, RouteUsersPut)
			}
			if tt.wantFault != "" && st.Faults[tt.wantFault] != 1 {
				t.Fatalf("Faults = %v, want one %s", st.Faults, tt.wantFault)
			}
		})
	}
}

// The batch PUT merges each user as the single PUT does: fields left out
// are kept, null clears a field, custom is merged key by key.
func TestUsersBatchMerges(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.must(t, "PUT", userPath("u1"), `{"name":"One","email":["1@example.com"],"photoUrl":"p","role":"buyer","custom":{"a":"1","b":"2"}}`)
	b.must(t, "PUT", usersPath, `{"u1":{"name":"Uno","photoUrl":null,"custom":{"a":null,"c":"3"}},"u2":{"name":"Two","welcomeMessage":"hi"}}`)

	u1, _ := b.fake.User("u1")
	switch {
	case u1.Name != "Uno", !slices.Equal(u1.Email, []string{"1@example.com"}), u1.PhotoURL != "", u1.Role != "buyer",
		!maps.Equal(u1.Custom, map[string]string{"b": "2", "c": "3"}):
		t.Fatalf("u1 = %+v; want name replaced, email and role kept, photoUrl cleared, custom merged", u1)
	}
	if u2, ok := b.fake.User("u2"); !ok || u2.Name != "Two" || u2.WelcomeMessage != "hi" {
		t.Fatalf("u2 = %+v, %t", u2, ok)
	}
	// A user stored by the batch PUT is a synchronised user like any other.
	b.must(t, "PUT", convPath("c1"), `{"participants":["u1","u2"]}`)
	b.must(t, "POST", msgsPath("c1"), `[{"text":"hi","sender":"u2","idempotencyKey":"k1"}]`)
}

// With BatchUnsupported set, the single-user route still works: a caller
// can fall back to it.
func TestUsersBatchUnsupportedKeepsSingleRoute(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Faults: Faults{BatchUnsupported: http.StatusNotFound}})
	if rep := b.do(t, "PUT", usersPath, batchOf(2)); rep.status != http.StatusNotFound {
		t.Fatalf("batch: status %d, want 404", rep.status)
	}
	b.must(t, "PUT", userPath("u1"), aliceJSON)
	if err := (Faults{BatchUnsupported: 500}).Validate(); err == nil || !strings.Contains(err.Error(), "batchUnsupported") {
		t.Fatalf("Validate = %v, want an error naming batchUnsupported", err)
	}
}
